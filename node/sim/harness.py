"""The simulation: N production node runtimes on one virtual-time loop, under seeded faults.

A run, from its seed alone:

1. N nodes start, each with a deterministic key, its own in-memory SQLite chain store
   and a `SimNetwork` on one shared `SimHub`.
2. For `duration` virtual seconds a workload submits signed transfers to random live
   nodes (and re-submits what is not final yet, as a wallet would), while a fault
   schedule changes delays, drops, duplicates and reordering, splits the nodes into
   partitions and heals them, crashes nodes and restarts them.
3. Then every fault heals, every crashed node restarts, and every node must reach one
   head, with every submitted transfer final, within `converge_within` virtual seconds.

After every iteration of the event loop the invariants are checked on every node whose
head or finality moved: no two nodes finalize different blocks at one height; a final
block (and so its transactions) never leaves a node's chain, even across a crash; total
supply equals `genesis.expected_supply(height)`.  A crash keeps the node's store object,
as a disk would, and drops everything else: the Node object, its tasks and timers, its
mempool.  A restart builds a new Node on the same store and first checks that everything
the node had committed is still there.

Under BFT, `byzantine` validators may lie (`node.sim.byzantine`): their messages are rewritten
on the way out, and the invariants, convergence included, are checked on the honest nodes.

All randomness comes from `random.Random` instances seeded from the run's seed, the loop
runs no threads, and nodes are iterated in a fixed order, so a seed replays the same run:
the trace digest (every message, fault and commit, with its virtual time) is equal.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from api.service import Accepted, Rejection
from consensus.mining import mine
from consensus.pow import MAX_TARGET, round_target, work_of_target
from ledger.address import address_of
from ledger.block import BlockHeader
from ledger.crypto import InvalidKey, PrivateKey
from ledger.genesis import Genesis, dev_genesis
from ledger.hdkeys import dev_keys
from ledger.store import ChainStore
from ledger.transaction import Transaction
from node.config import NodeConfig
from node.runtime import Node
from node.sim import pos_byzantine
from node.sim.workload import Workload, seeded_streams
from node.sim.byzantine import MODES as BFT_BYZANTINE_KINDS
from node.sim.byzantine import Adversary, ByzantineNetwork, ByzantineValidator
from node.sim.loop import ACTOR, VirtualTimeLoop, inline_blocking, run
from node.sim.network import Faults, HubStats, SimHub, SimNetwork
from node.sim.pos_setup import partition_bound_seconds, pos_genesis
from node.sim.invariants import InvariantChecks
from node.sim.raft_checks import MembershipChurn, RaftChecks, raft_genesis

CONSENSUS = ("solo", "pow", "bft", "pos", "raft")
# What a Byzantine validator may do, by engine (the command line offers the union).
BYZANTINE_KINDS_BY_ENGINE = {"bft": BFT_BYZANTINE_KINDS, "pos": pos_byzantine.MODES}
BYZANTINE_KINDS = tuple(dict.fromkeys(BFT_BYZANTINE_KINDS + pos_byzantine.MODES))
FAULT_KINDS = ("delay", "drop", "duplicate", "reorder", "partition", "crash")
GENESIS_MS = 1_767_225_600_000
EPOCH_MS = GENESIS_MS + 60_000  # virtual time 0 on the nodes' clocks
CHAIN_ID = "ledger-sim"
SENDER_BALANCE = 10**15
POW_TARGET = round_target(MAX_TARGET >> 10)  # about 2,000 hashes a block: the real search stays cheap
POW_REWARD = 50 * 10**9
POLL_SECONDS = 0.1
RESUBMIT_SECONDS = 2.0


class SimulationFailure(AssertionError):
    """An invariant broke (or the nodes did not converge): the seed, where, and how to replay it."""

    def __init__(self, seed: int, step: int, at: float, reason: str, trace: list[str], replay: str, digest: str):
        self.seed = seed
        self.step = step
        self.at = at
        self.reason = reason
        self.trace = trace
        self.replay = replay
        self.digest = digest
        lines = "\n".join(f"    {line}" for line in trace)
        super().__init__(
            f"seed {seed}: {reason} (step {step}, t={at:.3f}s)\n  replay: {replay}\n  trace, last events:\n{lines}"
        )


@dataclass(frozen=True)
class SimConfig:
    seed: int
    nodes: int = 4
    consensus: str = "solo"
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    duration: float = 20.0  # virtual seconds of workload under faults
    converge_within: float = 60.0  # virtual seconds allowed after everything heals
    tx_per_second: float = 20.0
    senders: int = 6
    block_interval_ms: int = 1000  # solo: an empty block this long after the head
    fault_gap: tuple[float, float] = (0.5, 3.0)  # virtual seconds between faults
    # A partition heals by itself after this long (None: only a drawn heal ends it).  Proof of
    # work needs a bound: a branch that grows past the finality depth on each side of a
    # split would make two nodes finalize different blocks, which is PoW's known limit and
    # not a bug to report.
    max_partition: float | None = None
    pow_block_ms: int = 1000
    pow_finality_depth: int = 12
    # Proof of stake: every node a validator of equal stake (node/sim/pos_setup.py).
    pos_slot_ms: int = 500
    pos_slots_per_epoch: int = 4
    # BFT: every node a validator of equal power.  Its timeouts run on virtual time too.
    bft_max_block_interval_ms: int = 0  # 0: blocks only while transactions are pending
    # At most this many nodes down at once (None: all but one).  BFT with 3f+1 validators
    # stays live with f down, so a bound of f lets a test demand commits during the faults.
    max_down: int | None = None
    # BFT and PoS: this many validators are Byzantine (`node.sim.byzantine`,
    # `node.sim.pos_byzantine`), chosen by the seed, each behaving as `byzantine_kind` says.
    # Safety and liveness are promised up to f of 3f + 1;
    # more is allowed, to see the invariants catch what then goes wrong.
    byzantine: int = 0
    byzantine_kind: str = "mix"
    # Partitions laid at fixed virtual times, beside the drawn faults: (start, end, the node
    # indices of one side).  For named scenarios in tests (a 2|2 split for so long).
    scripted_partitions: tuple[tuple[float, float, tuple[int, ...]], ...] = ()
    # Crashes laid at fixed virtual times: (start, end, node index), down from start to end.
    scripted_crashes: tuple[tuple[float, float, int], ...] = ()
    # Raft: the genesis names all nodes but the last as members, and every 1-4 virtual
    # seconds the leader is asked to add a node or remove one (node/sim/raft_checks.py).
    membership_changes: bool = False
    # Loop iterations a run may take (a run of the defaults takes about 10,000): beyond it,
    # something spins without letting virtual time pass.  Counted, not timed, so it replays.
    max_steps: int = 500_000
    # Messages in one virtual second (a busy run of the defaults sends a few hundred): beyond
    # it, nodes are feeding a storm (say, each answer triggering more requests).
    max_messages_per_second: int = 20_000
    trace_tail: int = 60

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError("seed: a non-negative integer")
        if not 1 <= self.nodes <= 32:
            raise ValueError("nodes: 1 to 32")
        if self.consensus not in CONSENSUS:
            raise ValueError(f"consensus: one of {', '.join(CONSENSUS)}")
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {', '.join(sorted(unknown))} (known: {', '.join(FAULT_KINDS)})")
        if self.duration <= 0 or self.converge_within <= 0 or self.tx_per_second < 0:
            raise ValueError("duration and converge_within must be positive, tx_per_second non-negative")
        if not 1 <= self.senders <= 100:
            raise ValueError("senders: 1 to 100")
        low, high = self.fault_gap
        if not 0 < low <= high:
            raise ValueError("fault_gap: 0 < low <= high")
        if self.max_steps < 1 or self.max_messages_per_second < 1:
            raise ValueError("max_steps and max_messages_per_second: at least 1")
        if self.max_partition is not None and self.max_partition <= 0:
            raise ValueError("max_partition: positive, or None")
        if self.max_down is not None and not 0 <= self.max_down < self.nodes:
            raise ValueError("max_down: 0 to nodes - 1, or None")
        if isinstance(self.byzantine, bool) or not isinstance(self.byzantine, int) or not 0 <= self.byzantine < self.nodes:
            raise ValueError("byzantine: 0 to nodes - 1 validators (at most f of 3f + 1 keeps the chain safe)")
        if self.membership_changes and (self.consensus != "raft" or self.nodes < 2):
            raise ValueError("membership changes (--membership): only with --consensus raft and at least 2 nodes")
        if self.byzantine and self.consensus not in BYZANTINE_KINDS_BY_ENGINE:
            raise ValueError("byzantine: only with --consensus bft or pos (validators that sign)")
        for start, end, side in self.scripted_partitions:
            if not 0 <= start < end or not side or not set(side) < set(range(self.nodes)):
                raise ValueError("scripted_partitions: (start, end, side) with 0 <= start < end and side a proper "
                                 "subset of the node indices")
        for start, end, index in self.scripted_crashes:
            if not 0 <= start < end or not 0 <= index < self.nodes:
                raise ValueError("scripted_crashes: (start, end, node index) with 0 <= start < end")
        kinds = BYZANTINE_KINDS_BY_ENGINE.get(self.consensus, BFT_BYZANTINE_KINDS)
        if self.byzantine_kind not in kinds:
            raise ValueError(f"byzantine_kind: under {self.consensus}, one of {', '.join(kinds)}")

    @property
    def max_faulty(self) -> int:
        """f: the most validators of `nodes` (of equal power) that BFT tolerates."""
        return (self.nodes - 1) // 3

    @property
    def partition_limit(self) -> float | None:
        if self.max_partition is None and self.consensus == "pos":
            return partition_bound_seconds(self.pos_slot_ms, self.pos_slots_per_epoch)
        if self.max_partition is not None or self.consensus != "pow":
            return self.max_partition
        # Long enough to fork, short enough that no branch nears the finality depth.
        return self.pow_finality_depth * self.pow_block_ms / 4000

    def replay_command(self) -> str:
        faults = ",".join(sorted(self.faults)) or "none"
        defaults = SimConfig(seed=0)
        options = [f"--seeds {self.seed} --consensus {self.consensus} --nodes {self.nodes} --faults {faults} "
                   f"--duration {self.duration:g}"]
        # Whatever differs from the command line's defaults, so the command replays this run.
        if self.converge_within != defaults.converge_within:
            options.append(f"--converge-within {self.converge_within:g}")
        if self.tx_per_second != defaults.tx_per_second:
            options.append(f"--tx-rate {self.tx_per_second:g}")
        if self.fault_gap != defaults.fault_gap:
            options.append(f"--fault-gap {self.fault_gap[0]:g},{self.fault_gap[1]:g}")
        if self.max_down is not None:
            options.append(f"--max-down {self.max_down}")
        if self.byzantine:
            options.append(f"--byzantine {self.byzantine} --byzantine-kind {self.byzantine_kind}")
        if self.membership_changes:
            options.append("--membership")
        return "python -m node.sim " + " ".join(options) + " --trace"


@dataclass
class SimResult:
    seed: int
    digest: str  # of the whole trace: equal for two runs of one seed
    steps: int
    virtual_seconds: float
    wall_seconds: float
    head_height: int
    submitted: int  # distinct transfers created by the workload
    final: int  # of them, final on every node at the end
    faults: Counter  # fault kinds applied
    stats: HubStats
    converged_after: float  # virtual seconds from the heal to one head
    links: int  # peer links of the full mesh
    reorgs: int  # times a node's head moved to another branch
    byzantine: tuple[str, ...] = ()  # labels of the Byzantine validators
    byzantine_actions: Counter = field(default_factory=Counter)  # what they did, by kind of lie
    evidence: Counter = field(default_factory=Counter)  # label of the accused -> pieces seen on honest nodes

    def announces_per_tx_link(self) -> float:
        """Transaction ids announced, per final transaction and peer link (both directions)."""
        return self.stats.announced_ids / max(1, self.final * self.links)

    def messages_per_tx(self) -> float:
        return self.stats.messages() / max(1, self.final)


class Trace:
    """Every event of a run, hashed into a digest; the last few kept for a failure report."""

    MESSAGE_PREFIXES = ("send ", "drop ")

    def __init__(self, clock: Callable[[], float], keep: int, echo: Callable[[str], None] | None = None):
        self._clock = clock
        self._hash = hashlib.sha256()
        self.tail: deque[str] = deque(maxlen=keep)  # events other than single messages
        self.messages: deque[str] = deque(maxlen=max(1, keep // 3))
        self.events = 0
        self.echo = echo  # e.g. print: the whole trace as it happens

    def __call__(self, text: str) -> None:
        line = f"{self._clock():11.6f} {text}"
        self._hash.update(line.encode() + b"\n")
        (self.messages if text.startswith(self.MESSAGE_PREFIXES) else self.tail).append(line)
        self.events += 1
        if self.echo is not None:
            self.echo(line)

    def digest(self) -> str:
        return self._hash.hexdigest()

    def report(self) -> list[str]:
        return list(self.tail) + [f"last {len(self.messages)} messages:"] + [f"  {line}" for line in self.messages]


class SimMiner:
    """Proof-of-work mining on virtual time, with the runtime's miner interface.

    How long a search takes is drawn from the seed: exponential, as the time to find a
    block is for real hashing at a fixed rate, with the expected number of hashes for the
    target (`work_of_target`).  Then the real nonce search seals the header, so the block
    the engine gets is valid; targets are easy enough that this takes a few thousand tries.
    The wait is a loop timer created in the node's context, so a crash cancels it."""

    def __init__(self, rng: random.Random, hash_rate: float):
        self.rng = rng
        self.hash_rate = hash_rate
        self._timer: asyncio.TimerHandle | None = None

    def start(self, header: BlockHeader, target: int, on_found: Callable[[BlockHeader], None]) -> None:
        self.stop()
        seconds = self.rng.expovariate(self.hash_rate / work_of_target(target))
        self._timer = asyncio.get_running_loop().call_later(seconds, self._found, header, target, on_found)

    def _found(self, header: BlockHeader, target: int, on_found: Callable[[BlockHeader], None]) -> None:
        self._timer = None
        sealed = mine(header, target)
        if sealed is None:  # every nonce tried: impossible at these targets
            raise RuntimeError(f"no nonce meets target {target:064x}")
        on_found(sealed)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.stop()


class _Actor:
    """One incarnation of a node: what a crash kills."""

    def __init__(self, label: str, incarnation: int):
        self.label = label
        self.incarnation = incarnation

    def __repr__(self) -> str:
        return f"{self.label}#{self.incarnation}"


@dataclass
class Slot:
    """One simulated machine: its key and its disk (store) outlive the node processes on it."""

    index: int
    label: str
    key: PrivateKey
    node_id: str
    store: ChainStore
    node: Node | None = None
    network: SimNetwork | None = None
    actor: _Actor | None = None
    context: contextvars.Context | None = None
    incarnation: int = 0
    running: bool = False  # started and not crashed
    chain: list[bytes] = field(default_factory=list)  # block hash per height, as read from the store
    # Per height of `chain`: money its stake ops issued and burnt so far, (issued, burnt).
    moved: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    block_txs: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    seen_head: bytes = b""
    final_height: int = 0
    certified_height: int = 0  # BFT: blocks up to here were checked to carry a valid commit certificate
    byzantine: ByzantineValidator | None = None  # its messages lie; the invariants skip it
    evidence_seen: tuple[int, object, bytes] = (0, None, b"")  # (reported count, newest, head) when last read
    evidence_keys: set = field(default_factory=set)


class _ErrorLog(logging.Handler):
    """Collects what the node code logs at ERROR: in a simulation that is a bug, not noise."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.records.append(text)


class Simulation(InvariantChecks):
    """One seeded run.  `on_node(slot, node)` is called for every node created, before it starts
    (tests use it to break a node on purpose; engines use it to wire a simulated miner)."""

    def __init__(
        self, config: SimConfig, on_node: Callable[[Slot, Node], None] | None = None,
        echo: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.on_node = on_node
        streams = seeded_streams(config.seed)
        self.net_rng, self.fault_rng, self.work_rng = streams["net"], streams["fault"], streams["work"]
        self.mining_rng, self.byzantine_rng, self.membership_rng = streams["mining"], streams["byzantine"], streams["membership"]
        self.loop = VirtualTimeLoop()
        self.trace = Trace(self.loop.time, config.trace_tail, echo)
        self.hub = SimHub(config.seed, self.net_rng, trace=self.trace)
        self.slots = [self._make_slot(i) for i in range(config.nodes)]
        self.genesis = self._make_genesis()
        self.senders = _dev_keys(config.senders)
        self.workload = Workload(CHAIN_ID, self.senders, self.work_rng, config.tx_per_second)
        self.outstanding: OrderedDict[bytes, tuple[Transaction, float]] = OrderedDict()  # not final yet
        self.submitted = 0
        self.submit_results: Counter = Counter()
        self.final_blocks: dict[int, tuple[bytes, str]] = {}  # height -> (hash, first node to finalize it)
        self.final_txs: dict[bytes, int] = {}  # tx id -> height where it became final
        self.faults_applied: Counter = Counter()
        self._problems: list[str] = []
        self._errors = _ErrorLog()
        self._failure: SimulationFailure | None = None
        self.final_height = 0
        self.reorgs = 0
        self.reorg_depths: list[int] = []  # blocks undone by each reorg, in order
        self._storm_second = -1
        self._storm_base = 0
        self._partitions = 0  # partitions started; a timed heal ends only the one it was set for
        self._whole_since = 0.0  # when the last partition ended
        self._heal_time = config.duration
        self.adversary: Adversary | None = None
        self.evidence_against: Counter = Counter()
        self.raft = RaftChecks(self._fail, self.trace) if config.consensus == "raft" else None
        self.churn = MembershipChurn(
            self.membership_rng, [slot.key for slot in self.slots], self.trace,
            lambda key: self.hub.label(address_of(key).hex())) if config.membership_changes else None
        if config.byzantine:
            self._make_byzantine()

    # ------------------------------------------------------------------ setup
    def _make_slot(self, index: int) -> Slot:
        key = _node_key(self.config.seed, index)
        node_id = address_of(key.public_key).hex()
        label = f"n{index}"
        self.hub.name(node_id, label)
        return Slot(index, label, key, node_id, ChainStore("sqlite://"))

    def _make_byzantine(self) -> None:
        chosen = sorted(self.byzantine_rng.sample(range(len(self.slots)), self.config.byzantine))
        if self.config.consensus == "pos":
            self.adversary = pos_byzantine.new_adversary(
                self.config.byzantine_kind, self.byzantine_rng, CHAIN_ID,
                node_ids=sorted(slot.node_id for slot in self.slots),
                byzantine=sorted(self.slots[index].node_id for index in chosen), label=self.hub.label, trace=self.trace)
            for index in chosen:  # genesis names the validators in slot order: the index is the registry's
                slot = self.slots[index]
                slot.byzantine = pos_byzantine.PosByzantineValidator(
                    self.adversary, slot.node_id, slot.key, index, self.hub, self.genesis.max_block_transactions)
            return
        self.adversary = Adversary(
            self.config.byzantine_kind, self.byzantine_rng, CHAIN_ID,
            node_ids=sorted(slot.node_id for slot in self.slots),
            byzantine=sorted(self.slots[index].node_id for index in chosen),
            label=self.hub.label, trace=self.trace,
        )
        for index in chosen:
            slot = self.slots[index]
            slot.byzantine = ByzantineValidator(self.adversary, slot.node_id, slot.key, self.genesis.max_block_transactions)

    def _honest(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.byzantine is None]

    def _make_genesis(self) -> Genesis:
        accounts = _dev_keys(self.config.senders)
        if self.config.consensus == "solo":
            genesis = dev_genesis(
                self.slots[0].key.public_key, chain_id=CHAIN_ID, accounts=len(accounts),
                balance=SENDER_BALANCE, timestamp=GENESIS_MS, block_interval_ms=self.config.block_interval_ms,
            )
            return genesis
        if self.config.consensus == "raft":
            members = self.slots[:-1] if self.config.membership_changes else self.slots
            return raft_genesis(CHAIN_ID, GENESIS_MS, [slot.key for slot in members], accounts, SENDER_BALANCE)
        if self.config.consensus == "pos":
            return pos_genesis(CHAIN_ID, GENESIS_MS, [slot.key for slot in self.slots], accounts, SENDER_BALANCE,
                               self.config.pos_slot_ms, self.config.pos_slots_per_epoch)
        if self.config.consensus == "bft":
            return Genesis(
                chain_id=CHAIN_ID,
                address_prefix="dev",
                timestamp=GENESIS_MS,
                engine="bft",
                engine_params={
                    "validators": [{"public_key": slot.key.public_key.hex(), "power": 10} for slot in self.slots],
                    "max_block_interval_ms": self.config.bft_max_block_interval_ms,
                },
                allocations={address_of(key.public_key): SENDER_BALANCE for key in accounts},
                block_reward=0,
            )
        return Genesis(
            chain_id=CHAIN_ID,
            address_prefix="dev",
            timestamp=GENESIS_MS,
            engine="pow",
            engine_params={
                "target_block_ms": self.config.pow_block_ms,
                "initial_target": f"0x{POW_TARGET:064x}",
                "retarget_window": 45,  # as `ledger testnet` writes
                "finality_depth": self.config.pow_finality_depth,
            },
            allocations={address_of(key.public_key): SENDER_BALANCE for key in accounts},
            block_reward=POW_REWARD,
        )

    def _node_config(self, slot: Slot) -> NodeConfig:
        return NodeConfig(data_dir=Path("sim") / slot.label, db="sqlite://", mine=True)

    def _node_options(self, slot: Slot) -> dict:
        if self.config.consensus != "pow":
            return {}
        # Each node holds an equal share of a hash rate that finds a block every pow_block_ms.
        hash_rate = work_of_target(POW_TARGET) * 1000 / self.config.pow_block_ms / self.config.nodes
        return {"miner": SimMiner(self.mining_rng, hash_rate)}

    # ------------------------------------------------------------------ running
    def run(self) -> SimResult:
        started = time.perf_counter()
        node_logger = logging.getLogger("ledger")
        node_logger.addHandler(self._errors)
        self.loop.set_exception_handler(self._on_loop_exception)
        self.loop.after_step = self._after_step
        try:
            converged_after = run(self._main(), self.loop)
        except Exception as exc:
            if self._failure is not None:
                raise self._failure from None
            # The harness or a node raised out of the loop: this seed's failure too.
            raise self._failure_for(f"{type(exc).__name__}: {exc}") from exc
        finally:
            node_logger.removeHandler(self._errors)
            for slot in self.slots:
                slot.store.close()
        return SimResult(
            seed=self.config.seed,
            digest=self.trace.digest(),
            steps=self.loop.steps,
            virtual_seconds=self.loop.time(),
            wall_seconds=time.perf_counter() - started,
            head_height=self.final_height,
            submitted=self.submitted,
            final=len(self.final_txs),
            faults=self.faults_applied,
            stats=self.hub.stats,
            converged_after=converged_after,
            links=self.config.nodes * (self.config.nodes - 1) // 2,
            reorgs=self.reorgs,
            byzantine=tuple(slot.label for slot in self.slots if slot.byzantine is not None),
            byzantine_actions=self.adversary.stats if self.adversary is not None else Counter(),
            evidence=self.evidence_against,
        )

    async def _main(self) -> float:
        if self.adversary is not None:
            liars = [slot.label for slot in self.slots if slot.byzantine is not None]
            self.trace(f"byzantine {','.join(liars)} ({self.config.byzantine_kind})")
        for slot in self.slots:
            self._start(slot)
        await asyncio.sleep(0)
        for start, end, side in self.config.scripted_partitions:
            self.loop.call_later(start, self._scripted_partition, side)
            self.loop.call_later(end, self._scripted_heal)
        for start, end, index in self.config.scripted_crashes:
            self.loop.call_later(start, self._scripted_crash, self.slots[index])
            self.loop.call_later(end, self._scripted_restart, self.slots[index])
        helpers = [
            asyncio.create_task(self._workload(), name="workload"),
            asyncio.create_task(self._resubmit(), name="resubmit"),
            asyncio.create_task(self._inject_faults(), name="faults"),
        ]
        if self.churn is not None:
            helpers.append(asyncio.create_task(self._churn_membership(), name="membership"))
        await asyncio.sleep(self.config.duration)
        helpers[0].cancel()
        helpers[2].cancel()
        if self.churn is not None:
            helpers[3].cancel()
        self._heal_everything()
        heal_at = self.loop.time()
        deadline = heal_at + self.config.converge_within
        while True:
            waiting_for = self._not_converged()
            if waiting_for is None:
                break
            if self.loop.time() >= deadline:
                nodes = "" if waiting_for.startswith("heads differ") else (
                    "; " + ", ".join(self._describe(slot) for slot in self._honest() if slot.running))
                self._fail(f"no convergence {self.config.converge_within:g}s after the faults healed: {waiting_for}{nodes}")
            await asyncio.sleep(POLL_SECONDS)
        converged_after = self.loop.time() - heal_at
        reference = self._honest()[0].node
        assert reference is not None
        self.trace(f"converged after {converged_after:.3f}s at height {reference.head.height}")
        helpers[1].cancel()
        self._check_end_state()
        self.final_height = reference.head.height
        for slot in self.slots:
            await self._stop(slot)
        return converged_after

    def _start(self, slot: Slot) -> None:
        slot.incarnation += 1
        slot.actor = _Actor(slot.label, slot.incarnation)
        slot.context = contextvars.copy_context()
        slot.context.run(ACTOR.set, slot.actor)
        if slot.byzantine is not None:
            slot.network = ByzantineNetwork(self.hub, slot.node_id, slot.byzantine)
        else:
            slot.network = SimNetwork(self.hub, slot.node_id)
        node = Node(
            self._node_config(slot), self.genesis, slot.key, slot.network,
            clock=self._clock_ms, blocking=inline_blocking, store=slot.store, **self._node_options(slot),
        )
        if slot.byzantine is not None:
            slot.byzantine.node = node
        if self.on_node is not None:
            self.on_node(slot, node)
        slot.node = node
        self.loop.create_task(self._boot(slot, node), context=slot.context)

    async def _boot(self, slot: Slot, node: Node) -> None:
        await node.start()
        head = node.head
        self.trace(f"start {slot.label}#{slot.incarnation} at height {head.height} {head.hash.hex()[:12]}")
        if slot.byzantine is not None:
            pass  # not followed: what a Byzantine node holds proves nothing
        elif slot.chain:
            # A crash must lose nothing that was committed: the store is the node's disk.
            if head.hash != slot.chain[-1]:
                self._fail(f"{slot.label} restarted at {head.height} {head.hash.hex()[:12]}, not at the head it had "
                           f"committed, {len(slot.chain) - 1} {slot.chain[-1].hex()[:12]}")
            self._check_stored_chain(slot)
        else:
            genesis_block = node.store.block_header(0)
            assert genesis_block is not None
            slot.chain = [genesis_block.hash]
            slot.seen_head = genesis_block.hash
        slot.running = True

    def _crash(self, slot: Slot) -> None:
        node = slot.node
        if node is not None and slot.running and slot.byzantine is None:
            # Commits earlier in this loop iteration are not checked yet: the store must keep them too.
            if node.head.hash != slot.seen_head:
                self._follow_head(slot, node)
            if node.finalized_height != slot.final_height:
                self._follow_finality(slot, node)
        self.hub.crash(slot.node_id)
        killed = self.loop.kill_actor(slot.actor)
        self.trace(f"crash {slot.label}#{slot.incarnation}: {killed} tasks and timers cancelled")
        slot.node = None
        slot.network = None
        slot.running = False

    async def _stop(self, slot: Slot) -> None:
        if slot.node is not None:
            node = slot.node
            slot.running = False
            await node.stop()
            slot.node = None

    def _clock_ms(self) -> int:
        # Rounded to the microsecond first: a timer due at 11.000 s fires at 10.999999999 s of
        # float virtual time, which must not read as 10,999 ms (a Tick before its deadline).
        return EPOCH_MS + round(self.loop.time() * 1_000_000) // 1000

    # ------------------------------------------------------------------ workload
    def _live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.running]

    async def _workload(self) -> None:
        if self.config.tx_per_second == 0:
            return
        while True:
            await asyncio.sleep(self.workload.gap())
            live = self._live()
            if not live:
                continue
            batch = self.workload.batch()
            for tx in batch:
                self.outstanding[tx.id] = (tx, self.loop.time())
            self.submitted += len(batch)
            self._submit(self.work_rng.choice(live), batch)

    async def _resubmit(self) -> None:
        """As a wallet does: send again whatever is not final after a while, to any live node."""
        rng = self.work_rng
        while True:
            await asyncio.sleep(RESUBMIT_SECONDS)
            live = self._live()
            cutoff = self.loop.time() - RESUBMIT_SECONDS
            stale = [tx for tx, sent in self.outstanding.values() if sent <= cutoff]
            if stale and live:
                self._submit(rng.choice(live), stale)

    def _submit(self, slot: Slot, transactions: list[Transaction]) -> None:
        node = slot.node
        assert node is not None and slot.context is not None

        async def submit() -> None:
            results = await node.submit(transactions)
            for result in results:
                if isinstance(result, Accepted):
                    self.submit_results["duplicate" if result.duplicate else "accepted"] += 1
                elif isinstance(result, Rejection):
                    self.submit_results[result.reason] += 1
            self.trace(f"submit {slot.label} {len(transactions)} txs: "
                       f"{sum(isinstance(r, Accepted) for r in results)} accepted")

        # In the node's context: a crash kills a submission in flight with the node.
        self.loop.create_task(submit(), context=slot.context)

    # ------------------------------------------------------------------ faults
    def _fault_menu(self) -> list[str]:
        enabled = self.config.faults
        menu = [kind for kind in FAULT_KINDS if kind in enabled]
        if enabled & {"delay", "drop", "duplicate", "reorder"}:
            menu.append("calm")
        if "partition" in enabled:
            menu.append("heal")
        if "crash" in enabled:
            menu.append("restart")
        return menu

    async def _inject_faults(self) -> None:
        rng = self.fault_rng
        menu = self._fault_menu()
        if not menu:
            return
        while True:
            await asyncio.sleep(rng.uniform(*self.config.fault_gap))
            kind = rng.choice(menu)
            applied = self._apply_fault(kind)
            if applied is not None:
                self.faults_applied[kind] += 1
                self.trace(f"fault {kind}: {applied}")

    async def _churn_membership(self) -> None:
        assert self.churn is not None
        while True:
            await asyncio.sleep(self.membership_rng.uniform(1.0, 4.0))
            self.churn.step([slot.node for slot in self.slots])

    def _apply_fault(self, kind: str) -> str | None:
        rng = self.fault_rng
        hub = self.hub
        faults = hub.faults
        if kind == "delay":
            low = rng.uniform(1, 30)
            faults.delay_ms = (low, low + rng.uniform(0, 400))
            return faults.describe()
        if kind == "drop":
            faults.drop = rng.uniform(0.02, 0.3)
            return faults.describe()
        if kind == "duplicate":
            faults.duplicate = rng.uniform(0.02, 0.3)
            return faults.describe()
        if kind == "reorder":
            faults.reorder = not faults.reorder
            return faults.describe()
        if kind == "calm":
            hub.faults = Faults()
            return hub.faults.describe()
        if kind == "partition":
            limit = self.config.partition_limit
            if len(self.slots) < 2:
                return None
            if limit is not None and (hub.partitioned or self.loop.time() - self._whole_since < limit):
                # Under a bound, splits do not follow each other back to back (that would
                # isolate a node for longer than the bound): the network stays whole as long.
                return None
            ids = [slot.node_id for slot in self.slots]
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            groups = [ids[:cut], ids[cut:]]
            hub.partition(groups)
            self._partitions += 1
            if limit is not None:
                self.loop.call_later(limit, self._end_partition, self._partitions)
            return " | ".join(",".join(sorted(hub.label(n) for n in group)) for group in groups)
        if kind == "heal":
            if hub.partitioned:
                self._whole_since = self.loop.time()
            hub.heal()
            return "one network again"
        if kind == "crash":
            live = self._live()
            if len(live) < 2:
                return None  # keep one node up to take transactions
            if self.config.max_down is not None and len(self.slots) - len(live) >= self.config.max_down:
                return None
            victim = rng.choice(live)
            self._crash(victim)
            return victim.label
        if kind == "restart":
            down = [slot for slot in self.slots if slot.node is None]
            if not down:
                return None
            slot = rng.choice(down)
            self._start(slot)
            return slot.label
        raise ValueError(f"unknown fault {kind}")

    def _scripted_partition(self, side: tuple[int, ...]) -> None:
        ids = [slot.node_id for slot in self.slots]
        groups = [[ids[i] for i in side], [ids[i] for i in range(len(ids)) if i not in side]]
        self.hub.partition(groups)
        self._partitions += 1
        self.faults_applied["partition"] += 1
        self.trace("fault partition: " + " | ".join(",".join(sorted(self.hub.label(n) for n in group)) for group in groups))

    def _scripted_heal(self) -> None:
        self._whole_since = self.loop.time()
        self.hub.heal()
        self.faults_applied["heal"] += 1
        self.trace("fault heal: scripted")

    def _scripted_crash(self, slot: Slot) -> None:
        if slot.running:
            self._crash(slot)
            self.faults_applied["crash"] += 1
            self.trace(f"fault crash: {slot.label} (scripted)")

    def _scripted_restart(self, slot: Slot) -> None:
        if slot.node is None and self.loop.time() < self._heal_time:
            self._start(slot)
            self.faults_applied["restart"] += 1
            self.trace(f"fault restart: {slot.label} (scripted)")

    def _end_partition(self, number: int) -> None:
        if number == self._partitions and self.hub.partitioned and self.loop.time() < self._heal_time:
            self._whole_since = self.loop.time()
            self.hub.heal()
            self.faults_applied["heal"] += 1
            self.trace(f"fault heal: partition {number} ended after {self.config.partition_limit:g}s")

    def _heal_everything(self) -> None:
        self.hub.faults = Faults()
        self.hub.heal()
        for slot in self.slots:
            if slot.node is None:
                self._start(slot)
        self.trace("all faults healed, every node running")

    # ------------------------------------------------------------------ invariants
    def _after_step(self) -> None:
        if self._failure is not None:
            self.loop.stop()  # raised in a task, which keeps it: end the run, `run` reports it
            return
        if self._problems or self._errors.records or self.hub.errors:
            problem = (self._problems or self._errors.records or self.hub.errors)[0]
            self._fail(problem)
        if self.loop.steps > self.config.max_steps:
            self._fail(f"more than {self.config.max_steps} loop steps at virtual time {self.loop.time():.3f}s: "
                       "something spins without letting time pass")
        second = int(self.loop.time())
        sent = self.hub.stats.messages()
        if second != self._storm_second:
            self._storm_second, self._storm_base = second, sent
        elif sent - self._storm_base > self.config.max_messages_per_second:
            counts = Counter(self.hub.stats.sent)
            self._fail(f"message storm: more than {self.config.max_messages_per_second} messages within virtual "
                       f"second {second} (so far by type: {dict(counts.most_common(4))})")
        for slot in self.slots:
            node = slot.node
            if node is None or not slot.running or slot.byzantine is not None:
                continue
            if self.adversary is not None:
                self._follow_evidence(slot, node)
            head = node.head
            if head.hash != slot.seen_head:
                self._follow_head(slot, node)
            if node.finalized_height != slot.final_height:
                self._follow_finality(slot, node)
            if self.raft is not None:
                self.raft.after_step(slot.label, node.engine, self.final_blocks)

    # ------------------------------------------------------------------ failures
    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        message = context.get("message", "")
        self._problems.append(f"unhandled in the event loop: {message}" + (f" ({type(exc).__name__}: {exc})" if exc else ""))

    def _failure_for(self, reason: str) -> SimulationFailure:
        return SimulationFailure(
            self.config.seed, self.loop.steps, self.loop.time(), reason, self.trace.report(),
            self.config.replay_command(), self.trace.digest(),
        )

    def _fail(self, reason: str) -> None:
        self.trace(f"FAIL {reason}")
        self._failure = self._failure_for(reason)
        raise self._failure


def run_seed(
    config: SimConfig, on_node: Callable[[Slot, Node], None] | None = None, echo: Callable[[str], None] | None = None,
) -> SimResult:
    return Simulation(config, on_node, echo).run()


# ---------------------------------------------------------------------------- keys


def _node_key(seed: int, index: int) -> PrivateKey:
    counter = 0
    while True:
        secret = hashlib.sha256(f"{CHAIN_ID}/node-key/{seed}/{index}/{counter}".encode()).digest()
        try:
            return PrivateKey(secret)
        except InvalidKey:  # out of the curve's range: about 2**-128 likely
            counter += 1


@lru_cache(maxsize=8)
def _dev_keys(count: int) -> tuple[PrivateKey, ...]:
    return tuple(dev_keys(count))

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
from collections import Counter, OrderedDict
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
from node.sim.byzantine import Adversary, ByzantineNetwork, ByzantineValidator
from node.sim.loop import ACTOR, VirtualTimeLoop, inline_blocking, run
from node.sim.network import SimHub, SimNetwork
from node.sim.pos_setup import pos_genesis
from node.sim.config import SimConfig, SimResult, SimulationFailure, Trace
from node.sim.faults import FaultInjection
from node.sim.invariants import InvariantChecks
from node.sim.raft_checks import MembershipChurn, RaftChecks, raft_genesis

GENESIS_MS = 1_767_225_600_000
EPOCH_MS = GENESIS_MS + 60_000  # virtual time 0 on the nodes' clocks
CHAIN_ID = "ledger-sim"
SENDER_BALANCE = 10**15
POW_TARGET = round_target(MAX_TARGET >> 10)  # about 2,000 hashes a block: the real search stays cheap
POW_REWARD = 50 * 10**9
POLL_SECONDS = 0.1
RESUBMIT_SECONDS = 2.0


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


class Simulation(FaultInjection, InvariantChecks):
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

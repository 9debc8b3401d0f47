"""A simulation's settings, its result, its failure report and its trace.

What a caller hands the simulator (SimConfig, checked on construction, with the command
line that replays it) and what it gets back (SimResult, or SimulationFailure with the
seed, the step and the last events), apart from the machinery that runs it
(node/sim/harness.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from node.sim import pos_byzantine
from node.sim.byzantine import MODES as BFT_BYZANTINE_KINDS
from node.sim.network import HubStats
from node.sim.pos_setup import partition_bound_seconds

CONSENSUS = ("solo", "pow", "bft", "pos", "raft")
# What a Byzantine validator may do, by engine (the command line offers the union).
BYZANTINE_KINDS_BY_ENGINE = {"bft": BFT_BYZANTINE_KINDS, "pos": pos_byzantine.MODES}
BYZANTINE_KINDS = tuple(dict.fromkeys(BFT_BYZANTINE_KINDS + pos_byzantine.MODES))
FAULT_KINDS = ("delay", "drop", "duplicate", "reorder", "partition", "crash")


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

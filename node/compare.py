"""`ledger compare`: every engine on the same seeded workload under the same faults.

Each run is the simulator (node/sim) on virtual time: the production nodes, one seed for
the workload and the network, and a fault schedule laid on the same virtual seconds for
every engine.  The same arguments give the same figures, timing columns included.  What
a run measures comes from watching the nodes as the simulator's own checks do, after every
step: when each node's head and final height moved, when each transfer was first final,
each reorg, and every message and byte the simulated network carried.

A schedule an engine is not built to survive is run all the same, and the outcome says
what broke (a safety violation, no recovery) instead of leaving the row out; a fault the
simulator cannot apply to an engine (a lying validator where no engine code signs votes)
is listed as not applicable, with why.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields

from consensus.pow import PowParams
from ledger.genesis import ENGINES
from node.sim.config import BYZANTINE_KINDS_BY_ENGINE, SimConfig, SimulationFailure
from node.sim.harness import Simulation, Slot

FAULTS = ("none", "crash", "partition", "byzantine")
DURATION = 24.0  # virtual seconds of workload
FAULT_START, FAULT_END = 8.0, 14.0  # the fault window: shorter than proof of stake's inactivity leak (8 s)
TX_PER_SECOND = 20.0
CONVERGE_WITHIN = 60.0
# A node's own default, not the simulator's deeper one (12, chosen so that its random, longer
# partitions never split what is final): the comparison shows proof of work as users run it.
POW_FINALITY_DEPTH = next(f.default for f in fields(PowParams) if f.name == "finality_depth")


class CompareError(ValueError):
    """Arguments that cannot run: said before anything runs."""


def minimum_nodes(engine: str) -> int:
    """The fewest nodes for which the engine's comparison means something."""
    return {"bft": 4, "pos": 4, "raft": 3}.get(engine, 2)


def check_arguments(engines: list[str], faults: list[str], nodes: list[int]) -> None:
    unknown = [name for name in engines if name not in ENGINES]
    if unknown or not engines:
        raise CompareError(f"unknown engine {', '.join(unknown) or '(none given)'}: the registry holds "
                           f"{', '.join(ENGINES)}")
    if len(set(engines)) != len(engines):
        raise CompareError("an engine is named twice in --engines")
    unknown = [name for name in faults if name not in FAULTS]
    if unknown or not faults:
        raise CompareError(f"unknown fault schedule {', '.join(unknown) or '(none given)'}: one of {', '.join(FAULTS)}")
    if len(set(faults)) != len(faults):
        raise CompareError("a fault schedule is named twice in --faults")
    if not nodes or len(set(nodes)) != len(nodes):
        raise CompareError("--nodes: one or more different node counts, like 4 or 4,7,10,16")
    for count in nodes:
        if not 2 <= count <= 32:
            raise CompareError(f"--nodes {count}: from 2 to 32 nodes (the simulator's bound)")
        for engine in engines:
            if count < minimum_nodes(engine):
                raise CompareError(f"--nodes {count} for {engine}: it needs at least {minimum_nodes(engine)} "
                                   f"({_why_minimum(engine)})")
        if "partition" in faults and count < 3:
            raise CompareError(f"--nodes {count} with the partition schedule: a cut needs at least 3 nodes "
                               "(a majority side and the rest)")


def _why_minimum(engine: str) -> str:
    return {
        "bft": "3f + 1 validators to tolerate f faulty ones, and f >= 1",
        "pos": "a Byzantine validator among fewer than four holds a third of the stake",
        "raft": "a majority that survives one crash",
    }.get(engine, "a network of one has no faults to compare")


@dataclass(frozen=True)
class Schedule:
    """A fault laid on [FAULT_START, FAULT_END) virtual seconds, the same for every engine."""

    name: str
    nodes: int

    @property
    def majority(self) -> tuple[int, ...]:
        """The side of a partition that holds node 0 (the solo producer): a simple majority."""
        return tuple(range(self.nodes // 2 + 1))

    def config(self, engine: str, seed: int) -> SimConfig:
        options: dict = {}
        if self.name == "crash":
            options["scripted_crashes"] = ((FAULT_START, FAULT_END, 0),)
        elif self.name == "partition":
            options["scripted_partitions"] = ((FAULT_START, FAULT_END, self.majority),)
        elif self.name == "byzantine":
            options.update(byzantine=max(1, (self.nodes - 1) // 3), byzantine_kind="mix")
        # The simulator's storm and spin guards are set for a handful of nodes; messages grow
        # with the square of the node count (every node talks to every other).
        growth = max(1.0, (self.nodes / 4) ** 2)
        return SimConfig(seed=seed, nodes=self.nodes, consensus=engine, faults=frozenset(), duration=DURATION,
                         converge_within=CONVERGE_WITHIN, tx_per_second=TX_PER_SECOND,
                         pow_finality_depth=POW_FINALITY_DEPTH,
                         max_steps=int(SimConfig.max_steps * growth),
                         max_messages_per_second=int(SimConfig.max_messages_per_second * growth), **options)

    def not_applicable(self, engine: str, real: bool = False) -> str | None:
        if self.name == "byzantine" and engine not in BYZANTINE_KINDS_BY_ENGINE:
            return {
                "raft": "Raft tolerates crashes, not lies: a member that lies breaks its assumption, and no lying "
                        "Raft member is simulated",
                "solo": "one trusted producer: nothing to vote on, so nothing to lie about",
                "pow": "miners do not vote; a dishonest miner is one with hash power, which the simulator "
                       "does not model",
            }.get(engine, "no Byzantine behaviour is simulated for this engine")
        if self.name == "byzantine" and real:
            return ("real processes run only honest code: the lying validators are the simulator's "
                    "(run without --real)")
        return None


@dataclass
class Outcome:
    """One engine under one schedule at one node count."""

    engine: str
    faults: str
    nodes: int
    seed: int
    status: str  # ok, safety violated, no recovery, check failed, not applicable
    note: str = ""
    mode: str = "simulated"  # or "real": processes of `ledger testnet`, wall-clock seconds
    submitted: int = 0
    final: int = 0
    committed_per_s: float | None = None  # transfers in a block on some node within the workload window, per second
    final_per_s: float | None = None
    latency_p50: float | None = None  # virtual s from submission to first final anywhere
    latency_p99: float | None = None
    reorgs: int = 0
    reverted_blocks: int = 0
    deepest_reorg: int = 0
    stall_during: float | None = None  # longest virtual s without a new final block in the fault window
    stall_after: float | None = None  # the same from the window's end to the workload's
    recovery: float | None = None  # from the window's end to the next final block
    final_blocks: int = 0
    messages_per_block_per_node: float | None = None
    bytes_per_block_per_node: float | None = None
    sides: list[dict] = field(default_factory=list)  # partition: each side's head and final growth in the cut
    window: tuple[float, float] | None = None
    final_series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    head_series: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """Everything but the series, for the JSON and CSV files' rows."""
        row = asdict(self)
        for key in ("final_series", "head_series", "latencies"):
            row.pop(key)
        return row


class _Observed(Simulation):
    """The simulation, watched: when heads and final heights moved, first finality of each
    transfer, reorg depths.  Only honest nodes are watched, as the simulator's checks do."""

    def __init__(self, config: SimConfig):
        super().__init__(config)
        self.final_series: dict[str, list[tuple[float, int]]] = {slot.label: [(0.0, 0)] for slot in self.slots}
        self.head_series: dict[str, list[tuple[float, int]]] = {slot.label: [(0.0, 0)] for slot in self.slots}
        self.committed_at: dict[bytes, float] = {}
        self.latencies: list[float] = []
        self.first_final: list[float] = []  # when each transfer was first final anywhere
        self.progress: list[float] = []  # when the highest final height anywhere grew
        self._highest_final = 0

    def _follow_head(self, slot: Slot, node) -> None:
        before, reorgs = len(slot.chain), len(self.reorg_depths)
        super()._follow_head(slot, node)
        start = before if len(self.reorg_depths) == reorgs else before - self.reorg_depths[-1]
        now = self.loop.time()
        for height in range(start, len(slot.chain)):
            for tx_id in slot.block_txs.get(height, ()):
                self.committed_at.setdefault(tx_id, now)
        note_step(self.head_series[slot.label], now, len(slot.chain) - 1)

    def _follow_finality(self, slot: Slot, node) -> None:
        waiting = [(tx_id, self.outstanding[tx_id][1])
                   for height in range(slot.final_height + 1, node.finalized_height + 1)
                   for tx_id in slot.block_txs.get(height, ()) if tx_id in self.outstanding]
        super()._follow_finality(slot, node)
        now = self.loop.time()
        self.latencies.extend(now - sent for _, sent in waiting)
        self.first_final.extend(now for _ in waiting)
        note_step(self.final_series[slot.label], now, slot.final_height)
        if slot.final_height > self._highest_final:
            self._highest_final = slot.final_height
            self.progress.append(now)

    def watch(self) -> Watch:
        honest = [slot.label for slot in self.slots if slot.byzantine is None]
        return Watch(
            labels=honest, submitted=self.submitted, final=len(self.final_txs), committed_at=self.committed_at,
            first_final=self.first_final, latencies=self.latencies, reorg_depths=self.reorg_depths,
            progress=self.progress, final_series=self.final_series, head_series=self.head_series,
            final_blocks=max((self.final_series[label][-1][1] for label in honest), default=0),
            messages=self.hub.stats.messages(), bytes_sent=self.hub.stats.bytes_sent)


def note_step(series: list[tuple[float, int]], at: float, value: int) -> None:
    if series[-1][1] != value:
        series.append((at, value))


def value_at(series: list[tuple[float, int]], at: float) -> int:
    """A step series' value at a virtual time."""
    value = series[0][1]
    for when, height in series:
        if when > at:
            break
        value = height
    return value


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] with no time of `times` in it."""
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max(b - a for a, b in zip(edges, edges[1:]))


def run_one(engine: str, schedule: Schedule, seed: int) -> Outcome:
    outcome = Outcome(engine, schedule.name, schedule.nodes, seed, "ok")
    reason = schedule.not_applicable(engine)
    if reason is not None:
        outcome.status, outcome.note = "not applicable", reason
        return outcome
    simulation = _Observed(schedule.config(engine, seed))
    try:
        simulation.run()
    except SimulationFailure as failure:
        outcome.status, outcome.note = _classify(failure.reason), failure.reason
    measure(outcome, simulation.watch(), schedule)
    return outcome


def _classify(reason: str) -> str:
    if any(words in reason for words in ("finalized different blocks", "reverted final block", "final at height")):
        return "safety violated"
    if reason.startswith("no convergence"):
        return "no recovery"
    return "check failed"


@dataclass
class Watch:
    """What one run saw of its honest nodes, on its own clock (virtual, or wall-clock from the
    workload's start): the figures of an Outcome are computed from it alone."""

    labels: list[str]  # the honest nodes
    submitted: int
    final: int  # transfers final on some node
    committed_at: dict[bytes, float]  # when each transfer was first in a block anywhere
    first_final: list[float]  # when each transfer was first final anywhere
    latencies: list[float]  # from submission to first final, one per final transfer
    reorg_depths: list[int]
    progress: list[float]  # when the highest final height anywhere grew
    final_series: dict[str, list[tuple[float, int]]]
    head_series: dict[str, list[tuple[float, int]]]
    final_blocks: int  # final blocks made during the run
    messages: int  # peer messages sent by every node during the run
    bytes_sent: int
    fault: tuple[float, float] = (FAULT_START, FAULT_END)  # when the fault held (real processes: once laid)


def measure(outcome: Outcome, watch: Watch, schedule: Schedule) -> None:
    outcome.submitted = watch.submitted
    outcome.final = watch.final
    outcome.committed_per_s = round(sum(1 for t in watch.committed_at.values() if t <= DURATION) / DURATION, 3)
    outcome.final_per_s = round(sum(1 for t in watch.first_final if t <= DURATION) / DURATION, 3)
    if watch.latencies:
        latencies = sorted(watch.latencies)
        outcome.latency_p50 = round(statistics.median(latencies), 3)
        outcome.latency_p99 = round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
    outcome.latencies = [round(value, 3) for value in watch.latencies]
    outcome.reorgs = len(watch.reorg_depths)
    outcome.reverted_blocks = sum(watch.reorg_depths)
    outcome.deepest_reorg = max(watch.reorg_depths, default=0)
    faulted = schedule.name != "none"
    start, end = watch.fault if faulted else (0.0, DURATION)
    outcome.window = (round(start, 3), round(end, 3)) if faulted else None
    outcome.stall_during = round(longest_gap(watch.progress, start, end), 3)
    if faulted:
        outcome.stall_after = round(longest_gap(watch.progress, end, DURATION), 3)
        later = [t for t in watch.progress if t >= end]
        outcome.recovery = round(later[0] - end, 3) if later else None
    outcome.final_blocks = watch.final_blocks
    if outcome.final_blocks:
        per = outcome.final_blocks * schedule.nodes
        outcome.messages_per_block_per_node = round(watch.messages / per, 2)
        outcome.bytes_per_block_per_node = round(watch.bytes_sent / per, 1)
    if schedule.name == "partition":
        majority = {f"n{i}" for i in schedule.majority}
        for name, labels in (("majority", sorted(majority)), ("minority", sorted(set(watch.labels) - majority))):
            labels = [label for label in labels if label in watch.labels]
            outcome.sides.append({
                "side": name, "nodes": labels,
                "head_growth": max((value_at(watch.head_series[l], end) - value_at(watch.head_series[l], start)
                                    for l in labels), default=0),
                # Blocks made during the cut that became final during it: a final height that
                # grew only over blocks made before the cut is finality catching up.
                "final_growth": max((max(0, value_at(watch.final_series[l], end) - value_at(watch.head_series[l], start))
                                     for l in labels), default=0),
            })
    outcome.final_series = {label: watch.final_series[label] for label in watch.labels}
    outcome.head_series = {label: watch.head_series[label] for label in watch.labels}


def plan(engines: list[str], faults: list[str], nodes: list[int]) -> list[tuple[str, Schedule]]:
    """Every engine under every schedule at every node count, in the order they run."""
    return [(engine, Schedule(name, count)) for count in nodes for engine in engines for name in faults]

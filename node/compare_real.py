"""`ledger compare --real`: the comparison on real processes of `ledger testnet`, on wall-clock time.

Each run writes a fresh testnet into a temporary folder (free loopback ports), starts its
nodes as `ledger testnet` does (node/fleet.py), waits until they are connected and
following, and then, for DURATION wall-clock seconds, sends the seed's workload
(node/sim/workload.py, the simulator's generator) to the nodes' REST APIs, laying the
schedule's fault on the simulator's seconds: SIGKILL and restart of node0, or a partition
through the nodes' admin endpoints.  Afterwards the nodes have CONVERGE_WITHIN seconds to
make every transfer final everywhere.

What it measures comes from outside, as a user sees it: each node's events stream (blocks
and the transfers they hold, blocks becoming final, reorgs), read again through the API
after a gap (a restarted node, a dropped stream), and /metrics for the messages and bytes
sent.  The figures are wall-clock and change from run to run (the machine's load, the
scheduler, real timers); the report says so.
"""

from __future__ import annotations

import asyncio
import random
import signal
import tempfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.client import ApiError, AsyncLedgerClient, NodeUnreachable, SseParser
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction
from node.compare import (
    CONVERGE_WITHIN, DURATION, FAULT_END, FAULT_START, TX_PER_SECOND, CompareError, Outcome, Schedule, Watch, measure,
    note_step,
)
from node.fleet import Fleet, FleetError, describe_exit
from node.sim.harness import RESUBMIT_SECONDS, SimConfig
from node.sim.workload import Workload, seeded_streams
from node.testnet import TESTNET_CHAIN_ID, TestnetError, free_port_run, wait_until_connected, write_network

MAX_REAL_NODES = 16  # processes on one machine: beyond this the machine, not the engine, is measured
RETRY_SECONDS = 0.1
STARTUP_SECONDS = 90.0
MAX_BATCH = 1000  # what a node takes in one batch submission by default
_UNREACHABLE = (NodeUnreachable, ApiError, httpx.HTTPError)


class Terminated(KeyboardInterrupt):
    """A SIGTERM, unwound like Ctrl-C so that every run stops its nodes and removes its folder
    (`ledger compare` installs the handler that raises it)."""


def check_real_arguments(nodes: list[int]) -> None:
    for count in nodes:
        if count > MAX_REAL_NODES:
            raise CompareError(f"--nodes {count} with --real: at most {MAX_REAL_NODES} processes on one machine "
                               "(the simulator takes up to 32)")


def _traffic(metrics_text: str) -> tuple[int, int]:
    """Peer messages and bytes a node has sent, from its /metrics."""
    messages = sent = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "ledger_p2p_messages_sent_total":
                messages += int(sample.value)
            elif sample.name == "ledger_p2p_bytes_sent_total":
                sent += int(sample.value)
    return messages, sent


class _RealRun:
    """One engine under one schedule on running processes: the workload, the fault, the watching."""

    def __init__(self, fleet: Fleet, schedule: Schedule, seed: int):
        self.fleet = fleet
        self.schedule = schedule
        self.labels = [f"n{i}" for i in range(schedule.nodes)]
        self.urls = {f"n{m.index}": m.api_url for m in fleet.members}
        self.down: set[str] = set()
        self.rng = seeded_streams(seed)["work"]
        self.resubmit_rng = random.Random(seed)  # resubmissions come at wall-clock moments: kept off the workload's stream
        self.workload = Workload(TESTNET_CHAIN_ID, tuple(dev_keys(SimConfig.senders)), self.rng, TX_PER_SECOND)
        self.outstanding: dict[str, tuple[Transaction, float]] = {}  # tx id (hex) -> (tx, first sent)
        self.submitted = 0
        self.submit_problems = 0
        self.chains: dict[str, dict[int, list[str]]] = {label: {} for label in self.labels}  # height -> tx ids
        self.head: dict[str, int] = {}
        self.final_height: dict[str, int] = {}
        self.start_final: dict[str, int] = {}
        self.committed_at: dict[bytes, float] = {}
        self.final = 0
        self.first_final: list[float] = []
        self.latencies: list[float] = []
        self.last_final_tx_height = 0
        self.reorg_depths: list[int] = []
        self.violations: list[str] = []  # what breaks safety
        self.problems: list[str] = []  # what made the run itself fail (a fault not laid, a node not readable)
        self.progress: list[float] = []
        self.final_series: dict[str, list[tuple[float, int]]] = {}
        self.head_series: dict[str, list[tuple[float, int]]] = {}
        self.traffic = {label: [0, 0] for label in self.labels}  # messages, bytes sent during the run
        self.traffic_base: dict[str, tuple[int, int]] = {}
        self.fault_held = (FAULT_START, FAULT_END)
        self.subscribed = {label: asyncio.Event() for label in self.labels}
        self._highest_final = 0
        self.terminated = False
        self.t0: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http = httpx.AsyncClient(timeout=5.0)
        self.clients = {label: AsyncLedgerClient(url, timeout=5.0) for label, url in self.urls.items()}
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ clock and tasks
    def now(self) -> float:
        """Seconds since the workload started (0 before: what the streams catch up on first)."""
        assert self.loop is not None
        return 0.0 if self.t0 is None else self.loop.time() - self.t0

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _terminate(self, task: asyncio.Task) -> None:
        self.terminated = True
        task.cancel()

    def live(self) -> list[str]:
        return [label for label in self.labels if label not in self.down]

    # ------------------------------------------------------------------ the run
    async def run(self) -> tuple[str, str] | None:
        """Workload, fault and convergence; what went wrong (status, why), a safety violation
        first, or None."""
        self.loop = asyncio.get_running_loop()
        watchers: list[asyncio.Task] = []
        # While the loop runs, a SIGTERM cancels the run from the loop (raised inside a task it
        # would end that task alone); outside it, the command's own handler raises Terminated.
        previous = signal.getsignal(signal.SIGTERM)
        if callable(previous):
            self.loop.add_signal_handler(signal.SIGTERM, self._terminate, asyncio.current_task())
        try:
            for label in self.labels:
                info = await self.clients[label].node_info()
                self.head[label] = info.height
                self.final_height[label] = self.start_final[label] = info.finalized_height
                self.final_series[label] = [(0.0, info.finalized_height)]
                self.head_series[label] = [(0.0, info.height)]
                self.traffic_base[label] = await self._sent_so_far(label)
            self._highest_final = max(self.final_height.values())
            watchers = [asyncio.create_task(self._follow(label)) for label in self.labels]
            # Every stream subscribed before the first transfer: no block goes unseen.
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in self.subscribed.values())), 30)
            self.t0 = self.loop.time()
            watchers.append(asyncio.create_task(self._resubmit()))
            await asyncio.gather(self._work(), self._fault())
            waiting = await self._converge()
            for label in self.labels:
                await self._count_traffic(label)
            await self._compare_final_blocks()
        except asyncio.CancelledError:
            if self.terminated:
                raise Terminated from None
            raise
        finally:
            for task in watchers + list(self._tasks):
                task.cancel()
            await asyncio.gather(*watchers, *self._tasks, return_exceptions=True)
            await self.http.aclose()
            for client in self.clients.values():
                await client.aclose()
            if callable(previous):
                self.loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)
        if self.violations:
            return "safety violated", "; ".join(self.violations)
        if self.problems:
            return "check failed", "; ".join(self.problems)
        if waiting:
            return "no recovery", waiting
        return None

    async def _work(self) -> None:
        """The seed's workload, each batch at its moment (scheduled from the start, so slow
        submissions do not stretch it).  The node is drawn among all of them, whichever are
        down, so the transfers do not depend on when a restarted node answers again; a batch
        drawn for a down node goes to the next one up."""
        at = 0.0
        while True:
            at += self.workload.gap()
            await self._until(at)
            if at >= DURATION:
                return
            live = self.live()
            if not live:
                continue
            batch = self.workload.batch()
            for tx in batch:
                self.outstanding[tx.id.hex()] = (tx, self.now())
            self.submitted += len(batch)
            drawn = self.labels.index(self.rng.choice(self.labels))
            target = next(label for label in self.labels[drawn:] + self.labels[:drawn] if label in live)
            self._spawn(self._submit(target, batch))

    async def _submit(self, label: str, batch: list[Transaction]) -> None:
        for start in range(0, len(batch), MAX_BATCH):
            try:
                await self.clients[label].submit_batch(batch[start:start + MAX_BATCH])
            except (NodeUnreachable, ApiError):
                self.submit_problems += 1  # a node down or starting: the resubmission sends it again

    async def _resubmit(self) -> None:
        """As a wallet does (and the simulator): send again what is not final after a while."""
        while True:
            await asyncio.sleep(RESUBMIT_SECONDS)
            cutoff = self.now() - RESUBMIT_SECONDS
            stale = [tx for tx, sent in list(self.outstanding.values()) if sent <= cutoff]
            live = self.live()
            if stale and live:
                self._spawn(self._submit(self.resubmit_rng.choice(live), stale))

    async def _fault(self) -> None:
        """The schedule's fault from FAULT_START to FAULT_END; `fault_held` records when it
        actually held (laid everywhere, until the heal or restart was asked for)."""
        name = self.schedule.name
        if name == "none":
            return
        await self._until(FAULT_START)
        if name == "crash":
            self.down.add("n0")
            await self._count_traffic("n0")
            await asyncio.to_thread(self.fleet.kill, "node0")
        else:
            majority = ",".join(str(i) for i in self.schedule.majority)
            minority = ",".join(str(i) for i in range(self.schedule.nodes) if i not in self.schedule.majority)
            await asyncio.to_thread(self.fleet.partition, [majority, minority])
            await self._lay_faults("the partition")
        held_from = self.now()
        await self._until(FAULT_END)
        self.fault_held = (held_from, self.now())
        if name == "crash":
            # Started from this (the main) thread: a child's parent-death signal follows the
            # thread that started it, and a worker thread ends before the run does.
            self.fleet.start("node0")
            self.traffic_base["n0"] = (0, 0)  # a new process counts from zero
            self._spawn(self._back_up("n0"))
        else:
            await asyncio.to_thread(self.fleet.heal)
            await self._lay_faults("the heal")

    async def _lay_faults(self, what: str) -> None:
        """Until every node has the links it should (a busy node may miss the first request)."""
        problems: list[str] = []
        for _ in range(50):
            problems = await asyncio.to_thread(self.fleet.lay_faults)
            if not problems:
                return
            await asyncio.sleep(RETRY_SECONDS)
        self.problems.append(f"{what} could not be laid on every node: {'; '.join(problems)}")

    async def _back_up(self, label: str) -> None:
        """A restarted node counts as up once it answers (as the simulator restarts a slot)."""
        while True:
            try:
                await self.clients[label].node_info()
            except (NodeUnreachable, ApiError):
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.down.discard(label)
            return

    async def _count_traffic(self, label: str) -> None:
        """Add what `label` sent since its base (the run's start, or its restart)."""
        if label in self.down:
            return
        try:
            messages, sent = await self._sent_so_far(label)
        except _UNREACHABLE as exc:
            self.problems.append(f"{label}'s /metrics could not be read ({exc})")
            return
        base = self.traffic_base[label]
        self.traffic[label][0] += messages - base[0]
        self.traffic[label][1] += sent - base[1]

    async def _sent_so_far(self, label: str) -> tuple[int, int]:
        """Messages and bytes `label` has sent since it started, from its /metrics."""
        response = await self.http.get(f"{self.urls[label]}/metrics")
        response.raise_for_status()
        try:
            return _traffic(response.text)
        except ValueError as exc:
            raise ApiError(response.status_code, "invalid_response", f"{label}'s /metrics is not Prometheus text: {exc}")

    async def _converge(self) -> str | None:
        """Wait until every transfer is final and every node is final at least up to the last of
        them; what is still missing after CONVERGE_WITHIN seconds, or None."""
        deadline = DURATION + CONVERGE_WITHIN
        while True:
            behind = [label for label in self.labels
                      if label in self.down or self.final_height[label] < self.last_final_tx_height]
            if not self.outstanding and not behind:
                return None
            if self.now() >= deadline:
                parts = []
                if self.outstanding:
                    parts.append(f"{len(self.outstanding)} of {self.submitted} transfers not final")
                if behind:
                    parts.append(f"{', '.join(behind)} not final up to height {self.last_final_tx_height}")
                return f"{CONVERGE_WITHIN:g} s after the workload, " + "; ".join(parts)
            await asyncio.sleep(RETRY_SECONDS)

    # ------------------------------------------------------------------ watching
    async def _follow(self, label: str) -> None:
        """The node's events stream; after a gap (a restart, a dropped stream) what the node
        did meanwhile is read through the API once the stream is back."""
        client = self.clients[label]
        while True:
            if label not in self.down:
                try:
                    async with self.http.stream("GET", f"{self.urls[label]}/v1/events",
                                                timeout=httpx.Timeout(5.0, read=60.0)) as response:
                        if response.status_code == 200:
                            # Subscribed: the node answers once it has subscribed us.
                            await self._catch_up(label, client)
                            self.subscribed[label].set()
                            parser = SseParser()
                            async for line in response.aiter_lines():
                                event = parser.feed(line)
                                if event is not None:
                                    await self._on_event(label, event.kind, event.data)
                except _UNREACHABLE:
                    pass
            await asyncio.sleep(RETRY_SECONDS)

    async def _catch_up(self, label: str, client: AsyncLedgerClient) -> None:
        info = await client.node_info()
        for height in range(self.head[label] + 1, info.height + 1):
            block = await client.block(height)
            await self._on_block(label, {"height": height, "hash": block.hash, "final": height <= info.finalized_height,
                                         "tx_count": block.tx_count, "transactions": [tx.id for tx in block.transactions or []]})
        self._finalized(label, info.finalized_height)

    async def _on_event(self, label: str, kind: str, data: dict) -> None:
        if kind == "block":
            await self._on_block(label, data)
        elif kind == "finalized":
            self._finalized(label, data["height"])
        elif kind == "reorg":
            self.reorg_depths.append(data["depth"])
            if data.get("reverted_final"):
                self.violations.append(f"{label} reverted {data['reverted_final']} final block(s) above height "
                                       f"{data['fork_height']}")
            chain = self.chains[label]
            for above in [h for h in chain if h > data["height"]]:  # the abandoned branch, longer than the new
                del chain[above]
            self.head[label] = data["height"]
            note_step(self.head_series[label], self.now(), data["height"])

    async def _on_block(self, label: str, data: dict) -> None:
        height, ids = data["height"], data["transactions"]
        if data["tx_count"] > len(ids):  # the stream lists the first 100: the rest from the block
            block = await self.clients[label].block(data["hash"])
            ids = [tx.id for tx in block.transactions or []]
        chain = self.chains[label]
        for above in [h for h in chain if h >= height]:  # a branch replaced: its blocks are gone
            del chain[above]
        chain[height] = ids
        now = self.now()
        for tx_id in ids:
            self.committed_at.setdefault(bytes.fromhex(tx_id), now)
        self.head[label] = height
        note_step(self.head_series[label], now, height)
        if data["final"]:  # final when made (BFT, Raft, solo), or a `finalized` event came first
            self._finalized(label, max(height, self.final_height[label]), rescan=height)

    def _finalized(self, label: str, final: int, rescan: int | None = None) -> None:
        """`label` is final up to `final`: the transfers of its blocks up to there are final,
        if they were not already somewhere.  `rescan`: a block that arrived at or below the
        final height, whose transfers are final now."""
        before = self.final_height[label]
        heights = list(range(before + 1, final + 1))
        if rescan is not None and rescan <= before:
            heights.append(rescan)
        if not heights:
            return
        now = self.now()
        for height in heights:
            for tx_id in self.chains[label].get(height, ()):
                entry = self.outstanding.pop(tx_id, None)
                if entry is not None:
                    self.final += 1
                    self.latencies.append(now - entry[1])
                    self.first_final.append(now)
                    self.last_final_tx_height = max(self.last_final_tx_height, height)
        self.final_height[label] = max(before, final)
        note_step(self.final_series[label], now, self.final_height[label])
        if final > self._highest_final:
            self._highest_final = final
            self.progress.append(now)

    async def _compare_final_blocks(self) -> None:
        """Every node's final blocks against the others': one block per height."""
        common = min(self.final_height.values())
        seen: dict[int, tuple[str, str]] = {}  # height -> (hash, the node it was read from)
        for label in self.live():
            before: int | None = common + 1
            while before is not None and before > 1:
                try:
                    page = await self.clients[label].blocks(before=before, limit=100)
                except _UNREACHABLE as exc:
                    self.problems.append(f"{label}'s blocks could not be read ({exc})")
                    break
                for header in page.blocks:
                    first = seen.setdefault(header.height, (header.hash, label))
                    if first[0] != header.hash and len(self.violations) < 3:
                        self.violations.append(f"{first[1]} and {label} are final on different blocks at height "
                                               f"{header.height}")
                before = page.next

    def watch(self) -> Watch:
        return Watch(
            labels=self.labels, submitted=self.submitted, final=self.final, committed_at=self.committed_at,
            first_final=self.first_final, latencies=self.latencies, reorg_depths=self.reorg_depths,
            progress=self.progress, final_series=self.final_series, head_series=self.head_series,
            final_blocks=max(self.final_height[label] - self.start_final[label] for label in self.labels),
            messages=sum(t[0] for t in self.traffic.values()), bytes_sent=sum(t[1] for t in self.traffic.values()),
            fault=self.fault_held)


def run_real_one(engine: str, schedule: Schedule, seed: int) -> Outcome:
    outcome = Outcome(engine, schedule.name, schedule.nodes, seed, "ok", mode="real")
    reason = schedule.not_applicable(engine, real=True)
    if reason is not None:
        outcome.status, outcome.note = "not applicable", reason
        return outcome
    try:
        with tempfile.TemporaryDirectory(prefix=f"ledger-compare-{engine}-") as folder:
            run, trouble, ended = _run_testnet(Path(folder), engine, schedule, seed)
    except (TestnetError, FleetError, OSError, TimeoutError, *_UNREACHABLE) as exc:
        outcome.status, outcome.note = "check failed", f"the testnet did not run: {exc or type(exc).__name__}"
        return outcome
    measure(outcome, run.watch(), schedule)
    if ended:
        outcome.status = "check failed"
        outcome.note = "; ".join(f"node{m.index} exited ({describe_exit(m.exit_code)})" for m in ended)
    elif trouble is not None:
        outcome.status, outcome.note = trouble
    if run.submit_problems:
        outcome.note = (outcome.note + "; " if outcome.note else "") + \
            f"{run.submit_problems} submissions found their node down or starting (sent again later)"
    return outcome


def _run_testnet(folder: Path, engine: str, schedule: Schedule, seed: int):
    """A testnet in `folder`, run under the schedule and stopped: the run, what went wrong,
    and the nodes that exited on their own."""
    api_port = free_port_run(schedule.nodes)
    p2p_port = free_port_run(schedule.nodes, avoid=range(api_port, api_port + schedule.nodes))
    layouts = write_network(folder, schedule.nodes, engine, api_port=api_port, p2p_port=p2p_port)
    fleet = Fleet(layouts)
    try:
        fleet.start_all()
        wait_until_connected(layouts, [member.process for member in fleet.members], timeout=STARTUP_SECONDS)
        run = _RealRun(fleet, schedule, seed)
        trouble = asyncio.run(run.run())
        return run, trouble, fleet.reap()  # the fault's own kill is not among them
    finally:
        fleet.stop_all()

"""`ledger compare --real`: the comparison on real processes of `ledger testnet`, on wall-clock time.

Each run writes a fresh testnet into a temporary folder (free loopback ports), starts its
nodes as `ledger testnet` does (node/fleet.py), waits until they are connected, and then,
for DURATION wall-clock seconds, sends the seed's workload (node/sim/workload.py: the
simulator's transfers, batches and gaps) to the nodes' REST APIs, laying the schedule's
fault on the same seconds as the simulator does: SIGKILL and restart of node0, or a
partition through the nodes' admin endpoints.  Afterwards the nodes have CONVERGE_WITHIN
seconds to make every transfer final everywhere.

What it measures comes from outside, as a user sees it: each node's events stream (which
block holds which transfer, each reorg) and its /v1/node (head and final height, polled),
and /metrics for the messages and bytes sent.  The figures are wall-clock and change from
run to run (the machine's load, the scheduler, real timers); the report says so.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from pathlib import Path

import httpx

from api.client import ApiError, AsyncLedgerClient, NodeUnreachable
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction
from node.compare import (
    CONVERGE_WITHIN, DURATION, FAULT_END, FAULT_START, TX_PER_SECOND, CompareError, Outcome, Schedule, Watch, _measure,
    _note,
)
from node.fleet import Fleet, FleetError, describe_exit
from node.sim.harness import RESUBMIT_SECONDS, SimConfig
from node.sim.workload import Workload, seeded_streams
from node.testnet import TESTNET_CHAIN_ID, TestnetError, free_port_run, wait_until_connected, write_network

MAX_REAL_NODES = 16  # processes on one machine: beyond this the machine, not the engine, is measured
POLL_SECONDS = 0.1
STARTUP_SECONDS = 90.0
MAX_BATCH = 1000  # what a node takes in one batch submission by default


def check_real_arguments(nodes: list[int]) -> None:
    for count in nodes:
        if count > MAX_REAL_NODES:
            raise CompareError(f"--nodes {count} with --real: at most {MAX_REAL_NODES} processes on one machine "
                               "(the simulator takes up to 32)")


def _traffic(metrics_text: str) -> tuple[int, int]:
    """Peer messages and bytes a node has sent, from its /metrics."""
    messages = sent = 0
    for line in metrics_text.splitlines():
        if line.startswith("ledger_p2p_messages_sent_total{"):
            messages += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("ledger_p2p_bytes_sent_total "):
            sent += int(float(line.rsplit(" ", 1)[1]))
    return messages, sent


class _RealRun:
    """One engine under one schedule on running processes: the workload, the fault, the watching."""

    def __init__(self, fleet: Fleet, schedule: Schedule, seed: int):
        self.fleet = fleet
        self.schedule = schedule
        self.labels = [f"n{i}" for i in range(schedule.nodes)]
        self.urls = {f"n{m.index}": m.api_url for m in fleet.members}
        self.down: set[str] = set()
        streams = seeded_streams(seed)
        self.rng = streams["work"]
        self.resubmit_rng = random.Random(seed)  # resubmissions come at wall-clock moments: kept off the workload's stream
        self.workload = Workload(TESTNET_CHAIN_ID, tuple(dev_keys(SimConfig.senders)), self.rng, TX_PER_SECOND)
        self.outstanding: dict[str, tuple[Transaction, float]] = {}  # tx id (hex) -> (tx, first sent)
        self.submitted = 0
        self.submit_problems = 0
        self.chains: dict[str, dict[int, list[str]]] = {label: {} for label in self.labels}  # height -> tx ids
        self.final_height: dict[str, int] = {}
        self.committed_at: dict[bytes, float] = {}
        self.final = 0
        self.first_final: list[float] = []
        self.latencies: list[float] = []
        self.last_final_tx_height = 0
        self.reorg_depths: list[int] = []
        self.violations: list[str] = []
        self.progress: list[float] = []
        self.final_series: dict[str, list[tuple[float, int]]] = {}
        self.head_series: dict[str, list[tuple[float, int]]] = {}
        self.start_final: dict[str, int] = {}
        self.traffic = {label: [0, 0] for label in self.labels}  # messages, bytes sent during the run
        self.traffic_base: dict[str, tuple[int, int]] = {}
        self._highest_final = 0
        self.t0 = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.http = httpx.AsyncClient(timeout=5.0)
        self.clients = {label: AsyncLedgerClient(url, timeout=5.0) for label, url in self.urls.items()}
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ clock and tasks
    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time() - self.t0

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def live(self) -> list[str]:
        return [label for label in self.labels if label not in self.down]

    # ------------------------------------------------------------------ the run
    async def run(self) -> tuple[str, str] | None:
        """Workload, fault and convergence; what went wrong (status, why), a safety violation
        first, or None."""
        self.loop = asyncio.get_running_loop()
        for label in self.labels:
            info = await self.clients[label].node_info()
            self.final_height[label] = self.start_final[label] = info.finalized_height
            self.final_series[label] = [(0.0, info.finalized_height)]
            self.head_series[label] = [(0.0, info.height)]
            self.traffic_base[label] = _traffic(await self._metrics(label))
        self._highest_final = max(self.final_height.values())
        self.t0 = self.loop.time()
        watchers = [asyncio.create_task(self._follow(label)) for label in self.labels]
        watchers += [asyncio.create_task(self._poll()), asyncio.create_task(self._resubmit())]
        try:
            await asyncio.gather(self._work(), self._fault())
            waiting = await self._converge()
            for label in self.labels:
                await self._count_traffic(label)
            self.violations += await self._compare_final_blocks()
        finally:
            for task in watchers + list(self._tasks):
                task.cancel()
            await asyncio.gather(*watchers, *self._tasks, return_exceptions=True)
            await self.http.aclose()
            for client in self.clients.values():
                await client.aclose()
        if self.violations:
            return "safety violated", "; ".join(self.violations)
        if waiting:
            return "no recovery", waiting
        return None

    async def _work(self) -> None:
        """The seed's workload, each batch at its moment (scheduled from the start, so slow
        submissions do not stretch it), to a node drawn as the simulator draws it."""
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
            self._spawn(self._submit(self.rng.choice(live), batch))

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
            await self._lay_faults()
        await self._until(FAULT_END)
        if name == "crash":
            await asyncio.to_thread(self.fleet.start, "node0")
            self._spawn(self._back_up("n0"))
        else:
            await asyncio.to_thread(self.fleet.heal)
            await self._lay_faults()

    async def _lay_faults(self) -> None:
        """Until every node has the links it should (a busy node may miss the first request)."""
        for _ in range(20):
            if not await asyncio.to_thread(self.fleet.lay_faults):
                return
            await asyncio.sleep(0.1)

    async def _back_up(self, label: str) -> None:
        """A restarted node counts as live once it answers (as the simulator restarts a slot)."""
        while True:
            try:
                await self.clients[label].node_info()
            except (NodeUnreachable, ApiError):
                await asyncio.sleep(POLL_SECONDS)
                continue
            self.traffic_base[label] = (0, 0)
            self.down.discard(label)
            return

    async def _count_traffic(self, label: str) -> None:
        """Add what `label` sent since its base (the run's start, or its restart)."""
        try:
            messages, sent = _traffic(await self._metrics(label))
        except (httpx.HTTPError, OSError):
            return
        base = self.traffic_base[label]
        self.traffic[label][0] += messages - base[0]
        self.traffic[label][1] += sent - base[1]

    async def _metrics(self, label: str) -> str:
        response = await self.http.get(f"{self.urls[label]}/metrics")
        response.raise_for_status()
        return response.text

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
            await asyncio.sleep(POLL_SECONDS)

    # ------------------------------------------------------------------ watching
    async def _follow(self, label: str) -> None:
        """The node's events stream, followed again after it drops (a killed node, a restart)."""
        while True:
            if label not in self.down:
                try:
                    async for event in self.clients[label].events():
                        if event.kind == "block":
                            await self._block(label, event.data)
                        elif event.kind == "reorg":
                            self._reorg(label, event.data)
                except (NodeUnreachable, ApiError, httpx.HTTPError):
                    pass
            await asyncio.sleep(POLL_SECONDS)

    async def _block(self, label: str, data: dict) -> None:
        height, ids = data["height"], data["transactions"]
        if data["tx_count"] > len(ids):  # the stream lists the first 100: the rest from the block
            try:
                block = await self.clients[label].block(data["hash"])
                ids = [tx.id for tx in block.transactions or []]
            except (NodeUnreachable, ApiError):
                pass
        chain = self.chains[label]
        for above in [h for h in chain if h >= height]:  # a branch replaced: its blocks are gone
            del chain[above]
        chain[height] = ids
        now = self.now()
        for tx_id in ids:
            self.committed_at.setdefault(bytes.fromhex(tx_id), now)
        _note(self.head_series[label], now, height)
        if data["final"] and height > self.final_height[label]:  # final when made (BFT, Raft, solo)
            before, self.final_height[label] = self.final_height[label], height
            self._finalize(label, height, before)
        elif height <= self.final_height[label]:  # the poll saw it final before its event reached us
            self._finalize(label, height, height - 1)

    def _reorg(self, label: str, data: dict) -> None:
        self.reorg_depths.append(data["depth"])
        if data.get("reverted_final"):
            self.violations.append(f"{label} reverted {data['reverted_final']} final block(s) above height "
                                   f"{data['fork_height']}")

    async def _poll(self) -> None:
        while True:
            for label in self.live():
                try:
                    info = await self.clients[label].node_info()
                except (NodeUnreachable, ApiError):
                    continue
                now = self.now()
                _note(self.head_series[label], now, info.height)
                if info.finalized_height != self.final_height[label]:
                    before = self.final_height[label]
                    self.final_height[label] = info.finalized_height
                    self._finalize(label, info.finalized_height, before)
            await asyncio.sleep(POLL_SECONDS)

    def _finalize(self, label: str, final: int, before: int) -> None:
        """`label` is final up to `final` (from `before`): the transfers of its blocks between
        are final, if they were not already somewhere."""
        now = self.now()
        for height in range(before + 1, final + 1):
            for tx_id in self.chains[label].get(height, ()):
                entry = self.outstanding.pop(tx_id, None)
                if entry is not None:
                    self.final += 1
                    self.latencies.append(now - entry[1])
                    self.first_final.append(now)
                    self.last_final_tx_height = max(self.last_final_tx_height, height)
        _note(self.final_series[label], now, final)
        if final > self._highest_final:
            self._highest_final = final
            self.progress.append(now)

    async def _compare_final_blocks(self) -> list[str]:
        """Every node's final blocks against the others': one block per height."""
        common = min(self.final_height.values())
        seen: dict[int, tuple[str, str]] = {}  # height -> (hash, the node it was read from)
        problems = []
        for label in self.labels:
            before: int | None = common + 1
            while before is not None and before > 1:
                try:
                    page = await self.clients[label].blocks(before=before, limit=100)
                except (NodeUnreachable, ApiError) as exc:
                    problems.append(f"{label}'s blocks could not be read ({exc})")
                    break
                for header in page.blocks:
                    first = seen.setdefault(header.height, (header.hash, label))
                    if first[0] != header.hash and len(problems) < 3:
                        problems.append(f"{first[1]} and {label} are final on different blocks at height {header.height}")
                before = page.next
        return problems

    def watch(self) -> Watch:
        return Watch(
            labels=self.labels, submitted=self.submitted, final=self.final, committed_at=self.committed_at,
            first_final=self.first_final, latencies=self.latencies, reorg_depths=self.reorg_depths,
            progress=self.progress, final_series=self.final_series, head_series=self.head_series,
            final_blocks=max(self.final_height[label] - self.start_final[label] for label in self.labels),
            messages=sum(t[0] for t in self.traffic.values()), bytes_sent=sum(t[1] for t in self.traffic.values()))


def run_real_one(engine: str, schedule: Schedule, seed: int) -> Outcome:
    outcome = Outcome(engine, schedule.name, schedule.nodes, seed, "ok", mode="real")
    reason = schedule.not_applicable(engine, real=True)
    if reason is not None:
        outcome.status, outcome.note = "not applicable", reason
        return outcome
    with tempfile.TemporaryDirectory(prefix=f"ledger-compare-{engine}-") as folder:
        api_port = free_port_run(schedule.nodes)
        p2p_port = free_port_run(schedule.nodes, avoid=range(api_port, api_port + schedule.nodes))
        layouts = write_network(Path(folder), schedule.nodes, engine, api_port=api_port, p2p_port=p2p_port)
        fleet = Fleet(layouts)
        try:
            fleet.start_all()
            wait_until_connected(layouts, [member.process for member in fleet.members], timeout=STARTUP_SECONDS)
            run = _RealRun(fleet, schedule, seed)
            trouble = asyncio.run(run.run())
            ended = fleet.reap()  # on its own: the fault's kill is not in it
        except (TestnetError, FleetError, NodeUnreachable, ApiError, httpx.HTTPError) as exc:
            outcome.status, outcome.note = "check failed", f"the testnet did not run: {exc}"
            return outcome
        finally:
            fleet.stop_all()
    _measure(outcome, run.watch(), schedule)
    if ended:
        outcome.status = "check failed"
        outcome.note = "; ".join(f"node{m.index} exited ({describe_exit(m.exit_code)})" for m in ended)
    elif trouble is not None:
        outcome.status, outcome.note = trouble
    if run.submit_problems:
        outcome.note = (outcome.note + "; " if outcome.note else "") + \
            f"{run.submit_problems} submissions found their node down or starting (sent again later)"
    return outcome

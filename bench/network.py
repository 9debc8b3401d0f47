"""The network runs of ../shared/BENCHMARK.md: several real node processes on 127.0.0.1.

    python bench/network.py --nodes 4 --consensus solo
    python bench/network.py --nodes 4 --consensus pow
    python bench/network.py --validators 4,7,10 --consensus bft --only throughput,steady

Each invocation starts its own networks (free ports, a temporary directory, SQLite; the
files and processes of `ledger testnet`, from node/testnet.py), stops every process at the
end even on error, and prints one summary line per run:

  throughput  the transfer workload (N pre-signed transfers from 100 funded senders,
              batches of 100 over 4 HTTP connections) sent to node0 or, with
              `--submit-to all`, each node getting the transfers of a quarter of the
              senders over its own connection.  committed/s counts until the last
              transfer is final on EVERY node; with the messages, ids announced and bytes
              that crossed between the nodes per transfer (bytes: kernel TCP counters of
              the peer connections, framing included).  N defaults to 20,000 for solo and
              5,000 for proof of work: PoW blocks come every ~2 s and a transfer is final
              6 blocks later, so a PoW run is bounded by block time and depth, not by N.
              (BFT: 20,000; a block is final once committed, every node a validator.
              PoS: 20,000; a block is final once its epoch's checkpoint is finalized,
              about two epochs later: the `finalized` events say when.)
  steady      the same transfers sent to node0 at a fixed `--rate` (500/s) for `--duration`
              (60 s), a batch every `--tick-ms` (20 ms); time to final on every node p50/p99.
  gossip      single transfers sent to node1 at a low rate (`--gossip-count`,
              `--gossip-rate`); for each, the time from its POST until every node's
              events stream has shown it (in its mempool, or in a block): p50/p99.
  catchup     (solo) 10,000 signed solo blocks written straight into node0's store, node0
              started, then a fresh node1 started: blocks/s until its head matches.
  startup     `ledger testnet --nodes N --consensus C` itself, timed from the command to
              every node's API up, all connected, and a first block on every node (solo
              makes blocks only for transactions: one transfer is sent to node0 as soon as
              its API answers).  Median of `--startup-runs`.

`--only gossip,startup` picks runs (catchup is in the default set for solo only, steady for
bft and pos only).  `--nodes 4,7,10` (or `--validators`) repeats the runs for each network size.
`--param timeout_propose_ms=1000` and `--max-block-txs` change the network's genesis (named
in the summary line); `--profile DIR` runs the nodes under cProfile.  Every summary line
ends with how busy the whole machine was during the run (it is shared).
Figures and their reading: docs/benchmarks.md, "Networks".
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402  (also puts the checkout on sys.path)
    ROOT,
    follow_events,
    make_keys,
    sign_workload,
    submit_all,
    vm_hwm_mib,
    wait_ready,
)

from ledger.address import address_of  # noqa: E402
from ledger.block import Block, build_header  # noqa: E402
from ledger.crypto import PrivateKey, sha256  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.hdkeys import dev_keys  # noqa: E402
from ledger.state import State  # noqa: E402
from ledger.store import ChainStore  # noqa: E402
from ledger.transaction import new_transfer  # noqa: E402
import migrations  # noqa: E402
from node.config import load_config  # noqa: E402
from node.testnet import TESTNET_CHAIN_ID, TestnetError  # noqa: E402
from nodes import (  # noqa: E402
    CpuMeter,
    Network,
    bytes_between,
    cpu_seconds,
    free_port_run,
    log,
    message_counters,
    peer_socket_bytes,
    percentile,
    prepare_network,
    print_profiles,
    running,
    signal_all,
    wait_all_ready,
)

DEFAULT_N = {"solo": 20_000, "pow": 5_000, "bft": 20_000, "pos": 20_000, "raft": 20_000}
RUNS = ("throughput", "steady", "gossip", "catchup", "startup")
DEFAULT_RUNS = {
    "solo": ["throughput", "gossip", "catchup", "startup"],
    "pow": ["throughput", "gossip", "startup"],
    "bft": ["throughput", "steady", "gossip", "startup"],
    "pos": ["throughput", "steady", "gossip", "startup"],
    "raft": ["throughput", "steady", "gossip", "startup"],
}


# ---------------------------------------------------------------------------------- throughput
def split_by_node(txs: list, senders: int, nodes: int) -> list[list]:
    """The transfers of senders i, i+nodes, ... for node i, still in nonce order per sender."""
    return [[tx for position, tx in enumerate(txs) if (position % senders) % nodes == node] for node in range(nodes)]


async def wait_final_everywhere(network: Network, ids: set[bytes], depth: int, timeout: float) -> int:
    """Wait until every node has an empty mempool and has finalized the blocks holding all
    `ids` (read from node0's chain); returns the height of the highest of those blocks."""
    deadline = time.monotonic() + timeout
    # height -> (block hash, its transaction ids): a block is fetched whole once per hash, so
    # polling does not load the node it measures (a 5,000-transfer block is a heavy read).
    read: dict[int, tuple[str, set[bytes]]] = {}
    last_read = 0
    infos: list[dict] = []
    found: set[bytes] = set()
    node0 = network.urls[0]
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < deadline:
            infos = [(await client.get(f"{url}/v1/node")).json() for url in network.urls]
            if all(info["mempool_size"] == 0 for info in infos):
                height = min(info["height"] for info in infos)
                # Blocks not final when last read may have been replaced by a reorg since.
                start = max(1, last_read - depth - 1)
                for stale in [h for h in read if h > height]:
                    del read[stale]
                last_read = height
                before = height + 1
                while before > start:
                    page = (await client.get(f"{node0}/v1/blocks", params={"before": before, "limit": 100})).json()
                    headers = [h for h in page["blocks"] if h["height"] >= start]
                    for header in headers:
                        h, block_hash = header["height"], header["hash"]
                        if h not in read or read[h][0] != block_hash:
                            txs: set[bytes] = set()
                            if header["tx_count"]:
                                block = (await client.get(f"{node0}/v1/blocks/{block_hash}")).json()
                                txs = {bytes.fromhex(tx["id"]) for tx in block["transactions"]}
                            read[h] = (block_hash, txs)
                    if not headers or page["next"] is None:
                        break
                    before = headers[-1]["height"]
                found = set().union(*(txs for _, txs in read.values()))
                if ids <= found:
                    holding = max(h for h, (_, held) in read.items() if held & ids)
                    if all(info["finalized_height"] >= holding for info in infos):
                        return holding
            await asyncio.sleep(0.05)
    state = "; ".join(f"node{i} height={info['height']} final={info['finalized_height']} mempool={info['mempool_size']} "
                      f"peers={info['peers']}" for i, info in enumerate(infos))
    raise RuntimeError(f"not every transfer was final on every node within {timeout:.0f} s "
                       f"({len(ids & found)} of {len(ids)} in node0's chain; {state})")


async def tx_heights(url: str, height: int) -> dict[bytes, int]:
    heights: dict[bytes, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for h in range(1, height + 1):
            block = (await client.get(f"/v1/blocks/{h}")).json()
            for tx in block["transactions"]:
                heights[bytes.fromhex(tx["id"])] = h
    return heights


def network_for(args: argparse.Namespace, workdir: Path, run: str, funded: list[bytes]) -> Network:
    """The network of one run, with the genesis settings given on the command line."""
    changes = {"max_block_transactions": args.max_block_txs} if args.max_block_txs else {}
    return prepare_network(workdir / f"{run}-{args.consensus}-{args.nodes}", args.nodes, args.consensus, funded,
                           args.params, **changes)


def run_settings(args: argparse.Namespace, busy_share: float) -> str:
    """What a figure was measured under: genesis settings changed from the testnet's, and how
    busy the whole machine was meanwhile (the machine is shared)."""
    changed = [f"{name}={json.dumps(value)}" for name, value in sorted(args.params.items())]
    if args.max_block_txs:
        changed.append(f"max_block_transactions={args.max_block_txs}")
    return (f" params={','.join(changed)}" if changed else "") + f" machine_busy={100 * busy_share:.0f}%"


async def traffic(network: Network) -> tuple[Counter[str], int, dict]:
    """Peer messages sent by type, ids announced and peer-connection bytes so far, over all nodes."""
    sent, announced = await message_counters(network.urls)
    return sent, announced, peer_socket_bytes(network.p2p_ports)


def traffic_per_tx(before: tuple, after: tuple, count: int) -> tuple[float, float, float]:
    """(messages, announced ids, bytes) between the nodes per transfer, from two snapshots."""
    messages = after[0] - before[0]
    moved, replaced = bytes_between(before[2], after[2])
    log("peer messages during the run: " + ", ".join(f"{kind}={n}" for kind, n in messages.most_common()))
    if replaced:
        log(f"warning: {replaced} peer connections were replaced during the run; bytes/tx is a lower bound")
    return sum(messages.values()) / count, (after[1] - before[1]) / count, moved / count


class FinalTimes:
    """When one node first said each height was final: a block event marked final (solo,
    BFT), or a `finalized` event (proof of work by depth, proof of stake at a checkpoint)."""

    def __init__(self) -> None:
        self.heights: list[int] = []  # increasing
        self.times: list[float] = []

    def on_event(self, kind: str, data: dict, at: float) -> None:
        if kind == "block" and data["final"] or kind == "finalized":
            if not self.heights or data["height"] > self.heights[-1]:
                self.heights.append(data["height"])
                self.times.append(at)

    def time_of(self, height: int) -> float | None:
        position = bisect.bisect_left(self.heights, height)
        return self.times[position] if position < len(self.times) else None


@dataclasses.dataclass
class Measured:
    """One workload's figures."""

    n: int
    accepted: int
    submit_seconds: float  # first submission to the last one accepted
    final_seconds: float  # first submission to the moment the last transfer is final on every node
    latencies: list[float]  # ms from a transfer's submission to its block being final on every node
    rss: list[float]
    per_tx: tuple[float, float, float]
    busy_share: float

    def figures(self) -> str:
        msgs, announces, moved = self.per_tx
        return (f"final_p50_ms={statistics.median(self.latencies):.0f} "
                f"final_p99_ms={percentile(self.latencies, 0.99):.0f} rss_mib_max={max(self.rss):.0f} "
                f"msgs/tx={msgs:.3f} announces/tx={announces:.2f} bytes/tx={moved:.0f}")


# send(network, start) submits the transfers; returns how many were accepted, the mempool-full
# retries, and each transfer's submission time (perf_counter).
Sender = Callable[[Network, float], Awaitable[tuple[int, int, dict[bytes, float]]]]


async def measure_workload(args: argparse.Namespace, network: Network, txs: list, send: Sender) -> Measured:
    """Run the network, send the transfers, and time each one until it is final on every node."""
    # How far back a reorg may still replace blocks: the depth of proof of work, a few
    # epochs of proof of stake (finality trails the head by about two).
    params = network.genesis.engine_params
    depth = int(params.get("finality_depth", 0)) or 3 * int(params.get("slots_per_epoch", 0))
    profile_dir = args.profile / network.directory.name if args.profile else None
    with running(network, profile_dir=profile_dir):
        try:
            await wait_all_ready(network)
        except Exception:
            for i in range(len(network.layouts)):
                log(f"node{i}: {network.log_tail(i)}")
            raise
        final_times = [FinalTimes() for _ in network.urls]
        stop = asyncio.Event()
        followers = [asyncio.create_task(follow_events(url, times.on_event, stop, frozenset({"block", "finalized"})))
                     for url, times in zip(network.urls, final_times)]
        await asyncio.sleep(0.5)
        before = await traffic(network)
        cpu = CpuMeter([process.pid for process in network.processes])
        if profile_dir is not None:
            signal_all(network, signal.SIGUSR1)
        cpu.start()
        start = time.perf_counter()
        accepted, retries, sent_at = await send(network, start)
        submitted_elapsed = time.perf_counter() - start
        height = await wait_final_everywhere(network, {tx.id for tx in txs}, depth, timeout=600)
        polled_final = time.perf_counter()
        log(cpu.stop())
        if profile_dir is not None:
            signal_all(network, signal.SIGUSR2)
        # The events streams may deliver the last finality a moment after the poll saw it.
        deadline = time.perf_counter() + 5
        while any(times.time_of(height) is None for times in final_times) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        after = await traffic(network)
        heights = await tx_heights(network.urls[0], height)
        stop.set()
        for follower in followers:
            follower.cancel()
        rss = [vm_hwm_mib(process.pid) for process in network.processes]
        log("peak RSS (VmHWM) MiB: " + " ".join(f"node{i}={r:.0f}" for i, r in enumerate(rss)))
    if profile_dir is not None:
        print_profiles(profile_dir, args.profile_lines)

    # A transfer is final everywhere when the last node says its block is final.
    latencies = []
    ends = []
    for tx in txs:
        if tx.id not in heights:
            continue  # moved by a reorg after the poll: unmeasured
        at = [times.time_of(heights[tx.id]) for times in final_times]
        if None not in at:
            final_everywhere = max(at)
            latencies.append((final_everywhere - sent_at[tx.id]) * 1000)
            ends.append(final_everywhere)
    # Without a commit time for every transfer (an events stream dropped one), the poll's time.
    end = max(ends) if len(ends) == len(txs) else polled_final
    blocks = sorted(set(heights.values()))
    log(f"last_workload_block={height} blocks_with_workload={len(blocks)} "
        f"transfers/block={len(heights) / max(1, len(blocks)):.0f} mempool_full_retries={retries} "
        f"measured_latencies={len(latencies)} of {len(txs)}")
    return Measured(len(txs), accepted, submitted_elapsed, end - start, latencies, rss,
                    traffic_per_tx(before, after, len(txs)), cpu.busy_share)


async def run_throughput(args: argparse.Namespace, workdir: Path) -> str:
    n = args.n or DEFAULT_N[args.consensus]
    senders = make_keys(args.senders, b"bench-sender")
    t0 = time.perf_counter()
    _, txs = sign_workload(senders, n, args.recipients, chain_id=TESTNET_CHAIN_ID)
    log(f"signed {len(txs)} transfers in {time.perf_counter() - t0:.1f} s")
    network = network_for(args, workdir, "throughput", [address_of(key.public_key) for key in senders])
    if args.submit_to == "all":
        per_node = split_by_node(txs, args.senders, args.nodes)
        targets = list(range(args.nodes))
        connections = max(1, args.connections // args.nodes)
    else:
        per_node = [txs]
        targets = [0]
        connections = args.connections
    batch_lists = [[[tx.encode().hex() for tx in part[i : i + 100]] for i in range(0, len(part), 100)] for part in per_node]

    async def send(network: Network, start: float) -> tuple[int, int, dict[bytes, float]]:
        sent_at = [[0.0] * len(batches) for batches in batch_lists]
        outcomes = await asyncio.gather(*(
            submit_all(network.urls[target], batches, connections, times)
            for target, batches, times in zip(targets, batch_lists, sent_at)
        ))
        times = {tx.id: sent_at[p][i // 100] for p, part in enumerate(per_node) for i, tx in enumerate(part)}
        return sum(a for a, _ in outcomes), sum(r for _, r in outcomes), times

    m = await measure_workload(args, network, txs, send)
    return (
        f"engine={args.consensus} nodes={args.nodes} db=sqlite N={m.n} "
        f"submitted/s={m.accepted / m.submit_seconds:.0f} committed/s={m.n / m.final_seconds:.0f} "
        f"{m.figures()} submit_to={args.submit_to}{run_settings(args, m.busy_share)}"
    )


# ---------------------------------------------------------------------------------- steady load
async def run_steady(args: argparse.Namespace, workdir: Path) -> str:
    n = int(args.rate * args.duration)
    senders = make_keys(args.senders, b"bench-sender")
    _, txs = sign_workload(senders, n, args.recipients, chain_id=TESTNET_CHAIN_ID)
    network = network_for(args, workdir, "steady", [address_of(key.public_key) for key in senders])
    # Transfer i is due i/rate seconds after the start; those due within one tick go in one batch.
    tick = args.tick_ms / 1000
    groups: dict[int, list] = {}
    for i, tx in enumerate(txs):
        groups.setdefault(int(i / args.rate / tick), []).append(tx)
    slots = sorted(groups)
    batches = [[tx.encode().hex() for tx in groups[slot]] for slot in slots]

    async def send(network: Network, start: float) -> tuple[int, int, dict[bytes, float]]:
        sent_at = [0.0] * len(batches)
        due = [start + slot * tick for slot in slots]
        accepted, retries = await submit_all(network.urls[0], batches, args.connections, sent_at, due)
        late = [(s - d) * 1000 for s, d in zip(sent_at, due)]
        # A client that falls behind its schedule would understate the latency at the rate.
        log(f"steady: batches of {len(txs) / len(batches):.1f} every {args.tick_ms} ms; client behind schedule "
            f"p50 {statistics.median(late):.1f} ms, p99 {percentile(late, 0.99):.1f} ms, max {max(late):.1f} ms")
        return accepted, retries, {tx.id: sent_at[k] for k, slot in enumerate(slots) for tx in groups[slot]}

    m = await measure_workload(args, network, txs, send)
    return (
        f"steady engine={args.consensus} nodes={args.nodes} db=sqlite rate/s={args.rate:g} "
        f"duration_s={args.duration:g} N={m.n} sent/s={m.accepted / m.submit_seconds:.0f} "
        f"{m.figures()}{run_settings(args, m.busy_share)}"
    )


# ---------------------------------------------------------------------------------- gossip
async def run_gossip(args: argparse.Namespace, workdir: Path) -> str:
    keys = make_keys(args.gossip_count, b"bench-gossip")
    recipient = sha256(b"gossip-recipient")[:20]
    txs = [new_transfer(key, TESTNET_CHAIN_ID, 0, recipient, amount=1, fee=1) for key in keys]
    network = network_for(args, workdir, "gossip", [address_of(key.public_key) for key in keys])
    entry = 1 if args.nodes > 1 else 0
    seen: list[dict[str, float]] = [{} for _ in range(args.nodes)]

    def recorder(index: int):
        def on_event(kind: str, data: dict, at: float) -> None:
            if kind == "tx":
                seen[index].setdefault(data["id"], at)
            elif kind == "block":
                for tx_id in data.get("transactions", ()):
                    seen[index].setdefault(tx_id, at)
        return on_event

    with running(network):
        await wait_all_ready(network)
        stop = asyncio.Event()
        followers = [asyncio.create_task(follow_events(url, recorder(i), stop)) for i, url in enumerate(network.urls)]
        await asyncio.sleep(0.5)
        before = await traffic(network)
        cpu = CpuMeter([process.pid for process in network.processes])
        cpu.start()
        sent_at: dict[str, float] = {}
        interval = 1.0 / args.gossip_rate
        async with httpx.AsyncClient(base_url=network.urls[entry], timeout=30) as client:
            next_at = time.perf_counter()
            for tx in txs:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
                tx_id = tx.id.hex()
                sent_at[tx_id] = time.perf_counter()
                response = await client.post("/v1/transactions", json={"raw": tx.encode().hex()})
                if response.status_code >= 300:
                    raise RuntimeError(f"node{entry} refused a transfer: {response.text}")
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline and not all(tx_id in s for s in seen for tx_id in sent_at):
            await asyncio.sleep(0.05)
        log(cpu.stop())
        after = await traffic(network)
        stop.set()
        for follower in followers:
            follower.cancel()

    reach_all = [(max(s[tx_id] for s in seen) - t) * 1000 for tx_id, t in sent_at.items() if all(tx_id in s for s in seen)]
    per_node = []
    for i, s in enumerate(seen):
        own = [(s[tx_id] - t) * 1000 for tx_id, t in sent_at.items() if tx_id in s]
        per_node.append(f"node{i}={statistics.median(own):.1f}" if own else f"node{i}=none")
    log("p50 ms by node (node%d is the entry): %s" % (entry, " ".join(per_node)))
    msgs, _, moved = traffic_per_tx(before, after, len(txs))
    return (
        f"gossip engine={args.consensus} nodes={args.nodes} txs={len(txs)} rate/s={args.gossip_rate:g} "
        f"reached_all={len(reach_all)} reach_all_p50_ms={statistics.median(reach_all):.1f} "
        f"reach_all_p99_ms={percentile(reach_all, 0.99):.1f} msgs/tx={msgs:.2f} "
        f"bytes/tx={moved:.0f}{run_settings(args, cpu.busy_share)}"
    )


# ---------------------------------------------------------------------------------- catch-up
def build_solo_chain(store_url: str, genesis: Genesis, authority: PrivateKey, blocks: int,
                     senders: list[PrivateKey], per_block: int) -> None:
    """`blocks` sealed solo blocks written straight into a store, as the node would commit them."""
    store = ChainStore(store_url)
    try:
        migrations.upgrade(store)
        store.initialize(genesis)
        state = State.from_allocations(genesis.allocations)
        head = store.head()
        proposer = address_of(authority.public_key)
        recipient = sha256(b"catchup-recipient")[:20]
        nonces = [0] * len(senders)
        for i in range(blocks):
            transactions = []
            for j in range(per_block):
                k = (i * per_block + j) % len(senders)
                transactions.append(new_transfer(senders[k], genesis.chain_id, nonces[k], recipient, amount=1, fee=1))
                nonces[k] += 1
            header = build_header(genesis.chain_id, head, head.timestamp + 1, transactions, proposer)
            block = Block(header.with_seal(authority.sign_digest(header.sealing_digest())), tuple(transactions))
            effects = state.apply(block.transactions, proposer, genesis.block_reward)
            store.commit_block(block, effects)
            state.commit(effects)
            head = block.header
    finally:
        store.close()


async def run_catchup(args: argparse.Namespace, workdir: Path) -> str:
    senders = make_keys(args.senders, b"bench-sender") if args.catchup_txs else []
    # Genesis an hour back, so 10,000 blocks a millisecond apart all lie in the past.
    network = prepare_network(workdir / "catchup", 2, "solo", [address_of(key.public_key) for key in senders],
                              timestamp=int(time.time() * 1000) - 3_600_000)
    authority = PrivateKey(bytes.fromhex((network.layouts[0].directory / "node_key").read_text().strip()))
    store_url = load_config({}, network.layouts[0].config).db_url
    t0 = time.perf_counter()
    await asyncio.to_thread(build_solo_chain, store_url, network.genesis, authority, args.catchup_blocks, senders,
                            args.catchup_txs)
    log(f"wrote {args.catchup_blocks} blocks of {args.catchup_txs} transfers into node0's store in "
        f"{time.perf_counter() - t0:.1f} s")
    target = args.catchup_blocks
    with running(network, [0]):
        await wait_ready(network.urls[0], network.processes[0], timeout=60)
        async with httpx.AsyncClient(timeout=10) as client:
            head = (await client.get(f"{network.urls[0]}/v1/node")).json()["height"]
            if head != target:
                raise RuntimeError(f"node0 starts at height {head}, not {target}")
            started = time.perf_counter()
            with running(network, [1]):
                cpu = CpuMeter([process.pid for process in network.processes])
                cpu.start()
                url = network.urls[1]
                first_progress = None
                samples = []
                deadline = started + 600
                while True:
                    if network.processes[1].poll() is not None:
                        raise RuntimeError(f"node1 exited: {network.log_tail(1)}")
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"node1 did not catch up within 600 s: {network.log_tail(1)}")
                    try:
                        info = (await client.get(f"{url}/v1/node")).json()
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                        continue
                    now = time.perf_counter()
                    samples.append((now, info["height"]))
                    if first_progress is None and info["height"] > 0:
                        first_progress = (now, info["height"])
                    if info["height"] >= target:
                        done = now
                        break
                    await asyncio.sleep(0.05)
                rss = vm_hwm_mib(network.processes[1].pid)
                log(cpu.stop())
    total = done - started
    assert first_progress is not None
    syncing = done - first_progress[0]
    sync_rate = (target - first_progress[1]) / syncing if syncing > 0 else float("inf")
    log(f"node1 first showed progress {first_progress[0] - started:.2f} s after its start (height {first_progress[1]})")
    return (
        f"catchup blocks={target} txs/block={args.catchup_txs} from_start_s={total:.2f} "
        f"blocks/s_from_start={target / total:.0f} blocks/s_syncing={sync_rate:.0f} rss_mib={rss:.0f}"
    )


# ---------------------------------------------------------------------------------- startup
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _own_group_dying_with_us() -> None:
    # In the child before exec: a process group of its own (so a stuck testnet and its nodes
    # can be killed together) that still gets SIGTERM if this benchmark dies.
    os.setsid()
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def one_startup(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, float]:
    directory = workdir / f"startup-{args.consensus}-{run}"
    api_base = free_port_run(args.nodes)
    p2p_base = free_port_run(args.nodes, avoid=set(range(api_base, api_base + args.nodes)))
    urls = [f"http://127.0.0.1:{api_base + i}" for i in range(args.nodes)]
    output = open(workdir / f"startup-{args.consensus}-{run}.log", "wb")
    command = [sys.executable, "-m", "node.cli", "testnet", "--nodes", str(args.nodes), "--consensus", args.consensus,
               "--dir", str(directory), "--api-port", str(api_base), "--p2p-port", str(p2p_base)]
    api_up: dict[int, float] = {}
    connected: dict[int, float] = {}
    first_block: dict[int, float] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               preexec_fn=_own_group_dying_with_us)
    output.close()
    try:
        async with httpx.AsyncClient(timeout=1) as client:
            transfer_sent = False
            deadline = started + 60
            while len(first_block) < args.nodes:
                if process.poll() is not None:
                    tail = Path(output.name).read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"ledger testnet exited with {process.returncode}: " + " | ".join(tail))
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"not every node had a block within 60 s; see {directory}/node*/node.log")

                async def poll(i: int) -> None:
                    try:
                        info = (await client.get(f"{urls[i]}/v1/node")).json()
                    except (httpx.HTTPError, ValueError):
                        return
                    now = time.perf_counter()
                    api_up.setdefault(i, now)
                    if info["peers"] >= args.nodes - 1:
                        connected.setdefault(i, now)
                    if info["height"] >= 1:
                        first_block.setdefault(i, now)

                await asyncio.gather(*(poll(i) for i in range(args.nodes) if i not in first_block))
                if len(first_block) == args.nodes:
                    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
                    cpu = {"command": cpu_seconds(process.pid), "nodes": sum(cpu_seconds(int(pid)) for pid in children)}
                if args.consensus in ("solo", "bft", "raft") and 0 in api_up and not transfer_sent:
                    # Solo and BFT (by default) make a block when there is something to put in it.
                    tx = new_transfer(dev_keys(1)[0], TESTNET_CHAIN_ID, 0, sha256(b"startup")[:20], amount=1, fee=1)
                    response = await client.post(f"{urls[0]}/v1/transactions", json={"raw": tx.encode().hex()})
                    transfer_sent = response.status_code < 300
                await asyncio.sleep(0.02)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # what Ctrl-C does: the command stops its nodes
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log(f"CPU seconds until then: ledger testnet {cpu['command']:.1f}, its {len(children)} nodes {cpu['nodes']:.1f}; "
        f"machine load average {os.getloadavg()[0]:.1f}")
    return {
        "api": max(api_up.values()) - started,
        "connected": max(connected.values(), default=float("nan")) - started,
        "first_block": max(first_block.values()) - started,
    }


async def run_startup(args: argparse.Namespace, workdir: Path) -> str:
    runs = []
    for run in range(args.startup_runs):
        figures = await one_startup(args, workdir, run)
        log(f"startup run {run}: " + " ".join(f"{k}={v:.2f}s" for k, v in figures.items()))
        runs.append(figures)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    worst = max(r["first_block"] for r in runs)
    return (
        f"startup engine={args.consensus} nodes={args.nodes} runs={len(runs)} api_up_all_s={median['api']:.2f} "
        f"connected_all_s={median['connected']:.2f} first_block_all_s={median['first_block']:.2f} "
        f"first_block_all_worst_s={worst:.2f}"
    )


# ---------------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> None:
    runners = {"throughput": run_throughput, "steady": run_steady, "gossip": run_gossip, "catchup": run_catchup,
               "startup": run_startup}
    with tempfile.TemporaryDirectory(prefix="ledger-netbench-") as tmp:
        for nodes in args.node_counts:
            for name in args.only:
                if name == "catchup" and nodes != args.node_counts[0]:
                    continue  # always two nodes: once is enough
                # The machine may be shared: the load next to a figure says how far to trust it.
                log(f"--- {name}, {nodes} nodes (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
                print(await runners[name](argparse.Namespace(**{**vars(args), "nodes": nodes}), Path(tmp)), flush=True)


def engine_param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the value of {name} is not JSON (a number, true or false): {value!r}") from None


def node_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma-separated list such as 4,7,10, got {text!r}") from None
    if not counts or any(not 2 <= count <= 64 for count in counts):
        raise argparse.ArgumentTypeError("node counts are 2 to 64")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", "--validators", dest="node_counts", type=node_counts, default=[4],
                        help="nodes of each network (with bft every node is a validator); 4,7,10 runs each count in turn")
    parser.add_argument("--consensus", choices=("solo", "pow", "bft", "pos", "raft"), default="solo")
    parser.add_argument("-n", type=int, default=None, help="transfers for the throughput run [solo 20000, pow 5000, bft 20000, pos 20000, raft 20000]")
    parser.add_argument("--submit-to", choices=("node0", "all"), default="node0",
                        help="throughput: send everything to node0, or each node a share of the senders")
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--recipients", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0, help="steady: transfers a second [500]")
    parser.add_argument("--duration", type=float, default=60.0, help="steady: seconds of sending [60]")
    parser.add_argument("--tick-ms", type=int, default=20, help="steady: one batch every this many ms [20]")
    parser.add_argument("--gossip-count", type=int, default=200, help="gossip: single transfers sent to node1")
    parser.add_argument("--gossip-rate", type=float, default=20.0, help="gossip: transfers a second")
    parser.add_argument("--catchup-blocks", type=int, default=10_000)
    parser.add_argument("--catchup-txs", type=int, default=0, help="catchup: transfers in each block [0]")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--param", dest="params", type=engine_param, action="append", default=[], metavar="NAME=VALUE",
                        help="an engine parameter laid over the testnet genesis's, e.g. timeout_propose_ms=1000 "
                             "(repeatable; not for catchup and startup)")
    parser.add_argument("--max-block-txs", type=int, default=None,
                        help="genesis max_block_transactions [the testnet's 10000]; not for catchup and startup")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="throughput and steady: run the nodes under cProfile, keep node<i>.prof under DIR "
                             "and print the top of node0's and node1's")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument("--only", help=f"comma-separated runs among {', '.join(RUNS)}")
    args = parser.parse_args(argv)
    args.params = dict(args.params)
    if args.only:
        args.only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.only if name not in RUNS]
        if unknown:
            parser.error(f"unknown run {unknown[0]!r}; choose among {', '.join(RUNS)}")
    else:
        args.only = DEFAULT_RUNS[args.consensus]
    if args.n is not None and args.n < args.senders:
        parser.error("-n must be at least --senders")
    if args.rate <= 0 or args.duration <= 0 or args.tick_ms < 1:
        parser.error("--rate, --duration and --tick-ms must be positive")
    if args.rate * args.duration < args.senders:
        parser.error("--rate times --duration must be at least --senders (each sender sends the same number)")
    if args.max_block_txs is not None and args.max_block_txs < 1:
        parser.error("--max-block-txs must be positive")
    if args.gossip_rate <= 0 or args.gossip_count < 1:
        parser.error("--gossip-rate and --gossip-count must be positive")
    if args.catchup_blocks < 1 or args.catchup_txs < 0 or args.startup_runs < 1:
        parser.error("--catchup-blocks and --startup-runs must be positive, --catchup-txs not negative")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return args


def main() -> None:
    args = parse_args()
    try:
        asyncio.run(main_async(args))
    except (RuntimeError, TestnetError) as exc:
        # Its nodes are stopped by then; their logs went with the temporary directory.
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()

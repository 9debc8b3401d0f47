"""Node processes for the benchmarks: a network of `ledger testnet`'s files started on
free ports (optionally each node under cProfile), stopped whatever happens, and what can be
measured from outside it: the peers' message counters, the bytes their TCP connections
carried, and the CPU each process and the whole machine used.  bench/network.py,
bench/seqput.py and bench/etcd_rate.py share them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pstats
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import ROOT, free_port, wait_ready  # noqa: E402  (also puts the checkout on sys.path)

from ledger.genesis import Genesis  # noqa: E402
from consensus.registry import create_engine  # noqa: E402
from node.lifetime import die_with_parent  # noqa: E402
from node.testnet import NodeLayout, start_nodes, stop_nodes, wait_until_connected, write_network  # noqa: E402

# The node processes run `python -m node.cli`: they must import the checkout from anywhere.
os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")

SENDER_BALANCE = 10**15  # what each funded sender of a prepared network holds

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def free_port_run(count: int, avoid: set[int] = frozenset()) -> int:
    """The first of `count` consecutive free ports (ledger testnet numbers nodes' ports that way)."""
    for _ in range(200):
        base = free_port()
        ports = range(base, base + count)
        if base + count > 65535 or avoid.intersection(ports):
            continue
        held = []
        try:
            for port in ports:
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"found no {count} consecutive free ports")


# ---------------------------------------------------------------------------------- networks
@dataclasses.dataclass
class Network:
    directory: Path
    layouts: list[NodeLayout]
    genesis: Genesis
    processes: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [layout.api_url for layout in self.layouts]

    @property
    def p2p_ports(self) -> list[int]:
        return [layout.p2p_port for layout in self.layouts]

    def log_tail(self, index: int, lines: int = 5) -> str:
        path = self.layouts[index].directory / "node.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


def prepare_network(directory: Path, nodes: int, consensus: str, funded: list[bytes], engine_params: dict | None = None,
                    **genesis_changes) -> Network:
    """`ledger init`'s files on free ports, with the benchmark's senders added to genesis and
    `engine_params` laid over the testnet's own (BFT timeouts, for instance)."""
    api_base = free_port_run(nodes)
    p2p_base = free_port_run(nodes, avoid=set(range(api_base, api_base + nodes)))
    layouts = write_network(directory, nodes, consensus, api_base, p2p_base)
    path = directory / "genesis.json"
    genesis = Genesis.load(path)
    allocations = dict(genesis.allocations)
    allocations.update({address: SENDER_BALANCE for address in funded})
    if engine_params:
        genesis_changes["engine_params"] = {**genesis.engine_params, **engine_params}
    genesis = dataclasses.replace(genesis, allocations=allocations, **genesis_changes)
    try:
        create_engine(genesis, None, mine=False)  # what the nodes would refuse to start on
    except ValueError as exc:
        raise RuntimeError(f"the network's genesis is not valid: {exc}") from None
    genesis.save(path)
    return Network(directory, layouts, Genesis.load(path))


# `ledger node` with a profiler of its main thread (the event loop; worker threads are not
# seen) that SIGUSR1 starts and SIGUSR2 stops and writes out, so that a profile covers the
# measured window only, not imports and start-up.
PROFILED_NODE = """
import cProfile, runpy, signal, sys
out = sys.argv.pop(1)
profiler = cProfile.Profile()
def start(signum, frame):
    profiler.enable()
def stop(signum, frame):
    profiler.disable()
    profiler.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv[0] = "ledger"
runpy.run_module("node.cli", run_name="__main__", alter_sys=True)
"""


def start_profiled(layouts: list[NodeLayout], profile_dir: Path) -> list[subprocess.Popen]:
    profile_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for layout in layouts:
        with open(layout.directory / "node.log", "ab") as output:
            processes.append(subprocess.Popen(
                [sys.executable, "-c", PROFILED_NODE, str(profile_dir / f"node{layout.index}.prof"),
                 "node", "--config", str(layout.config)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent))
    return processes


def signal_all(network: Network, signum: int) -> None:
    for process in network.processes:
        if process.poll() is None:
            process.send_signal(signum)


def print_profiles(profile_dir: Path, lines: int) -> None:
    for path in sorted(profile_dir.glob("node*.prof"))[:2]:
        for order in ("tottime", "cumulative"):
            log(f"--- cProfile of {path.stem}'s event-loop thread over the run ({path}), by {order}:")
            stream = io.StringIO()
            pstats.Stats(str(path), stream=stream).strip_dirs().sort_stats(order).print_stats(lines)
            log(stream.getvalue().strip())


@contextmanager
def running(network: Network, indices: list[int] | None = None, profile_dir: Path | None = None) -> Iterator[Network]:
    """Start the nodes (all, or `indices`); stop every one of them on the way out, whatever happens."""
    chosen = [network.layouts[i] for i in (indices if indices is not None else range(len(network.layouts)))]
    started = start_profiled(chosen, profile_dir) if profile_dir is not None else start_nodes(chosen)
    network.processes.extend(started)
    try:
        yield network
    finally:
        stop_nodes(started)


async def wait_all_ready(network: Network) -> None:
    await asyncio.gather(*(wait_ready(url, process, timeout=60) for url, process in zip(network.urls, network.processes)))
    await asyncio.to_thread(wait_until_connected, network.layouts, network.processes, 60)


# ---------------------------------------------------------------------------------- traffic
METRIC_LINE = re.compile(r'^(ledger_p2p_messages_sent_total|ledger_gossip_announced_ids_total)(?:\{type="(\w+)"\})? (\S+)$')


async def message_counters(urls: list[str]) -> tuple[Counter[str], int]:
    """Peer messages sent by type and transaction ids announced, summed over the nodes."""
    sent: Counter[str] = Counter()
    announced = 0
    async with httpx.AsyncClient(timeout=10) as client:
        for url in urls:
            for line in (await client.get(f"{url}/metrics")).text.splitlines():
                match = METRIC_LINE.match(line)
                if match is None:
                    continue
                name, kind, value = match.groups()
                if name == "ledger_p2p_messages_sent_total":
                    sent[kind] += int(float(value))
                else:
                    announced += int(float(value))
    return sent, announced


def peer_socket_bytes(p2p_ports: list[int]) -> dict[tuple[str, str], int]:
    """Bytes the kernel moved on each peer connection (both directions), keyed by its endpoints.

    Every peer connection has exactly one end whose local port is a listening P2P port (the
    accepted side), so counting those sockets counts each connection once."""
    if not p2p_ports:
        return {}
    selector = " or ".join(f"sport = :{port}" for port in p2p_ports)
    try:
        output = subprocess.run(["ss", "-tinH", "state", "established", f"( {selector} )"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    counts: dict[tuple[str, str], int] = {}
    key = None
    for line in output.splitlines():
        if not line.startswith(("\t", " ")):
            fields = line.split()
            key = (fields[-2], fields[-1]) if len(fields) >= 2 else None
            continue
        if key is None:
            continue
        sent = re.search(r"bytes_sent:(\d+)", line)
        received = re.search(r"bytes_received:(\d+)", line)
        counts[key] = (int(sent.group(1)) if sent else 0) + (int(received.group(1)) if received else 0)
    return counts


def bytes_between(before: dict, after: dict) -> tuple[int, int]:
    """Bytes moved between two snapshots, and how many connections were replaced in between
    (their bytes before closing are lost, so the figure is then a lower bound)."""
    moved = sum(count - before.get(key, 0) for key, count in after.items())
    return moved, len(set(before) - set(after))


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of one process (its own threads, not its children), or of one of its threads."""
    try:
        stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat")
        fields = stat.read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine so far, every process included."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """Where the CPU went between start() and stop(): each node, this client, the machine."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    busy_share = float("nan")

    def start(self) -> None:
        self._nodes = [cpu_seconds(pid) for pid in self.pids]
        self._loops = [cpu_seconds(pid, pid) for pid in self.pids]
        self._self = time.process_time()
        self._machine = machine_busy()
        self._wall = time.perf_counter()

    def stop(self) -> str:
        nodes = [cpu_seconds(pid) - before for pid, before in zip(self.pids, self._nodes)]
        # The main thread runs the event loop (and small database writes); the rest is worker
        # threads (large blocks' writes, reads).
        loops = [cpu_seconds(pid, pid) - before for pid, before in zip(self.pids, self._loops)]
        busy, total = machine_busy()
        self.busy_share = (busy - self._machine[0]) / max(1, total - self._machine[1])
        wall = time.perf_counter() - self._wall
        return (f"CPU seconds over {wall:.1f} s: "
                + " ".join(f"node{i}={c:.1f}(loop {l:.1f})" for i, (c, l) in enumerate(zip(nodes, loops)))
                + f" client={time.process_time() - self._self:.1f}; machine busy {100 * self.busy_share:.0f}% of "
                f"{os.cpu_count()} CPUs (other users' processes included)")

"""etcd at a fixed rate, driven the way `bench/seqput.py --rate` drives our nodes: a 3-member
etcd on loopback, puts of a 100-byte value POSTed to the leader's v3 JSON gateway by the same
open-loop coroutine clients, each latency counted from when the put was due.  Prints puts/s,
p50/p99 and the CPU the three members used, for issue 13's "latency at 500 writes/s" side by
side (etcd_bench.sh measures etcd's sequential put loop and `check perf`, not a fixed rate).

    python bench/etcd_rate.py --rate 500 --seconds 8

Needs `etcd` on the PATH (../shared/peers/etcd_bench.sh installs it).  The members run in a
temporary directory on free ports and are stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes import cpu_seconds, free_port_run, percentile  # noqa: E402
from seqput import paced  # noqa: E402

MEMBERS = 3


def leader_url(clients: list[str]) -> str:
    """The client URL of the member that leads, once the cluster has elected one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for url in clients:
            try:
                status = httpx.post(f"{url}/v3/maintenance/status", json={}, timeout=2).json()
            except (httpx.HTTPError, ValueError):
                continue
            if status.get("leader") and status.get("leader") == status.get("header", {}).get("member_id"):
                return url
        time.sleep(0.1)
    raise RuntimeError("the etcd cluster elected no leader within 30 s")


def ok(status: bytes, answer: bytes) -> bool:
    return b" 200 " in status and b"header" in answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if not 0 < args.rate <= 5_000 or not 0 < args.seconds <= 600 or not 1 <= args.clients <= 64:
        parser.error("--rate is up to 5,000, --seconds up to 600, --clients 1 to 64")
    if args.rate < args.clients / 4 or args.seconds * args.rate < args.clients:
        parser.error("--rate must be at least --clients / 4, and --seconds long enough for a put from each client")
    etcd = shutil.which("etcd")
    if etcd is None:
        sys.exit("etcd is not installed: bash ../shared/peers/etcd_bench.sh installs it (Debian's etcd-server)")
    base = free_port_run(2 * MEMBERS)
    ports = list(range(base, base + 2 * MEMBERS))
    clients = [f"http://127.0.0.1:{port}" for port in ports[:MEMBERS]]
    peers = [f"http://127.0.0.1:{port}" for port in ports[MEMBERS:]]
    cluster = ",".join(f"m{i}={peer}" for i, peer in enumerate(peers))
    count = int(args.seconds * args.rate) // args.clients
    value = base64.b64encode(b"v" * 100).decode()
    shares = [[json.dumps({"key": base64.b64encode(f"rate/{k}/{i}".encode()).decode(), "value": value})
               for i in range(count)] for k in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="bench-etcd-rate-") as workdir:
        members: list[subprocess.Popen] = []
        try:
            for i in range(MEMBERS):
                members.append(subprocess.Popen(
                    [etcd, "--name", f"m{i}", "--data-dir", f"{workdir}/m{i}",
                     "--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
                     "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                     "--initial-cluster", cluster, "--initial-cluster-token", "bench-etcd-rate",
                     "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", f"{workdir}/m{i}.log"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            leader = leader_url(clients)
            before = sum(cpu_seconds(member.pid) for member in members)
            latencies, elapsed = paced(f"{leader}/v3/kv/put", shares, args.rate, ok)
            used = sum(cpu_seconds(member.pid) for member in members) - before
        finally:
            for member in members:
                member.terminate()
            for member in members:
                try:
                    member.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    member.kill()
                    member.wait()
    print(f"etcd_rate members={MEMBERS} rate={args.rate:g} clients={args.clients} puts={len(latencies)} "
          f"per_s={len(latencies) / elapsed:.0f} p50_ms={statistics.median(latencies):.2f} "
          f"p99_ms={percentile(latencies, 0.99):.2f} (etcd CPU {used:.1f} s over {elapsed:.1f} s)", flush=True)


if __name__ == "__main__":
    main()

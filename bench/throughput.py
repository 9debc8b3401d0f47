"""The transfer workload of ../shared/BENCHMARK.md against real node processes.

With no arguments: one solo node on SQLite, N=20,000 transfers from K=100 funded
senders to 1,000 fresh addresses, all signed before the clock starts, sent in batches
of 100 over 4 concurrent HTTP connections; prints one summary line:

  engine=solo nodes=1 db=sqlite N=20000 submitted/s=... committed/s=... final_p50_ms=... final_p99_ms=... rss_mib_max=...

`--db postgresql+psycopg://postgres@127.0.0.1/postgres` runs on a fresh PostgreSQL
database (created and dropped here); `-n 100000` checks memory on a longer run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger.address import address_of  # noqa: E402
from ledger.crypto import PrivateKey, sha256  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.transaction import new_transfer  # noqa: E402

CHAIN_ID = "bench"
PREFIX = "bch"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_keys(count: int, label: bytes) -> list[PrivateKey]:
    return [PrivateKey(sha256(label + i.to_bytes(4, "big"))) for i in range(count)]


def write_network(directory: Path, senders: list[PrivateKey]) -> tuple[Path, PrivateKey]:
    node_key = make_keys(1, b"bench-node")[0]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node_key").write_text(node_key.secret.hex() + "\n")
    os.chmod(directory / "node_key", 0o600)
    genesis = Genesis(
        chain_id=CHAIN_ID,
        address_prefix=PREFIX,
        timestamp=int(time.time() * 1000),
        engine="solo",
        engine_params={"authority": node_key.public_key.hex(), "block_interval_ms": 0},
        allocations={address_of(key.public_key): 10**15 for key in senders},
        max_block_transactions=10_000,
    )
    path = directory / "genesis.json"
    genesis.save(path)
    return path, node_key


def sign_workload(
    senders: list[PrivateKey], n: int, recipients: int, chain_id: str = CHAIN_ID
) -> tuple[list[list[str]], list]:
    """Batches of 100 hex transactions (batch k holds nonce k of 100 senders) and the transactions."""
    targets = [sha256(b"recipient" + i.to_bytes(4, "big"))[:20] for i in range(recipients)]
    per_sender = n // len(senders)
    rows = []
    count = 0
    for nonce in range(per_sender):
        for index, key in enumerate(senders):
            tx = new_transfer(key, chain_id, nonce, targets[count % recipients], amount=1 + count % 1000, fee=1)
            rows.append(tx)
            count += 1
    return [[tx.encode().hex() for tx in rows[i : i + 100]] for i in range(0, len(rows), 100)], rows


def vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def wait_ready(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node exited with {process.returncode}")
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("node did not become ready")


async def follow_events(url: str, on_event, stop: asyncio.Event, kinds: frozenset[str] | None = None) -> None:
    """Call on_event(kind, data, arrival time) for each event of the node's events stream (of `kinds` only:
    decoding the others would take the client's CPU from the nodes it measures)."""
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", f"{url}/v1/events") as response:
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind is not None and (kinds is None or kind in kinds):
                    on_event(kind, json.loads(line[5:]), time.perf_counter())
                if stop.is_set():
                    return


async def follow_blocks(url: str, commit_times: dict[int, float], stop: asyncio.Event) -> None:
    """Record when each block height is announced final on the events stream."""

    def on_event(kind: str, data: dict, at: float) -> None:
        if kind == "block":
            commit_times[data["height"]] = at

    await follow_events(url, on_event, stop, frozenset({"block"}))


# Refusals that say "not now": the mempool is full, or holds as many of the sender's
# transactions ahead of its account nonce as it takes; the batch's rest is sent again.
BACK_PRESSURE = frozenset({"mempool_full", "nonce_too_far"})


async def submit_all(
    url: str, batches: list[list[str]], connections: int, sent_at: list[float], not_before: list[float] | None = None
) -> tuple[int, int]:
    """Send the batches in order over `connections` connections, each as soon as one is free or,
    with `not_before`, no earlier than its perf_counter time there (a fixed-rate load)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(batches)):
        queue.put_nowait(index)
    accepted = 0
    retries = 0
    bodies = [json.dumps({"transactions": [{"raw": raw} for raw in batch]}).encode() for batch in batches]

    async def worker() -> None:
        nonlocal accepted, retries
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while not queue.empty():
                index = queue.get_nowait()
                pending = bodies[index]
                if not_before is not None and not_before[index] > time.perf_counter():
                    await asyncio.sleep(not_before[index] - time.perf_counter())
                while True:
                    sent_at[index] = time.perf_counter()
                    response = await client.post(
                        "/v1/transactions/batch", content=pending, headers={"content-type": "application/json"}
                    )
                    response.raise_for_status()
                    results = response.json()["results"]
                    full = [r["index"] for r in results if not r["accepted"] and r["problem"]["reason"] in BACK_PRESSURE]
                    other = [r for r in results if not r["accepted"] and r["problem"]["reason"] not in BACK_PRESSURE]
                    if other:
                        raise RuntimeError(f"node refused a transaction: {other[0]['problem']}")
                    accepted += len(results) - len(full)
                    if not full:
                        break
                    retries += 1
                    items = json.loads(pending)["transactions"]
                    pending = json.dumps({"transactions": [items[i] for i in full]}).encode()
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(connections)))
    return accepted, retries


def create_pg_database(url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return str(sa.make_url(url).set(database=name).render_as_string(hide_password=False)), name


def drop_pg_database(url: str, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


async def run(args: argparse.Namespace) -> str:
    senders = make_keys(args.senders, b"bench-sender")
    t0 = time.perf_counter()
    batches, txs = sign_workload(senders, args.n, args.recipients)
    print(f"signed {len(txs)} transfers in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ids = [tx.id for tx in txs]

    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        data_dir = Path(tmp) / "node"
        genesis_path, _ = write_network(data_dir, senders)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        db_url, db_name = (None, None)
        if args.db:
            db_url, db_name = create_pg_database(args.db)
        command = [sys.executable, "-m", "node.cli", "node", "--data-dir", str(data_dir), "--api-port", str(port), "--p2p-port", "0",
                   "--genesis", str(genesis_path), "--log-level", "warning"]
        if db_url:
            command += ["--db", db_url]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sys.stderr)
        try:
            await wait_ready(url, process)
            commit_times: dict[int, float] = {}
            stop = asyncio.Event()
            follower = asyncio.create_task(follow_blocks(url, commit_times, stop))
            await asyncio.sleep(0.3)
            sent_at = [0.0] * len(batches)
            start = time.perf_counter()
            accepted, retries = await submit_all(url, batches, args.connections, sent_at)
            submitted_elapsed = time.perf_counter() - start
            # Wait until the last transaction is final.
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                while True:
                    status = (await client.get(f"/v1/transactions/{ids[-1].hex()}")).json().get("status")
                    node = (await client.get("/v1/node")).json()
                    if status == "final" and node["mempool_size"] == 0:
                        break
                    await asyncio.sleep(0.01)
                height = node["height"]
                # The events stream may deliver the last block a moment after the poll saw it final.
                deadline = time.perf_counter() + 5
                while height not in commit_times and time.perf_counter() < deadline:
                    await asyncio.sleep(0.005)
                end = max(commit_times.values()) if commit_times else time.perf_counter()
                # Which block holds each transaction, to turn commit times into per-tx latencies.
                latencies = []
                tx_batch = {tx_id: i // 100 for i, tx_id in enumerate(ids)}
                for h in range(1, height + 1):
                    block = (await client.get(f"/v1/blocks/{h}")).json()
                    for tx in block["transactions"]:
                        batch = tx_batch.get(bytes.fromhex(tx["id"]))
                        if batch is not None and h in commit_times:
                            latencies.append((commit_times[h] - sent_at[batch]) * 1000)
            stop.set()
            follower.cancel()
            rss = vm_hwm_mib(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            if db_name:
                drop_pg_database(args.db, db_name)
    committed_elapsed = end - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    db_kind = "postgresql" if args.db else "sqlite"
    summary = (
        f"engine=solo nodes=1 db={db_kind} N={len(txs)} submitted/s={accepted / submitted_elapsed:.0f} "
        f"committed/s={len(txs) / committed_elapsed:.0f} final_p50_ms={statistics.median(latencies):.0f} "
        f"final_p99_ms={p99:.0f} rss_mib_max={rss:.0f}"
    )
    print(f"blocks={height} back_pressure_retries={retries} measured_latencies={len(latencies)}", file=sys.stderr)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20_000, help="transfers to send (default 20000)")
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--recipients", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--db", help="PostgreSQL admin URL, e.g. postgresql+psycopg://postgres@127.0.0.1/postgres")
    args = parser.parse_args()
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

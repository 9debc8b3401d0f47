"""etcd_seqput's workload (../shared/peers/etcd_seqput.py) on a network of this node: one
client, one transfer at a time, each POSTed with `?wait=final` to the node that leads (Raft)
or to node0, the next sent when the answer says the last is final there.  For Raft that is
what etcd's put answers: committed by a majority and applied on the leader.  Prints
transfers/s and the latency p50/p99, as etcd_seqput prints puts/s.

    python bench/seqput.py --consensus raft --nodes 3 --seconds 20
    python bench/seqput.py --consensus raft --nodes 3 --seconds 20 --rate 500

With `--rate R` the same requests go out at a fixed R a second whatever the answers (an
open loop, as issue 13's "latency at 500 writes/s" asks): R/--clients a second from each
of `--clients` clients (8), each with its own keep-alive connection and its own sender,
so a transfer never waits behind another's nonce.  The clients are coroutines of one
event loop sending prepared HTTP/1.1 requests, not httpx: the generator shares the
machine with the nodes, and a heavy one is measured as their latency.  A transfer's
latency runs from the moment it was due, so a client that falls behind its schedule
counts against the node (the clients' timers wake on time: `precise_loop`).  Each client
has one request out at a time: once the latency passes clients/R seconds (16 ms at 500/s
with 8), the clients fall behind and the rate sent drops below R (per_s says what was
sent), each late transfer's latency counting from when it was due.

It starts its own network (free ports, a temporary directory, SQLite) and stops every
process at the end.  Figures: docs/benchmarks.md, "Raft beside etcd".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes import CpuMeter, message_counters, percentile, prepare_network, running, wait_all_ready  # noqa: E402
from throughput import make_keys  # noqa: E402

from ledger.address import address_of  # noqa: E402
from ledger.crypto import sha256  # noqa: E402
from ledger.transaction import new_transfer  # noqa: E402
from node.testnet import TESTNET_CHAIN_ID  # noqa: E402

MAX_RATE = 2_000  # transfers signed ahead: enough for --seconds at this rate
ANSWER_TIMEOUT_SECONDS = 60  # a `?wait=final` answer comes within 30 s, final or not


async def entry_node(http: httpx.AsyncClient, urls: list[str]) -> int:
    """The node that leads, for an engine with a leader; node0 otherwise."""
    for _ in range(200):
        states = []
        for url in urls:
            try:
                states.append((await http.get(f"{url}/v1/consensus")).json()["state"])
            except (httpx.HTTPError, ValueError, KeyError):
                states.append(None)
        leading = [i for i, state in enumerate(states) if state and state.get("role") == "leader"]
        if leading or not any(state and "leader" in (state.get("details") or {}) for state in states):
            return leading[0] if leading else 0
        await asyncio.sleep(0.05)
    raise RuntimeError("no node leads")


def put_loop(url: str, bodies: list[str], seconds: float) -> tuple[list[float], float]:
    """One transfer at a time until `seconds` pass: the latencies (ms) and the time taken."""
    latencies = []
    with httpx.Client(timeout=30) as http:
        start = time.perf_counter()
        for body in bodies:
            sent = time.perf_counter()
            if sent - start >= seconds:
                break
            answer = http.post(url, content=body, headers={"content-type": "application/json"})
            answer.raise_for_status()
            if answer.json().get("status") != "final":
                raise RuntimeError(f"not final: {answer.text}")
            latencies.append((time.perf_counter() - sent) * 1000)
        return latencies, time.perf_counter() - start


def final(status: bytes, answer: bytes) -> bool:
    """The node's answer to a `?wait=final` transfer says it is final."""
    return b" 200 " in status and json.loads(answer).get("status") == "final"


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer: its status line and its body (by Content-Length, or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, _, rest = head.partition(b"\r\n")
    headers = dict(line.lower().split(b":", 1) for line in rest.split(b"\r\n") if b":" in line)
    if b"content-length" in headers:
        return status, await reader.readexactly(int(headers[b"content-length"]))
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)  # and its CRLF
        if size == 0:
            return status, body
        body += chunk[:-2]


async def paced_client(host: str, port: int, path: str, bodies: list[str], start: float, interval: float,
                       accepted: Callable[[bytes, bytes], bool]) -> list[float]:
    """One client's share of an open loop, on a keep-alive connection of its own: bodies[i]
    is due at start + i * interval; each latency (ms) runs from the moment it was due."""
    reader, writer = await asyncio.open_connection(host, port)  # connected before the clock starts
    encoded = [body.encode() for body in bodies]
    requests = [(f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n").encode() + body for body in encoded]
    latencies = []
    try:
        for i, request in enumerate(requests):
            due = start + i * interval
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(request)
            try:
                status, answer = await asyncio.wait_for(read_answer(reader), ANSWER_TIMEOUT_SECONDS)
            except asyncio.IncompleteReadError:
                raise RuntimeError("the server closed the connection (Connection: close, or an idle "
                                   "keep-alive timed out: each client must send more often than every 5 s)") from None
            except asyncio.TimeoutError:
                raise RuntimeError(f"no answer within {ANSWER_TIMEOUT_SECONDS} s") from None
            if not accepted(status, answer):
                raise RuntimeError(f"refused: {status!r} {answer[:200]!r}")
            latencies.append((time.perf_counter() - due) * 1000)
    finally:
        writer.close()
    return latencies


def paced(url: str, shares: list[list[str]], rate: float,
          accepted: Callable[[bytes, bytes], bool] = final) -> tuple[list[float], float]:
    """Every client's share at once, the clients' schedules interleaved: the latencies (ms)
    and the time taken.  The clients are coroutines of one event loop writing prepared
    requests, so the load generator takes little of the machine the nodes share (8 httpx
    threads took a third of a core at 500/s, and that showed in the nodes' latency).
    `accepted(status line, body)` says whether an answer is the one awaited."""
    address = httpx.URL(url)
    path = address.raw_path.decode()
    interval = len(shares) / rate

    async def all_clients() -> tuple[list[float], float]:
        start = time.perf_counter() + 0.5  # every client made and connected by then
        runs = [paced_client(address.host, address.port, path, share, start + k / rate, interval, accepted)
                for k, share in enumerate(shares)]
        latencies = [latency for run in await asyncio.gather(*runs) for latency in run]
        return latencies, time.perf_counter() - start

    with asyncio.Runner(loop_factory=precise_loop) as runner:
        return runner.run(all_clients())


def precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers wake when due.  The default one waits in epoll, which counts
    in whole milliseconds and rounds up: requests left 0.6 ms after they were due (the median),
    and as latency runs from then, that counted as the node's (etcd's too: 1.67 ms against
    1.20 ms on time).  select() takes microseconds; it watches descriptors below 1024, which
    a bench process with a socket a client stays well under."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


async def run(args: argparse.Namespace, workdir: Path) -> str:
    clients = args.clients if args.rate else 1
    senders = make_keys(clients, b"bench-seqput")
    target = sha256(b"seqput-recipient")[:20]
    count = int(args.seconds * (args.rate or MAX_RATE)) // clients + 20
    shares = [[json.dumps({"raw": new_transfer(sender, TESTNET_CHAIN_ID, nonce, target, 1, fee=1).encode().hex()})
               for nonce in range(count)] for sender in senders]
    bodies = shares[0]
    network = prepare_network(workdir / f"seqput-{args.consensus}-{args.nodes}", args.nodes, args.consensus,
                              [address_of(sender.public_key) for sender in senders], args.params)
    latencies: list[float] = []
    with running(network):
        await wait_all_ready(network)
        async with httpx.AsyncClient(timeout=30) as http:
            entry = await entry_node(http, network.urls)
            url = f"{network.urls[entry]}/v1/transactions?wait=final"
            for share in shares:  # warm the node's caches
                for body in share[:20 // clients]:
                    (await http.post(url, content=body, headers={"content-type": "application/json"})).raise_for_status()
            sent_before, _ = await message_counters(network.urls)
            cpu = CpuMeter([process.pid for process in network.processes])
            cpu.start()
            # One at a time, the timed loop is etcd_seqput.py's: a synchronous httpx client, so
            # both are measured through the same client code.
            if args.rate:
                latencies, elapsed = await asyncio.to_thread(
                    paced, url, [share[20 // clients:] for share in shares], args.rate)
            else:
                latencies, elapsed = await asyncio.to_thread(put_loop, url, bodies[20:], args.seconds)
            busy = cpu.stop()
            sent = (await message_counters(network.urls))[0] - sent_before
    params = ",".join(f"{k}={v}" for k, v in sorted(args.params.items()))
    mode = f"rate={args.rate:g} clients={clients} " if args.rate else ""
    return (f"seqput engine={args.consensus} nodes={args.nodes} {mode}entry=node{entry} transfers={len(latencies)} "
            f"per_s={len(latencies) / elapsed:.0f} p50_ms={statistics.median(latencies):.2f} "
            f"p99_ms={percentile(latencies, 0.99):.2f} mean_ms={statistics.mean(latencies):.2f}"
            + " peer_messages/transfer=" + ",".join(f"{kind}:{n / len(latencies):.2f}" for kind, n in sent.most_common())
            + (f" params={params}" if params else "") + f" ({busy})")


def engine_param(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError("NAME=VALUE")
    return name, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consensus", choices=("solo", "bft", "pos", "raft"), default="raft")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--param", dest="params", type=engine_param, action="append", default=[], metavar="NAME=VALUE",
                        help="an engine parameter laid over the testnet's genesis")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="transfers a second in an open loop, from --clients clients [0: one at a time]")
    parser.add_argument("--clients", type=int, default=8, help="with --rate: clients, each its own connection [8]")
    args = parser.parse_args()
    args.params = dict(args.params)
    if not 1 <= args.nodes <= 16 or not 0 < args.seconds <= 600:
        parser.error("--nodes is 1 to 16, --seconds 0 to 600")
    if not 0 <= args.rate <= MAX_RATE or not 1 <= args.clients <= 64:
        parser.error(f"--rate is 0 to {MAX_RATE}, --clients 1 to 64")
    if args.rate and args.rate < args.clients / 4:
        parser.error("--rate must be at least --clients / 4: a client quiet for 5 s loses its keep-alive connection")
    with tempfile.TemporaryDirectory(prefix="bench-seqput-") as workdir:
        print(asyncio.run(run(args, Path(workdir))), flush=True)


if __name__ == "__main__":
    main()

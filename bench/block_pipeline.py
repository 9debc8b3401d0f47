"""How fast a solo node turns a backlog of ready transfers into committed blocks: the block
pipeline alone (build, seal, write, commit), without the API in front of it.

    python bench/block_pipeline.py
    python bench/block_pipeline.py -n 300000 --senders 300

A node runs in this process on a SQLite file (its store thread as in `ledger node`); its
mempool is filled with N signed transfers (BENCHMARK.md's shape: funded senders, fresh
recipients), admitted before the clock starts, and the clock runs from the engine's first
signal until the mempool is empty.  With a backlog every block is full: the figure is what
the pipeline could commit if admission kept up.  Through the API it does not
(bench/throughput.py admits about 16,000 transfers a second on this machine, and each
block takes all that is ready), so this says how far the pipeline is from being what bounds
a node.  Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import make_keys  # noqa: E402

from ledger.address import address_of  # noqa: E402
from ledger.crypto import sha256  # noqa: E402
from ledger.genesis import dev_genesis  # noqa: E402
from ledger.transaction import new_transfer  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.runtime import Node  # noqa: E402

RECIPIENTS = 1_000
NONCE_WINDOW = 1_000  # the mempool admits a sender's nonces this far ahead of its account
DRAIN_TIMEOUT_SECONDS = 300


async def drain(node: Node, transactions: list) -> tuple[float, int]:
    """Seconds from the first signal until every transfer is committed, and blocks made."""
    try:
        await node.start()
        now = node.now_ms()
        with node.lock:
            for tx in transactions:
                if not node.pool.add(tx, now, verified=True):
                    raise RuntimeError("a transfer was not admitted")
        first = node.head.height
        started = time.perf_counter()
        node.signal_txs()
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while len(node.pool):
            if node.failure is not None:
                raise RuntimeError(f"the node stopped: {node.failure}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(node.pool)} transfers still wait after {DRAIN_TIMEOUT_SECONDS} s")
            await asyncio.sleep(0.002)
        return time.perf_counter() - started, node.head.height - first
    finally:
        await node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="transfers in the backlog [100,000]")
    parser.add_argument("--senders", type=int, default=100)
    args = parser.parse_args()
    if not 1 <= args.senders <= 10_000 or not args.senders <= args.n <= min(1_000_000, NONCE_WINDOW * args.senders):
        parser.error(f"--senders is 1 to 10,000 and -n from --senders to 1,000,000, at most {NONCE_WINDOW:,} a sender")
    authority = make_keys(1, b"bench-pipeline-authority")[0]
    senders = make_keys(args.senders, b"bench-pipeline")
    genesis = dev_genesis(authority.public_key)
    genesis = replace(genesis, allocations={**genesis.allocations,
                                            **{address_of(key.public_key): 10**15 for key in senders}})
    recipients = [sha256(b"pipeline-recipient" + i.to_bytes(4, "big"))[:20] for i in range(RECIPIENTS)]
    transactions = [new_transfer(senders[i % args.senders], genesis.chain_id, i // args.senders,
                                 recipients[i % RECIPIENTS], 1, fee=1) for i in range(args.n)]
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as workdir:
        config = NodeConfig(data_dir=Path(workdir), db=f"sqlite:///{workdir}/chain.db",
                            mempool_capacity=args.n, mempool_per_sender=args.n)
        seconds, blocks = asyncio.run(drain(Node(config, genesis, authority), transactions))
    print(f"block_pipeline transfers={args.n} blocks={blocks} "
          f"seconds={seconds:.2f} committed/s={args.n / seconds:.0f} ms/block={1000 * seconds / blocks:.1f}",
          flush=True)


if __name__ == "__main__":
    main()

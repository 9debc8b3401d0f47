"""Chain store write throughput: ChainStore.commit_block, in transaction rows per second.

    python bench/store_commit.py                    # SQLite file in a temporary directory
    python bench/store_commit.py --db postgresql+psycopg://postgres@127.0.0.1:5432/postgres

With --db, the URL names a PostgreSQL server; the bench creates a scratch database
there and drops it afterwards, so reruns start from the same empty state.

Transfers follow BENCHMARK.md's shape (100 funded senders, 1,000 fresh recipients).
Everything is signed and every block's effects computed before the clock starts;
only commit_block is timed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import sqlalchemy as sa  # noqa: E402

from ledger.address import address_of  # noqa: E402
from ledger.block import Block, build_header  # noqa: E402
from ledger.genesis import dev_genesis  # noqa: E402
from ledger.hdkeys import dev_keys  # noqa: E402
from ledger.state import State  # noqa: E402
from ledger.store import ChainStore  # noqa: E402
from ledger.transaction import new_transfer  # noqa: E402
import migrations  # noqa: E402

SENDERS = 100
RECIPIENTS = 1_000


def prepare(blocks: int, per_block: int):
    keys = dev_keys(SENDERS)
    proposer = address_of(keys[0].public_key)
    genesis = dev_genesis(proposer, accounts=SENDERS)
    recipients = [hashlib.sha256(b"recipient %d" % i).digest()[:20] for i in range(RECIPIENTS)]
    state = State.from_allocations(genesis.allocations)
    parent = genesis.block().header
    nonces = [0] * SENDERS
    prepared = []
    for height in range(1, blocks + 1):
        transactions = []
        for i in range(per_block):
            sender = i % SENDERS
            transactions.append(
                new_transfer(keys[sender], genesis.chain_id, nonces[sender], recipients[(height * per_block + i) % RECIPIENTS], 1, 1)
            )
            nonces[sender] += 1
        header = build_header(genesis.chain_id, parent, genesis.timestamp + height * 1000, transactions, proposer)
        block = Block(header, tuple(transactions))
        effects = state.apply(block.transactions, proposer, genesis.block_reward)
        state.commit(effects)
        prepared.append((block, effects))
        parent = header
    return genesis, prepared


@contextmanager
def scratch_database(url: str | None):
    if url is None:
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{directory}/chain.db"
        return
    server = sa.make_url(url)
    name = f"ledger_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="a PostgreSQL server URL (default: SQLite in a temporary directory)")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--txs", type=int, default=5_000, help="transfers per block")
    args = parser.parse_args()

    started = time.perf_counter()
    genesis, prepared = prepare(args.blocks, args.txs)
    print(f"prepared {args.blocks} blocks of {args.txs} signed transfers in {time.perf_counter() - started:.1f}s",
          file=sys.stderr)

    with scratch_database(args.db) as url:
        store = ChainStore(url)
        try:
            migrations.upgrade(store)
            store.initialize(genesis)
            block_times = []
            for block, effects in prepared:
                t0 = time.perf_counter()
                store.commit_block(block, effects)
                block_times.append(time.perf_counter() - t0)
        finally:
            store.close()
    total = sum(block_times)
    rows = args.blocks * args.txs
    print(
        f"db={store.backend} blocks={args.blocks} txs_per_block={args.txs} "
        f"tx_rows/s={rows / total:,.0f} block_ms_median={sorted(block_times)[len(block_times) // 2] * 1000:.0f} "
        f"block_ms_max={max(block_times) * 1000:.0f}"
    )


if __name__ == "__main__":
    main()

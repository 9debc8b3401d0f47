"""Mempool admission and block selection on the benchmark workload (see ../shared/BENCHMARK.md).

20,000 transfers from 100 senders (200 each, in nonce order) to 1,000 fresh recipients,
all signed and then decoded from bytes before the clock starts, as the REST batch
endpoint hands them over.  Prints admissions per second with signature verification
and without it (verified=True, as after a worker verified them), and the time of
select(10_000) and of remove_committed for that block.

    .venv/bin/python -m bench.mempool_admit [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

from ledger.crypto import PrivateKey
from ledger.mempool import Mempool
from ledger.state import State, apply_transactions
from ledger.transaction import Transaction, new_transfer

CHAIN = "bench"
SENDERS = 100
TRANSFERS = 20_000
RECIPIENTS = 1_000
BATCH = 100
BLOCK = 10_000


def workload() -> tuple[State, list[bytes]]:
    keys = [PrivateKey(hashlib.sha256(b"bench-sender-%d" % i).digest()) for i in range(SENDERS)]
    recipients = [hashlib.sha256(b"bench-recipient-%d" % i).digest()[:20] for i in range(RECIPIENTS)]
    state = State()
    encoded = []
    per_sender = TRANSFERS // SENDERS
    for nonce in range(per_sender):  # interleaved senders, each in nonce order
        for index, key in enumerate(keys):
            recipient = recipients[(nonce * SENDERS + index) % RECIPIENTS]
            encoded.append(new_transfer(key, CHAIN, nonce, recipient, 1_000 + index, 1 + nonce % 7).encode())
    for key in keys:
        state.accounts[Transaction(CHAIN, 0, key.public_key, bytes(20), 1, 0).sender_address] = (10**15, 0, None)
    return state, encoded


def admit(state: State, encoded: list[bytes], verified: bool) -> tuple[float, Mempool]:
    txs = [Transaction.decode(data) for data in encoded]  # fresh objects: nothing cached in them
    pool = Mempool(CHAIN, state.get)
    start = time.perf_counter()
    if verified:
        for tx in txs:
            pool.add(tx, 0, verified=True)
    else:
        for offset in range(0, len(txs), BATCH):
            outcomes = pool.add_many(txs[offset : offset + BATCH], 0)
            assert all(outcome is True for outcome in outcomes), outcomes
    elapsed = time.perf_counter() - start
    assert len(pool) == len(txs)
    return len(txs) / elapsed, pool


def select_and_remove(state: State, pool: Mempool) -> tuple[float, float]:
    start = time.perf_counter()
    block = pool.select(BLOCK)
    selected = time.perf_counter() - start
    assert len(block) == BLOCK
    accounts = State(dict(state.accounts))
    accounts.commit(apply_transactions(accounts.accounts, block, bytes(20), 0))
    pool._accounts = accounts.get  # the pool now sees the committed state, as in the node
    start = time.perf_counter()
    pool.remove_committed(block)
    removed = time.perf_counter() - start
    assert len(pool) == TRANSFERS - BLOCK and pool.ready_count() == TRANSFERS - BLOCK
    return selected, removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    state, encoded = workload()
    with_sig, without_sig, select_ms, remove_ms = [], [], [], []
    for _ in range(runs):
        rate, _ = admit(state, encoded, verified=False)
        with_sig.append(rate)
        rate, pool = admit(state, encoded, verified=True)
        without_sig.append(rate)
        selected, removed = select_and_remove(state, pool)
        select_ms.append(selected * 1000)
        remove_ms.append(removed * 1000)
    print(
        f"mempool N={TRANSFERS} senders={SENDERS} runs={runs} (medians) "
        f"admit_verify/s={statistics.median(with_sig):,.0f} "
        f"admit_noverify/s={statistics.median(without_sig):,.0f} "
        f"select{BLOCK}_ms={statistics.median(select_ms):.1f} "
        f"remove_committed{BLOCK}_ms={statistics.median(remove_ms):.1f}"
    )


if __name__ == "__main__":
    main()

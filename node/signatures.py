"""Transaction signature checks for a sync answer, shared with worker processes.

A sync answer brings up to 500 blocks whose transactions this node never saw, and each
signature costs ~40 us of libsecp256k1.  On the event loop alone that is the larger part of
catching up, while the machine's other cores wait.  `SignaturePool` hands the raw
transactions to worker processes (shared nothing: bytes in, one verdict byte per
transaction out, in chunks large enough that a hop costs little beside the checks it
carries) and checks a share on the loop meanwhile.  The block check then skips the
signatures found good and checks the rest itself, so a verdict can only save work, never
let a bad transaction through.

`InlineChecks` is the same interface with no workers: it verifies nothing ahead, and the
block check verifies every signature as it goes.  The simulator and in-process tests use it,
so they stay deterministic and start no processes.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from ledger.codec import DecodeError
from ledger.transaction import InvalidTransaction, Transaction
from node.lifetime import die_with_parent

log = logging.getLogger("ledger.signatures")

CHUNK = 200  # transactions a worker job: ~8 ms of checks against well under 1 ms for the hop
MAX_WORKERS = 64


class SignatureChecks(Protocol):
    async def verified(self, transactions: Sequence[Transaction]) -> frozenset[bytes]:
        """The ids of `transactions` whose stateless checks, signature included, pass."""
        ...

    def close(self) -> None: ...


class InlineChecks:
    """No checks ahead: the block check verifies each signature itself."""

    workers = 0

    async def verified(self, transactions: Sequence[Transaction]) -> frozenset[bytes]:
        return frozenset()

    def close(self) -> None:
        pass


def workers_for(setting: int) -> int:
    """The pool's size: `setting` if it is 0 or more, else one fewer than the cores this
    process may use (the event loop keeps one)."""
    if setting >= 0:
        return min(setting, MAX_WORKERS)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, MAX_WORKERS))


def check_raw(chain_id: str, staking: bool, raws: Sequence[bytes]) -> bytes:
    """One verdict byte per raw transaction: 1 when it decodes and passes its stateless checks."""
    verdicts = bytearray(len(raws))
    for index, raw in enumerate(raws):
        try:
            Transaction.decode(raw).check_stateless(chain_id, staking=staking)
        except (DecodeError, InvalidTransaction):
            continue
        verdicts[index] = 1
    return bytes(verdicts)


def _init_worker(node_pid: int) -> None:
    die_with_parent(node_pid)  # a SIGKILLed node leaves no worker behind
    # Ctrl-C reaches the whole process group; the node closes its pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SignaturePool:
    """`workers` processes, started on first use; until they are up, answers are checked inline."""

    def __init__(self, workers: int, chain_id: str, staking: bool):
        if workers < 1:
            raise ValueError("a signature pool needs at least one worker; use InlineChecks for none")
        self.workers = workers
        self.chain_id = chain_id
        self.staking = staking
        self._executor: ProcessPoolExecutor | None = None
        self._warm: Future | None = None

    def _ready(self) -> ProcessPoolExecutor | None:
        if self._executor is None:
            # spawn, not fork: the node's event loop, threads and database connections stay out.
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            # Start every worker now (an interpreter and its imports, ~0.3 s each) and use the
            # pool once they answer: this answer is checked as if there were no pool.
            self._warm = self._executor.submit(check_raw, self.chain_id, self.staking, ())
            for _ in range(self.workers - 1):
                self._executor.submit(check_raw, self.chain_id, self.staking, ())
            log.info("starting %d signature worker process(es)", self.workers)
            return None
        assert self._warm is not None
        if not self._warm.done():
            return None
        if self._warm.exception() is not None:
            return None  # the workers could not start: everything is checked inline
        return self._executor

    async def verified(self, transactions: Sequence[Transaction]) -> frozenset[bytes]:
        if len(transactions) < 2 * CHUNK:
            return frozenset()  # a hop would cost about what it saves
        executor = self._ready()
        if executor is None:
            return frozenset()
        loop = asyncio.get_running_loop()
        # The workers take the front of the list, the loop the tail: with w workers the loop's
        # share is 1/(w+1), and both end at about the same time.
        own = len(transactions) // (self.workers + 1)
        shared = transactions[: len(transactions) - own]
        try:
            jobs = [
                (chunk, loop.run_in_executor(executor, check_raw, self.chain_id, self.staking,
                                             [tx.encode() for tx in chunk]))
                for chunk in (shared[start : start + CHUNK] for start in range(0, len(shared), CHUNK))
            ]
        except BrokenProcessPool:
            log.warning("a signature worker stopped; starting new ones, this answer is checked on the event loop")
            self.close()
            return frozenset()
        good = []
        for tx in transactions[len(shared):]:
            try:
                tx.check_stateless(self.chain_id, staking=self.staking)
            except InvalidTransaction:
                continue
            good.append(tx.id)
        for chunk, job in jobs:
            try:
                verdicts = await job
            except Exception as exc:  # a worker died: the block check verifies those itself
                log.warning("a signature worker failed (%s); checking on the event loop", exc)
                continue
            good.extend(tx.id for tx, ok in zip(chunk, verdicts) if ok)
        return frozenset(good)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

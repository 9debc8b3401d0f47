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


class CheckBatch(Protocol):
    def add(self, transactions: Sequence[Transaction]) -> None:
        """More transactions to check (work may start at once)."""
        ...

    async def finish(self) -> frozenset[bytes]:
        """The ids of every added transaction whose stateless checks, signature included, pass."""
        ...


class SignatureChecks(Protocol):
    def begin(self, expected: int) -> CheckBatch | None:
        """A batch for about `expected` transactions, or None when checking them ahead would
        not save the event loop work (the block check then verifies each itself)."""
        ...

    def close(self) -> None: ...


class InlineChecks:
    """No checks ahead: the block check verifies each signature itself."""

    def begin(self, expected: int) -> CheckBatch | None:
        return None

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


class _PoolBatch:
    """Chunks go to the workers as they fill, up to the workers' share; the rest the loop checks
    in `finish`, while the workers still run."""

    def __init__(self, pool: SignaturePool, executor: ProcessPoolExecutor, workers_share: int):
        self.pool = pool
        self.executor: ProcessPoolExecutor | None = executor
        self.workers_share = workers_share
        self.shared = 0
        self.filling: list[Transaction] = []
        self.own: list[Transaction] = []
        self.jobs: list[tuple[list[Transaction], asyncio.Future]] = []

    def add(self, transactions: Sequence[Transaction]) -> None:
        for tx in transactions:
            if self.executor is None or self.shared >= self.workers_share:
                self.own.append(tx)
                continue
            self.filling.append(tx)
            self.shared += 1
            if len(self.filling) >= CHUNK:
                self._submit()

    def _submit(self) -> None:
        chunk, self.filling = self.filling, []
        if self.executor is None:
            self.own.extend(chunk)
            return
        pool = self.pool
        try:
            job = asyncio.get_running_loop().run_in_executor(
                self.executor, check_raw, pool.chain_id, pool.staking, [tx.encode() for tx in chunk])
        except (BrokenProcessPool, RuntimeError):  # a worker died, or the pool was closed under us
            log.warning("the signature workers stopped; checking on the event loop")
            pool._broken(self.executor)
            self.executor = None
            return  # this chunk is left to the block check
        self.jobs.append((chunk, job))

    async def finish(self) -> frozenset[bytes]:
        if self.filling:
            self._submit()
        pool = self.pool
        good = []
        for tx in self.own:
            try:
                tx.check_stateless(pool.chain_id, staking=pool.staking)
            except InvalidTransaction:
                continue
            good.append(tx.id)
        for chunk, job in self.jobs:
            try:
                verdicts = await job
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise  # this task is being cancelled, not just the job
                continue  # the pool closed under it (the node stops): the block check verifies those
            except Exception as exc:  # a worker died: the block check verifies those itself
                log.warning("a signature worker failed (%s); checking on the event loop", exc)
                continue
            good.extend(tx.id for tx, ok in zip(chunk, verdicts) if ok)
        return frozenset(good)


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
        self._closed = False  # the node stops: no new workers

    def _ready(self) -> ProcessPoolExecutor | None:
        if self._closed:
            return None
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
            log.warning("the signature workers could not start (%s); checking on the event loop", self._warm.exception())
            self.close()
            return None
        return self._executor

    def begin(self, expected: int) -> _PoolBatch | None:
        if expected < 2 * CHUNK:
            return None  # a hop would cost about what it saves
        executor = self._ready()
        if executor is None:
            return None
        # The workers take the front, the loop the tail: with w workers the loop's share is
        # 1/(w+1), and both end at about the same time.
        return _PoolBatch(self, executor, expected - expected // (self.workers + 1))

    def _broken(self, executor: ProcessPoolExecutor) -> None:
        """A worker died: the next batch starts new ones."""
        if self._executor is executor:
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

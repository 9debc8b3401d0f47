"""Transaction signature checks, shared with worker processes.

A sync answer brings up to 500 blocks whose transactions this node never saw, and a batch
a client submits or a peer gossips brings up to a thousand; each signature costs 40-65 us of
libsecp256k1, on the event loop alone the larger part of admitting a transaction or catching
up, while the machine's other cores wait.  `SignaturePool` hands the raw
transactions to worker processes (shared nothing: bytes in, one verdict byte per
transaction out, in chunks large enough that a hop costs little beside the checks it
carries) and checks a share on the loop meanwhile.  The block check then skips the
signatures found good and checks the rest itself, so a verdict can only save work, never
let a bad transaction through.

Each worker is a child process (`python -m node.signatures`) fed through its stdin and read
through its stdout by the event loop itself: length-prefixed raw transactions in, one
verdict byte each out, in order.  No thread stands between the loop and a worker (a
`ProcessPoolExecutor`'s feeder thread had to win the GIL from the busy loop twice a job,
which cost more than the checks saved).

`InlineChecks` is the same interface with no workers: it verifies nothing ahead, and the
block check verifies every signature as it goes.  The simulator and in-process tests use it,
so they stay deterministic and start no processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from ledger.codec import DecodeError
from ledger.transaction import InvalidTransaction, Transaction
from node.lifetime import die_with_parent

log = logging.getLogger("ledger.signatures")

CHUNK = 200  # transactions a worker job: ~8 ms of checks against well under 1 ms for the hop
SYNC_AHEAD = 2 * CHUNK  # a sync answer with fewer is checked as it is imported
ADMIT_AHEAD = 32  # a submitted or gossiped batch with fewer is checked on the loop: the hop
#                   costs the loop ~0.1 ms, what the loop saves is ~1 ms at 32
MAX_WORKERS = 64
PIPE_BYTES = 1024 * 1024  # a worker's input pipe: room for a sync answer's share
PIPES_BYTES = 16 * 1024 * 1024  # all the workers' input pipes together
START_SECONDS = 30  # for the workers' first answer; past it the loop checks everything itself
RETRY_SECONDS = 30  # after a failed start, the wait before the next one


class CheckBatch(Protocol):
    def add(self, transactions: Sequence[Transaction]) -> None:
        """More transactions to check (work may start at once)."""
        ...

    async def finish(self) -> frozenset[bytes]:
        """The ids of every added transaction whose stateless checks, signature included, pass."""
        ...


class SignatureChecks(Protocol):
    ahead: bool  # whether `begin` ever gives a batch (False: every check is inline)

    def begin(self, expected: int, fewest: int = SYNC_AHEAD, *, loop_share: bool = True) -> CheckBatch | None:
        """A batch for about `expected` transactions, or None when checking them ahead would
        not save the event loop work (fewer than `fewest`, or no workers): the caller then
        checks each itself.  With loop_share=False the workers check them all, for a batch
        begun while the loop has other work to do."""
        ...

    async def close(self) -> None: ...


class InlineChecks:
    """No checks ahead: the block check verifies each signature itself."""

    ahead = False

    def begin(self, expected: int, fewest: int = SYNC_AHEAD, *, loop_share: bool = True) -> CheckBatch | None:
        return None

    async def close(self) -> None:
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


class WorkerGone(Exception):
    """A worker exited, or the pool closed, before answering."""


def encode_request(raws: Sequence[bytes]) -> bytes:
    parts = [len(raws).to_bytes(4, "big")]
    for raw in raws:
        parts.append(len(raw).to_bytes(4, "big"))
        parts.append(raw)
    body = b"".join(parts)
    return len(body).to_bytes(4, "big") + body


def decode_request(body: bytes) -> list[bytes]:
    count = int.from_bytes(body[:4], "big")
    raws, at = [], 4
    for _ in range(count):
        size = int.from_bytes(body[at : at + 4], "big")
        raws.append(body[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(body):
        raise ValueError("a request's lengths do not add up to its size")
    return raws


class _Worker:
    """One worker process and the answers it owes, oldest first."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.owed: deque[tuple[asyncio.Future, int]] = deque()
        self.load = 0  # transactions sent and not yet answered
        self.alive = True
        self.reader = asyncio.get_running_loop().create_task(self._read())

    def check(self, raws: Sequence[bytes]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if not self.alive:
            future.set_exception(WorkerGone("the worker stopped"))
            future.exception()  # retrieved, as in stop()
            return future
        assert self.process.stdin is not None
        self.process.stdin.write(encode_request(raws))
        self.owed.append((future, len(raws)))
        self.load += len(raws)
        return future

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                size = int.from_bytes(await stdout.readexactly(4), "big")
                count = self.owed[0][1] if self.owed else None
                if size != count:  # the request stays owed: stop() fails it
                    raise WorkerGone(f"a worker answered {size} verdicts for {count} transactions")
                verdicts = await stdout.readexactly(size)
                future, _ = self.owed.popleft()
                self.load -= count
                if not future.done():
                    future.set_result(verdicts)
        except (asyncio.IncompleteReadError, ConnectionError, WorkerGone) as exc:
            if not isinstance(exc, asyncio.IncompleteReadError) or exc.partial or self.owed:
                log.warning("a signature worker stopped (%s); checking on the event loop", exc or "end of output")
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill it and fail what it owes (in the loop)."""
        self.alive = False
        while self.owed:
            future, _ = self.owed.popleft()
            if not future.done():
                future.set_exception(WorkerGone("the worker stopped"))
                future.exception()  # retrieved: a batch whose task was cancelled no longer awaits it
        self.load = 0
        if self.process.returncode is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass
        if asyncio.current_task() is not self.reader:
            self.reader.cancel()

    async def stopped(self) -> None:
        """Stop it and wait until it has exited, so nothing of it outlives the loop."""
        self.stop()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except asyncio.TimeoutError:
            log.warning("signature worker %d did not exit", self.process.pid)


class _PoolBatch:
    """Chunks go to the workers as they fill, up to the workers' share; the rest the loop checks
    in `finish`, while the workers still run."""

    def __init__(self, pool: SignaturePool, workers_share: int):
        self.pool = pool
        self.workers_share = workers_share
        self.shared = 0
        self.filling: list[Transaction] = []
        self.own: list[Transaction] = []
        self.jobs: list[tuple[list[Transaction], asyncio.Future]] = []
        # Every worker gets a part of the share, at most CHUNK at a time.
        self.chunk = max(1, min(CHUNK, -(-workers_share // pool.workers)))

    def add(self, transactions: Sequence[Transaction]) -> None:
        for tx in transactions:
            if self.shared >= self.workers_share:
                self.own.append(tx)
                continue
            self.filling.append(tx)
            self.shared += 1
            if len(self.filling) >= self.chunk:
                self._submit()

    def _submit(self) -> None:
        chunk, self.filling = self.filling, []
        worker = self.pool._least_loaded()
        if worker is None:  # the workers stopped or the pool closed: the loop checks the rest
            self.own.extend(chunk)
            self.workers_share = self.shared
            return
        self.jobs.append((chunk, worker.check([tx.encode() for tx in chunk])))

    async def finish(self) -> frozenset[bytes]:
        if self.filling:
            self._submit()
        pool = self.pool
        good = []
        for index, tx in enumerate(self.own):
            if index and not index % CHUNK and self.jobs:
                # A pipe holds ~64 KiB, a few hundred transactions: the loop hands the workers
                # the rest of their share only when it gets back to its selector.
                await asyncio.sleep(0)
            try:
                tx.check_stateless(pool.chain_id, staking=pool.staking)
            except InvalidTransaction:
                continue
            good.append(tx.id)
        for chunk, job in self.jobs:
            try:
                verdicts = await job
            except WorkerGone:
                continue  # the caller checks those itself
            good.extend(tx.id for tx, ok in zip(chunk, verdicts) if ok)
        return frozenset(good)


class SignaturePool:
    """`workers` processes, started on first use; until they are up, batches are checked inline."""

    ahead = True

    def __init__(self, workers: int, chain_id: str, staking: bool):
        if workers < 1:
            raise ValueError("a signature pool needs at least one worker; use InlineChecks for none")
        self.workers = workers
        self.chain_id = chain_id
        self.staking = staking
        self._live: list[_Worker] = []
        self._starting: asyncio.Task | None = None
        self._launched: list[_Worker] = []  # started, not yet answering
        self._retry_at = 0.0  # after a failed start, not before this (monotonic seconds)
        self._closed = False  # the node stops: no new workers

    def _ready(self) -> bool:
        if self._closed:
            return False
        self._live = [worker for worker in self._live if worker.alive]
        if self._live:
            return True
        if (self._starting is None or self._starting.done()) and time.monotonic() >= self._retry_at:
            # Every worker is started at once (an interpreter and its imports, ~0.3 s each); the
            # batches until they answer are checked as if there were no pool.
            self._starting = asyncio.get_running_loop().create_task(self._start())
        return False

    async def _start(self) -> None:
        launched = self._launched = []
        try:
            for _ in range(self.workers):
                if self._closed:
                    break
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-P", "-m", "node.signatures", self.chain_id, "1" if self.staking else "0",
                    str(os.getpid()), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    env=_worker_env())
                _widen_pipe(process, self.workers)
                launched.append(_Worker(process))
            if not self._closed:
                log.info("starting %d signature worker process(es)", self.workers)
                await asyncio.wait_for(asyncio.gather(*(worker.check([]) for worker in launched)), START_SECONDS)
        except Exception as exc:  # noqa: BLE001 - whatever stops them, the loop checks everything itself
            if not self._closed:
                log.warning("the signature workers could not start (%s); checking on the event loop, trying "
                            "again in %d s", exc or type(exc).__name__, RETRY_SECONDS)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            await asyncio.gather(*(worker.stopped() for worker in launched))
            return
        except asyncio.CancelledError:
            for worker in launched:  # the loop ends: no worker outlives it
                worker.stop()
            raise
        finally:
            self._launched = []
        if self._closed:  # the node stopped meanwhile
            await asyncio.gather(*(worker.stopped() for worker in launched))
            return
        self._live = launched

    def _least_loaded(self) -> _Worker | None:
        live = [worker for worker in self._live if worker.alive]
        return min(live, key=lambda worker: worker.load) if live else None

    def begin(self, expected: int, fewest: int = SYNC_AHEAD, *, loop_share: bool = True) -> _PoolBatch | None:
        if expected < fewest:
            return None  # a hop would cost about what it saves
        if not self._ready():
            return None
        if not loop_share:
            return _PoolBatch(self, expected)
        # The workers take the front, the loop the tail: with w workers the loop's share is
        # 1/(w+1), and both end at about the same time.
        return _PoolBatch(self, expected - expected // (self.workers + 1))

    async def close(self) -> None:
        self._closed = True
        for worker in self._launched:
            worker.stop()  # a start under way ends at once and waits for their exit
        if self._starting is not None:
            await asyncio.wait([self._starting])
        live, self._live = self._live, []
        await asyncio.gather(*(worker.stopped() for worker in live))


def _widen_pipe(process: asyncio.subprocess.Process, workers: int) -> None:
    """Room in the worker's input pipe for a whole sync answer's share (~1 MiB, the default
    limit for an unprivileged process), so the worker never waits for the busy loop to hand
    it the rest; all the workers' pipes together stay within PIPES_BYTES (a user's pipes
    beyond 64 MiB get the smallest size)."""
    try:
        pipe = process.stdin.transport.get_extra_info("pipe")  # type: ignore[union-attr]
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, max(64 * 1024, min(PIPE_BYTES, PIPES_BYTES // workers)))
    except (AttributeError, OSError):  # not Linux, or a lower limit: the default pipe works too
        pass


def _worker_env() -> dict[str, str]:
    """The node's environment, with the node's own copy of this package first on the path
    (the worker starts with -P: not from whatever folder the node runs in), unless it is
    installed, where the interpreter finds it anyway."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(root), env.get("PYTHONPATH"))))
    return env


def serve(chain_id: str, staking: bool, node_pid: int, requests: BinaryIO, answers: BinaryIO) -> None:
    """A worker's life: answer each request until the node closes its end."""
    die_with_parent(node_pid)  # a SIGKILLed node leaves no worker behind
    # Ctrl-C reaches the whole process group; the node stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        head = requests.read(4)
        if len(head) < 4:
            return
        body = requests.read(int.from_bytes(head, "big"))
        verdicts = check_raw(chain_id, staking, decode_request(body))
        answers.write(len(verdicts).to_bytes(4, "big") + verdicts)
        answers.flush()


if __name__ == "__main__":
    # The answers get a descriptor of their own; anything else printed goes to stderr and
    # cannot break their framing.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.stdin.buffer, answers)

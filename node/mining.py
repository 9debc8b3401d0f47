"""Mining in a worker process, so the event loop keeps serving while nonces are searched.

The runtime performs the engine's Mine(header, target) by handing the worker slices
of the nonce space; StopMining (or a new Mine) simply stops handing out slices, so a
job ends within one slice (about a tenth of a second).  A found nonce comes back to
the engine as a Mined event.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from consensus.mining import search, sealing_prefix, seal_with_nonce
from ledger.block import BlockHeader
from node.lifetime import die_with_parent

log = logging.getLogger("ledger.mining")

SLICE = 50_000  # nonces a worker tries before reporting back (~0.1 s of SHA-256 in Python)
# Below the nodes: four testnet nodes and their four miners share two cores, and miners at
# the nodes' priority slowed every node's start-up (and its API) for the hashes' sake.  An
# idle node still leaves its miner the whole core.
MINER_NICENESS = 10


def _init_worker(node_pid: int) -> None:
    die_with_parent(node_pid)  # a SIGKILLed node must not leave its worker mining forever
    # Ctrl-C in a terminal reaches the whole process group; the node stops its miner itself,
    # and a worker killed by the KeyboardInterrupt would leave the pool's semaphores behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(MINER_NICENESS)


class ProcessMiner:
    def __init__(self, on_hashes: Callable[[int, float], None] | None = None):
        self._pool: ProcessPoolExecutor | None = None
        self._job: asyncio.Task | None = None
        self._on_hashes = on_hashes
        self.hash_rate = 0.0

    def start(self, header: BlockHeader, target: int, on_found: Callable[[BlockHeader], None]) -> None:
        self.stop()
        if self._pool is None:
            # spawn, not fork: the node's event loop and database connections stay out of the worker.
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        self._job = asyncio.get_running_loop().create_task(self._run(header, target, on_found))

    def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None

    async def _run(self, header: BlockHeader, target: int, on_found: Callable[[BlockHeader], None]) -> None:
        loop = asyncio.get_running_loop()
        prefix = sealing_prefix(header)
        nonce = 0
        while True:
            started = time.perf_counter()
            found = await loop.run_in_executor(self._pool, search, prefix, target, nonce, SLICE)
            elapsed = time.perf_counter() - started
            self.hash_rate = SLICE / elapsed if elapsed > 0 else 0.0
            if self._on_hashes is not None:
                self._on_hashes(SLICE if found is None else found - nonce + 1, self.hash_rate)
            if found is not None:
                self._job = None
                on_found(seal_with_nonce(header, found))
                return
            nonce += SLICE

    def close(self) -> None:
        self.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

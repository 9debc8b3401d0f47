"""Linearizable reads on a node (Raft's ReadIndex): a read waits until the engine names a
height that reflects every write committed before the read arrived, and the node's head has
reached it.  Mixed into Node; the engine does the confirming (consensus/raft/engine.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from api.service import ReadRefused
from consensus import engine as ev
from consensus.engine import Engine
from ledger.block import BlockHeader

READ_TIMEOUT_SECONDS = 5.0


class ReadBarrier:
    engine: Engine
    head: BlockHeader
    now_ms: Callable[[], int]
    _stopping: bool

    def feed(self, event: ev.Event) -> None: ...

    def _init_reads(self) -> None:
        self._read_ids = 0
        self._reads_asked: dict[int, asyncio.Future[int]] = {}  # request id -> the engine's answer
        self._reads_waiting: list[tuple[int, asyncio.Future[int]]] = []  # (height, future) for the head

    async def read_barrier(self) -> int:
        """The height a linearizable read must see; returns once the head is there.  ReadRefused
        when the engine offers no such reads, cannot confirm its leader, or time runs out."""
        if not self.engine.reads_linearizable:
            raise ReadRefused("no_linearizable_reads", f"the {self.engine.name} engine has no leader to confirm reads "
                                                      "with: every read is this node's committed state")
        if self._stopping:
            raise ReadRefused("shutting_down", "the node is shutting down")
        loop = asyncio.get_running_loop()
        self._read_ids += 1
        request = self._read_ids
        asked: asyncio.Future[int] = loop.create_future()
        self._reads_asked[request] = asked
        self.feed(ev.ReadIndexRequested(self.now_ms(), request))
        try:
            index = await asyncio.wait_for(asked, READ_TIMEOUT_SECONDS)
            if self.head.height >= index:
                return index
            reached: asyncio.Future[int] = loop.create_future()
            self._reads_waiting.append((index, reached))
            return await asyncio.wait_for(reached, READ_TIMEOUT_SECONDS)
        except TimeoutError:
            raise ReadRefused("read_timeout", f"the read was not confirmed within {READ_TIMEOUT_SECONDS:g} s "
                                              "(no leader reachable?)") from None
        finally:
            self._reads_asked.pop(request, None)

    def read_answered(self, action: ev.ReadIndexReady | ev.ReadIndexFailed) -> None:
        asked = self._reads_asked.get(action.request)
        if asked is None or asked.done():
            return
        if isinstance(action, ev.ReadIndexReady):
            asked.set_result(action.index)
        else:
            asked.set_exception(ReadRefused("leader_unavailable", action.reason))

    def release_reads(self) -> None:
        """The head moved: reads waiting for it to reach their height go on."""
        height = self.head.height
        still = []
        for index, reached in self._reads_waiting:
            if reached.done():
                continue
            if height >= index:
                reached.set_result(index)
            else:
                still.append((index, reached))
        self._reads_waiting = still

"""Requests that wait for transactions to become final (`wait=final`), and what answers them.

The runtime reports each committed block's transaction ids and the engine's finalized
height; a waiter is answered once the block holding its transaction is at or below it.
A reorg drops the reverted blocks from the not-yet-final list (their transactions are
pending again, or in the new branch, which reports them anew).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from api.service import TxStatusName


class FinalityWaiters:
    def __init__(self) -> None:
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._unfinal: deque[tuple[int, list[bytes]]] = deque()  # (height, tx ids) of included, not yet final blocks
        self._ended = False  # stopping: requests answer at once

    def committed(self, height: int, tx_ids: list[bytes], finalized_height: int) -> None:
        self._unfinal.append((height, tx_ids))
        self.finalized(finalized_height)

    def finalized(self, finalized_height: int) -> None:
        """Blocks up to `finalized_height` are final: their waiters answer."""
        while self._unfinal and self._unfinal[0][0] <= finalized_height:
            _, ids = self._unfinal.popleft()
            if self._waiters:
                for tx_id in ids:
                    for future in self._waiters.pop(tx_id, ()):
                        if not future.done():
                            future.set_result("final")

    def reverted_above(self, height: int) -> None:
        while self._unfinal and self._unfinal[-1][0] > height:
            self._unfinal.pop()

    def dropped(self, tx_ids: list[bytes]) -> None:
        """These transactions left the node (a dev revert emptied the mempool): their waiters
        answer now, with the status the store gives, instead of sitting out the timeout."""
        for tx_id in tx_ids:
            for future in self._waiters.pop(tx_id, ()):
                if not future.done():
                    future.cancel()

    def end(self) -> None:
        """Answer every waiting request now with the status it has, and later ones at once:
        the node is stopping, and the HTTP server's graceful shutdown must not sit out their
        timeouts (it would, then fail them with a 500)."""
        self._ended = True
        self.cancel_all()

    def cancel_all(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.cancel()

    async def wait(
        self, tx_ids: list[bytes], timeout: float, status_of: Callable[[bytes], Awaitable[TxStatusName]],
        pending: Callable[[bytes], bool],
    ) -> dict[bytes, TxStatusName]:
        """Each id's status once all are final or `timeout` seconds have passed.  `status_of`
        reads one id's current status (the store); `pending` says whether it is in the mempool."""
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, asyncio.Future] = {}
        for tx_id in tx_ids:
            if not pending(tx_id) and await status_of(tx_id) == "final":
                continue
            future = loop.create_future()
            self._waiters.setdefault(tx_id, []).append(future)
            waiting[tx_id] = future
        if waiting and not self._ended:
            await asyncio.wait(waiting.values(), timeout=timeout)
        for tx_id, future in waiting.items():
            if not future.done():
                future.cancel()
                waiters = self._waiters.get(tx_id)
                if waiters is not None:
                    if future in waiters:
                        waiters.remove(future)
                    if not waiters:
                        del self._waiters[tx_id]
        statuses: dict[bytes, TxStatusName] = {}
        for tx_id in tx_ids:
            future = waiting.get(tx_id)
            if future is None or (future.done() and not future.cancelled()):
                statuses[tx_id] = "final"
            else:
                statuses[tx_id] = await status_of(tx_id)
        return statuses

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


class _Wait:
    """One request's wait: `done` resolves once every id it waits for is settled, final or
    not (dropped, or the node stopping).  Settled synchronously, so the request's task is
    woken by the block's commit itself, one loop turn later, not after a chain of callbacks."""

    __slots__ = ("done", "left", "final")

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.left: set[bytes] = set()
        self.final: set[bytes] = set()

    def settle(self, tx_id: bytes, final: bool) -> None:
        self.left.discard(tx_id)
        if final:
            self.final.add(tx_id)
        if not self.left and not self.done.done():
            self.done.set_result(None)


class FinalityWaiters:
    def __init__(self) -> None:
        self._waiters: dict[bytes, list[_Wait]] = {}
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
                    for wait in self._waiters.pop(tx_id, ()):
                        wait.settle(tx_id, final=True)

    def reverted_above(self, height: int) -> None:
        while self._unfinal and self._unfinal[-1][0] > height:
            self._unfinal.pop()

    def dropped(self, tx_ids: list[bytes]) -> None:
        """These transactions left the node (a dev revert emptied the mempool): their waiters
        answer now, with the status the store gives, instead of sitting out the timeout."""
        for tx_id in tx_ids:
            for wait in self._waiters.pop(tx_id, ()):
                wait.settle(tx_id, final=False)

    def end(self) -> None:
        """Answer every waiting request now with the status it has, and later ones at once:
        the node is stopping, and the HTTP server's graceful shutdown must not sit out their
        timeouts (it would, then fail them with a 500)."""
        self._ended = True
        self.cancel_all()

    def cancel_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for tx_id, waits in waiters.items():
            for wait in waits:
                wait.settle(tx_id, final=False)

    async def wait(
        self, tx_ids: list[bytes], timeout: float, status_of: Callable[[bytes], Awaitable[TxStatusName]],
        pending: Callable[[bytes], bool],
    ) -> dict[bytes, TxStatusName]:
        """Each id's status once all are final or `timeout` seconds have passed.  `status_of`
        reads one id's current status (the store); `pending` says whether it is in the mempool."""
        loop = asyncio.get_running_loop()
        wait = _Wait(loop.create_future())
        try:
            for tx_id in tx_ids:
                if not pending(tx_id) and await status_of(tx_id) == "final":
                    wait.final.add(tx_id)
                elif tx_id not in wait.left and tx_id not in wait.final:
                    wait.left.add(tx_id)
                    self._waiters.setdefault(tx_id, []).append(wait)
            if wait.left and not self._ended:
                if wait.done.done():
                    # Every id registered before a store read above settled during it; the
                    # ones registered after still wait.
                    wait.done = loop.create_future()
                try:
                    async with asyncio.timeout(timeout):
                        await wait.done
                except TimeoutError:
                    pass
        finally:
            for tx_id in wait.left:
                waits = self._waiters.get(tx_id)
                if waits is not None:
                    if wait in waits:
                        waits.remove(wait)
                    if not waits:
                        del self._waiters[tx_id]
        statuses: dict[bytes, TxStatusName] = {}
        for tx_id in tx_ids:
            statuses[tx_id] = "final" if tx_id in wait.final else await status_of(tx_id)
        return statuses

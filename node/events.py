"""The live events stream's publisher: blocks, admitted transactions and reorgs, to every listener.

A slow reader loses events rather than holding the node's memory: each listener has a
bounded queue; transaction events stop at half of it, block events make room by
dropping the oldest.  None in a queue tells its reader the node is stopping.
"""

from __future__ import annotations

import asyncio

from api.service import Event

SUBSCRIBER_QUEUE = 1024


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    def __bool__(self) -> bool:
        """True while anyone listens (callers skip building events nobody reads)."""
        return bool(self._subscribers)

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)

    def close(self) -> None:
        """End every stream, so the HTTP server's graceful shutdown need not wait for them."""
        for queue in list(self._subscribers):
            while True:
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()  # make room: the end matters more than a stale event
        self._subscribers.clear()

    def publish(self, kind: str, data: dict) -> None:
        if not self._subscribers:
            return
        event = Event(kind, data)
        for queue in list(self._subscribers):
            if kind == "tx" and queue.qsize() >= SUBSCRIBER_QUEUE // 2:
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

"""The live events stream as Server-Sent Events.

One subscriber per connection: the stream subscribes to the node when the response
starts and unsubscribes when the client goes away.  A disconnect is noticed from
the ASGI `http.disconnect` message, not only when a write fails, so an idle
subscriber does not linger until the next keepalive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.service import Event, NodeService

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
RECONNECT_MS = 3000


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def format_event(event: Event) -> bytes:
    """`event: <kind>` and one `data:` line of compact JSON (JSON never holds a raw newline)."""
    kind = event.kind.replace("\r", " ").replace("\n", " ")
    data = json.dumps(event.data, default=_json_default, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, service: NodeService, keepalive_seconds: float = KEEPALIVE_SECONDS) -> None:
        self.service = service
        self.keepalive_seconds = keepalive_seconds
        self.status_code = 200
        self.background = None
        # No `body` attribute: init_headers then adds no Content-Length to an endless stream.
        self.init_headers(
            {
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # tell a reverse proxy not to buffer the stream
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        queue = self.service.subscribe()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(
                {"type": "http.response.body", "body": f"retry: {RECONNECT_MS}\n: connected\n\n".encode(), "more_body": True}
            )
            async with anyio.create_task_group() as tasks:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch_disconnect)
                await self._pump(queue, send)
                # The node is stopping (or the client went): end the response properly, or
                # the server logs that the app returned without completing it.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tasks.cancel_scope.cancel()
        except OSError:
            pass  # the client went away while we wrote
        finally:
            self.service.unsubscribe(queue)

    async def _pump(self, queue: asyncio.Queue[Event | None], send: Send) -> None:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), self.keepalive_seconds)
            except TimeoutError:
                chunk = b": keepalive\n\n"
            else:
                if event is None:  # the node is shutting down: end the stream so the server can stop
                    return
                try:
                    chunk = format_event(event)
                except (TypeError, ValueError):
                    logger.exception("dropping an event that cannot be written as JSON: %r", event.kind)
                    continue
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except OSError:
                return

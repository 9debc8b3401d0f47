"""HTTP/1.1 limits uvicorn does not enforce: a deadline for a request's headers, one for
its body, and a cap on concurrent connections.

uvicorn closes an idle kept-alive connection, but a client that opens a connection and
sends its headers one byte at a time (slowloris) is held for as long as it keeps
dripping, and nothing bounds how many such connections there are but the open-files
limit.  The protocol classes here are uvicorn's own (httptools, or h11 when httptools
is missing or h11 is asked for) with three additions:

- a header deadline: from the moment a connection opens (its first request) or the
  first byte of a request on a kept-alive connection, to the end of that request's
  headers.  It is fixed when it is armed, so bytes that keep arriving do not extend it.
  At the deadline the client gets 408 `header_timeout` and the connection is closed.
- a body deadline: from the end of the headers to the end of the body; at it, 408
  `body_timeout` (when no response has started) and the connection is closed.  The
  application sees a disconnect, so a half-received body is never acted on.
- a connection cap: a connection that opens while `max_connections` others are open is
  answered 503 `too_many_connections` (Retry-After: 1) on its first request, and closed.
  Connections already open are not disturbed.

The answers are RFC 9457 problems like every other error of the API.  `protocol_class`
makes the class uvicorn.Config takes as `http=`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

from api.problems import PROBLEM_CONTENT_TYPE, RETRY_AFTER_SECONDS, problem, problem_bytes

log = logging.getLogger("ledger.http")

# File descriptors the node needs besides API connections: peers, the database, logs.
RESERVED_FILES = 256


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2048

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.max_connections < 1:
            raise ValueError("HttpLimits: timeouts must be positive and max_connections at least 1")


def _raw_problem(reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 response carrying a problem, for answers written by the
    protocol itself (no application task is running for the request)."""
    document = problem(reason, detail)
    body = problem_bytes(document)
    status = document["status"]
    phrase = {408: "Request Timeout", 503: "Service Unavailable"}.get(status, "Error")
    head = [
        f"HTTP/1.1 {status} {phrase}",
        f"content-type: {PROBLEM_CONTENT_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    retry = RETRY_AFTER_SECONDS.get(reason)
    if retry is not None:
        head.append(f"retry-after: {retry}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _refuse_app(limit: int) -> Any:
    document = problem(
        "too_many_connections",
        f"the node serves at most {limit} API connections at once; retry shortly",
    )
    body = problem_bytes(document)
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_SECONDS["too_many_connections"]).encode()),
        (b"connection", b"close"),
    ]

    async def refuse(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


_refused = {"count": 0, "logged_at": float("-inf")}
_REFUSAL_LOG_INTERVAL = 10.0


def _warn_refused(limit: int) -> None:
    # A flood of connections must not become a flood of log lines: one line per interval.
    _refused["count"] += 1
    now = time.monotonic()
    if now - _refused["logged_at"] >= _REFUSAL_LOG_INTERVAL:
        log.warning("API connection cap (%d) reached: refused %d connections", limit, _refused["count"])
        _refused.update(count=0, logged_at=now)


class _LimitsMixin:
    """The deadlines and the cap, over either uvicorn protocol.  The concrete classes call
    `_request_begun`, `_headers_done` and `_message_done` from the parser's events."""

    limits: HttpLimits  # set on the class protocol_class() makes

    # Attributes of uvicorn's protocols this mixin relies on.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set
    cycle: Any
    app: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[misc]
        # `connections` already holds this one: more than the cap means we are beyond it.
        if len(self.connections) > self.limits.max_connections:
            self.app = _refuse_app(self.limits.max_connections)
            _warn_refused(self.limits.max_connections)
        # The first request's deadline runs from the connection's opening, so a socket
        # that never sends a byte is closed too (the keep-alive timer covers later idles).
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)  # type: ignore[misc]

    # --- events -------------------------------------------------------------------------
    def _request_begun(self) -> None:
        if self._header_timer is None:
            self._arm_header_timer()

    def _headers_done(self) -> None:
        self._cancel(self, "_header_timer")
        if self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _message_done(self) -> None:
        self._cancel(self, "_body_timer")

    # --- timers -------------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    @staticmethod
    def _cancel(owner: Any, name: str) -> None:
        timer = getattr(owner, name)
        if timer is not None:
            timer.cancel()
            setattr(owner, name, None)

    def _cancel_timers(self) -> None:
        self._cancel(self, "_header_timer")
        self._cancel(self, "_body_timer")

    def _responding(self) -> bool:
        """Whether bytes of some response may already be on the wire: then a timeout
        can only close the connection, since a 408 would be spliced into that response."""
        cycle = self.cycle
        return cycle is not None and cycle.response_started and not cycle.response_complete

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._responding():
            self.transport.write(_raw_problem(
                "header_timeout", f"the request's headers did not arrive within {self.limits.header_timeout:g} s",
            ))
        self._close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        answer = cycle is not None and not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The application waiting on the body sees a disconnect and its answer, if any,
            # goes nowhere: ours below is the one the client reads.
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            self.transport.write(_raw_problem(
                "body_timeout", f"the request's body did not arrive within {self.limits.body_timeout:g} s",
            ))
        self._close()

    def _close(self) -> None:
        self._cancel_timers()
        self.transport.close()


def _httptools_class() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsLimits(_LimitsMixin, HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._request_begun()

        def on_headers_complete(self) -> None:
            self._headers_done()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._message_done()
            super().on_message_complete()

    return HttpToolsLimits


def _h11_class() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11Limits(_LimitsMixin, H11Protocol):
        # h11 has no callbacks: the state of the client's side after each batch of
        # events says where the request is.
        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._request_begun()
            super().data_received(data)
            self._follow_state()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            self._follow_state()

        def _follow_state(self) -> None:
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._headers_done()
            elif state is not h11.IDLE:  # DONE, MUST_CLOSE, CLOSED, ERROR: nothing more to read
                self._headers_done()
                self._message_done()

    return H11Limits


def protocol_class(limits: HttpLimits, implementation: str = "auto") -> type:
    """The uvicorn HTTP protocol class enforcing `limits`: over httptools when it is
    installed (what uvicorn's "auto" picks), else, or when `implementation` is "h11", h11."""
    if implementation not in ("auto", "httptools", "h11"):
        raise ValueError(f"unknown HTTP implementation {implementation!r}")
    if implementation != "h11":
        try:
            base = _httptools_class()
        except ImportError:
            if implementation == "httptools":
                raise
            base = _h11_class()
    else:
        base = _h11_class()
    return type(base.__name__, (base,), {"limits": limits})


def raise_open_files_limit(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit so `max_connections` API
    connections fit beside the node's other files; the connection cap that fits."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no such limit on this platform
        return max_connections
    wanted = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitting = max(1, soft - RESERVED_FILES)
        log.warning(
            "the open files limit (%d) holds only %d API connections: the cap is %d, not %d "
            "(raise `ulimit -n` to serve more)", soft, fitting, fitting, max_connections,
        )
        return fitting
    return max_connections

"""How every error leaves the API as RFC 9457 problem+json (api/problems.py), and how
request bodies are capped before anything reads them.

Two pure ASGI middlewares wrap the application: the body limit (413 at once on a
Content-Length over it, or while a body streams past it) and, outside it, a catch-all that
logs an unhandled error and answers 500 without a traceback.  The exception handlers turn
FastAPI's validation errors, HTTP errors and our own InvalidInput into problems.
`install_error_handling` puts all of them on an application.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import (
    REASON_BY_STATUS,
    ProblemException,
    problem,
    problem_bytes,
    problem_from_errors,
    problem_of,
    problem_response,
)
from api.schemas import InvalidInput, describe_errors

logger = logging.getLogger(__name__)


def install_error_handling(app: FastAPI, max_body_bytes: int) -> None:
    """The exception handlers, and the two middlewares with the catch-all outermost."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidInput, _invalid_input)  # type: ignore[arg-type]
    # add_middleware puts the last one outermost: the catch-all wraps the body limit.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(CatchAllMiddleware)


# --- middleware ----------------------------------------------------------------------------


async def _send_problem(send: Send, document: dict[str, Any], extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = problem_bytes(document)
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": document["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(ProblemException):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` with 413, before anything parses them:
    at once when Content-Length says so, and while streaming when a chunked body (or a
    lying Content-Length) grows past the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> dict[str, Any]:
        return problem("body_too_large", f"request bodies are at most {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                    if declared < 0:
                        raise ValueError
                except ValueError:
                    await _send_problem(send, problem("bad_content_length", "Content-Length is not a byte count"))
                    return
                if declared > self.max_body_bytes:
                    await _send_problem(send, self._too_large(), [(b"connection", b"close")])
                    return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self._too_large(), {"connection": "close"})
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the exception handler answers; this covers a read outside any route.
            if started:
                raise
            await _send_problem(send, exc.document, [(b"connection", b"close")])


class CatchAllMiddleware:
    """Log any unhandled error and answer 500 problem+json: a traceback never reaches the client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await _send_problem(send, problem("internal_error", "the node failed to answer; see its log"))


# --- exception handlers --------------------------------------------------------------------


_LOCATION_KINDS = {"body", "query", "path", "header", "cookie"}


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = []
    for error in exc.errors():
        location = tuple(error.get("loc", ()))
        if location and location[0] in _LOCATION_KINDS:
            location = location[1:]
        errors.append({**error, "loc": location})
    described = describe_errors(errors) or [InvalidInput("invalid_field", "invalid request")]
    return problem_response(problem_from_errors(described))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if isinstance(exc, ProblemException):
        return problem_response(exc.document, exc.headers)
    reason = REASON_BY_STATUS.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        # The router names the methods of the first route on the path; a path served by
        # several routes (one per method) allows them all.
        allowed = {method for route in request.app.routes if isinstance(route, Route)
                   and route.path == request.url.path for method in (route.methods or ())}
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    return problem_response(problem(reason, str(exc.detail), status=exc.status_code), headers)


async def _invalid_input(request: Request, exc: InvalidInput) -> Response:
    return problem_response(problem_of(exc))

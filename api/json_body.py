"""Request bodies as JSON values: the media type, the charset and the number rules the
API applies before any route looks at a body (docs/api.md, Conventions)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from api.problems import ProblemException, problem


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _declared_charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _refuse_non_json_constant(name: str) -> Any:
    # The json module reads NaN and Infinity, which JSON (RFC 8259) does not have.
    raise ValueError(f"{name} is not a JSON value")


# Integral numbers up to this size become ints; beyond any amount or nonce, so a larger
# one stays a float and integer fields refuse it as the wrong type.
_INTEGRAL_LIMIT = 10**30


def _json_number(text: str) -> int | float:
    """A JSON number with a fraction or an exponent.  JSON Schema counts 335.0 and 3.35e2
    as the integer 335, and so does the API: an integral value becomes that int, exactly
    (through Decimal: a float would round amounts above 2^53).  Any other number stays a
    float, which integer fields refuse."""
    value = Decimal(text)
    if value.is_finite() and value == value.to_integral_value() and value.copy_abs() <= _INTEGRAL_LIMIT:
        return int(value)
    return float(text)


_UTF8_BOM = b"\xef\xbb\xbf"


def _utf8_text(body: bytes) -> str:
    """The body as text.  JSON on the wire is UTF-8 (RFC 8259 8.1); the json module would
    also guess UTF-16 and UTF-32 from the bytes, which the API refuses rather than guess.
    A leading UTF-8 byte order mark is ignored, as RFC 8259 allows."""
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
    guessed = json.detect_encoding(body)
    if guessed not in ("utf-8", "utf-8-sig"):
        raise ProblemException(problem(
            "unsupported_charset", f"JSON bodies must be UTF-8 (RFC 8259 section 8.1); this one is {guessed.upper()}",
        ))
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProblemException(problem(
            "unsupported_charset",
            f"JSON bodies must be UTF-8 (RFC 8259 section 8.1); byte {exc.start} is not valid UTF-8",
        )) from None


async def json_body(request: Request) -> Any:
    content_type = request.headers.get("content-type")
    # A missing Content-Type is tolerated for simple clients; a form or text body is
    # refused, which also keeps a web page from posting here without a CORS preflight.
    if content_type is not None and not _is_json_media_type(content_type):
        raise ProblemException(
            problem("unsupported_media_type", f"send JSON with Content-Type: application/json, not {content_type}")
        )
    charset = _declared_charset(content_type or "")
    if charset is not None and charset not in ("utf-8", "utf8"):
        raise ProblemException(problem(
            "unsupported_charset", f"JSON bodies must be UTF-8 (RFC 8259 section 8.1), not charset={charset}",
        ))
    try:
        body = await request.body()
    except ClientDisconnect:
        # The server cut a body that arrived too slowly (or the client left): the answer
        # goes nowhere, but the route must stop here and act on nothing.
        raise ProblemException(problem("http_error", "the connection closed before the body was complete")) from None
    if not body:
        raise ProblemException(problem("bad_json", "the request body is empty; a JSON object is expected"))
    text = _utf8_text(body)
    try:
        return json.loads(text, parse_constant=_refuse_non_json_constant, parse_float=_json_number)
    except RecursionError:
        raise ProblemException(problem("bad_json", "JSON nested too deeply")) from None
    except ValueError as exc:  # JSONDecodeError, over-long integers
        raise ProblemException(problem("bad_json", f"body is not valid JSON: {exc}")) from None

"""A Python client of the REST API: `LedgerClient` (blocking) and `AsyncLedgerClient`.

One method per route, each returning the response model of `api.schemas`.  A
problem answer raises `ApiError` (status, reason, detail, field); a node that
cannot be reached (refused, timed out, connection dropped) raises `NodeUnreachable`
naming the URL.  Imports httpx and pydantic only, never the web framework, so the
wallet can use it without the server's dependencies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from api.schemas import (
    AccountOut,
    AccountTransactionsOut,
    BatchOut,
    BlockOut,
    BlocksOut,
    EventOut,
    HealthOut,
    MempoolOut,
    NodeInfoOut,
    ProblemOut,
    RawTransaction,
    SubmitOut,
    TransactionFields,
    TransactionStatusOut,
    ValidatorsOut,
)
from ledger.transaction import Transaction

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 10.0
DEFAULT_WAIT_SECONDS = 30.0
# Beyond the server-side wait, time for the answer itself to arrive.
_WAIT_MARGIN_SECONDS = 10.0
# The events stream sends a keepalive every 15 s; silence for this long means a dead link.
_EVENTS_READ_TIMEOUT = 60.0

Model = TypeVar("Model", bound=BaseModel)
Submittable = Transaction | bytes | str | TransactionFields | RawTransaction | Mapping[str, Any]


class ApiError(Exception):
    """The node answered with a problem (or an unexpected answer)."""

    def __init__(
        self, status: int, reason: str, detail: str = "", field: str | None = None, problem: dict[str, Any] | None = None
    ):
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {reason}: {detail}{where}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.field = field
        self.problem = problem or {}


class NodeUnreachable(ConnectionError):
    """No answer from the node: refused, timed out or dropped."""

    def __init__(self, url: str, cause: Exception):
        kind = "timed out talking to" if isinstance(cause, httpx.TimeoutException) else "cannot reach"
        super().__init__(f"{kind} the node at {url}: {str(cause) or type(cause).__name__}")
        self.url = url


def submission(item: Submittable) -> dict[str, Any]:
    """The JSON body of one submitted transaction: a Transaction or raw bytes/hex go as
    {"raw": hex}; a JSON-fields model or mapping goes as its fields."""
    if isinstance(item, Transaction):
        return {"raw": item.encode().hex()}
    if isinstance(item, (bytes, bytearray)):
        return {"raw": bytes(item).hex()}
    if isinstance(item, str):
        return {"raw": item}
    if isinstance(item, RawTransaction):
        return {"raw": item.raw}
    if isinstance(item, TransactionFields):
        return item.model_dump(include=set(TransactionFields.model_fields))
    if isinstance(item, Mapping):
        return dict(item)
    raise TypeError(f"cannot submit a {type(item).__name__}")


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    model: type[BaseModel]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    timeout: float | None = None  # None: the client's default


def _wait_params(wait_final: bool, timeout: float) -> tuple[dict[str, Any], float | None]:
    if not wait_final:
        return {}, None
    return {"wait": "final", "timeout": timeout}, timeout + _WAIT_MARGIN_SECONDS


def _page(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


class _Routes:
    """Each route as a _Call; the sync and async clients only differ in how they send it."""

    def _node_info(self) -> _Call:
        return _Call("GET", "/v1/node", NodeInfoOut)

    def _health(self) -> _Call:
        return _Call("GET", "/healthz", HealthOut)

    def _submit(self, tx: Submittable, wait_final: bool, timeout: float) -> _Call:
        params, http_timeout = _wait_params(wait_final, timeout)
        return _Call("POST", "/v1/transactions", SubmitOut, params, submission(tx), http_timeout)

    def _submit_batch(self, transactions: Iterable[Submittable], wait_final: bool, timeout: float) -> _Call:
        params, http_timeout = _wait_params(wait_final, timeout)
        body = {"transactions": [submission(tx) for tx in transactions]}
        return _Call("POST", "/v1/transactions/batch", BatchOut, params, body, http_timeout)

    def _transaction(self, tx_id: bytes | str) -> _Call:
        return _Call("GET", f"/v1/transactions/{_hex(tx_id)}", TransactionStatusOut)

    def _block(self, ref: int | bytes | str, with_transactions: bool) -> _Call:
        name = str(ref) if isinstance(ref, int) else _hex(ref)
        return _Call("GET", f"/v1/blocks/{name}", BlockOut, _flag(with_transactions))

    def _latest_block(self, with_transactions: bool) -> _Call:
        return _Call("GET", "/v1/blocks/latest", BlockOut, _flag(with_transactions))

    def _blocks(self, before: int | None, limit: int | None) -> _Call:
        return _Call("GET", "/v1/blocks", BlocksOut, _page(before=before, limit=limit))

    def _account(self, address: str) -> _Call:
        return _Call("GET", f"/v1/accounts/{quote(address, safe='')}", AccountOut)

    def _account_transactions(self, address: str, before: str | None, limit: int | None) -> _Call:
        return _Call("GET", f"/v1/accounts/{quote(address, safe='')}/transactions", AccountTransactionsOut, _page(before=before, limit=limit))

    def _mempool(self, limit: int | None) -> _Call:
        return _Call("GET", "/v1/mempool", MempoolOut, _page(limit=limit))

    def _validators(self) -> _Call:
        return _Call("GET", "/v1/validators", ValidatorsOut)


def _hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, (bytes, bytearray)) else quote(value, safe="")


def _flag(with_transactions: bool) -> dict[str, Any]:
    return {} if with_transactions else {"transactions": "false"}


def _error_of(response: httpx.Response) -> ApiError:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("reason"), str):
        try:
            shown = ProblemOut.model_validate(document)
        except ValidationError:
            pass
        else:
            return ApiError(response.status_code, shown.reason, shown.detail, shown.field, document)
    text = response.text[:200].strip()
    return ApiError(response.status_code, f"http_{response.status_code}", text or response.reason_phrase)


def _parse(response: httpx.Response, model: type[Model]) -> Model:
    if response.status_code >= 300:
        raise _error_of(response)
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ApiError(response.status_code, "invalid_response", f"the node's answer is not a {model.__name__}: {exc}") from None


class SseParser:
    """Server-Sent Events lines -> EventOut (comments and retry hints are skipped)."""

    def __init__(self) -> None:
        self.kind = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> EventOut | None:
        if line == "":
            if not self.data:
                self.kind = "message"
                return None
            kind, text = self.kind, "\n".join(self.data)
            self.kind, self.data = "message", []
            try:
                return EventOut.model_validate({"kind": kind, "data": json.loads(text)})
            except (ValueError, ValidationError):
                return EventOut(kind=kind, data={"raw": text})
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.kind = value
        elif name == "data":
            self.data.append(value)
        return None


class LedgerClient(_Routes):
    """A blocking client.  `with LedgerClient(url) as node: node.node_info()`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _run(self, call: _Call) -> Any:
        kwargs: dict[str, Any] = {"params": call.params}
        if call.body is not None:
            kwargs["json"] = call.body
        if call.timeout is not None:
            kwargs["timeout"] = call.timeout
        try:
            response = self._http.request(call.method, call.path, **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnreachable(self.url, exc) from exc
        return _parse(response, call.model)

    def node_info(self) -> NodeInfoOut:
        return self._run(self._node_info())

    def health(self) -> HealthOut:
        return self._run(self._health())

    def submit(self, tx: Submittable, wait_final: bool = False, timeout: float = DEFAULT_WAIT_SECONDS) -> SubmitOut:
        return self._run(self._submit(tx, wait_final, timeout))

    def submit_batch(
        self, transactions: Iterable[Submittable], wait_final: bool = False, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> BatchOut:
        return self._run(self._submit_batch(transactions, wait_final, timeout))

    def transaction(self, tx_id: bytes | str) -> TransactionStatusOut:
        return self._run(self._transaction(tx_id))

    def block(self, ref: int | bytes | str, with_transactions: bool = True) -> BlockOut:
        return self._run(self._block(ref, with_transactions))

    def latest_block(self, with_transactions: bool = True) -> BlockOut:
        return self._run(self._latest_block(with_transactions))

    def blocks(self, before: int | None = None, limit: int | None = None) -> BlocksOut:
        return self._run(self._blocks(before, limit))

    def account(self, address: str) -> AccountOut:
        return self._run(self._account(address))

    def account_transactions(self, address: str, before: str | None = None, limit: int | None = None) -> AccountTransactionsOut:
        return self._run(self._account_transactions(address, before, limit))

    def mempool(self, limit: int | None = None) -> MempoolOut:
        return self._run(self._mempool(limit))

    def validators(self) -> ValidatorsOut:
        return self._run(self._validators())

    def events(self) -> Iterator[EventOut]:
        """Live events until the caller stops iterating (close the generator to disconnect)."""
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=_EVENTS_READ_TIMEOUT)
        try:
            with self._http.stream("GET", "/v1/events", timeout=timeout) as response:
                if response.status_code >= 300:
                    response.read()
                    raise _error_of(response)
                parser = SseParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise NodeUnreachable(self.url, exc) from exc


class AsyncLedgerClient(_Routes):
    """The asyncio client: the same methods as LedgerClient, as coroutines."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _run(self, call: _Call) -> Any:
        kwargs: dict[str, Any] = {"params": call.params}
        if call.body is not None:
            kwargs["json"] = call.body
        if call.timeout is not None:
            kwargs["timeout"] = call.timeout
        try:
            response = await self._http.request(call.method, call.path, **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnreachable(self.url, exc) from exc
        return _parse(response, call.model)

    async def node_info(self) -> NodeInfoOut:
        return await self._run(self._node_info())

    async def health(self) -> HealthOut:
        return await self._run(self._health())

    async def submit(self, tx: Submittable, wait_final: bool = False, timeout: float = DEFAULT_WAIT_SECONDS) -> SubmitOut:
        return await self._run(self._submit(tx, wait_final, timeout))

    async def submit_batch(
        self, transactions: Iterable[Submittable], wait_final: bool = False, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> BatchOut:
        return await self._run(self._submit_batch(transactions, wait_final, timeout))

    async def transaction(self, tx_id: bytes | str) -> TransactionStatusOut:
        return await self._run(self._transaction(tx_id))

    async def block(self, ref: int | bytes | str, with_transactions: bool = True) -> BlockOut:
        return await self._run(self._block(ref, with_transactions))

    async def latest_block(self, with_transactions: bool = True) -> BlockOut:
        return await self._run(self._latest_block(with_transactions))

    async def blocks(self, before: int | None = None, limit: int | None = None) -> BlocksOut:
        return await self._run(self._blocks(before, limit))

    async def account(self, address: str) -> AccountOut:
        return await self._run(self._account(address))

    async def account_transactions(
        self, address: str, before: str | None = None, limit: int | None = None
    ) -> AccountTransactionsOut:
        return await self._run(self._account_transactions(address, before, limit))

    async def mempool(self, limit: int | None = None) -> MempoolOut:
        return await self._run(self._mempool(limit))

    async def validators(self) -> ValidatorsOut:
        return await self._run(self._validators())

    async def events(self) -> AsyncIterator[EventOut]:
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=_EVENTS_READ_TIMEOUT)
        try:
            async with self._http.stream("GET", "/v1/events", timeout=timeout) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise _error_of(response)
                parser = SseParser()
                async for line in response.aiter_lines():
                    event = parser.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise NodeUnreachable(self.url, exc) from exc

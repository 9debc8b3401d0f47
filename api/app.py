"""The REST API v1: a FastAPI application over a `NodeService`.

`create_app(service)` builds the application; the node runtime serves it with
uvicorn on its own event loop.  Writes (`submit`, `wait_final`) are awaited on
that loop; reads are plain service calls, so their routes are plain functions
that FastAPI runs in worker threads.

Every error is RFC 9457 problem+json (api/error_handling.py, api/problems.py and
docs/api.md).  Bodies are size-checked by a pure ASGI middleware before anything reads
them, then parsed once with the json module: the batch route is the hot path and
decodes raw items straight into Transactions, keeping pydantic for the items
submitted field by field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.dev import dev_router
from api.events import KEEPALIVE_SECONDS, EventStreamResponse
from api.explorer import explorer_router
from api.admin import add_admin_routes
from api.error_handling import install_error_handling
from api.json_body import json_body
from api.openapi import body_schema, install_openapi, ref
from api.problems import (
    ProblemException,
    problem,
    problem_from_errors,
    problem_of,
    problem_response,
)
from api.schemas import (
    kind_name,
    AccountOut,
    AccountTransactionsOut,
    BatchOut,
    BatchRequest,
    BlockOut,
    BlocksOut,
    ConsensusOut,
    EvidenceListOut,
    HealthOut,
    InvalidInput,
    MempoolOut,
    NodeInfoOut,
    ProblemOut,
    RawTransaction,
    SubmitOut,
    TransactionJson,
    TransactionStatusOut,
    ValidatorsOut,
    decode_raw_transaction,
    describe_errors,
    engine_status_json,
    evidence_json,
    parse_address,
    parse_hex,
    transaction_from_json,
    transaction_out,
    validator_json,
)
from api.service import Accepted, BlockRecord, NodeService, ReadRefused, Rejection, TxRecord
from ledger.address import encode_address
from ledger.codec import MAX_AMOUNT
from ledger.evidence import EvidenceRecord
from ledger.transaction import Transaction, accepted_kinds

DEFAULT_WAIT_SECONDS = 30.0
DEFAULT_PAGE = 20
MAX_PAGE = 100
DEFAULT_MEMPOOL_PAGE = 100
MAX_MEMPOOL_PAGE = 1000
_MAX_HEIGHT_DIGITS = len(str(MAX_AMOUNT))

try:
    API_VERSION = package_version("ledger-node")
except PackageNotFoundError:  # running from a checkout that is not installed
    API_VERSION = "0.1.0"


# --- request parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    service: NodeService
    prefix: str
    max_batch: int
    max_wait_seconds: float

    def transaction_of(self, item: Any, field: str = "") -> Transaction:
        """A Transaction from one submitted item ({"raw": hex} or the JSON fields);
        raises ProblemException naming the field (under `field` when given)."""
        if not isinstance(item, dict):
            raise ProblemException(problem("wrong_type", "a transaction is a JSON object", field or None))
        if "raw" in item:
            for key in item:
                if key != "raw":
                    where = f"{field}.{key}" if field else key
                    raise ProblemException(problem("unknown_field", "a raw transaction has only the field 'raw'", where))
            try:
                return decode_raw_transaction(item["raw"], f"{field}.raw" if field else "raw")
            except InvalidInput as exc:
                raise ProblemException(problem_of(exc)) from None
        try:
            fields = TransactionJson.model_validate(item)
        except ValidationError as exc:
            raise ProblemException(problem_from_errors(describe_errors(exc.errors(), field))) from None
        try:
            return transaction_from_json(fields, self.prefix, field)
        except InvalidInput as exc:
            raise ProblemException(problem_of(exc)) from None

    def rejection_problem(self, rejection: Rejection, field_prefix: str = "") -> dict[str, Any]:
        field = rejection.field
        if field_prefix:
            field = f"{field_prefix}.{field}" if field else field_prefix
        return problem(rejection.reason, rejection.message, field)

    def tx_record_out(self, record: TxRecord) -> dict[str, Any]:
        shown = transaction_out(record.tx, self.prefix)
        shown.update(
            status=record.status,
            block_height=record.block_height,
            block_hash=record.block_hash.hex() if record.block_hash is not None else None,
            index=record.index,
            confirmations=record.confirmations,
            timestamp=record.timestamp,
        )
        return shown

    def header_out(self, record: BlockRecord) -> dict[str, Any]:
        header = record.header
        return {
            "height": header.height,
            "hash": header.hash.hex(),
            "parent": header.parent.hex(),
            "chain_id": header.chain_id,
            "version": header.version,
            "timestamp": header.timestamp,
            "tx_root": header.tx_root.hex(),
            "tx_count": header.tx_count,
            "proposer": encode_address(self.prefix, header.proposer),
            "extra": header.extra.hex(),
            "seal": header.seal.hex(),
            "status": record.status,
            "confirmations": record.confirmations,
            "size": record.size,
        }

    def evidence_out(self, record: EvidenceRecord, recorded_at: int | None = None) -> dict[str, Any]:
        shown = evidence_json(record, self.prefix)
        if recorded_at is not None:
            shown["recorded_at"] = recorded_at
        return shown

    def block_out(self, record: BlockRecord) -> dict[str, Any]:
        shown = self.header_out(record)
        shown["certificate"] = record.certificate.hex()
        shown["labels"] = dict(record.labels)
        shown["evidence"] = [self.evidence_out(item) for item in record.evidence]
        shown["transactions"] = (
            None if record.transactions is None else [transaction_out(tx, self.prefix) for tx in record.transactions]
        )
        return shown


def _wait_query(max_wait_seconds: float) -> tuple[Any, Any]:
    wait = Query(None, description="`final`: answer when the transaction is final (or at the timeout)")
    timeout = Query(
        min(DEFAULT_WAIT_SECONDS, max_wait_seconds),
        gt=0,
        le=max_wait_seconds,
        description=f"seconds to wait with wait=final, at most {max_wait_seconds}",
    )
    return wait, timeout


def _json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":")).encode(), status_code=status, media_type="application/json",
        headers=headers,
    )


# --- routes --------------------------------------------------------------------------------


def _add_transaction_routes(app: FastAPI, ctx: _Context) -> None:
    service = ctx.service
    wait_param, timeout_param = _wait_query(ctx.max_wait_seconds)

    @app.post(
        "/v1/transactions",
        status_code=202,
        response_model=SubmitOut,
        tags=["transactions"],
        summary="Submit one signed transaction",
        responses={200: {"model": SubmitOut, "description": "final (with wait=final)"}},
        openapi_extra=body_schema({"oneOf": [ref(RawTransaction), ref(TransactionJson)]}),
    )
    async def submit_transaction(
        request: Request, wait: Literal["final"] | None = wait_param, timeout: float = timeout_param
    ) -> Response:
        tx = ctx.transaction_of(await json_body(request))
        results = await service.submit([tx])
        if len(results) != 1:
            raise RuntimeError(f"service.submit answered {len(results)} results for one transaction")
        result = results[0]
        if isinstance(result, Rejection):
            raise ProblemException(ctx.rejection_problem(result))
        answer: dict[str, Any] = {"id": result.tx_id.hex(), "status": "pending"}
        if result.duplicate:
            answer["duplicate"] = True
        if wait is None:
            return _json_response(answer, 202)
        statuses = await service.wait_final([result.tx_id], timeout)
        answer["status"] = statuses.get(result.tx_id, "unknown")
        if answer["status"] == "final":
            return _json_response(answer, 200)
        answer["timed_out"] = True
        return _json_response(answer, 202)

    @app.post(
        "/v1/transactions/batch",
        response_model=BatchOut,
        tags=["transactions"],
        summary=f"Submit up to {ctx.max_batch} signed transactions",
        openapi_extra=body_schema(ref(BatchRequest)),
    )
    async def submit_batch(
        request: Request, wait: Literal["final"] | None = wait_param, timeout: float = timeout_param
    ) -> Response:
        body = await json_body(request)
        items = _batch_items(body, ctx.max_batch)
        results: list[dict[str, Any] | None] = [None] * len(items)
        transactions: list[Transaction] = []
        positions: list[int] = []
        decode = Transaction.decode
        for index, item in enumerate(items):
            # Fast path: {"raw": "<hex>"} that decodes; anything else takes the careful path
            # below, which also produces the precise error.
            if type(item) is dict and len(item) == 1:
                raw = item.get("raw")
                if type(raw) is str:
                    try:
                        data = bytes.fromhex(raw)
                        # bytes.fromhex skips whitespace: such hex takes the careful path and is refused.
                        if 2 * len(data) == len(raw):
                            transactions.append(decode(data))
                            positions.append(index)
                            continue
                    except ValueError:
                        pass
            try:
                transactions.append(ctx.transaction_of(item, f"transactions[{index}]"))
                positions.append(index)
            except ProblemException as exc:
                results[index] = {"index": index, "accepted": False, "problem": exc.document}

        outcomes = await service.submit(transactions) if transactions else []
        if len(outcomes) != len(transactions):
            raise RuntimeError(f"service.submit answered {len(outcomes)} results for {len(transactions)} transactions")
        accepted_ids: list[bytes] = []
        retry_after = False
        for index, outcome in zip(positions, outcomes):
            if isinstance(outcome, Accepted):
                entry: dict[str, Any] = {"index": index, "id": outcome.tx_id.hex(), "accepted": True}
                if outcome.duplicate:
                    entry["duplicate"] = True
                accepted_ids.append(outcome.tx_id)
            else:
                entry = {"index": index, "accepted": False, "problem": ctx.rejection_problem(outcome, f"transactions[{index}]")}
                retry_after = retry_after or outcome.reason == "mempool_full"
            results[index] = entry

        answer: dict[str, Any] = {"results": results, "accepted": len(accepted_ids), "rejected": len(items) - len(accepted_ids)}
        if wait is not None and accepted_ids:
            statuses = await service.wait_final(list(dict.fromkeys(accepted_ids)), timeout)
            timed_out = False
            for entry in results:
                if entry is not None and entry["accepted"]:
                    entry["status"] = statuses.get(bytes.fromhex(entry["id"]), "unknown")
                    timed_out = timed_out or entry["status"] != "final"
            answer["timed_out"] = timed_out
        return _json_response(answer, 200, {"Retry-After": "1"} if retry_after else None)

    @app.get(
        "/v1/transactions/{tx_id}",
        response_model=TransactionStatusOut,
        tags=["transactions"],
        summary="A transaction with its status",
    )
    def get_transaction(tx_id: str) -> Any:
        if tx_id == "batch":
            # The batch resource, not an id: it only takes POST.
            raise ProblemException(
                problem("method_not_allowed", "the batch endpoint takes POST"), {"Allow": "POST"}
            )
        record = service.transaction(parse_hex(tx_id, "id", 32))
        if record is None:
            raise ProblemException(problem("not_found", f"no transaction {tx_id.lower()} is known", "id"))
        return ctx.tx_record_out(record)


def _batch_items(body: Any, max_batch: int) -> list[Any]:
    if not isinstance(body, dict):
        raise ProblemException(problem("wrong_type", "the body is a JSON object {\"transactions\": [...]}"))
    for key in body:
        if key != "transactions":
            raise ProblemException(problem("unknown_field", "a batch has only the field 'transactions'", key))
    if "transactions" not in body:
        raise ProblemException(problem("missing_field", "a batch needs 'transactions'", "transactions"))
    items = body["transactions"]
    if not isinstance(items, list):
        raise ProblemException(problem("wrong_type", "transactions is a JSON array", "transactions"))
    if len(items) > max_batch:
        raise ProblemException(
            problem("batch_too_large", f"{len(items)} transactions; a batch holds at most {max_batch}", "transactions")
        )
    return items


def _parse_block_ref(ref: str) -> int | bytes | None:
    """A height or a hash; None for a height beyond any chain (answered as not found)."""
    if len(ref) == 64:
        return parse_hex(ref, "ref", 32)
    if ref.isascii() and ref.isdigit():
        if len(ref) > _MAX_HEIGHT_DIGITS or int(ref) > MAX_AMOUNT:
            return None
        return int(ref)
    raise ProblemException(problem("bad_block_ref", "a block is named by its height or its 64-hex-digit hash", "ref"))


def _parse_cursor(text: str) -> tuple[int, int]:
    height, sep, index = text.partition(":")
    if (
        not sep
        or not (height.isascii() and height.isdigit() and index.isascii() and index.isdigit())
        or len(height) > _MAX_HEIGHT_DIGITS
        or len(index) > _MAX_HEIGHT_DIGITS
    ):
        raise ProblemException(problem("bad_cursor", "a cursor is <height>:<index>, as given in `next`", "before"))
    # A cursor beyond any possible chain pages from the newest: the store counts in 63 bits.
    return min(int(height), MAX_AMOUNT), min(int(index), MAX_AMOUNT)


def _add_chain_routes(app: FastAPI, ctx: _Context) -> None:
    service = ctx.service

    @app.get("/v1/blocks", response_model=BlocksOut, tags=["blocks"], summary="Block headers, newest first")
    def list_blocks(
        before: int | None = Query(None, ge=0, le=MAX_AMOUNT, description="only blocks below this height (a `next` cursor)"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    ) -> Any:
        records = service.blocks(before, limit)
        last = records[-1].header.height if records else 0
        return {
            "blocks": [ctx.header_out(record) for record in records],
            "next": last if len(records) == limit and last > 0 else None,
        }

    @app.get("/v1/blocks/latest", response_model=BlockOut, tags=["blocks"], summary="The head block")
    def latest_block(transactions: bool = Query(True, description="include the block's transactions")) -> Any:
        # The head can move (even reorg away) between the two reads; a few tries settle it.
        for _ in range(3):
            newest = service.blocks(None, 1)
            if not newest:
                break
            record = service.block(newest[0].header.hash, with_transactions=transactions)
            if record is not None:
                return ctx.block_out(record)
        raise ProblemException(problem("not_found", "the node has no head block yet"))

    @app.get("/v1/blocks/{ref}", response_model=BlockOut, tags=["blocks"], summary="A block by height or hash")
    def get_block(ref: str, transactions: bool = Query(True, description="include the block's transactions")) -> Any:
        parsed = _parse_block_ref(ref)
        record = None if parsed is None else service.block(parsed, with_transactions=transactions)
        if record is None:
            what = ref.lower() if isinstance(parsed, bytes) else f"at height {ref}"
            raise ProblemException(problem("not_found", f"no block {what} on this chain", "ref"))
        return ctx.block_out(record)

    @app.get("/v1/accounts/{address}", response_model=AccountOut, tags=["accounts"], summary="Balance and nonces",
             responses={409: {"description": "linearizable: the engine has no leader to confirm reads with"},
                        503: {"description": "linearizable: no leader confirmed the read in time"}})
    async def get_account(
        address: str,
        consistency: Literal["local", "linearizable"] = Query(
            "local", description="`linearizable` (Raft): answer only once a round with the leader confirms this "
                                 "node's state holds every write committed before the request (ReadIndex)"),
    ) -> Any:
        account_id = parse_address(address, ctx.prefix, "address")
        if consistency == "linearizable":
            try:
                await service.read_barrier()
            except ReadRefused as exc:
                raise ProblemException(problem(exc.reason, str(exc))) from None
        account = await run_in_threadpool(service.account, account_id)
        return {
            "address": encode_address(ctx.prefix, account.address),
            "balance": account.balance,
            "nonce": account.nonce,
            "pending_nonce": account.pending_nonce,
            "pending_count": account.pending_count,
            "bonded": account.bonded,
            "unbonding": account.unbonding,
            "release_epoch": account.release_epoch,
            "slashed": account.slashed,
        }

    @app.get(
        "/v1/accounts/{address}/transactions",
        response_model=AccountTransactionsOut,
        tags=["accounts"],
        summary="Transactions sent or received, newest first",
    )
    def account_transactions(
        address: str,
        before: str | None = Query(None, description="`height:index` cursor from `next`"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    ) -> Any:
        account = parse_address(address, ctx.prefix, "address")
        cursor = _parse_cursor(before) if before is not None else None
        records = service.account_transactions(account, cursor, limit)
        next_cursor = None
        if len(records) == limit and records[-1].block_height is not None and records[-1].index is not None:
            next_cursor = f"{records[-1].block_height}:{records[-1].index}"
        return {
            "address": encode_address(ctx.prefix, account),
            "transactions": [ctx.tx_record_out(record) for record in records],
            "next": next_cursor,
        }


def _add_node_routes(app: FastAPI, ctx: _Context, keepalive_seconds: float) -> None:
    service = ctx.service

    @app.get("/v1/mempool", response_model=MempoolOut, tags=["node"], summary="Pending transactions")
    def mempool(limit: int = Query(DEFAULT_MEMPOOL_PAGE, ge=0, le=MAX_MEMPOOL_PAGE)) -> Any:
        record = service.mempool(limit)
        return {
            "size": record.size,
            "capacity": record.capacity,
            "senders": record.senders,
            "transactions": [transaction_out(tx, ctx.prefix) for tx in record.transactions[:limit]],
        }

    @app.get("/v1/validators", response_model=ValidatorsOut, tags=["consensus"],
             summary="The validator set, as the engine reports it")
    def validators() -> Any:
        status = service.consensus_status()
        shown = {
            "engine": status.engine,
            "finality": status.finality.value,
            "validators": [validator_json(v, ctx.prefix) for v in status.validators or ()],
            "total_power": status.total_power,
            "quorum_power": status.quorum_power,
        }
        if status.validators is None:
            shown["note"] = f"the {status.engine} engine has no validator set"
        return shown

    @app.get("/v1/consensus", response_model=ConsensusOut, tags=["consensus"],
             summary="The engine's state, for debugging (height, round, step, votes)")
    def consensus_state() -> Any:
        # The head first: a status read after it is never behind it.
        height = service.node_info().height
        status = service.consensus_status()
        return {"engine": status.engine, "height": height, "state": engine_status_json(status, ctx.prefix)}

    @app.get("/v1/evidence", response_model=EvidenceListOut, tags=["consensus"],
             summary="Evidence of validator misbehaviour: seen, and recorded in blocks")
    def evidence(
        validator: str | None = Query(None, description="only this validator's (an address)"),
        before: str | None = Query(None, description="recorded: the `height:index` cursor from `next`"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE),
    ) -> Any:
        address = parse_address(validator, ctx.prefix, "validator") if validator is not None else None
        cursor = _parse_cursor(before) if before is not None else None
        status = service.consensus_status()
        seen = [ctx.evidence_out(record) for record in status.evidence if address is None or record.validator == address]
        recorded = service.recorded_evidence(address, cursor, limit)
        return {
            "engine": status.engine,
            "evidence": seen,
            "recorded": [ctx.evidence_out(record, height) for height, _, record in recorded],
            "next": f"{recorded[-1][0]}:{recorded[-1][1]}" if len(recorded) == limit else None,
        }

    @app.get("/v1/node", response_model=NodeInfoOut, tags=["node"], summary="Chain, head, finality and sync state")
    def node_info() -> Any:
        info = service.node_info()
        shown = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
        shown["genesis_hash"] = info.genesis_hash.hex()
        shown["head_hash"] = info.head_hash.hex()
        return shown

    @app.get(
        "/v1/events",
        tags=["node"],
        summary="Live events (Server-Sent Events)",
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}, "description": "`event: block|tx|reorg` + `data: <json>`"}},
    )
    async def events() -> Response:
        return EventStreamResponse(service, keepalive_seconds)

    @app.get(
        "/metrics",
        tags=["node"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}},
    )
    def metrics() -> Response:
        return Response(service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz", response_model=HealthOut, tags=["node"], summary="Liveness and height",
        responses={503: {**_PROBLEM_RESPONSE, "description": "`unhealthy`: the node stopped itself, or its head stood "
                         "still for `stall_seconds` while transactions were ready or peers were ahead"}},
    )
    def healthz() -> Any:
        trouble = service.health()
        if trouble is not None:
            return problem_response(problem("unhealthy", trouble))
        return {"status": "ok", "height": service.node_info().height}


_PROBLEM_RESPONSE = {
    "description": "An RFC 9457 problem (see docs/api.md for every reason)",
    "content": {"application/problem+json": {"schema": ref(ProblemOut)}},
}


def create_app(
    service: NodeService,
    *,
    max_body_bytes: int = 4 * 1024 * 1024,
    max_batch: int = 1000,
    max_wait_seconds: float = 60,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
    admin_token: str | None = None,
    compare_report: Path | None = None,
) -> FastAPI:
    """The API application over `service`.

    `max_body_bytes` caps every request body (413 beyond), `max_batch` the items of one
    batch, `max_wait_seconds` the `timeout` of wait=final; `keepalive_seconds` is the
    interval of the events stream's keepalive comments; `admin_token` opens the admin
    endpoint (api/admin.py) to loopback callers that send it; `compare_report` is the file the
    explorer shows at /explorer/compare (`ledger compare`'s newest report for this node).
    """
    if max_body_bytes < 0 or max_batch < 1 or max_wait_seconds <= 0 or keepalive_seconds <= 0:
        raise ValueError("create_app: limits must be positive")
    app = FastAPI(
        title="Ledger node API",
        version=API_VERSION,
        description=(
            "REST API of a ledger node. Hashes, ids, keys and signatures are lower-case hex; "
            "addresses are bech32m with the network's prefix; amounts are integers in the smallest unit. "
            "Every error is application/problem+json with a stable `type` (urn:ledger:problem:<reason>)."
        ),
        responses={"4XX": _PROBLEM_RESPONSE, "5XX": _PROBLEM_RESPONSE},
    )
    app.state.service = service
    ctx = _Context(service, service.genesis.address_prefix, max_batch, float(max_wait_seconds))
    install_error_handling(app, max_body_bytes)
    _add_transaction_routes(app, ctx)
    _add_chain_routes(app, ctx)
    _add_node_routes(app, ctx, keepalive_seconds)
    add_admin_routes(app, admin_token, json_body)
    app.include_router(explorer_router(service, compare_report))
    app.include_router(dev_router(service))
    kinds = [kind_name(kind) for kind in accepted_kinds(service.staking)]
    install_openapi(app, prefix=ctx.prefix, chain_id=service.genesis.chain_id, max_batch=max_batch, kinds=kinds)
    return app

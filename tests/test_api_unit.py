"""The REST API's edges that need no node: problem+json for every kind of bad input,
the body limit, the batch route's per-item results, the events stream's lifecycle,
and the client's mapping of answers to models and errors.

The service is a small fake defined here; the API against the real node runtime is
tested in tests/test_api.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.client import ApiError, AsyncLedgerClient, LedgerClient, NodeUnreachable
from api.events import EventStreamResponse
from api.schemas import (
    InvalidInput,
    TransactionOut,
    transaction_from_json,
    transaction_out,
    transaction_to_json,
)
from api.service import Accepted, AccountRecord, Event, NodeInfo, ReadRefused, Rejection
from ledger.address import address_of, encode_address
from ledger.codec import MAX_AMOUNT
from ledger.crypto import PrivateKey
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus
from ledger.evidence import EvidenceRecord
from ledger.transaction import new_transfer

PREFIX = "tst"
CHAIN = "test-chain"
SENDER = PrivateKey(b"\x01" * 32)
RECIPIENT = address_of(PrivateKey(b"\x02" * 32).public_key)
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "reason", "field"}


def transfer(nonce: int = 0, amount: int = 5, fee: int = 1):
    return new_transfer(SENDER, CHAIN, nonce, RECIPIENT, amount, fee)


# What a validator of a fixed set (BFT) shows in the proof-of-stake fields.
FIXED_SET = {"status": None, "attested_previous_epoch": None, "attested_current_epoch": None}


class FakeService:
    """Accepts everything except nonce 13 (nonce_too_low) and 14 (mempool_full)."""

    def __init__(self) -> None:
        self.genesis = SimpleNamespace(address_prefix=PREFIX, chain_id=CHAIN)
        self.staking = False
        self.submitted: list = []
        self.final = True
        self.fail_node_info = False
        self.queues: list[asyncio.Queue] = []
        self.unsubscribed: list[asyncio.Queue] = []
        self.status = EngineStatus("solo", Finality.AT_COMMIT, "producer", "idle", height=8)
        self.trouble: str | None = None
        self.read_refusal: tuple[str, str] | None = None

    def consensus_status(self) -> EngineStatus:
        return self.status

    def recorded_evidence(self, validator, before, limit):
        return []

    def health(self) -> str | None:
        return self.trouble

    def node_info(self) -> NodeInfo:
        if self.fail_node_info:
            raise RuntimeError("secret internal detail")
        return NodeInfo(CHAIN, b"\x01" * 32, "solo", 7, b"\x02" * 32, 1000, 6, "0.1.0", PREFIX, "LED", 9, "node-a")

    async def submit(self, transactions):
        self.submitted.extend(transactions)
        results = []
        for tx in transactions:
            if tx.nonce == 13:
                results.append(Rejection("nonce_too_low", "nonce 13 is already used", "nonce"))
            elif tx.nonce == 14:
                results.append(Rejection("mempool_full", "the mempool is full"))
            else:
                results.append(Accepted(tx.id))
        return results

    async def wait_final(self, tx_ids, timeout):
        return {tx_id: "final" if self.final else "pending" for tx_id in tx_ids}

    def transaction(self, tx_id):
        return None

    def block(self, ref, with_transactions=True):
        return None

    def blocks(self, before_height, limit):
        return []

    def account(self, address):
        return AccountRecord(address, 100, 2, 3, 1)

    def account_transactions(self, address, before, limit):
        return []

    async def read_barrier(self) -> int:
        self.barriers = getattr(self, "barriers", 0) + 1
        if self.read_refusal is not None:
            raise ReadRefused(*self.read_refusal)
        return 8

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.append(queue)
        return queue

    def unsubscribe(self, queue) -> None:
        self.unsubscribed.append(queue)


@pytest.fixture
def service() -> FakeService:
    return FakeService()


def call(app, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return await http.request(method, url, **kwargs)

    return asyncio.run(run())


def assert_problem(response: httpx.Response, status: int, reason: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document = response.json()
    assert PROBLEM_MEMBERS <= set(document)
    assert document["type"] == f"urn:ledger:problem:{reason}"
    assert document["reason"] == reason
    assert document["status"] == status
    assert document["field"] == field
    assert document["title"] and document["detail"]
    return document


# --- the shape of bad requests -------------------------------------------------------------


def test_malformed_json_is_a_bad_json_problem(service):
    app = create_app(service)
    response = call(app, "POST", "/v1/transactions", content=b'{"raw": ', headers={"content-type": "application/json"})
    assert_problem(response, 400, "bad_json")
    response = call(app, "POST", "/v1/transactions/batch", content=b"", headers={"content-type": "application/json"})
    assert_problem(response, 400, "bad_json")
    assert service.submitted == []


def test_healthz_answers_503_with_the_reason_when_the_node_is_not_doing_its_job(service):
    app = create_app(service)
    assert call(app, "GET", "/healthz").json() == {"status": "ok", "height": 7}
    service.trouble = "no new block for 31 s while 12 transactions are ready"
    document = assert_problem(call(app, "GET", "/healthz"), 503, "unhealthy")
    assert document["detail"] == service.trouble


def test_deeply_nested_json_is_refused_not_crashed(service):
    body = b"[" * 100_000 + b"]" * 100_000
    response = call(create_app(service), "POST", "/v1/transactions", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "bad_json")


def test_form_body_is_an_unsupported_media_type(service):
    response = call(create_app(service), "POST", "/v1/transactions", data={"raw": "00"})
    assert_problem(response, 415, "unsupported_media_type")


def test_unknown_field_is_refused_and_named(service):
    fields = transaction_to_json(transfer(), PREFIX) | {"memo": "hi"}
    response = call(create_app(service), "POST", "/v1/transactions", json=fields)
    assert_problem(response, 422, "unknown_field", "memo")
    response = call(create_app(service), "POST", "/v1/transactions", json={"raw": transfer().encode().hex(), "fee": 3})
    assert_problem(response, 422, "unknown_field", "fee")
    assert service.submitted == []


def test_several_field_errors_are_all_listed(service):
    fields = transaction_to_json(transfer(), PREFIX) | {"amount": "5", "fee": MAX_AMOUNT + 1}
    del fields["nonce"]
    document = assert_problem(call(create_app(service), "POST", "/v1/transactions", json=fields), 422, "missing_field", "nonce")
    listed = {(error["field"], error["reason"]) for error in document["errors"]}
    assert listed == {("nonce", "missing_field"), ("amount", "wrong_type"), ("fee", "amount_overflow")}


def test_bad_hex_is_named_for_raw_fields_and_ids(service):
    app = create_app(service)
    assert_problem(call(app, "POST", "/v1/transactions", json={"raw": "xyz0"}), 400, "bad_hex", "raw")
    fields = transaction_to_json(transfer(), PREFIX) | {"signature": "g" * 128}
    assert_problem(call(app, "POST", "/v1/transactions", json=fields), 400, "bad_hex", "signature")
    fields = transaction_to_json(transfer(), PREFIX) | {"sender": "ab" * 32}
    assert_problem(call(app, "POST", "/v1/transactions", json=fields), 400, "bad_length", "sender")
    assert_problem(call(app, "GET", "/v1/transactions/not-hex"), 400, "bad_hex", "id")
    assert_problem(call(app, "GET", "/v1/transactions/abcd"), 400, "bad_length", "id")


def test_undecodable_raw_is_a_decode_error(service):
    truncated = transfer().encode()[:-1].hex()
    document = assert_problem(call(create_app(service), "POST", "/v1/transactions", json={"raw": truncated}), 400, "decode_error", "raw")
    assert "signature" in document["detail"]


def test_bad_addresses_are_named(service):
    app = create_app(service)
    other_network = encode_address("oth", RECIPIENT)
    fields = transaction_to_json(transfer(), PREFIX) | {"recipient": other_network}
    assert_problem(call(app, "POST", "/v1/transactions", json=fields), 400, "wrong_network", "recipient")
    good = encode_address(PREFIX, RECIPIENT)
    typo = good[:-1] + ("q" if good[-1] != "q" else "p")
    fields = transaction_to_json(transfer(), PREFIX) | {"recipient": typo}
    assert_problem(call(app, "POST", "/v1/transactions", json=fields), 400, "bad_checksum", "recipient")
    assert_problem(call(app, "GET", f"/v1/accounts/{typo}"), 400, "bad_checksum", "address")
    assert_problem(call(app, "GET", f"/v1/accounts/{other_network}/transactions"), 400, "wrong_network", "address")
    assert service.submitted == []


def test_query_validation_names_the_parameter(service):
    app = create_app(service, max_wait_seconds=5)
    assert_problem(call(app, "GET", "/v1/blocks?limit=0"), 422, "out_of_range", "limit")
    assert_problem(call(app, "GET", "/v1/blocks?before=abc"), 422, "wrong_type", "before")
    raw = {"raw": transfer().encode().hex()}
    assert_problem(call(app, "POST", "/v1/transactions?wait=soon", json=raw), 422, "invalid_value", "wait")
    assert_problem(call(app, "POST", "/v1/transactions?wait=final&timeout=6", json=raw), 422, "out_of_range", "timeout")
    address = encode_address(PREFIX, RECIPIENT)
    assert_problem(call(app, "GET", f"/v1/accounts/{address}/transactions?before=5"), 400, "bad_cursor", "before")
    assert_problem(call(app, "GET", "/v1/blocks/12ab"), 400, "bad_block_ref", "ref")
    assert service.submitted == []


def test_routing_errors_are_problems(service):
    app = create_app(service)
    assert_problem(call(app, "GET", "/v1/nowhere"), 404, "not_found")
    response = call(app, "DELETE", "/v1/blocks")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
    assert_problem(call(app, "GET", "/v1/transactions/" + "ab" * 32), 404, "not_found", "id")
    assert_problem(call(app, "GET", "/v1/blocks/5"), 404, "not_found", "ref")
    assert_problem(call(app, "GET", "/v1/blocks/" + "9" * 40), 404, "not_found", "ref")


def test_an_internal_error_is_a_500_problem_without_traceback(service, caplog):
    service.fail_node_info = True
    response = call(create_app(service), "GET", "/v1/node")
    document = assert_problem(response, 500, "internal_error")
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert document["field"] is None
    assert "secret internal detail" in caplog.text  # logged for the operator instead


# --- the engine's typed status ----------------------------------------------------------------

KEY_A, KEY_B = PrivateKey(b"\x0a" * 32), PrivateKey(b"\x0b" * 32)
VALIDATOR_A, VALIDATOR_B = address_of(KEY_A.public_key), address_of(KEY_B.public_key)
EQUIVOCATION = EvidenceRecord(VALIDATOR_B, 4, 1, "duplicate_vote", b"\x01proof")
BFT_STATUS = EngineStatus(
    "bft", Finality.CERTIFICATE, "validator", "collecting prevotes", height=9, round=1, step="prevote",
    validators=(
        ValidatorStatus(VALIDATOR_A, KEY_A.public_key, 10, blocks_proposed=5, last_signed_height=8),
        ValidatorStatus(VALIDATOR_B, KEY_B.public_key, 10, blocks_proposed=3, last_signed_height=None,
                        jailed=True, slashed=250),
    ),
    total_power=20, quorum_power=14, evidence=(EQUIVOCATION,), details={"refused_messages": 2},
)


def test_validators_render_the_typed_status_with_addresses_of_the_network(service):
    service.status = BFT_STATUS
    answer = call(create_app(service), "GET", "/v1/validators").json()
    assert answer == {
        "engine": "bft", "finality": "certificate", "total_power": 20, "quorum_power": 14, "note": None,
        "validators": [
            {"address": encode_address(PREFIX, VALIDATOR_A), "public_key": KEY_A.public_key.hex(), "power": 10,
             "blocks_proposed": 5, "last_signed_height": 8, "jailed": False, "slashed": 0, **FIXED_SET},
            {"address": encode_address(PREFIX, VALIDATOR_B), "public_key": KEY_B.public_key.hex(), "power": 10,
             "blocks_proposed": 3, "last_signed_height": None, "jailed": True, "slashed": 250, **FIXED_SET},
        ],
    }


def test_an_engine_without_a_validator_set_answers_an_empty_list_and_a_note(service):
    service.status = EngineStatus("pow", Finality.DEPTH, "miner", "mining", height=3,
                                  details={"next_target": "00ff", "finality_depth": 6})
    app = create_app(service)
    answer = call(app, "GET", "/v1/validators").json()
    assert answer["validators"] == [] and answer["finality"] == "depth"
    assert answer["note"] == "the pow engine has no validator set"
    state = call(app, "GET", "/v1/consensus").json()["state"]
    # What an engine has no notion of is null, in the same schema.
    assert (state["validators"], state["round"], state["step"], state["total_power"]) == (None, None, None, None)
    assert state["details"] == {"next_target": "00ff", "finality_depth": 6}


def test_consensus_shows_every_field_of_the_typed_status(service):
    service.status = BFT_STATUS
    answer = call(create_app(service), "GET", "/v1/consensus").json()
    assert (answer["engine"], answer["height"]) == ("bft", 7)  # the head height, as GET /v1/node
    state = answer["state"]
    assert (state["finality"], state["role"], state["phase"]) == ("certificate", "validator", "collecting prevotes")
    assert (state["height"], state["round"], state["step"], state["slot"], state["epoch"], state["justified"]) == (
        9, 1, "prevote", None, None, None)
    assert [v["address"] for v in state["validators"]] == [encode_address(PREFIX, a) for a in (VALIDATOR_A, VALIDATOR_B)]
    assert state["evidence"] == [{"validator": encode_address(PREFIX, VALIDATOR_B), "kind": "duplicate_vote",
                                  "height": 4, "round": 1, "evidence": "0170726f6f66"}]
    assert state["details"] == {"refused_messages": 2}


def test_evidence_seen_comes_from_the_typed_status_and_filters_by_validator(service):
    service.status = BFT_STATUS
    app = create_app(service)
    seen = call(app, "GET", "/v1/evidence").json()["evidence"]
    assert [(item["validator"], item["kind"], item["evidence"]) for item in seen] == [
        (encode_address(PREFIX, VALIDATOR_B), "duplicate_vote", EQUIVOCATION.data.hex())
    ]
    assert call(app, "GET", f"/v1/evidence?validator={encode_address(PREFIX, VALIDATOR_B)}").json()["evidence"] == seen
    assert call(app, "GET", f"/v1/evidence?validator={encode_address(PREFIX, VALIDATOR_A)}").json()["evidence"] == []


def test_the_openapi_schema_has_one_status_schema_with_finality_as_an_enum(service):
    schemas = call(create_app(service), "GET", "/openapi.json").json()["components"]["schemas"]
    assert set(schemas["Finality"]["enum"]) == {f.value for f in Finality}
    assert {"validators", "round", "epoch", "finalized", "details", "evidence"} <= set(schemas["EngineStatusOut"]["properties"])
    assert {"blocks_proposed", "last_signed_height", "jailed", "slashed"} <= set(schemas["ValidatorOut"]["properties"])


# --- the body limit ------------------------------------------------------------------------


def test_body_over_the_limit_is_refused_by_content_length(service):
    app = create_app(service, max_body_bytes=1000)
    body = json.dumps({"transactions": [{"raw": transfer(n).encode().hex()} for n in range(10)]})
    assert len(body) > 1000
    response = call(app, "POST", "/v1/transactions/batch", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 413, "body_too_large")
    assert service.submitted == []


def test_streamed_body_over_the_limit_is_refused_while_reading(service):
    """No Content-Length (chunked): the bytes are counted as they arrive."""
    app = create_app(service, max_body_bytes=1000)
    chunks = [b'{"transactions": [', b" " * 600, b" " * 600, b"]}"]
    sent: list[dict] = []

    async def run() -> None:
        pending = list(chunks)

        async def receive() -> dict:
            if pending:
                chunk = pending.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/transactions/batch", "raw_path": b"/v1/transactions/batch", "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8000),
        }
        await app(scope, receive, send)

    asyncio.run(run())
    start = next(message for message in sent if message["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    assert json.loads(body)["reason"] == "body_too_large"
    assert service.submitted == []


# --- submitting ----------------------------------------------------------------------------


def test_submit_raw_and_json_forms_reach_the_service_as_the_same_transaction(service):
    app = create_app(service)
    tx = transfer()
    first = call(app, "POST", "/v1/transactions", json={"raw": tx.encode().hex()})
    second = call(app, "POST", "/v1/transactions", json=transaction_to_json(tx, PREFIX))
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == {"id": tx.id.hex(), "status": "pending"}
    assert service.submitted == [tx, tx]


def test_a_service_rejection_passes_its_reason_and_field_through(service):
    response = call(create_app(service), "POST", "/v1/transactions", json={"raw": transfer(nonce=13).encode().hex()})
    assert_problem(response, 409, "nonce_too_low", "nonce")
    response = call(create_app(service), "POST", "/v1/transactions", json={"raw": transfer(nonce=14).encode().hex()})
    assert_problem(response, 503, "mempool_full")
    assert response.headers["retry-after"] == "1"


def test_wait_final_answers_200_when_final_and_202_at_timeout(service):
    app = create_app(service)
    raw = {"raw": transfer().encode().hex()}
    response = call(app, "POST", "/v1/transactions?wait=final&timeout=1.5", json=raw)
    assert response.status_code == 200
    assert response.json()["status"] == "final"
    service.final = False
    response = call(app, "POST", "/v1/transactions?wait=final&timeout=0.1", json=raw)
    assert response.status_code == 202
    assert response.json() == {"id": transfer().id.hex(), "status": "pending", "timed_out": True}


def test_batch_reports_each_item_and_counts(service):
    good, rejected = transfer(0), transfer(13)
    items = [
        {"raw": good.encode().hex()},
        {"raw": "zz"},
        transaction_to_json(transfer(1), PREFIX) | {"nonce": -1},
        {"raw": rejected.encode().hex()},
        transaction_to_json(transfer(2), PREFIX),
        "not an object",
    ]
    response = call(create_app(service), "POST", "/v1/transactions/batch", json={"transactions": items})
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 4)
    results = answer["results"]
    assert [result["index"] for result in results] == list(range(6))
    assert [result["accepted"] for result in results] == [True, False, False, False, True, False]
    assert results[0]["id"] == good.id.hex()
    problems = {i: (r["problem"]["reason"], r["problem"]["field"]) for i, r in enumerate(results) if not r["accepted"]}
    assert problems == {
        1: ("bad_hex", "transactions[1].raw"),
        2: ("out_of_range", "transactions[2].nonce"),
        3: ("nonce_too_low", "transactions[3].nonce"),
        5: ("wrong_type", "transactions[5]"),
    }
    assert results[3]["problem"]["type"] == "urn:ledger:problem:nonce_too_low"
    assert [tx.nonce for tx in service.submitted] == [0, 13, 2]


def test_batch_with_wait_final_gives_each_accepted_status(service):
    items = [{"raw": transfer(n).encode().hex()} for n in (0, 13, 1)]
    answer = call(create_app(service), "POST", "/v1/transactions/batch?wait=final", json={"transactions": items}).json()
    assert [result.get("status") for result in answer["results"]] == ["final", None, "final"]
    assert answer["timed_out"] is False


def test_batch_over_the_item_limit_is_refused_whole(service):
    items = [{"raw": transfer(n).encode().hex()} for n in range(4)]
    response = call(create_app(service, max_batch=3), "POST", "/v1/transactions/batch", json={"transactions": items})
    assert_problem(response, 413, "batch_too_large", "transactions")
    response = call(create_app(service), "POST", "/v1/transactions/batch", json={"transactions": items, "x": 1})
    assert_problem(response, 422, "unknown_field", "x")
    response = call(create_app(service), "POST", "/v1/transactions/batch", json=items)
    assert_problem(response, 422, "wrong_type")
    assert service.submitted == []


# --- the events stream ---------------------------------------------------------------------


def test_events_stream_formats_events_and_unsubscribes_on_disconnect(service):
    received: list[bytes] = []

    async def run() -> None:
        disconnected = asyncio.Event()

        async def receive() -> dict:
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body":
                received.append(message["body"])

        response = EventStreamResponse(service, keepalive_seconds=0.05)
        stream = asyncio.create_task(response({"type": "http"}, receive, send))
        while not service.queues:
            await asyncio.sleep(0.01)
        service.queues[0].put_nowait(Event("block", {"height": 3, "hash": b"\xab" * 2}))
        await asyncio.sleep(0.15)
        disconnected.set()
        await asyncio.wait_for(stream, 1)

    asyncio.run(run())
    text = b"".join(received).decode()
    assert "event: block\ndata: {\"height\":3,\"hash\":\"abab\"}\n\n" in text
    assert ": keepalive\n\n" in text
    assert service.unsubscribed == service.queues


def test_events_route_is_an_event_stream(service):
    app = create_app(service)
    route = next(route for route in app.routes if getattr(route, "path", "") == "/v1/events")
    response = asyncio.run(route.endpoint())
    assert isinstance(response, EventStreamResponse)
    assert dict(response.raw_headers)[b"content-type"].startswith(b"text/event-stream")


# --- schemas -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    nonce=st.integers(0, MAX_AMOUNT),
    amount=st.integers(1, MAX_AMOUNT // 2),
    fee=st.integers(0, MAX_AMOUNT // 2),
    payload=st.binary(max_size=256),
)
def test_transaction_json_round_trips(nonce, amount, fee, payload):
    tx = new_transfer(SENDER, CHAIN, nonce, RECIPIENT, amount, fee, payload)
    assert transaction_from_json(transaction_to_json(tx, PREFIX), PREFIX) == tx
    shown = TransactionOut.model_validate(transaction_out(tx, PREFIX))
    assert transaction_from_json(shown, PREFIX).id == tx.id


def test_transaction_out_with_a_wrong_id_is_refused():
    shown = transaction_out(transfer(), PREFIX) | {"id": "00" * 32}
    with pytest.raises(InvalidInput) as caught:
        transaction_from_json(TransactionOut.model_validate(shown), PREFIX)
    assert (caught.value.reason, caught.value.field) == ("id_mismatch", "id")


# --- the client ----------------------------------------------------------------------------


def test_async_client_returns_models_and_raises_api_errors(service):
    app = create_app(service)

    async def run() -> None:
        async with AsyncLedgerClient("http://node", transport=httpx.ASGITransport(app=app)) as node:
            info = await node.node_info()
            assert (info.height, info.genesis_hash) == (7, "01" * 32)
            submitted = await node.submit(transfer(), wait_final=True, timeout=2)
            assert (submitted.id, submitted.status) == (transfer().id.hex(), "final")
            batch = await node.submit_batch([transfer(0), transfer(13), transaction_to_json(transfer(1), PREFIX)])
            assert (batch.accepted, batch.rejected) == (2, 1)
            assert batch.results[1].problem.reason == "nonce_too_low"
            account = await node.account(encode_address(PREFIX, RECIPIENT))
            assert (account.balance, account.pending_nonce) == (100, 3)
            with pytest.raises(ApiError) as caught:
                await node.submit(transfer(nonce=13))
            assert (caught.value.status, caught.value.reason, caught.value.field) == (409, "nonce_too_low", "nonce")
            with pytest.raises(ApiError) as caught:
                await node.account("tst1notanaddress")
            assert (caught.value.status, caught.value.field) == (400, "address")
            with pytest.raises(ApiError) as caught:
                await node.block(5)
            assert (caught.value.status, caught.value.reason) == (404, "not_found")

    asyncio.run(run())


def test_client_maps_a_non_problem_error_and_a_malformed_answer():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(502, text="<html>bad gateway</html>", headers={"content-type": "text/html"})
        return httpx.Response(200, json={"unexpected": True})

    with LedgerClient("http://node", transport=httpx.MockTransport(answer)) as node:
        with pytest.raises(ApiError) as caught:
            node.health()
        assert (caught.value.status, caught.value.reason) == (502, "http_502")
        with pytest.raises(ApiError) as caught:
            node.node_info()
        assert caught.value.reason == "invalid_response"


def test_client_names_the_url_of_an_unreachable_node():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with LedgerClient(url, timeout=2) as node:
        with pytest.raises(NodeUnreachable) as caught:
            node.health()
    assert url in str(caught.value)

    async def run() -> None:
        async with AsyncLedgerClient(url, timeout=2) as node:
            with pytest.raises(NodeUnreachable, match=url):
                await node.mempool()

    asyncio.run(run())


def test_client_parses_server_sent_events():
    stream = (
        b"retry: 3000\n: connected\n\n"
        b"event: tx\ndata: {\"id\": \"ab\"}\n\n"
        b": keepalive\n\n"
        b"event: block\ndata: {\"height\": 4}\n\n"
    )

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    with LedgerClient("http://node", transport=httpx.MockTransport(answer)) as node:
        events = list(node.events())
    assert [(event.kind, event.data) for event in events] == [("tx", {"id": "ab"}), ("block", {"height": 4})]


def test_a_client_reads_a_transaction_of_a_kind_it_does_not_know():
    shown = TransactionOut.model_validate(transaction_out(transfer(), PREFIX) | {"kind": "mint"})
    assert shown.kind == "mint"
    with pytest.raises(InvalidInput) as caught:
        transaction_from_json(shown, PREFIX)
    assert (caught.value.reason, caught.value.field) == ("unknown_kind", "kind")


# --- the admin endpoint (link faults) -------------------------------------------------------


class FaultableService(FakeService):
    def __init__(self):
        super().__init__()
        self.faults = {"blocked": [], "delay_ms": 0, "loss_percent": 0.0}

    def link_faults(self):
        return self.faults

    def set_link_faults(self, blocked, delay_ms, loss_percent):
        if not isinstance(delay_ms, int) or delay_ms < 0:
            error = ValueError("delay_ms is a whole number of milliseconds")
            error.field = "delay_ms"
            raise error
        self.faults = {"blocked": sorted(blocked), "delay_ms": delay_ms, "loss_percent": loss_percent}
        return self.faults


TOKEN = "ab" * 32
NODE_ID = "cd" * 20


def test_admin_faults_need_the_token_and_change_nothing_without_it():
    service = FaultableService()
    app = create_app(service, admin_token=TOKEN)
    body = {"blocked": [NODE_ID], "delay_ms": 50}
    for headers in ({}, {"authorization": "Bearer " + "00" * 32}, {"authorization": TOKEN}):
        response = call(app, "PUT", "/v1/admin/faults", json=body, headers=headers)
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert service.faults["blocked"] == []
    # A token with bytes outside ASCII is just a wrong token, not a server error.
    assert_problem(call(app, "GET", "/v1/admin/faults", headers={"authorization": "Bearer \xe9t\xe9".encode("latin-1")}),
                   401, "unauthorized")
    # Forwarded by a proxy on this host: not a loopback caller, whatever the proxy's address.
    assert_problem(call(app, "GET", "/v1/admin/faults", headers={"authorization": f"Bearer {TOKEN}",
                                                                "x-forwarded-for": "203.0.113.9"}), 403, "forbidden")
    assert_problem(call(create_app(service), "GET", "/v1/admin/faults",
                        headers={"authorization": f"Bearer {TOKEN}"}), 401, "unauthorized")  # no token set: closed
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert call(app, "PUT", "/v1/admin/faults", json=body, headers=auth).json() == {
        "blocked": [NODE_ID], "delay_ms": 50, "loss_percent": 0.0}
    assert call(app, "GET", "/v1/admin/faults", headers=auth).json()["blocked"] == [NODE_ID]
    assert call(app, "DELETE", "/v1/admin/faults", headers=auth).json() == {"blocked": [], "delay_ms": 0, "loss_percent": 0.0}


def test_admin_faults_refuse_bad_settings_by_field():
    service = FaultableService()
    app = create_app(service, admin_token=TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert_problem(call(app, "PUT", "/v1/admin/faults", json={"delay_ms": -1}, headers=auth), 422, "invalid_value", "delay_ms")
    assert_problem(call(app, "PUT", "/v1/admin/faults", json={"blocked": "x"}, headers=auth), 422, "wrong_type", "blocked")
    assert_problem(call(app, "PUT", "/v1/admin/faults", json={"cut": []}, headers=auth), 422, "unknown_field", "cut")
    assert_problem(call(app, "PUT", "/v1/admin/faults", json=[1], headers=auth), 422, "wrong_type")
    assert service.faults == {"blocked": [], "delay_ms": 0, "loss_percent": 0.0}


def test_admin_faults_answer_only_on_loopback_and_say_when_there_is_no_network(service):
    async def from_elsewhere() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(FaultableService(), admin_token=TOKEN), client=("192.0.2.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            return await http.get("/v1/admin/faults", headers={"authorization": f"Bearer {TOKEN}"})

    assert_problem(asyncio.run(from_elsewhere()), 403, "forbidden")

    def no_network():
        raise LookupError("this node runs without a peer network")

    service.link_faults = no_network
    response = call(create_app(service, admin_token=TOKEN), "GET", "/v1/admin/faults",
                    headers={"authorization": f"Bearer {TOKEN}"})
    assert_problem(response, 409, "no_peer_network")


def test_a_405_allows_every_method_of_a_path_served_by_several_routes():
    response = call(create_app(FaultableService(), admin_token=TOKEN), "POST", "/v1/admin/faults")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET, PUT"

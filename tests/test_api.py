"""The REST API against a real node: a `node.runtime.Node` (solo engine, dev genesis,
SQLite or PostgreSQL) behind `api.app.create_app`, driven in-process through the
ASGI app with httpx and the project's own `AsyncLedgerClient`.

The happy paths check what a client sees end to end (submit, wait for finality, read
the transaction, its block, the accounts, the pages, the metrics, the events stream).
Every bad input of issue 2 is checked for its problem+json answer (status, stable
`type`, `reason`, `field`) and for changing nothing: the mempool, every watched
account, the head and the stored chain are the same before and after, and the node
still takes a good transfer to finality.

Edges that need no node (body streaming, the client's error mapping, ...) are in
tests/test_api_unit.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.client import ApiError, AsyncLedgerClient
from api.schemas import transaction_to_json
from ledger.address import address_of, encode_address
from ledger.codec import MAX_AMOUNT
from ledger.crypto import CURVE_ORDER, PrivateKey
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction, new_transfer
from node.config import NodeConfig
from node.runtime import Node

KEYS = dev_keys(4)
NODE_KEY = PrivateKey(bytes(31) + b"\x0b")
GENESIS = dev_genesis(NODE_KEY.public_key)
CHAIN = GENESIS.chain_id
PREFIX = GENESIS.address_prefix
BOB = address_of(PrivateKey(bytes(31) + b"\x0c").public_key)
AUTHORITY = address_of(NODE_KEY.public_key)
FUNDS = GENESIS.allocations[address_of(KEYS[0].public_key)]
PROBLEM_TYPE = "urn:ledger:problem:"
WAIT_FINAL = {"wait": "final", "timeout": 20}
BATCH = "/v1/transactions/batch"

# Who the bad inputs speak for: USED has nonce 0 on the chain, FRESH has never sent.
USED, FRESH = KEYS[0], KEYS[1]
WATCHED = [address_of(key.public_key) for key in KEYS] + [BOB, AUTHORITY]

NO_STAKE = {"bonded": 0, "unbonding": 0, "release_epoch": 0, "slashed": 0}


def addr(account: bytes) -> str:
    return encode_address(PREFIX, account)


def sender_of(key: PrivateKey) -> str:
    return addr(address_of(key.public_key))


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chain.db'}"


def run(coroutine) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))


@dataclass
class Serving:
    node: Node
    app: Any
    http: httpx.AsyncClient
    client: AsyncLedgerClient


@asynccontextmanager
async def serving(db_url: str, data_dir: Path, **app_options: Any) -> AsyncIterator[Serving]:
    """A started node, its API app, and two ways to talk to it through the ASGI transport."""
    node = Node(NodeConfig(data_dir=data_dir, db=db_url), GENESIS, NODE_KEY)
    await node.start()
    try:
        app = create_app(node, **app_options)
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://node", timeout=30) as http,
            AsyncLedgerClient("http://node", transport=transport, timeout=30) as client,
        ):
            yield Serving(node, app, http, client)
    finally:
        await node.stop()


def assert_problem(response: httpx.Response, status: int, reason: str, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document = response.json()
    assert document["type"] == PROBLEM_TYPE + reason, document
    assert document["reason"] == reason
    assert document["status"] == status
    assert document["field"] == field, document
    assert document["title"] and document["detail"]
    return document


async def chain_view(serving_: Serving) -> dict[str, Any]:
    """Everything a bad input must leave alone.  The mempool is read before the head: a
    transaction wrongly admitted is then seen either pending or in a new block."""
    http, node = serving_.http, serving_.node
    mempool = (await http.get("/v1/mempool", params={"limit": 1000})).json()
    accounts = {}
    for account in WATCHED:
        accounts[addr(account)] = (await http.get(f"/v1/accounts/{addr(account)}")).json()
    info = (await http.get("/v1/node")).json()
    pages = (await http.get("/v1/blocks", params={"limit": 100})).json()
    stored_head = await asyncio.to_thread(node.store.head)
    return {
        "mempool_size": mempool["size"],
        "mempool": [tx["id"] for tx in mempool["transactions"]],
        "accounts": accounts,
        "height": info["height"],
        "head": info["head_hash"],
        "blocks": [block["hash"] for block in pages["blocks"]],
        "stored_head": stored_head.hash.hex(),
        "supply": node.state.total_supply(),
    }


async def submit_final(serving_: Serving, tx: Transaction) -> dict:
    response = await serving_.http.post("/v1/transactions", params=WAIT_FINAL, json=raw_body(tx))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "final"
    return response.json()


def raw_body(tx: Transaction) -> dict[str, str]:
    return {"raw": tx.encode().hex()}


def with_signature(tx: Transaction, signature: bytes) -> Transaction:
    return dataclasses.replace(tx, signature=signature)


def high_s(tx: Transaction) -> Transaction:
    """The same signature with s replaced by n - s: it verifies, but is not canonical."""
    r, s = tx.signature[:32], int.from_bytes(tx.signature[32:], "big")
    return with_signature(tx, r + (CURVE_ORDER - s).to_bytes(32, "big"))


def signed_unchecked(key: PrivateKey, **fields: Any) -> Transaction:
    """A transfer signed as given, bypassing nothing but the caller's good sense."""
    values = dict(chain_id=CHAIN, nonce=0, sender=key.public_key, recipient=BOB, amount=5, fee=1)
    values.update(fields)
    return Transaction(**values).signed(key)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


# --- happy paths -----------------------------------------------------------------------------


def test_submit_raw_and_json_pending_then_final_with_block_and_balances(tmp_path, store_url):
    async def scenario() -> None:
        async with serving(store_url, tmp_path) as api:
            http = api.http
            first = new_transfer(KEYS[0], CHAIN, 0, BOB, 1_000, fee=7)
            queued = new_transfer(KEYS[0], CHAIN, 1, BOB, 2_000, fee=9)

            # Nonce 1 before nonce 0: it waits in the mempool, so it is observably pending.
            response = await http.post("/v1/transactions", json=raw_body(queued))
            assert response.status_code == 202
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"id": queued.id.hex(), "status": "pending"}
            shown = (await http.get(f"/v1/transactions/{queued.id.hex()}")).json()
            assert shown["status"] == "pending"
            assert (shown["block_height"], shown["block_hash"], shown["index"], shown["timestamp"]) == (None,) * 4
            assert shown["confirmations"] == 0
            assert {k: shown[k] for k in transaction_to_json(queued, PREFIX)} == transaction_to_json(queued, PREFIX)
            assert shown["sender_address"] == sender_of(KEYS[0])
            account = (await http.get(f"/v1/accounts/{sender_of(KEYS[0])}")).json()
            assert account == {
                "address": sender_of(KEYS[0]), "balance": FUNDS, "nonce": 0, "pending_nonce": 0, "pending_count": 1,
                **NO_STAKE,
            }
            mempool = (await http.get("/v1/mempool")).json()
            assert mempool["size"] == 1 and mempool["senders"] == 1
            assert mempool["capacity"] == api.node.config.mempool_capacity
            assert [tx["id"] for tx in mempool["transactions"]] == [queued.id.hex()]

            # The JSON form of a pending transaction names the same transaction: a duplicate.
            response = await http.post("/v1/transactions", json=transaction_to_json(queued, PREFIX))
            assert response.status_code == 202
            assert response.json() == {"id": queued.id.hex(), "status": "pending", "duplicate": True}

            # Waiting on a transaction that cannot be final yet ends at the timeout, still pending.
            response = await http.post(
                "/v1/transactions", params={"wait": "final", "timeout": 0.2}, json=raw_body(queued)
            )
            assert response.status_code == 202
            assert response.json() == {"id": queued.id.hex(), "status": "pending", "duplicate": True, "timed_out": True}

            # Nonce 0 as JSON fields, waiting for finality: both land in one block.
            response = await http.post(
                "/v1/transactions", params=WAIT_FINAL, json=transaction_to_json(first, PREFIX)
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"id": first.id.hex(), "status": "final"}

            shown_first = (await http.get(f"/v1/transactions/{first.id.hex()}")).json()
            shown_queued = (await http.get(f"/v1/transactions/{queued.id.hex()}")).json()
            assert shown_first["status"] == shown_queued["status"] == "final"
            height = shown_first["block_height"]
            assert height == shown_queued["block_height"] == 1
            assert (shown_first["index"], shown_queued["index"]) == (0, 1)
            assert shown_first["confirmations"] == 1

            block = (await http.get(f"/v1/blocks/{height}")).json()
            assert block["hash"] == shown_first["block_hash"] == shown_queued["block_hash"]
            assert block["timestamp"] == shown_first["timestamp"]
            assert [tx["id"] for tx in block["transactions"]] == [first.id.hex(), queued.id.hex()]
            assert block["status"] == "final" and block["tx_count"] == 2
            assert block["proposer"] == addr(AUTHORITY)

            sender = (await http.get(f"/v1/accounts/{sender_of(KEYS[0])}")).json()
            assert sender == {
                "address": sender_of(KEYS[0]), "balance": FUNDS - 1_007 - 2_009, "nonce": 2, "pending_nonce": 2,
                "pending_count": 0, **NO_STAKE,
            }
            assert (await http.get(f"/v1/accounts/{addr(BOB)}")).json()["balance"] == 3_000
            assert (await http.get(f"/v1/accounts/{addr(AUTHORITY)}")).json()["balance"] == 16
            assert (await http.get("/v1/mempool")).json()["size"] == 0

            # One more block: the earlier transaction gains a confirmation.
            await submit_final(api, new_transfer(KEYS[1], CHAIN, 0, BOB, 1))
            again = (await http.get(f"/v1/transactions/{first.id.hex()}")).json()
            assert again["confirmations"] == 2 and again["block_height"] == 1

    run(scenario())


def test_resubmitting_a_final_transaction_is_idempotent(tmp_path, store_url):
    """docs/api.md: submitting is idempotent.  A client whose answer was lost resubmits
    the same bytes; it learns the transaction is final instead of a nonce error."""

    async def scenario() -> None:
        async with serving(store_url, tmp_path) as api:
            tx = new_transfer(KEYS[0], CHAIN, 0, BOB, 10, fee=1)
            await submit_final(api, tx)
            before = await chain_view(api)
            response = await api.http.post("/v1/transactions", params=WAIT_FINAL, json=raw_body(tx))
            assert response.status_code == 200, response.text
            assert response.json() == {"id": tx.id.hex(), "status": "final", "duplicate": True}
            response = await api.http.post("/v1/transactions", json=raw_body(tx))
            assert response.status_code == 202
            assert response.json()["duplicate"] is True
            answer = (await api.http.post("/v1/transactions/batch", json={"transactions": [raw_body(tx)]})).json()
            assert answer["results"] == [{"index": 0, "id": tx.id.hex(), "accepted": True, "duplicate": True}]
            assert await chain_view(api) == before
            # A different transaction with the used nonce is still refused.
            other = new_transfer(KEYS[0], CHAIN, 0, BOB, 11, fee=1)
            assert_problem(await api.http.post("/v1/transactions", json=raw_body(other)), 409, "nonce_too_low", "nonce")

    run(scenario())


def test_batch_mixes_forms_reports_each_item_and_waits_for_finality(tmp_path, store_url):
    async def scenario() -> None:
        async with serving(store_url, tmp_path) as api:
            used = new_transfer(KEYS[2], CHAIN, 0, BOB, 3)
            await submit_final(api, used)
            goods = [new_transfer(KEYS[0], CHAIN, nonce, BOB, 100 + nonce, fee=2) for nonce in range(3)]
            reused = new_transfer(KEYS[2], CHAIN, 0, BOB, 4)
            forged = with_signature(new_transfer(KEYS[1], CHAIN, 0, BOB, 5), goods[0].signature)
            items = [
                raw_body(goods[0]),
                transaction_to_json(goods[1], PREFIX),
                raw_body(reused),
                transaction_to_json(forged, PREFIX),
                {"raw": "not hex"},
                raw_body(goods[2]),
            ]
            response = await api.http.post(
                BATCH, params=WAIT_FINAL, json={"transactions": items}
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            assert (answer["accepted"], answer["rejected"], answer["timed_out"]) == (3, 3, False)
            results = answer["results"]
            assert [r["index"] for r in results] == list(range(6))
            for position, tx in ((0, goods[0]), (1, goods[1]), (5, goods[2])):
                assert results[position] == {"index": position, "id": tx.id.hex(), "accepted": True, "status": "final"}
            refused = {r["index"]: (r["problem"]["type"], r["problem"]["field"]) for r in results if not r["accepted"]}
            assert refused == {
                2: (PROBLEM_TYPE + "nonce_too_low", "transactions[2].nonce"),
                3: (PROBLEM_TYPE + "bad_signature", "transactions[3].signature"),
                4: (PROBLEM_TYPE + "bad_hex", "transactions[4].raw"),
            }
            for tx in goods:
                assert (await api.client.transaction(tx.id)).status == "final"
            sender = await api.client.account(sender_of(KEYS[0]))
            assert (sender.nonce, sender.balance) == (3, FUNDS - sum(tx.amount + tx.fee for tx in goods))
            assert (await api.client.account(sender_of(KEYS[1]))).nonce == 0  # the forged item changed nothing

            # Through the shared client: Transaction objects go as raw hex.
            more = [new_transfer(KEYS[3], CHAIN, nonce, BOB, 1) for nonce in range(4)]
            batch = await api.client.submit_batch(more, wait_final=True, timeout=20)
            assert (batch.accepted, batch.rejected, batch.timed_out) == (4, 0, False)
            assert [item.id for item in batch.results] == [tx.id.hex() for tx in more]
            assert {item.status for item in batch.results} == {"final"}

    run(scenario())


def test_blocks_pages_newest_first_by_height_hash_and_latest(tmp_path):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            for nonce in range(7):
                await submit_final(api, new_transfer(KEYS[0], CHAIN, nonce, BOB, 1 + nonce))
            head = api.node.head.height
            assert head == 7

            seen: list[int] = []
            pages: list[list[int]] = []
            before = None
            while True:
                page = await api.client.blocks(before=before, limit=3)
                heights = [block.height for block in page.blocks]
                pages.append(heights)
                seen.extend(heights)
                if page.next is None:
                    break
                assert page.next == heights[-1]
                before = page.next
            assert pages == [[7, 6, 5], [4, 3, 2], [1, 0]]
            assert seen == list(range(head, -1, -1))
            assert (await api.client.blocks(before=0)).blocks == []

            listed = (await api.client.blocks(limit=100)).blocks
            for child, parent in zip(listed, listed[1:]):
                assert child.parent == parent.hash
            for header in listed:
                assert header.status == "final" and header.confirmations == head - header.height + 1
                assert header.chain_id == CHAIN and header.size > 0
                single = (await api.http.get(f"/v1/blocks/{header.height}")).json()
                assert single["size"] == header.size  # the list and the block agree
            # A page of exactly the remaining blocks ends with no cursor.
            assert (await api.client.blocks(before=3, limit=3)).next is None

            latest = (await api.http.get("/v1/blocks/latest")).json()
            by_height = (await api.http.get(f"/v1/blocks/{head}")).json()
            by_hash = (await api.http.get(f"/v1/blocks/{latest['hash']}")).json()
            by_upper_hash = (await api.http.get(f"/v1/blocks/{latest['hash'].upper()}")).json()
            assert latest == by_height == by_hash == by_upper_hash
            assert latest["height"] == head and latest["hash"] == api.node.head.hash.hex()
            assert latest["hash"] == listed[0].hash
            assert [tx["nonce"] for tx in latest["transactions"]] == [6]
            bare = (await api.http.get(f"/v1/blocks/{head}", params={"transactions": "false"})).json()
            assert bare["transactions"] is None and bare["hash"] == latest["hash"]
            genesis = (await api.http.get("/v1/blocks/0")).json()
            assert genesis["transactions"] == [] and genesis["parent"] == "00" * 32

    run(scenario())


def test_account_transactions_pages_have_no_duplicates_and_no_gaps(tmp_path):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            sent = [new_transfer(KEYS[0], CHAIN, nonce, BOB, 10 + nonce) for nonce in range(5)]
            batch = await api.client.submit_batch(sent, wait_final=True, timeout=20)  # several in one block
            assert batch.accepted == 5 and not batch.timed_out
            received = [new_transfer(KEYS[1], CHAIN, 0, address_of(KEYS[0].public_key), 77)]
            await submit_final(api, received[0])
            for nonce in range(5, 8):
                sent.append(new_transfer(KEYS[0], CHAIN, nonce, BOB, 10 + nonce))
                await submit_final(api, sent[-1])
            unrelated = new_transfer(KEYS[2], CHAIN, 0, BOB, 1)
            await submit_final(api, unrelated)

            async def walk(address: str, limit: int) -> list[tuple[int, int, str]]:
                found, cursor = [], None
                for _ in range(50):
                    page = await api.client.account_transactions(address, before=cursor, limit=limit)
                    assert page.address == address
                    assert len(page.transactions) <= limit
                    found += [(tx.block_height, tx.index, tx.id) for tx in page.transactions]
                    if page.next is None:
                        return found
                    assert page.next == f"{found[-1][0]}:{found[-1][1]}"
                    cursor = page.next
                raise AssertionError("pagination did not end")

            mine = {tx.id.hex() for tx in sent + received}
            for limit in (1, 2, 3, 100):
                found = await walk(sender_of(KEYS[0]), limit)
                ids = [entry[2] for entry in found]
                assert len(ids) == len(set(ids)) == len(mine)
                assert set(ids) == mine
                positions = [(height, index) for height, index, _ in found]
                assert positions == sorted(positions, reverse=True)
            bob = {entry[2] for entry in await walk(addr(BOB), 2)}
            assert bob == {tx.id.hex() for tx in sent + [unrelated]}

            page = (await api.http.get(f"/v1/accounts/{sender_of(KEYS[0])}/transactions", params={"limit": 1})).json()
            newest = page["transactions"][0]
            assert newest["id"] == sent[-1].id.hex() and newest["status"] == "final"
            assert newest["block_hash"] and newest["timestamp"] is not None
            never_seen = addr(address_of(PrivateKey(bytes(31) + b"\x55").public_key))
            empty = (await api.http.get(f"/v1/accounts/{never_seen}/transactions")).json()
            assert empty == {"address": never_seen, "transactions": [], "next": None}
            assert (await api.http.get(f"/v1/accounts/{never_seen}")).json() == {
                "address": never_seen, "balance": 0, "nonce": 0, "pending_nonce": 0, "pending_count": 0,
                **NO_STAKE,
            }

    run(scenario())


def test_node_info_health_metrics_and_docs(tmp_path):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            http = api.http
            info = (await http.get("/v1/node")).json()
            assert info["chain_id"] == CHAIN and info["genesis_hash"] == GENESIS.hash.hex()
            assert info["engine"] == "solo" and info["address_prefix"] == PREFIX
            assert (info["height"], info["finalized_height"], info["mempool_size"]) == (0, 0, 0)
            assert info["head_hash"] == GENESIS.block().hash.hex()
            assert info["version"] and info["node_id"] == address_of(NODE_KEY.public_key).hex()
            denomination = GENESIS.denomination
            assert (info["denomination"], info["decimals"]) == (denomination.name, denomination.decimals)
            assert (await http.get("/healthz")).json() == {"status": "ok", "height": 0}

            response = await http.get("/metrics")
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            before = response.text
            assert metric(before, "ledger_height") == 0
            assert metric(before, "ledger_mempool_size") == 0
            for name in ("ledger_finalized_height", "ledger_tx_per_second", "ledger_block_commit_seconds_count"):
                metric(before, name)

            await submit_final(api, new_transfer(KEYS[0], CHAIN, 0, BOB, 1))
            await submit_final(api, new_transfer(KEYS[0], CHAIN, 1, BOB, 1))
            after = (await http.get("/metrics")).text
            assert metric(after, "ledger_height") == 2
            assert metric(after, "ledger_finalized_height") == 2
            assert metric(after, "ledger_transactions_committed_total") == 2
            commits = "ledger_block_commit_seconds_count"
            assert metric(after, commits) == metric(before, commits) + 2
            assert metric(after, "ledger_tx_per_second") > 0
            assert (await http.get("/healthz")).json() == {"status": "ok", "height": 2}
            info = (await http.get("/v1/node")).json()
            assert (info["height"], info["finalized_height"]) == (2, 2)
            assert info["head_hash"] == (await http.get("/v1/blocks/latest")).json()["hash"]

            docs = await http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            schema = (await http.get("/openapi.json")).json()
            for path in ("/v1/transactions", BATCH, "/v1/blocks/{ref}", "/v1/accounts/{address}", "/v1/events"):
                assert path in schema["paths"]
            assert {"RawTransaction", "TransactionJson", "ProblemOut"} <= set(schema["components"]["schemas"])
            # One schema for every engine's status, whichever engine this node runs.
            assert {"ValidatorsOut", "ValidatorOut", "ConsensusOut", "EngineStatusOut"} <= set(schema["components"]["schemas"])
            consensus = (await http.get("/v1/consensus")).json()
            assert consensus["state"]["finality"] in schema["components"]["schemas"]["Finality"]["enum"]
            assert consensus["state"] == info["extra"]["engine"] | {"phase": consensus["state"]["phase"]}

    run(scenario())


class EventStream:
    """GET /v1/events driven straight through the ASGI app: httpx's ASGI transport
    buffers a whole response, and an event stream never ends on its own."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.started = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.buffer = ""
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> EventStream:
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = dict(message.get("headers", []))
                self.started.set()
            elif message["type"] == "http.response.body":
                self.chunks.put_nowait(message.get("body", b""))

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": "/v1/events", "raw_path": b"/v1/events", "query_string": b"", "root_path": "",
            "headers": [(b"accept", b"text/event-stream")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        }
        self.task = asyncio.create_task(self.app(scope, receive, send))
        await asyncio.wait_for(self.started.wait(), 5)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.disconnected.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def next_event(self, kind: str, timeout: float = 10) -> dict:
        async def read() -> dict:
            while True:
                while "\n\n" in self.buffer:
                    message, self.buffer = self.buffer.split("\n\n", 1)
                    lines = dict(line.split(": ", 1) for line in message.split("\n") if not line.startswith(":"))
                    if lines.get("event") == kind:
                        return json.loads(lines["data"])
                self.buffer += (await self.chunks.get()).decode()

        return await asyncio.wait_for(read(), timeout)


def test_event_stream_delivers_tx_and_block_events_after_a_submit(tmp_path):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            async with EventStream(api.app) as stream:
                assert stream.status == 200
                assert stream.headers[b"content-type"].startswith(b"text/event-stream")
                tx = new_transfer(KEYS[0], CHAIN, 0, BOB, 42, fee=3)
                response = await api.http.post("/v1/transactions", json=raw_body(tx))
                assert response.status_code == 202
                admitted = await stream.next_event("tx")
                assert admitted["id"] == tx.id.hex() and admitted["amount"] == 42
                assert admitted["sender"] == sender_of(KEYS[0]) and admitted["recipient"] == addr(BOB)
                block = await stream.next_event("block")
                assert block["height"] == 1 and block["transactions"] == [tx.id.hex()]
                assert block["final"] is True and block["hash"] == api.node.head.hash.hex()

    run(scenario())


# --- bad input -------------------------------------------------------------------------------


def post_json(body: Any, path: str = "/v1/transactions") -> tuple[str, str, dict]:
    return "POST", path, {"json": body}


def post_bytes(
    content: bytes, path: str = "/v1/transactions", content_type: str = "application/json"
) -> tuple[str, str, dict]:
    return "POST", path, {"content": content, "headers": {"content-type": content_type}}


def get(path: str) -> tuple[str, str, dict]:
    return "GET", path, {}


def fields_of(tx: Transaction, **changes: Any) -> dict:
    return transaction_to_json(tx, PREFIX) | changes


def without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def good_fresh(nonce: int = 0, amount: int = 5) -> Transaction:
    return new_transfer(FRESH, CHAIN, nonce, BOB, amount, fee=1)


def json_with(fields: dict, key: str, literal: str) -> bytes:
    """JSON text of `fields` with `key` set to a literal the json module would not write."""
    return json.dumps(fields | {key: "__literal__"}).replace('"__literal__"', literal).encode()


def spaced_hex(tx: Transaction) -> str:
    """Hex with a space after the first byte: bytes.fromhex would take it."""
    text = tx.encode().hex()
    return text[:2] + " " + text[2:]


def typo(address: str) -> str:
    return address[:-1] + ("q" if address[-1] != "q" else "p")


ANOTHER_NETWORK = encode_address("oth", BOB)
UNKNOWN_HASH = "ab" * 32


@dataclass(frozen=True)
class BadInput:
    status: int
    reason: str
    field: str | None
    request: Callable[[Node], tuple[str, str, dict]]


BAD_INPUTS: dict[str, BadInput] = {
    # the request
    "malformed_json": BadInput(400, "bad_json", None, lambda node: post_bytes(b'{"raw": "01')),
    "malformed_json_batch": BadInput(
        400, "bad_json", None, lambda node: post_bytes(b'{"transactions": [', BATCH)
    ),
    "empty_body": BadInput(400, "bad_json", None, lambda node: post_bytes(b"")),
    "integer_too_long_to_parse": BadInput(
        400, "bad_json", None, lambda node: post_bytes(json_with(fields_of(good_fresh()), "amount", "9" * 5000))
    ),
    "nan_is_not_json": BadInput(
        400, "bad_json", None, lambda node: post_bytes(json_with(fields_of(good_fresh()), "amount", "NaN"))
    ),
    # JSON on the wire is UTF-8 (RFC 8259 8.1): other encodings are refused, not guessed.
    "body_in_utf16_with_bom": BadInput(
        415, "unsupported_charset", None, lambda node: post_bytes(json.dumps(fields_of(good_fresh())).encode("utf-16"))
    ),
    "body_in_utf32_batch": BadInput(
        415, "unsupported_charset", None,
        lambda node: post_bytes(json.dumps({"transactions": [raw_body(good_fresh())]}).encode("utf-32-le"), BATCH),
    ),
    "body_not_utf8": BadInput(
        415, "unsupported_charset", None,
        lambda node: post_bytes(json.dumps(fields_of(good_fresh(), chain_id="caf\u00e9"), ensure_ascii=False).encode("latin-1")),
    ),
    "charset_not_utf8": BadInput(
        415, "unsupported_charset", None,
        lambda node: post_bytes(json.dumps(raw_body(good_fresh())).encode(), content_type="application/json; charset=utf-16"),
    ),
    "text_body": BadInput(
        415, "unsupported_media_type", None, lambda node: post_bytes(b"raw=00", content_type="text/plain")
    ),
    "oversized_body": BadInput(
        413, "body_too_large", None, lambda node: post_bytes(b'{"raw": "' + b"00" * (2 * 1024 * 1024) + b'"}')
    ),
    "body_not_an_object": BadInput(422, "wrong_type", None, lambda node: post_json([raw_body(good_fresh())])),
    "amount_as_string": BadInput(
        422, "wrong_type", "amount", lambda node: post_json(fields_of(good_fresh(), amount="5"))
    ),
    # An integral number (0.0, 1e3) is that integer, as in JSON Schema; a fraction is not.
    "nonce_with_fraction": BadInput(
        422, "wrong_type", "nonce", lambda node: post_json(fields_of(good_fresh(), nonce=0.5))
    ),
    "amount_with_fraction_in_exponent_form": BadInput(
        422, "wrong_type", "amount", lambda node: post_bytes(json_with(fields_of(good_fresh()), "amount", "12.5e-1"))
    ),
    "fee_as_bool": BadInput(422, "wrong_type", "fee", lambda node: post_json(fields_of(good_fresh(), fee=True))),
    "recipient_as_number": BadInput(
        422, "wrong_type", "recipient", lambda node: post_json(fields_of(good_fresh(), recipient=7))
    ),
    "raw_as_number": BadInput(422, "wrong_type", "raw", lambda node: post_json({"raw": 12})),
    "unknown_field": BadInput(
        422, "unknown_field", "memo", lambda node: post_json(fields_of(good_fresh(), memo="hi"))
    ),
    "unknown_field_next_to_raw": BadInput(
        422, "unknown_field", "fee", lambda node: post_json(raw_body(good_fresh()) | {"fee": 1})
    ),
    "missing_field": BadInput(
        422, "missing_field", "signature", lambda node: post_json(without(fields_of(good_fresh()), "signature"))
    ),
    "negative_amount": BadInput(
        422, "out_of_range", "amount", lambda node: post_json(fields_of(good_fresh(), amount=-5))
    ),
    "unknown_kind": BadInput(
        422, "unknown_kind", "kind", lambda node: post_json(fields_of(good_fresh(), kind="mint"))
    ),
    "unknown_kind_raw": BadInput(
        422, "unknown_kind", "kind", lambda node: post_json(raw_body(signed_unchecked(FRESH, kind=9)))
    ),
    # A stake is a known kind, refused by a chain whose engine bonds no stake (this one's, solo).
    "stake_without_staking": BadInput(
        422, "staking_not_supported", "kind", lambda node: post_json(raw_body(signed_unchecked(FRESH, kind=1)))
    ),
    "wait_not_final": BadInput(
        422, "invalid_value", "wait", lambda node: post_json(raw_body(good_fresh()), "/v1/transactions?wait=soon")
    ),
    "timeout_too_long": BadInput(
        422, "out_of_range", "timeout",
        lambda node: post_json(raw_body(good_fresh()), "/v1/transactions?wait=final&timeout=61"),
    ),
    # hex and encodings
    "raw_not_hex": BadInput(
        400, "bad_hex", "raw", lambda node: post_json({"raw": "zz" + good_fresh().encode().hex()[2:]})
    ),
    "raw_odd_length": BadInput(
        400, "bad_hex", "raw", lambda node: post_json({"raw": good_fresh().encode().hex()[:-1]})
    ),
    "raw_with_whitespace": BadInput(400, "bad_hex", "raw", lambda node: post_json({"raw": spaced_hex(good_fresh())})),
    "raw_truncated": BadInput(
        400, "decode_error", "raw", lambda node: post_json({"raw": good_fresh().encode().hex()[:-2]})
    ),
    "raw_trailing_bytes": BadInput(
        400, "decode_error", "raw", lambda node: post_json({"raw": good_fresh().encode().hex() + "00"})
    ),
    "signature_not_hex": BadInput(
        400, "bad_hex", "signature", lambda node: post_json(fields_of(good_fresh(), signature="g" * 128))
    ),
    "signature_too_short": BadInput(
        400, "bad_length", "signature", lambda node: post_json(fields_of(good_fresh(), signature="ab" * 63))
    ),
    "sender_not_hex": BadInput(
        400, "bad_hex", "sender", lambda node: post_json(fields_of(good_fresh(), sender="xy" * 33))
    ),
    "payload_too_long": BadInput(
        400, "bad_length", "payload", lambda node: post_json(fields_of(good_fresh(), payload="00" * 257))
    ),
    "transaction_id_not_hex": BadInput(400, "bad_hex", "id", lambda node: get("/v1/transactions/" + "zz" * 32)),
    # signatures and keys
    "bad_signature_raw": BadInput(
        422, "bad_signature", "signature",
        lambda node: post_json(raw_body(with_signature(good_fresh(), new_transfer(USED, CHAIN, 0, BOB, 5).signature))),
    ),
    "bad_signature_json": BadInput(
        422, "bad_signature", "signature",
        lambda node: post_json(fields_of(with_signature(good_fresh(), good_fresh(amount=6).signature))),
    ),
    "high_s_signature_raw": BadInput(
        422, "high_s_signature", "signature", lambda node: post_json(raw_body(high_s(good_fresh())))
    ),
    "high_s_signature_json": BadInput(
        422, "high_s_signature", "signature",
        lambda node: post_json(transaction_to_json(high_s(good_fresh()), PREFIX)),
    ),
    "sender_not_on_the_curve": BadInput(
        422, "bad_public_key", "sender", lambda node: post_json(fields_of(good_fresh(), sender="02" + "ff" * 32))
    ),
    # transactions that can never be valid here
    "another_chain_id": BadInput(
        422, "wrong_chain", "chain_id",
        lambda node: post_json(raw_body(new_transfer(FRESH, "other-chain", 0, BOB, 5, 1))),
    ),
    "zero_amount": BadInput(
        422, "zero_amount", "amount", lambda node: post_json(raw_body(signed_unchecked(FRESH, amount=0)))
    ),
    "amount_over_63_bits_json": BadInput(
        422, "amount_overflow", "amount", lambda node: post_json(fields_of(good_fresh(), amount=MAX_AMOUNT + 1))
    ),
    "amount_over_64_bits_json": BadInput(
        422, "amount_overflow", "amount", lambda node: post_json(fields_of(good_fresh(), amount=2**64 + 5))
    ),
    "amount_over_63_bits_raw": BadInput(
        400, "decode_error", "raw",
        lambda node: post_json(raw_body(signed_unchecked(FRESH, amount=MAX_AMOUNT + 1))),
    ),
    "amount_plus_fee_overflow_raw": BadInput(
        422, "amount_overflow", "amount",
        lambda node: post_json(raw_body(signed_unchecked(FRESH, amount=2**62, fee=2**62))),
    ),
    "amount_plus_fee_overflow_json": BadInput(
        422, "amount_overflow", "amount",
        lambda node: post_json(transaction_to_json(signed_unchecked(FRESH, amount=MAX_AMOUNT, fee=1), PREFIX)),
    ),
    # transactions that conflict with the chain
    "reused_nonce": BadInput(
        409, "nonce_too_low", "nonce", lambda node: post_json(raw_body(new_transfer(USED, CHAIN, 0, BOB, 6, 1)))
    ),
    "far_future_nonce": BadInput(
        409, "nonce_too_far", "nonce", lambda node: post_json(raw_body(good_fresh(nonce=node.pool.nonce_window)))
    ),
    "huge_nonce": BadInput(
        409, "nonce_too_far", "nonce", lambda node: post_json(raw_body(good_fresh(nonce=MAX_AMOUNT)))
    ),
    "insufficient_balance": BadInput(
        409, "insufficient_balance", "amount", lambda node: post_json(raw_body(good_fresh(amount=FUNDS)))
    ),
    # addresses
    "recipient_bad_checksum": BadInput(
        400, "bad_checksum", "recipient", lambda node: post_json(fields_of(good_fresh(), recipient=typo(addr(BOB))))
    ),
    "recipient_another_network": BadInput(
        400, "wrong_network", "recipient", lambda node: post_json(fields_of(good_fresh(), recipient=ANOTHER_NETWORK))
    ),
    "account_bad_checksum": BadInput(
        400, "bad_checksum", "address", lambda node: get(f"/v1/accounts/{typo(addr(BOB))}")
    ),
    "account_another_network": BadInput(
        400, "wrong_network", "address", lambda node: get(f"/v1/accounts/{ANOTHER_NETWORK}")
    ),
    "history_bad_checksum": BadInput(
        400, "bad_checksum", "address", lambda node: get(f"/v1/accounts/{typo(sender_of(USED))}/transactions")
    ),
    "history_bad_cursor": BadInput(
        400, "bad_cursor", "before", lambda node: get(f"/v1/accounts/{sender_of(USED)}/transactions?before=1-0")
    ),
    # unknown things
    "unknown_block_height": BadInput(404, "not_found", "ref", lambda node: get("/v1/blocks/999")),
    "unknown_block_hash": BadInput(404, "not_found", "ref", lambda node: get(f"/v1/blocks/{UNKNOWN_HASH}")),
    "bad_block_ref": BadInput(400, "bad_block_ref", "ref", lambda node: get("/v1/blocks/-1")),
    "unknown_transaction": BadInput(404, "not_found", "id", lambda node: get(f"/v1/transactions/{UNKNOWN_HASH}")),
    "unknown_route": BadInput(404, "not_found", None, lambda node: get("/v1/nothing-here")),
    # batches
    "batch_over_the_limit": BadInput(
        413, "batch_too_large", "transactions",
        lambda node: post_json({"transactions": [raw_body(good_fresh(nonce)) for nonce in range(1001)]}, BATCH),
    ),
    "batch_not_a_list": BadInput(
        422, "wrong_type", "transactions", lambda node: post_json({"transactions": raw_body(good_fresh())}, BATCH)
    ),
    "batch_unknown_field": BadInput(
        422, "unknown_field", "wait", lambda node: post_json({"transactions": [], "wait": "final"}, BATCH)
    ),
}


async def prepare_chain(api: Serving) -> None:
    """USED's nonce 0 is in a final block, so a reused nonce has something to collide with."""
    await submit_final(api, new_transfer(USED, CHAIN, 0, BOB, 1_000, fee=10))


async def assert_refused_without_effect(api: Serving, name: str, case: BadInput) -> None:
    before = await chain_view(api)
    method, path, options = case.request(api.node)
    response = await api.http.request(method, path, **options)
    try:
        assert_problem(response, case.status, case.reason, case.field)
    except AssertionError as failure:
        raise AssertionError(f"{name}: {failure}") from None
    assert "Traceback" not in response.text
    assert await chain_view(api) == before, name


async def assert_still_serving(api: Serving, nonce: int = 1) -> None:
    tx = new_transfer(USED, CHAIN, nonce, BOB, 1)
    await submit_final(api, tx)
    shown = (await api.http.get(f"/v1/transactions/{tx.id.hex()}")).json()
    assert shown["status"] == "final"
    assert (await api.http.get("/healthz")).json()["height"] == api.node.head.height


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_problem_and_changes_nothing(tmp_path, name):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            await prepare_chain(api)
            await assert_refused_without_effect(api, name, BAD_INPUTS[name])
            await assert_still_serving(api)

    run(scenario())


def test_every_bad_input_in_a_row_then_a_good_transfer_goes_final(tmp_path, store_url):
    async def scenario() -> None:
        async with serving(store_url, tmp_path) as api:
            await prepare_chain(api)
            for name, case in BAD_INPUTS.items():
                await assert_refused_without_effect(api, name, case)
            await assert_still_serving(api)
            rejected = (await api.http.get("/metrics")).text
            assert metric(rejected, 'ledger_transactions_rejected_total{reason="nonce_too_low"}') >= 1

    run(scenario())


def test_a_batch_of_only_bad_items_answers_each_and_changes_nothing(tmp_path, store_url):
    async def scenario() -> None:
        async with serving(store_url, tmp_path) as api:
            await prepare_chain(api)
            before = await chain_view(api)
            items = [
                raw_body(new_transfer(USED, CHAIN, 0, BOB, 6, 1)),
                raw_body(high_s(good_fresh())),
                raw_body(new_transfer(FRESH, "other-chain", 0, BOB, 5, 1)),
                fields_of(good_fresh(), recipient=typo(addr(BOB))),
                fields_of(good_fresh(), amount=MAX_AMOUNT + 1),
                raw_body(good_fresh(amount=FUNDS)),
                [1, 2],
                {"raw": spaced_hex(good_fresh())},
            ]
            response = await api.http.post(BATCH, params={"wait": "final", "timeout": 1}, json={"transactions": items})
            assert response.status_code == 200
            answer = response.json()
            assert (answer["accepted"], answer["rejected"]) == (0, len(items))
            problems = [
                (r["problem"]["reason"], r["problem"]["field"], r["problem"]["status"])
                for r in answer["results"]
            ]
            assert problems == [
                ("nonce_too_low", "transactions[0].nonce", 409),
                ("high_s_signature", "transactions[1].signature", 422),
                ("wrong_chain", "transactions[2].chain_id", 422),
                ("bad_checksum", "transactions[3].recipient", 400),
                ("amount_overflow", "transactions[4].amount", 422),
                ("insufficient_balance", "transactions[5].amount", 409),
                ("wrong_type", "transactions[6]", 422),
                ("bad_hex", "transactions[7].raw", 400),
            ]
            for result in answer["results"]:
                assert result["problem"]["type"] == PROBLEM_TYPE + result["problem"]["reason"]
            assert await chain_view(api) == before
            await assert_still_serving(api)

    run(scenario())


def test_client_raises_api_errors_for_refusals_from_the_real_node(tmp_path):
    async def scenario() -> None:
        async with serving(sqlite_url(tmp_path), tmp_path) as api:
            await prepare_chain(api)
            with pytest.raises(ApiError) as caught:
                await api.client.submit(new_transfer(USED, CHAIN, 0, BOB, 2, 1))
            assert (caught.value.status, caught.value.reason, caught.value.field) == (409, "nonce_too_low", "nonce")
            with pytest.raises(ApiError) as caught:
                await api.client.submit(high_s(good_fresh()))
            assert (caught.value.status, caught.value.reason) == (422, "high_s_signature")
            with pytest.raises(ApiError) as caught:
                await api.client.block(UNKNOWN_HASH)
            assert (caught.value.status, caught.value.reason, caught.value.field) == (404, "not_found", "ref")
            with pytest.raises(ApiError) as caught:
                await api.client.transaction(UNKNOWN_HASH)
            assert (caught.value.status, caught.value.field) == (404, "id")
            answer = await api.client.submit(good_fresh(), wait_final=True, timeout=20)
            assert answer.status == "final"

    run(scenario())

"""Hostile REST clients against real `ledger node` processes (issue 10).

- 1,000 slowloris sockets (a request line, then one header byte a second) are all
  closed by the node within 15 s (its header deadline is 10 s by default), while
  /healthz and an account page keep answering on new connections.
- A body in UTF-16 (with or without a byte order mark) or UTF-32 is refused with 415
  `unsupported_charset`, and nothing is stored: the transaction is unknown afterwards and
  the sender's nonces are unchanged; the same transaction in UTF-8 then goes in.
- A body that arrives too slowly is cut off with 408 `body_timeout`, and not acted on.
- Beyond the connection cap a new request gets 503 `too_many_connections`.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time

import httpx
import pytest

from api.schemas import transaction_to_json
from ledger.address import address_of, encode_address
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction, new_transfer
from tests.nodeproc import NodeProcesses, wait_for

pytestmark = pytest.mark.integration

KEYS = dev_keys(3)
SLOWLORIS_SOCKETS = 1000
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with NodeProcesses(tmp_path_factory.mktemp("hostile")) as group:
        yield group


@pytest.fixture(scope="module")
def node(nodes):
    """A node with the default limits."""
    return nodes.start("defaults")


@pytest.fixture(scope="module")
def tight(nodes):
    """A node with a 2 s body deadline and room for 8 API connections."""
    return nodes.start("tight", env={"LEDGER_API_BODY_TIMEOUT": "2", "LEDGER_API_MAX_CONNECTIONS": "8"})


def chain_of(url: str) -> tuple[str, str]:
    info = httpx.get(f"{url}/v1/node", timeout=10).json()
    return info["chain_id"], info["address_prefix"]


def account(url: str, address: str) -> dict:
    response = httpx.get(f"{url}/v1/accounts/{address}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def next_transfer(url: str, key_index: int, amount: int = 7) -> tuple[Transaction, str, dict]:
    """A valid transfer from dev key `key_index` at its next nonce, its sender's address
    and the sender's account before it."""
    chain_id, prefix = chain_of(url)
    key = KEYS[key_index]
    sender = encode_address(prefix, address_of(key.public_key))
    before = account(url, sender)
    tx = new_transfer(key, chain_id, before["pending_nonce"], address_of(KEYS[2].public_key), amount, 1)
    return tx, sender, before


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    document = response.json()
    assert document["type"] == f"urn:ledger:problem:{reason}" and document["reason"] == reason, document
    assert document["status"] == status and document["detail"], document
    return document


def assert_not_stored(url: str, tx: Transaction, sender: str, before: dict) -> None:
    assert httpx.get(f"{url}/v1/transactions/{tx.id.hex()}", timeout=10).status_code == 404
    after = account(url, sender)
    assert (after["nonce"], after["pending_nonce"], after["balance"]) == (
        before["nonce"], before["pending_nonce"], before["balance"]
    )


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open files limit ({hard}) is below the {wanted} sockets this test opens")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --- slowloris ---------------------------------------------------------------------------------


async def _slowloris(port: int) -> tuple[float, bytes]:
    """One slowloris connection: seconds from its opening until the server closed it, and
    what the server sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    received = b""
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        while time.monotonic() - start < 30:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            except asyncio.TimeoutError:
                writer.write(b"a")  # one more header byte a second
                continue
            if not chunk:
                return time.monotonic() - start, received
            received += chunk
    except (ConnectionError, OSError):
        return time.monotonic() - start, received
    finally:
        writer.close()
    return float("inf"), received


async def _poll(url: str, address: str, stop: asyncio.Event) -> list[tuple[float, int, int]]:
    """/healthz and an account page on a new connection each round while the attack runs."""
    answers = []
    while not stop.is_set():
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as http:
            health = await http.get(f"{url}/healthz")
            page = await http.get(f"{url}/v1/accounts/{address}")
        answers.append((time.monotonic() - began, health.status_code, page.status_code))
        await asyncio.sleep(0.5)
    return answers


async def _attack(url: str, port: int, address: str) -> tuple[list[tuple[float, bytes]], list[tuple[float, int, int]]]:
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll(url, address, stop))
    attackers = [asyncio.create_task(_slowloris(port)) for _ in range(SLOWLORIS_SOCKETS)]
    try:
        closed = await asyncio.wait_for(asyncio.gather(*attackers), timeout=40)
    finally:
        stop.set()
    return closed, await poller


def test_slowloris_sockets_are_all_closed_while_the_api_keeps_answering(node):
    raise_open_files(SLOWLORIS_SOCKETS + 256)
    _, prefix = chain_of(node.url)
    address = encode_address(prefix, address_of(KEYS[0].public_key))
    closed, answers = asyncio.run(_attack(node.url, node.api_port, address))

    lifetimes = sorted(lifetime for lifetime, _ in closed)
    # Closed by the header deadline (10 s from the opening), not at once and not never.
    assert lifetimes[0] >= 8, lifetimes[:5]
    assert lifetimes[-1] <= 15, lifetimes[-5:]
    answered = [data for _, data in closed if data]
    assert len(answered) >= SLOWLORIS_SOCKETS * 0.99
    for data in answered:
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"urn:ledger:problem:header_timeout" in data, data[:400]
    # The API answered throughout, on fresh connections, and promptly.
    assert len(answers) >= 10, answers
    assert all(health == 200 and page == 200 for _, health, page in answers), answers
    assert max(elapsed for elapsed, _, _ in answers) < 3, answers
    assert "Traceback" not in node.stderr


# --- UTF-8 only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_body_not_in_utf8_is_refused_and_nothing_is_stored(node, encoding):
    tx, sender, before = next_transfer(node.url, 0)
    text = json.dumps(transaction_to_json(tx, chain_of(node.url)[1]))
    for path, body in (("/v1/transactions", text), ("/v1/transactions/batch", json.dumps({"transactions": [json.loads(text)]}))):
        response = httpx.post(f"{node.url}{path}", content=body.encode(encoding),
                              headers={"content-type": "application/json"}, timeout=10)
        document = assert_problem(response, 415, "unsupported_charset")
        assert "UTF-8" in document["detail"] and encoding[:6].upper() in document["detail"], document
    assert_not_stored(node.url, tx, sender, before)
    # The very same transaction in UTF-8 goes in: it was the encoding that was refused.
    accepted = httpx.post(f"{node.url}/v1/transactions", content=text.encode(), headers={"content-type": "application/json"},
                          timeout=10)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["id"] == tx.id.hex()


def test_integral_numbers_are_the_integers_they_name(node):
    tx, _, _ = next_transfer(node.url, 1, amount=1000)
    fields = transaction_to_json(tx, chain_of(node.url)[1])
    text = json.dumps(fields | {"nonce": "@n", "amount": "@a"})
    text = text.replace('"@n"', f"{tx.nonce}.0").replace('"@a"', "1e3")
    response = httpx.post(f"{node.url}/v1/transactions", content=text.encode(), headers={"content-type": "application/json"},
                          timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["id"] == tx.id.hex()  # the signature covers nonce and amount as integers


# --- slow bodies and the connection cap ---------------------------------------------------------


def test_a_body_that_arrives_too_slowly_is_cut_off_and_not_acted_on(tight):
    tx, sender, before = next_transfer(tight.url, 0)
    body = json.dumps({"raw": tx.encode().hex()}).encode()
    with socket.create_connection(("127.0.0.1", tight.api_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/transactions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        start = time.monotonic()
        received = b""
        for byte in body:  # 4 bytes a second: the body would take minutes
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.25)
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
        sock.settimeout(5)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:  # a byte we sent after the server closed: what came before counts
            pass
        elapsed = time.monotonic() - start
    assert 1.5 <= elapsed <= 5, elapsed
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received[:300]
    assert json.loads(payload)["reason"] == "body_timeout"
    assert_not_stored(tight.url, tx, sender, before)


def test_beyond_the_connection_cap_a_request_gets_503(tight):
    idle = []
    try:
        for _ in range(8):
            idle.append(socket.create_connection(("127.0.0.1", tight.api_port), timeout=10))
        time.sleep(0.3)  # the node has accepted them all
        response = httpx.get(f"{tight.url}/healthz", timeout=10)
        document = assert_problem(response, 503, "too_many_connections")
        assert "8" in document["detail"]
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
    finally:
        for sock in idle:
            sock.close()
    # Connections that close free their places.
    wait_for(lambda: httpx.get(f"{tight.url}/healthz", timeout=10).status_code == 200, 5, 0.1, "a place under the cap")

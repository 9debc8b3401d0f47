"""node/http_limits.py over both uvicorn HTTP implementations (httptools, what the node
uses when it is installed, and h11), in-process with short deadlines.  The same limits
on a real node are in tests/test_api_hostile.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import uvicorn

from node.http_limits import HttpLimits, protocol_class
from node.server import close_connections_until

LIMITS = HttpLimits(header_timeout=0.6, body_timeout=0.6, max_connections=3)


async def echo(scope, receive, send) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5) -> tuple[float, bytes]:
    start = time.monotonic()
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), timeout):
            data += chunk
    except ConnectionError:
        pass
    return time.monotonic() - start, data


def problem_reason(data: bytes) -> str:
    return json.loads(data.partition(b"\r\n\r\n")[2])["reason"]


async def scenario(implementation: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        echo, http=protocol_class(LIMITS, implementation), lifespan="off", log_level="warning", access_log=False,
    ))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)

    async def connect():
        return await asyncio.open_connection("127.0.0.1", port)

    try:
        # Two requests on one kept-alive connection, each well within the deadlines.
        reader, writer = await connect()
        for text in (b"one", b"two"):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n" + text)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert await reader.readexactly(3) == text
        writer.close()

        # Headers dripped byte by byte: the deadline holds from the connection's opening.
        reader, writer = await connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        for _ in range(3):
            await asyncio.sleep(0.25)
            if not writer.is_closing():
                writer.write(b"a")
        elapsed, data = await read_until_closed(reader)
        assert data.startswith(b"HTTP/1.1 408 ") and problem_reason(data) == "header_timeout", data
        writer.close()

        # A connection that never sends a byte is closed at the same deadline.
        reader, writer = await connect()
        elapsed, data = await read_until_closed(reader)
        assert 0.3 <= elapsed <= 2 and problem_reason(data) == "header_timeout", (elapsed, data)
        writer.close()

        # A body that stalls: 408, and the application never answers.
        reader, writer = await connect()
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        elapsed, data = await read_until_closed(reader)
        assert 0.3 <= elapsed <= 2, elapsed
        assert data.count(b"HTTP/1.1") == 1 and problem_reason(data) == "body_timeout", data
        writer.close()

        # Three connections fill the cap; a fourth is answered 503 and closed.
        held = [await connect() for _ in range(3)]
        await asyncio.sleep(0.05)
        reader, writer = await connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, data = await read_until_closed(reader)
        assert data.startswith(b"HTTP/1.1 503 ") and problem_reason(data) == "too_many_connections", data
        assert b"retry-after: 1" in data.lower()
        writer.close()
        for _, held_writer in held:
            held_writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


@pytest.mark.parametrize("implementation", ["httptools", "h11"])
def test_deadlines_and_cap_hold_over_both_http_implementations(implementation):
    asyncio.run(asyncio.wait_for(scenario(implementation), 60))


def test_settings_are_checked():
    with pytest.raises(ValueError):
        HttpLimits(header_timeout=0)
    with pytest.raises(ValueError):
        HttpLimits(max_connections=0)
    with pytest.raises(ValueError):
        protocol_class(LIMITS, "http3")


def test_a_connection_the_servers_shutdown_missed_is_closed_too():
    """uvicorn asks its open connections to close once, as its shutdown starts; one accepted
    in that moment is missed and would keep serving keep-alive requests for the whole
    graceful timeout.  The node's stop asks again until the server is done."""

    async def run() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # No deadline of its own would close the idle connection during the test.
        patient = HttpLimits(header_timeout=60, body_timeout=60, max_connections=10)
        server = uvicorn.Server(uvicorn.Config(
            echo, http=protocol_class(patient), lifespan="off", log_level="warning", access_log=False,
            timeout_graceful_shutdown=60, timeout_keep_alive=60,
        ))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\nhi"), 5)
        connections = server.server_state.connections
        [missed] = connections
        asked = []
        ask = missed.shutdown

        def first_ask_lost() -> None:  # as if uvicorn's one ask came before the connection did
            asked.append(1)
            if len(asked) > 1:
                ask()

        missed.shutdown = first_ask_lost
        server.should_exit = True
        await asyncio.sleep(0.5)
        assert asked and not serving.done()  # uvicorn waits for the connection its ask missed
        closing = asyncio.create_task(close_connections_until(connections, serving, interval=0.05))
        _, rest = await read_until_closed(reader)
        assert rest == b""  # closed, idle between requests, with nothing more to say
        await asyncio.wait_for(serving, 10)  # well within the graceful timeout
        await asyncio.wait_for(closing, 1)
        writer.close()

    asyncio.run(run())

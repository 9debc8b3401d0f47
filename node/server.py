"""Run a node and its API server in one event loop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from api.app import create_app
from node.admin import write_admin_token
from node.compare_cli import REPORT_FOLDER
from node.config import NodeConfig
from node.http_limits import HttpLimits, protocol_class, raise_open_files_limit
from node.runtime import Node

log = logging.getLogger("ledger.node")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def close_connections_until(connections: set, done: asyncio.Future, interval: float = 0.1) -> None:
    """Ask every open API connection to close (after the answer in progress, if any), again
    every `interval` seconds, until `done`.  uvicorn asks once, as its shutdown starts; a
    connection accepted in that same moment was missed, went on serving keep-alive requests
    and held the shutdown for its whole graceful timeout (seen under load: 5 s, and then a
    batch refused as shutting_down)."""
    while not done.done():
        for connection in list(connections):
            connection.shutdown()
        await asyncio.wait({done}, timeout=interval)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before anything starts, so a taken port is a clear error, not a half-started node."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every keep-alive request waits ~40 ms on a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve(node: Node, config: NodeConfig, api_socket: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    admin_token = write_admin_token(config.data_dir)  # before anything starts: a failure leaves nothing running
    await node.start()
    app = create_app(node, max_body_bytes=config.max_body_bytes, max_batch=config.max_batch, admin_token=admin_token,
                     compare_report=config.data_dir / REPORT_FOLDER / "report.html")
    limits = HttpLimits(
        header_timeout=config.api_header_timeout,
        body_timeout=config.api_body_timeout,
        max_connections=raise_open_files_limit(config.api_max_connections),
    )
    server = _Server(
        uvicorn.Config(
            app, http=protocol_class(limits), log_level=config.log_level, access_log=False, lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    loop = asyncio.get_running_loop()

    closing: list[asyncio.Task] = []

    def request_stop() -> None:
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True
        node.close_streams()
        node.end_waits()
        if not closing:
            closing.append(loop.create_task(close_connections_until(server.server_state.connections, serving)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    node.on_failure = lambda reason: request_stop()  # the runtime says why in node.failure
    serving = asyncio.create_task(server.serve(sockets=[api_socket]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    # What starting made (modules, the app and its routes, the engine's and the store's
    # tables: ~100,000 objects) lives as long as the node, and every full collection
    # walked it again: 115-176 ms with the loop stopped, on all three Raft members at once
    # under load.  Frozen, a full collection takes 1.5 ms.
    gc.freeze()
    if server.started and on_ready is not None:
        on_ready()
    try:
        await serving
    finally:
        await node.stop()

"""Which addresses the node dials, and when.

Static peers are dialled forever, learnt addresses (from peer exchange) while the
outbound slots are not full; a failed dial waits an exponential backoff with jitter,
and a learnt address that keeps failing is forgotten.  What a connection does once
open is the network's business (`Transport.run_dialled`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Protocol

from node.p2p.messages import parse_peer_address
from node.p2p.settings import P2PSettings

log = logging.getLogger("ledger.p2p")

MAX_ADDRESS_BOOK = 1024


@dataclass
class DialState:
    static: bool
    backoff: float
    next_at: float = 0.0
    failures: int = 0
    task: asyncio.Task | None = None


class Transport(Protocol):
    """What the dialer needs from the network."""

    running: bool

    def outbound_count(self) -> int: ...

    def address_connected(self, address: str) -> bool: ...

    def address_banned(self, address: str, now: float) -> bool: ...

    def spawn(self, coroutine: Coroutine) -> asyncio.Task: ...

    async def run_dialled(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> str | None:
        """Run the connection to its end; None if it became a peer, else why not."""
        ...


class Dialer:
    def __init__(self, settings: P2PSettings, static_peers, max_peers: int, rng: random.Random, read_limit: int):
        self.settings = settings
        self.max_peers = max_peers
        self.book: dict[str, DialState] = {
            address: DialState(static=True, backoff=settings.dial_backoff_initial) for address in static_peers
        }
        self.self_addresses: set[str] = set()  # where we found ourselves: never dialled
        self.wake = asyncio.Event()
        self._rng = rng
        self._read_limit = read_limit

    def add(self, address: str) -> None:
        """Dial `address` forever, like a static peer."""
        state = self.book.get(address)
        if state is None:
            self.book[address] = DialState(static=True, backoff=self.settings.dial_backoff_initial)
        else:
            state.static = True
        self.wake.set()

    def learn(self, addresses: tuple[str, ...]) -> None:
        learnt = False
        for address in addresses:
            if address in self.book or address in self.self_addresses or len(self.book) >= MAX_ADDRESS_BOOK:
                continue
            self.book[address] = DialState(static=False, backoff=self.settings.dial_backoff_initial)
            learnt = True
        if learnt:
            self.wake.set()

    def retry_now(self) -> None:
        """Dial every address again now, from the first backoff step (links were restored)."""
        for state in self.book.values():
            state.next_at = 0.0
            state.backoff = self.settings.dial_backoff_initial
        self.wake.set()

    def is_static(self, address: str) -> bool:
        state = self.book.get(address)
        return state is not None and state.static

    def static_addresses(self) -> list[str]:
        return [address for address, state in self.book.items() if state.static]

    async def run(self, net: Transport) -> None:
        while net.running:
            self.wake.clear()
            now = time.monotonic()
            next_due = now + 1.0
            dialling_learnt = sum(1 for state in self.book.values() if state.task is not None and not state.static)
            # Only the peers we dialled count: inbound peers have slots of their own.
            free_slots = self.max_peers - net.outbound_count() - dialling_learnt
            for address, state in list(self.book.items()):
                if state.task is not None or address in self.self_addresses:
                    continue
                if net.address_connected(address) or net.address_banned(address, now):
                    continue
                if not state.static and free_slots <= 0:
                    continue
                if state.next_at > now:
                    next_due = min(next_due, state.next_at)
                    continue
                if not state.static:
                    free_slots -= 1
                state.task = net.spawn(self._dial(net, address, state))
            # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives together with the wake-up, and stop() would wait for this loop forever.
            try:
                async with asyncio.timeout(max(0.01, next_due - now)):
                    await self.wake.wait()
            except TimeoutError:
                pass

    async def _dial(self, net: Transport, address: str, state: DialState) -> None:
        try:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    reader, writer = await self._open_connection(address)
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                self._failed(address, state, f"cannot connect: {exc or type(exc).__name__}")
                return
            refusal = await net.run_dialled(reader, writer, address)
            if refusal is None:
                state.failures = 0
                state.backoff = self.settings.dial_backoff_initial
                state.next_at = time.monotonic() + self._jitter(state.backoff)
            else:
                self._failed(address, state, refusal)
        finally:
            state.task = None
            self.wake.set()

    def _failed(self, address: str, state: DialState, reason: str) -> None:
        state.failures += 1
        delay = self._jitter(state.backoff)
        state.next_at = time.monotonic() + delay
        state.backoff = min(state.backoff * 2, self.settings.dial_backoff_max)
        # A static peer that cannot be reached is worth one line for the operator, not one per retry.
        level = logging.INFO if state.static and state.failures == 1 else logging.DEBUG
        log.log(level, "dial %s failed (%s); retrying with backoff", address, reason)
        if not state.static and state.failures >= self.settings.max_learnt_failures:
            self.book.pop(address, None)

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self._rng.random())

    async def _open_connection(self, address: str):
        host, port = parse_peer_address(address)
        loop = asyncio.get_running_loop()
        candidates = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        failure: OSError = OSError(f"no address for {host}")
        for family, _type, _proto, _name, sockaddr in candidates:
            # proto IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say they are TCP.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, limit=self._read_limit)
        raise failure

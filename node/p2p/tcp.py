"""`Network` over asyncio TCP: handshake, dialing, peer exchange, keepalive, scores and bans.

One connection is one asyncio task that first runs the handshake and then reads
frames, plus a writer task that drains a bounded queue of ready-made frames (so a
broadcast encodes a message once, and a slow peer only ever costs its own queue).

Handshake (both sides at once, within `handshake_timeout`): send HELLO, read the
peer's HELLO and check chain id, genesis hash and protocol version; send AUTH, a
signature over the peer's fresh nonce followed by our own HELLO encoding; read the
peer's AUTH and verify it against the key in its HELLO.  The signed nonce makes an
AUTH useless on any other connection; signing our own HELLO binds the key to the
chain, head and port it announced.  The peer id is the hex account id of that key.

Misbehaviour after the handshake lowers a peer's score (it recovers slowly with
time); at `ban_threshold` the peer is disconnected and its id and address are
banned for `ban_seconds`.  Before the handshake a peer has no proven identity to
score, so a malformed, slow, oversized or incompatible handshake just closes the
connection (and an address we dialled that turned out incompatible is not dialled
again during the ban time).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, replace

from ledger import crypto
from ledger.address import address_of
from ledger.codec import DecodeError
from ledger.crypto import PrivateKey
from node.p2p.frames import MAX_FRAME, FrameTooLarge, encode_frame, read_frame, send_frame
from node.p2p.messages import (
    HASH_SIZE,
    MAX_PEER_ADDRESSES,
    Auth,
    Disconnect,
    GetPeers,
    Hello,
    MessageType,
    Peers,
    Ping,
    Pong,
    Status,
    decode_message,
    format_peer_address,
    parse_peer_address,
)
from node.p2p.network import PeerHandler, PeerInfo

log = logging.getLogger("ledger.p2p")

HANDSHAKE_MAX_FRAME = 1024  # a HELLO is under 200 bytes: nobody needs more before proving who they are
READ_BUFFER_LIMIT = 1 << 20
MAX_ADDRESS_BOOK = 1024
MAX_DISCONNECT_RECORDS = 256
WRITE_BATCH = 256

PENALTY_UNDECODABLE = 20
PENALTY_OVERSIZED = 50
PENALTY_FLOOD = 5  # per message over the rate limit
PENALTY_UNEXPECTED = 20


@dataclass
class P2PSettings:
    """Timings and limits; the defaults are the production values."""

    handshake_timeout: float = 5.0
    connect_timeout: float = 5.0
    ping_interval: float = 10.0
    idle_timeout: float = 30.0
    peer_exchange_interval: float = 30.0
    ban_seconds: float = 60.0
    ban_threshold: int = -100
    score_recovery_per_second: float = 0.1
    max_frame: int = MAX_FRAME
    send_queue_limit: int = 4096  # messages waiting for one peer
    send_queue_bytes: int = 64 * 1024 * 1024  # and their bytes (one frame always fits an empty queue)
    rate_per_second: float = 2000.0  # messages a peer may send, sustained
    rate_burst: float = 4000.0
    dial_backoff_initial: float = 0.5
    dial_backoff_max: float = 30.0
    max_learnt_failures: int = 5  # a learnt address is forgotten after this many failed dials
    max_handshaking: int = 64  # connections still in their handshake
    seed: int | None = None  # backoff jitter and ping nonces; None: from the OS


@dataclass(frozen=True)
class DisconnectRecord:
    peer_id: str  # "" when the peer never proved an identity
    address: str  # host:port of the socket's other end
    reason: str
    at: float  # time.time()


class _Refused(Exception):
    """The handshake failed; `reason` goes to the peer and the log."""

    def __init__(self, reason: str, *, by_peer: bool = False, ban_address: bool = False, itself: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer
        self.ban_address = ban_address
        self.itself = itself


class _Connection:
    __slots__ = (
        "reader", "writer", "inbound", "dial_address", "remote", "proven_id", "info", "queue", "writer_task",
        "queued_bytes", "closed", "reason", "registered", "preferred", "last_received", "last_ping", "tokens",
        "tokens_at",
    )

    def __init__(self, reader, writer, inbound: bool, dial_address: str | None, queue_limit: int, burst: float):
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer
        self.inbound = inbound
        self.dial_address = dial_address
        peer = writer.get_extra_info("peername")
        self.remote = format_peer_address(peer[0], peer[1]) if peer else "?"
        self.proven_id = ""  # the node id, once its AUTH verified
        self.info: PeerInfo | None = None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_limit)
        self.writer_task: asyncio.Task | None = None
        self.queued_bytes = 0
        self.closed = False
        self.reason = ""
        self.registered = False
        self.preferred = False
        now = time.monotonic()
        self.last_received = now
        self.last_ping = now
        self.tokens = burst
        self.tokens_at = now

    def take_token(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _DialState:
    static: bool
    backoff: float
    next_at: float = 0.0
    failures: int = 0
    task: asyncio.Task | None = None


def _describe_loss(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the peer"
    return f"connection lost: {exc or type(exc).__name__}"


class TcpNetwork:
    """The production `Network`: persistent TCP connections to up to `max_peers` peers."""

    def __init__(
        self,
        node_key: PrivateKey,
        chain_id: str,
        genesis_hash: bytes,
        listen_host: str,
        listen_port: int,
        static_peers: list[str] | tuple[str, ...],
        max_peers: int = 16,
        protocol_version: int = 1,
        head: tuple[int, bytes, int] = (0, bytes(HASH_SIZE), 0),
        settings: P2PSettings | None = None,
    ) -> None:
        if len(genesis_hash) != HASH_SIZE:
            raise ValueError("the genesis hash is 32 bytes")
        if max_peers < 1:
            raise ValueError("max_peers is at least 1")
        for address in static_peers:
            parse_peer_address(address)  # a clear ValueError now rather than a failing dial later
        self.key = node_key
        self.public_key = node_key.public_key
        self.node_id = address_of(self.public_key).hex()
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.listen_host = listen_host
        self._requested_port = listen_port
        self.listen_port = listen_port  # the bound port once started (listen_port 0 picks a free one)
        self.max_peers = max_peers
        self.protocol_version = protocol_version
        self.settings = settings or P2PSettings()
        self._head = self._checked_head(*head)
        self._rng = random.Random(self.settings.seed)

        self._handler: PeerHandler | None = None
        self._server: asyncio.base_events.Server | None = None
        self._running = False
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._connections: set[_Connection] = set()  # every open connection, handshaking or not
        self._peers: dict[str, _Connection] = {}  # registered connections by peer id
        self._book: dict[str, _DialState] = {
            address: _DialState(static=True, backoff=self.settings.dial_backoff_initial) for address in static_peers
        }
        self._address_ids: dict[str, str] = {}  # address -> the node id found there
        self._self_addresses: set[str] = set()
        self._scores: dict[str, tuple[int, float]] = {}  # peer id -> (score, recovering since), while negative
        self._banned_ids: dict[str, float] = {}  # peer id -> monotonic time the ban ends
        self._banned_addresses: dict[str, float] = {}
        self._disconnects: deque[DisconnectRecord] = deque(maxlen=MAX_DISCONNECT_RECORDS)
        self.sent: Counter[str] = Counter()  # messages by type name, one per peer they were queued for
        self.received: Counter[str] = Counter()

    # ------------------------------------------------------------------ Network interface
    async def start(self, handler: PeerHandler) -> None:
        if self._running:
            raise RuntimeError("the network is already running")
        self._handler = handler
        self._wake = asyncio.Event()  # bound to the running loop
        sock = await self._listening_socket()
        self.listen_port = sock.getsockname()[1]
        self._self_addresses.update(
            format_peer_address(host, self.listen_port) for host in (self.listen_host, "127.0.0.1", "localhost")
        )
        self._running = True  # before the first connection can arrive
        try:
            self._server = await asyncio.start_server(self._accept, sock=sock, limit=READ_BUFFER_LIMIT)
        except BaseException:
            self._running = False
            sock.close()
            raise
        self._spawn(self._maintain())
        self._spawn(self._dial_loop())
        log.info("p2p listening on %s as node %s", format_peer_address(self.listen_host, self.listen_port), self.node_id)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            self._close(conn, "node shutting down")
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def send(self, peer_id: str, message) -> None:
        conn = self._peers.get(peer_id)
        if conn is None:
            log.debug("dropping %s for %s: not connected", type(message).__name__, peer_id)
            return
        self.sent[type(message).__name__] += 1
        self._enqueue(conn, encode_frame(message.encode()))

    def broadcast(self, message, exclude: frozenset[str] = frozenset()) -> None:
        targets = [conn for peer_id, conn in self._peers.items() if peer_id not in exclude]
        if not targets:
            return
        frame = encode_frame(message.encode())
        self.sent[type(message).__name__] += len(targets)
        for conn in targets:
            self._enqueue(conn, frame)

    def peers(self) -> list[PeerInfo]:
        """Snapshots of the connected peers (later changes do not show in them)."""
        now = time.monotonic()
        return [replace(conn.info, score=self._score(peer_id, now)) for peer_id, conn in self._peers.items()]

    def penalize(self, peer_id: str, points: int, reason: str) -> None:
        if points <= 0:
            return
        now = time.monotonic()
        score = self._score(peer_id, now) - points
        since = self._scores[peer_id][1] if peer_id in self._scores else now
        self._scores[peer_id] = (score, since)
        conn = self._peers.get(peer_id)
        if conn is not None:
            conn.info.score = score
        log.debug("peer %s: -%d (%s), score %d", peer_id, points, reason, score)
        if score <= self.settings.ban_threshold:
            self._ban(peer_id, conn.info.address if conn is not None else "", reason, now)

    def update_status(self, head_height: int, head_hash: bytes, finalized_height: int) -> None:
        self._head = self._checked_head(head_height, head_hash, finalized_height)
        self.broadcast(Status(*self._head))

    # ------------------------------------------------------------------ extras for the runtime and tests
    def score_of(self, peer_id: str) -> int:
        """A peer's current score (0 when it never misbehaved or has recovered), connected or not."""
        return self._score(peer_id, time.monotonic())

    def is_banned(self, peer_id: str) -> bool:
        return self._banned_ids.get(peer_id, 0.0) > time.monotonic()

    def disconnects(self) -> list[DisconnectRecord]:
        """The most recent disconnects, oldest first, with their reasons."""
        return list(self._disconnects)

    def add_peer(self, address: str) -> None:
        """Dial `address` and keep dialling it while running, like a static peer."""
        parse_peer_address(address)
        state = self._book.get(address)
        if state is None:
            self._book[address] = _DialState(static=True, backoff=self.settings.dial_backoff_initial)
        else:
            state.static = True
        self._wake.set()

    # ------------------------------------------------------------------ handshake
    def _checked_head(self, height: int, head_hash: bytes, finalized: int) -> tuple[int, bytes, int]:
        Status(height, head_hash, finalized).encode()  # the same checks a peer's decoder applies
        return height, head_hash, finalized

    def _hello(self) -> Hello:
        height, head_hash, finalized = self._head
        return Hello(
            chain_id=self.chain_id,
            genesis_hash=self.genesis_hash,
            protocol_version=self.protocol_version,
            node_public_key=self.public_key,
            listen_port=self.listen_port,
            head_height=height,
            head_hash=head_hash,
            finalized_height=finalized,
            nonce=secrets.token_bytes(32),  # never from the seeded generator: a predictable nonce invites replay
        )

    def _incompatibility(self, hello: Hello) -> str | None:
        if hello.chain_id != self.chain_id:
            return f"another chain: peer is on '{hello.chain_id}', this node on '{self.chain_id}'"
        if hello.genesis_hash != self.genesis_hash:
            return f"another genesis: peer has {hello.genesis_hash.hex()}, this node {self.genesis_hash.hex()}"
        if hello.protocol_version != self.protocol_version:
            return f"another protocol version: peer speaks {hello.protocol_version}, this node {self.protocol_version}"
        return None

    @staticmethod
    def _expect(payload: bytes, kind: type):
        message = decode_message(payload)
        if isinstance(message, Disconnect):
            raise _Refused(f"peer refused: {message.reason}", by_peer=True)
        if not isinstance(message, kind):
            raise _Refused(f"handshake expected {kind.__name__}, got {type(message).__name__}")
        return message

    async def _handshake(self, conn: _Connection) -> PeerInfo:
        ours = self._hello()
        our_payload = ours.encode()
        await send_frame(conn.writer, our_payload)
        their_payload = await read_frame(conn.reader, HANDSHAKE_MAX_FRAME)
        theirs: Hello = self._expect(their_payload, Hello)
        problem = self._incompatibility(theirs)
        if problem is not None:
            raise _Refused(problem, ban_address=True)
        signature = self.key.sign(crypto.DOMAIN_HANDSHAKE, theirs.nonce + our_payload)
        await send_frame(conn.writer, Auth(signature).encode())
        auth: Auth = self._expect(await read_frame(conn.reader, HANDSHAKE_MAX_FRAME), Auth)
        if not crypto.verify(theirs.node_public_key, crypto.DOMAIN_HANDSHAKE, ours.nonce + their_payload, auth.signature):
            raise _Refused("bad handshake signature", ban_address=True)
        peer_id = address_of(theirs.node_public_key).hex()
        conn.proven_id = peer_id
        if peer_id == self.node_id:
            raise _Refused("connected to itself", itself=True)
        if conn.dial_address is not None:
            self._address_ids[conn.dial_address] = peer_id
        remaining = self._banned_ids.get(peer_id, 0.0) - time.monotonic()
        if remaining > 0:
            raise _Refused(f"banned for {remaining:.0f} s more")
        if conn.dial_address is not None:
            address = conn.dial_address
        elif theirs.listen_port:
            address = format_peer_address(conn.writer.get_extra_info("peername")[0], theirs.listen_port)
        else:
            address = ""
        return PeerInfo(
            id=peer_id,
            address=address,
            inbound=conn.inbound,
            head_height=theirs.head_height,
            head_hash=theirs.head_hash,
            finalized_height=theirs.finalized_height,
            score=self._score(peer_id, time.monotonic()),
        )

    # ------------------------------------------------------------------ one connection
    async def _run_connection(self, conn: _Connection) -> None:
        self._connections.add(conn)
        try:
            try:
                async with asyncio.timeout(self.settings.handshake_timeout):
                    info = await self._handshake(conn)
            except TimeoutError:
                self._close(conn, f"handshake not completed within {self.settings.handshake_timeout:g} s")
                return
            except _Refused as refusal:
                self._close(conn, refusal.reason, send=not refusal.by_peer)
                self._after_refusal(conn, refusal)
                return
            except FrameTooLarge as exc:
                self._close(conn, f"oversized handshake frame: {exc}")
                return
            except DecodeError as exc:
                self._close(conn, f"malformed handshake: {exc}")
                return
            if self._register(conn, info):
                await self._read_loop(conn)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self._close(conn, _describe_loss(exc), send=False)
        except asyncio.CancelledError:
            self._close(conn, "node shutting down")
            raise
        except Exception:
            log.exception("peer connection %s failed", conn.remote)
            self._close(conn, "internal error")
        finally:
            self._close(conn, "connection closed", send=False)

    def _after_refusal(self, conn: _Connection, refusal: _Refused) -> None:
        address = conn.dial_address
        if address is None:
            return
        if refusal.itself:
            self._self_addresses.add(address)
        elif refusal.ban_address:
            self._banned_addresses[address] = time.monotonic() + self.settings.ban_seconds

    def _register(self, conn: _Connection, info: PeerInfo) -> bool:
        conn.info = info
        # When two nodes dial each other at once, both keep the connection the smaller id dialled.
        conn.preferred = (not conn.inbound) == (self.node_id < info.id)
        existing = self._peers.get(info.id)
        if existing is not None:
            if conn.preferred and not existing.preferred:
                self._close(existing, "duplicate connection: replaced by the one the smaller node id dialled")
            else:
                self._close(conn, "duplicate connection")
                return False
        elif conn.inbound and len(self._peers) >= self.max_peers:
            self._close(conn, f"too many peers ({self.max_peers})")
            return False
        conn.registered = True
        self._peers[info.id] = conn
        if info.address:
            self._address_ids[info.address] = info.id
        now = time.monotonic()
        conn.last_received = now
        conn.last_ping = now
        conn.writer_task = self._spawn(self._write_loop(conn))
        log.info(
            "connected to peer %s at %s (%s)", info.id, info.address or conn.remote, "inbound" if conn.inbound else "outbound"
        )
        self.sent["GetPeers"] += 1
        self._enqueue(conn, encode_frame(GetPeers().encode()))
        if self._handler is not None:
            try:
                self._handler.on_peer_connected(replace(info))
            except Exception:
                log.exception("peer handler failed on connect of %s", info.id)
        return True

    async def _read_loop(self, conn: _Connection) -> None:
        settings = self.settings
        peer_id = conn.info.id
        while not conn.closed:
            try:
                payload = await read_frame(conn.reader, settings.max_frame)
            except FrameTooLarge as exc:
                self.penalize(peer_id, PENALTY_OVERSIZED, f"oversized frame: {exc}")
                self._close(conn, f"oversized frame: {exc}")
                return
            if conn.closed:
                return
            now = time.monotonic()
            conn.last_received = now
            if not conn.take_token(now, settings.rate_per_second, settings.rate_burst):
                self.penalize(peer_id, PENALTY_FLOOD, "message rate limit exceeded")
                continue
            try:
                message = decode_message(payload)
            except DecodeError as exc:
                self.penalize(peer_id, PENALTY_UNDECODABLE, f"undecodable message: {exc}")
                continue
            self.received[type(message).__name__] += 1
            self._dispatch(conn, message)

    def _dispatch(self, conn: _Connection, message) -> None:
        peer_id = conn.info.id
        kind = message.TYPE
        if kind == MessageType.PING:
            self.sent["Pong"] += 1
            self._enqueue(conn, encode_frame(Pong(message.nonce).encode()))
        elif kind == MessageType.PONG:
            pass  # its arrival already counted as a sign of life
        elif kind == MessageType.GET_PEERS:
            self.sent["Peers"] += 1
            self._enqueue(conn, encode_frame(Peers(self._shareable_addresses(peer_id)).encode()))
        elif kind == MessageType.PEERS:
            self._learn(message.addresses)
        elif kind == MessageType.DISCONNECT:
            self._close(conn, f"peer disconnected: {message.reason}", send=False)
        elif kind in (MessageType.HELLO, MessageType.AUTH):
            self.penalize(peer_id, PENALTY_UNEXPECTED, "handshake message after the handshake")
        else:
            if kind == MessageType.STATUS:
                conn.info.head_height = message.head_height
                conn.info.head_hash = message.head_hash
                conn.info.finalized_height = message.finalized_height
            if self._handler is not None:
                try:
                    self._handler.on_peer_message(peer_id, message)
                except Exception:
                    log.exception("peer handler failed on %s from %s", type(message).__name__, peer_id)

    async def _write_loop(self, conn: _Connection) -> None:
        queue = conn.queue
        writer = conn.writer
        try:
            while True:
                frames = [await queue.get()]
                while len(frames) < WRITE_BATCH and not queue.empty():
                    frames.append(queue.get_nowait())
                writer.writelines(frames)
                conn.queued_bytes -= sum(map(len, frames))
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            self._close(conn, _describe_loss(exc), send=False)

    def _enqueue(self, conn: _Connection, frame: bytes) -> None:
        if conn.closed:
            return
        if conn.queued_bytes and conn.queued_bytes + len(frame) > self.settings.send_queue_bytes:
            self._close(conn, f"send queue overflow ({conn.queued_bytes} bytes): the peer does not keep up")
            return
        try:
            conn.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._close(conn, f"send queue overflow ({self.settings.send_queue_limit} messages): the peer does not keep up")
            return
        conn.queued_bytes += len(frame)

    def _close(self, conn: _Connection, reason: str, send: bool = True) -> None:
        """Close once, tell the peer why (when it still listens), log it, and forget the peer."""
        if conn.closed:
            return
        conn.closed = True
        conn.reason = reason
        self._connections.discard(conn)
        peer_id = conn.proven_id
        self._disconnects.append(DisconnectRecord(peer_id, conn.remote, reason, time.time()))
        log.info("disconnected %s %s: %s", f"peer {peer_id}" if peer_id else "connection", conn.remote, reason)
        transport = conn.writer.transport
        if send and not transport.is_closing():
            try:
                conn.writer.write(encode_frame(Disconnect.because(reason).encode()))
            except Exception:
                pass  # the peer may already be gone; closing is what matters
        # With nothing left to send, close() ends the socket now; with a backlog a hostile peer
        # that stopped reading could keep it open, so abort instead.
        if transport.get_write_buffer_size() > 0:
            transport.abort()
        else:
            transport.close()
        if conn.writer_task is not None and conn.writer_task is not asyncio.current_task():
            conn.writer_task.cancel()
        if conn.registered and self._peers.get(peer_id) is conn:
            del self._peers[peer_id]
            if self._handler is not None:
                try:
                    self._handler.on_peer_disconnected(peer_id)
                except Exception:
                    log.exception("peer handler failed on disconnect of %s", peer_id)
        self._wake.set()

    # ------------------------------------------------------------------ scores and bans
    def _score(self, peer_id: str, now: float) -> int:
        entry = self._scores.get(peer_id)
        if entry is None:
            return 0
        score, since = entry
        # Whole points only, so two penalties that add up to the threshold always reach it.
        recovered = int((now - since) * self.settings.score_recovery_per_second)
        if recovered <= 0:
            return score
        score = min(0, score + recovered)
        if score == 0:
            del self._scores[peer_id]
        else:
            self._scores[peer_id] = (score, since + recovered / self.settings.score_recovery_per_second)
        return score

    def _ban(self, peer_id: str, address: str, reason: str, now: float) -> None:
        seconds = self.settings.ban_seconds
        self._banned_ids[peer_id] = now + seconds
        if address:
            self._banned_addresses[address] = now + seconds
        self._scores.pop(peer_id, None)  # the ban is the punishment; it returns with a clean slate
        log.info("banned peer %s for %g s: %s", peer_id, seconds, reason)
        conn = self._peers.get(peer_id)
        if conn is not None:
            self._close(conn, f"banned for {seconds:g} s: {reason}")

    def _address_banned(self, address: str, now: float) -> bool:
        if self._banned_addresses.get(address, 0.0) > now:
            return True
        peer_id = self._address_ids.get(address)
        return peer_id is not None and self._banned_ids.get(peer_id, 0.0) > now

    def _prune(self, now: float) -> None:
        for table in (self._banned_ids, self._banned_addresses):
            for key in [key for key, until in table.items() if until <= now]:
                del table[key]
        for peer_id in list(self._scores):
            self._score(peer_id, now)  # forgets the scores that have recovered
        if len(self._address_ids) > 4 * MAX_ADDRESS_BOOK:  # inbound peers come from ever new addresses
            self._address_ids = {
                address: peer_id for address, peer_id in self._address_ids.items()
                if peer_id in self._peers or address in self._book
            }

    # ------------------------------------------------------------------ keepalive and peer exchange
    async def _maintain(self) -> None:
        settings = self.settings
        tick = max(0.01, min(1.0, settings.ping_interval / 4, settings.idle_timeout / 4, settings.peer_exchange_interval / 4))
        last_exchange = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self._peers.values()):
                silent = now - conn.last_received
                if silent > settings.idle_timeout:
                    self._close(conn, f"silent for {silent:.1f} s")
                elif now - conn.last_ping >= settings.ping_interval:
                    conn.last_ping = now
                    self.sent["Ping"] += 1
                    self._enqueue(conn, encode_frame(Ping(self._rng.getrandbits(64)).encode()))
            if now - last_exchange >= settings.peer_exchange_interval:
                last_exchange = now
                self.broadcast(GetPeers())
            self._prune(now)

    def _shareable_addresses(self, exclude: str) -> tuple[str, ...]:
        addresses = []
        for peer_id, conn in self._peers.items():
            if peer_id == exclude or not conn.info.address:
                continue
            try:
                parse_peer_address(conn.info.address)  # e.g. an IPv6 address with a zone is not shareable
            except ValueError:
                continue
            addresses.append(conn.info.address)
            if len(addresses) == MAX_PEER_ADDRESSES:
                break
        return tuple(addresses)

    def _learn(self, addresses: tuple[str, ...]) -> None:
        learnt = False
        for address in addresses:
            if address in self._book or address in self._self_addresses or len(self._book) >= MAX_ADDRESS_BOOK:
                continue
            self._book[address] = _DialState(static=False, backoff=self.settings.dial_backoff_initial)
            learnt = True
        if learnt:
            self._wake.set()

    # ------------------------------------------------------------------ dialling
    async def _dial_loop(self) -> None:
        while self._running:
            self._wake.clear()
            now = time.monotonic()
            next_due = now + 1.0
            dialling_learnt = sum(1 for state in self._book.values() if state.task is not None and not state.static)
            free_slots = self.max_peers - len(self._peers) - dialling_learnt
            for address, state in list(self._book.items()):
                if state.task is not None or address in self._self_addresses:
                    continue
                if self._address_connected(address) or self._address_banned(address, now):
                    continue
                if not state.static and free_slots <= 0:
                    continue
                if state.next_at > now:
                    next_due = min(next_due, state.next_at)
                    continue
                if not state.static:
                    free_slots -= 1
                state.task = self._spawn(self._dial(address, state))
            # asyncio.timeout rather than wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives together with the wake-up, and stop() would wait for this loop forever.
            try:
                async with asyncio.timeout(max(0.01, next_due - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _address_connected(self, address: str) -> bool:
        peer_id = self._address_ids.get(address)
        return peer_id is not None and peer_id in self._peers

    async def _dial(self, address: str, state: _DialState) -> None:
        try:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    reader, writer = await self._open_connection(address)
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                self._dial_failed(address, state, f"cannot connect: {exc or type(exc).__name__}")
                return
            conn = _Connection(
                reader, writer, inbound=False, dial_address=address,
                queue_limit=self.settings.send_queue_limit, burst=self.settings.rate_burst,
            )
            await self._run_connection(conn)
            if conn.registered:
                state.failures = 0
                state.backoff = self.settings.dial_backoff_initial
                state.next_at = time.monotonic() + self._jitter(state.backoff)
            else:
                self._dial_failed(address, state, conn.reason)
        finally:
            state.task = None
            self._wake.set()

    def _dial_failed(self, address: str, state: _DialState, reason: str) -> None:
        state.failures += 1
        delay = self._jitter(state.backoff)
        state.next_at = time.monotonic() + delay
        state.backoff = min(state.backoff * 2, self.settings.dial_backoff_max)
        # A static peer that cannot be reached is worth one line for the operator, not one per retry.
        level = logging.INFO if state.static and state.failures == 1 else logging.DEBUG
        log.log(level, "dial %s failed (%s); retrying with backoff", address, reason)
        if not state.static and state.failures >= self.settings.max_learnt_failures:
            self._book.pop(address, None)

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
            return await asyncio.open_connection(sock=sock, limit=READ_BUFFER_LIMIT)
        raise failure

    # ------------------------------------------------------------------ listening
    async def _listening_socket(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        candidates = await loop.getaddrinfo(
            self.listen_host, self._requested_port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
            flags=socket.AI_PASSIVE,
        )
        if not candidates:
            raise OSError(f"cannot listen on {self.listen_host}")
        family, _type, _proto, _name, sockaddr = candidates[0]
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: asyncio 3.11 would log the cancellation of its
        # task at stop() as an error; our own task is cancelled quietly.
        handshaking = sum(1 for conn in self._connections if not conn.registered)
        if not self._running or handshaking >= self.settings.max_handshaking:
            writer.transport.abort()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(
            reader, writer, inbound=True, dial_address=None,
            queue_limit=self.settings.send_queue_limit, burst=self.settings.rate_burst,
        )
        self._connections.add(conn)  # counted among the handshakes from now, and closed by stop()
        self._spawn(self._run_connection(conn))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

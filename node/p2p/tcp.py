"""`Network` over asyncio TCP: connections, dialing, peer exchange, keepalive, scores and bans.

One connection is one asyncio task that first runs the handshake (`node.p2p.handshake`)
and then reads frames, plus a writer task that drains a bounded queue of ready-made
frames (so a broadcast encodes a message once, and a slow peer only ever costs its own
queue).

What a peer can make the node spend is bounded here: unauthenticated connections share
a small pool and authenticated ones have inbound and outbound slots (`node.p2p.slots`
decides who makes room); a large frame's body is read as it arrives against a memory
budget shared by all connections and must arrive in time (`node.p2p.frames`); each
peer's messages draw from per-kind budgets (`node.p2p.budgets`).

Misbehaviour after the handshake lowers a peer's score (it recovers slowly with
time); at `ban_threshold` the peer is disconnected and its id and address are
banned for `ban_seconds` (`node.p2p.scores`).  Before the handshake a peer has no
proven identity to score, so a malformed, slow, oversized or incompatible handshake
just closes the connection (and an address we dialled that turned out incompatible
is not dialled again during the ban time).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import time
from collections import Counter, deque
from dataclasses import replace

from ledger.address import address_of
from ledger.codec import DecodeError
from ledger.crypto import PrivateKey
from node.p2p import slots
from node.p2p.budgets import overrun_reason
from node.p2p.connection import Connection, DisconnectRecord, describe_loss
from node.p2p.dialer import MAX_ADDRESS_BOOK, Dialer
from node.p2p.faults import LinkFaults
from node.p2p.frames import FrameMemory, FrameMemoryExhausted, FrameTooLarge, encode_frame
from node.p2p.handshake import HANDSHAKE_MAX_FRAME, Refused, handshake
from node.p2p.messages import (
    HASH_SIZE,
    MAX_PEER_ADDRESSES,
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
from node.p2p.scores import Reputation
from node.p2p.settings import (
    PENALTY_FLOOD,
    PENALTY_OVERSIZED,
    PENALTY_SLOW_FRAME,
    PENALTY_UNDECODABLE,
    PENALTY_UNEXPECTED,
    P2PSettings,
)

__all__ = ["DisconnectRecord", "HANDSHAKE_MAX_FRAME", "P2PSettings", "TcpNetwork"]

log = logging.getLogger("ledger.p2p")

# The stream pauses the socket at twice this much unread data, so this (with one read of
# the transport) bounds what a connection buffers besides the frame being read.
READ_BUFFER_LIMIT = 64 * 1024
# Status messages a link carries at most one of per interval: the newest head goes out at
# once when none went out for this long, else at the interval's end.  Peers learn of blocks
# from the blocks and engine messages themselves; the status only steers sync, and at a
# block every few milliseconds it was most of what a Raft cluster sent.
STATUS_INTERVAL_SECONDS = 0.05
MAX_DISCONNECT_RECORDS = 256


class TcpNetwork:
    """The production `Network`: persistent TCP connections, `max_peers` slots for the peers
    it dials (static peers are dialled whatever the count) and `max_inbound` for those that
    dial it."""

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
        self.settings = settings or P2PSettings()
        self.settings.check()
        self.key = node_key
        self.public_key = node_key.public_key
        self.node_id = address_of(self.public_key).hex()
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.listen_host = listen_host
        self._requested_port = listen_port
        self.listen_port = listen_port  # the bound port once started (listen_port 0 picks a free one)
        self.max_peers = max_peers
        self.max_inbound = self.settings.max_inbound or max_peers
        self.protocol_version = protocol_version
        self._head = self._checked_head(*head)
        self._status_sent_at = -STATUS_INTERVAL_SECONDS  # monotonic time of the last Status broadcast
        self._status_due: asyncio.TimerHandle | None = None  # a Status held back to the interval's end
        self._rng = random.Random(self.settings.seed)
        self.frame_memory = FrameMemory(self.settings.frame_memory)

        self._handler: PeerHandler | None = None
        self._server: asyncio.base_events.Server | None = None
        self._running = False
        self._tasks: set[asyncio.Task] = set()
        self._connections: set[Connection] = set()  # every open connection, handshaking or not
        self._handshaking: dict[Connection, None] = {}  # inbound, not yet authenticated, oldest first
        self._peers: dict[str, Connection] = {}  # registered connections by peer id
        self._dialer = Dialer(self.settings, static_peers, max_peers, self._rng, READ_BUFFER_LIMIT)
        self._address_ids: dict[str, str] = {}  # address -> the node id found there
        self._reputation = Reputation(self.settings)
        self._disconnects: deque[DisconnectRecord] = deque(maxlen=MAX_DISCONNECT_RECORDS)
        self.sent: Counter[str] = Counter()  # messages by type name, one per peer they were queued for
        self.received: Counter[str] = Counter()
        self.bytes_sent = 0  # framed bytes handed to connections (what the link faults let through)
        self.faults = LinkFaults()
        self.dropped_by_faults = 0  # outgoing messages the operator's loss setting dropped

    # ------------------------------------------------------------------ Network interface
    async def start(self, handler: PeerHandler) -> None:
        if self._running:
            raise RuntimeError("the network is already running")
        self._handler = handler
        self._dialer.wake = asyncio.Event()  # bound to the running loop
        sock = await self._listening_socket()
        self.listen_port = sock.getsockname()[1]
        self._dialer.self_addresses.update(
            format_peer_address(host, self.listen_port) for host in (self.listen_host, "127.0.0.1", "localhost")
        )
        self._running = True  # before the first connection can arrive
        try:
            self._server = await asyncio.start_server(self._accept, sock=sock, limit=READ_BUFFER_LIMIT)
        except BaseException:
            self._running = False
            sock.close()
            raise
        self.spawn(self._maintain())
        self.spawn(self._dialer.run(self))
        log.info("p2p listening on %s as node %s", format_peer_address(self.listen_host, self.listen_port), self.node_id)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._status_due is not None:
            self._status_due.cancel()
            self._status_due = None
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
        return [replace(conn.info, score=self._reputation.score(peer_id, now)) for peer_id, conn in self._peers.items()]

    def penalize(self, peer_id: str, points: int, reason: str) -> None:
        if points <= 0:
            return
        now = time.monotonic()
        score = self._reputation.lower(peer_id, points, now)
        conn = self._peers.get(peer_id)
        if conn is not None:
            conn.info.score = score
        log.debug("peer %s: -%d (%s), score %d", peer_id, points, reason, score)
        if score <= self.settings.ban_threshold:
            self._ban(peer_id, conn.info.address if conn is not None else "", reason, now)

    def update_status(self, head_height: int, head_hash: bytes, finalized_height: int) -> None:
        self._head = self._checked_head(head_height, head_hash, finalized_height)
        if self._status_due is not None:
            return  # the Status held back sends the newest head
        wait = self._status_sent_at + STATUS_INTERVAL_SECONDS - time.monotonic()
        if wait > 0:
            self._status_due = asyncio.get_running_loop().call_later(wait, self._send_status)
        else:
            self._send_status()

    def _send_status(self) -> None:
        self._status_due = None
        self._status_sent_at = time.monotonic()
        if self._running:
            self.broadcast(Status(*self._head))

    # ------------------------------------------------------------------ extras for the runtime and tests
    def score_of(self, peer_id: str) -> int:
        """A peer's current score (0 when it never misbehaved or has recovered), connected or not."""
        return self._reputation.score(peer_id, time.monotonic())

    def is_banned(self, peer_id: str) -> bool:
        return self._reputation.ban_remaining(peer_id, time.monotonic()) > 0

    def disconnects(self) -> list[DisconnectRecord]:
        """The most recent disconnects, oldest first, with their reasons."""
        return list(self._disconnects)

    def slot_counts(self) -> dict[str, int]:
        """Connections by slot: unauthenticated inbound, inbound peers, outbound peers."""
        inbound = sum(1 for conn in self._peers.values() if conn.inbound)
        return {"handshaking": len(self._handshaking), "inbound": inbound, "outbound": len(self._peers) - inbound}

    def set_faults(self, faults: LinkFaults) -> None:
        """Lay the operator's faults on this node's links (node/p2p/faults.py); LinkFaults() heals."""
        healed = self.faults.blocked - faults.blocked
        self.faults = faults
        for peer_id in faults.blocked & self._peers.keys():
            self._close(self._peers[peer_id], "partitioned by the operator")
        if healed:
            self._dialer.retry_now()  # the cut links come back at once, not after their dial backoff
        log.warning("link faults: %s", faults.describe())

    def add_peer(self, address: str) -> None:
        """Dial `address` and keep dialling it while running, like a static peer."""
        parse_peer_address(address)
        self._dialer.add(address)

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

    async def _handshake(self, conn: Connection) -> PeerInfo:
        theirs, peer_id = await handshake(conn.reader, conn.writer, self.key, self._hello())
        conn.proven_id = peer_id
        if peer_id == self.node_id:
            raise Refused("connected to itself", itself=True)
        if conn.dial_address is not None:
            self._address_ids[conn.dial_address] = peer_id
        remaining = self._reputation.ban_remaining(peer_id, time.monotonic())
        if remaining > 0:
            raise Refused(f"banned for {remaining:.0f} s more")
        if peer_id in self.faults.blocked:
            raise Refused("partitioned by the operator")
        if conn.dial_address is not None:
            address = conn.dial_address
        elif theirs.listen_port:
            address = format_peer_address(conn.ip, theirs.listen_port)
        else:
            address = ""
        return PeerInfo(
            id=peer_id,
            address=address,
            inbound=conn.inbound,
            head_height=theirs.head_height,
            head_hash=theirs.head_hash,
            finalized_height=theirs.finalized_height,
            score=self._reputation.score(peer_id, time.monotonic()),
        )

    # ------------------------------------------------------------------ one connection
    async def _run_connection(self, conn: Connection) -> None:
        self._connections.add(conn)
        try:
            try:
                async with asyncio.timeout(self.settings.handshake_timeout):
                    info = await self._handshake(conn)
            except TimeoutError:
                self._close(conn, f"handshake not completed within {self.settings.handshake_timeout:g} s")
                return
            except Refused as refusal:
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
            self._close(conn, describe_loss(exc), send=False)
        except asyncio.CancelledError:
            self._close(conn, "node shutting down")
            raise
        except Exception:
            log.exception("peer connection %s failed", conn.remote)
            self._close(conn, "internal error")
        finally:
            self._close(conn, "connection closed", send=False)

    def _after_refusal(self, conn: Connection, refusal: Refused) -> None:
        address = conn.dial_address
        if address is None:
            return
        if refusal.itself:
            self._dialer.self_addresses.add(address)
        elif refusal.ban_address:
            self._reputation.ban_address(address, time.monotonic())

    def _register(self, conn: Connection, info: PeerInfo) -> bool:
        if conn.closed:  # evicted while its last handshake frame was on the way
            return False
        self._handshaking.pop(conn, None)
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
        elif conn.inbound and not self._inbound_room(conn):
            return False
        conn.registered = True
        self._peers[info.id] = conn
        if info.address:
            self._address_ids[info.address] = info.id
        now = time.monotonic()
        conn.since = now
        conn.last_received = now
        conn.last_ping = now
        conn.writer_task = self.spawn(self._write_loop(conn))
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

    def _inbound_room(self, newcomer: Connection) -> bool:
        """Whether the newcomer may take an inbound slot, evicting a peer if that makes room."""
        inbound = [conn for conn in self._peers.values() if conn.inbound]
        if len(inbound) < self.max_inbound:
            return True
        now = time.monotonic()
        victim = slots.inbound_victim(
            [slots.Slot(conn, conn.ip, conn.since, self._reputation.score(conn.info.id, now), self._is_static(conn))
             for conn in inbound],
            self.settings.protect_longest_connected,
        )
        if victim is None:
            self._close(newcomer, f"too many peers ({self.max_inbound} inbound, none of them evictable)")
            return False
        self._close(victim.ref, f"evicted: the {self.max_inbound} inbound slots are full and a new peer came "
                                f"(score {victim.score})")
        return True

    def _is_static(self, conn: Connection) -> bool:
        """Whether an inbound peer is one of our static peers (by its address, or by the id
        we found at a static address)."""
        if self._dialer.is_static(conn.info.address):
            return True
        return any(self._address_ids.get(address) == conn.info.id for address in self._dialer.static_addresses())

    async def _read_loop(self, conn: Connection) -> None:
        settings = self.settings
        peer_id = conn.info.id
        frames = conn.frames
        budgets = conn.budgets
        while not conn.closed:
            try:
                payload = await frames.read(settings.max_frame)
            except FrameTooLarge as exc:
                self.penalize(peer_id, PENALTY_OVERSIZED, f"oversized frame: {exc}")
                self._close(conn, f"oversized frame: {exc}")
                return
            except FrameMemoryExhausted as exc:
                # Not the peer's fault: others hold the memory.  It may come back.
                self._close(conn, f"frame memory budget exhausted: {exc}")
                return
            if conn.closed:
                return
            now = time.monotonic()
            conn.last_received = now
            overrun = budgets.charge(payload, now)
            if overrun is not None:
                self.penalize(peer_id, PENALTY_FLOOD, overrun_reason(overrun))
                continue
            try:
                message = decode_message(payload)
            except DecodeError as exc:
                self.penalize(peer_id, PENALTY_UNDECODABLE, f"undecodable message: {exc}")
                continue
            self.received[type(message).__name__] += 1
            self._dispatch(conn, message)

    def _dispatch(self, conn: Connection, message) -> None:
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
            self._dialer.learn(message.addresses)
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

    async def _write_loop(self, conn: Connection) -> None:
        try:
            await conn.write_loop()
        except (ConnectionError, OSError) as exc:
            self._close(conn, describe_loss(exc), send=False)

    def _enqueue(self, conn: Connection, frame: bytes) -> None:
        faults = self.faults
        if not faults.none:
            if conn.proven_id in faults.blocked or (faults.loss_percent and self._rng.random() * 100 < faults.loss_percent):
                self.dropped_by_faults += 1
                return
            if faults.delay_ms:
                asyncio.get_running_loop().call_later(faults.delay_ms / 1000, self._enqueue_now, conn, frame)
                return
        self._enqueue_now(conn, frame)

    def _enqueue_now(self, conn: Connection, frame: bytes) -> None:
        if conn.closed:
            return
        self.bytes_sent += len(frame)
        problem = conn.enqueue(frame)
        if problem is not None:
            self._close(conn, problem)

    def _close(self, conn: Connection, reason: str, send: bool = True) -> None:
        """Close once, tell the peer why (when it still listens), log it, and forget the peer."""
        if conn.closed:
            return
        conn.closed = True
        conn.reason = reason
        self._connections.discard(conn)
        self._handshaking.pop(conn, None)
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
        self._dialer.wake.set()

    # ------------------------------------------------------------------ bans
    def _ban(self, peer_id: str, address: str, reason: str, now: float) -> None:
        seconds = self.settings.ban_seconds
        self._reputation.ban(peer_id, address, now)
        log.info("banned peer %s for %g s: %s", peer_id, seconds, reason)
        conn = self._peers.get(peer_id)
        if conn is not None:
            self._close(conn, f"banned for {seconds:g} s: {reason}")

    def _prune(self, now: float) -> None:
        self._reputation.prune(now, self._peers)
        if len(self._address_ids) > 4 * MAX_ADDRESS_BOOK:  # inbound peers come from ever new addresses
            self._address_ids = {
                address: peer_id for address, peer_id in self._address_ids.items()
                if peer_id in self._peers or address in self._dialer.book
            }

    # ------------------------------------------------------------------ keepalive and peer exchange
    async def _maintain(self) -> None:
        settings = self.settings
        tick = max(0.01, min(1.0, settings.ping_interval / 4, settings.idle_timeout / 4,
                             settings.peer_exchange_interval / 4, settings.frame_timeout / 4))
        last_exchange = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self._peers.values()):
                frames = conn.frames
                if frames.body_since:
                    # A body on its way is a sign of life if it keeps pace, a drip if not.
                    allowed = settings.frame_timeout + frames.body_size / settings.frame_min_rate
                    if now - frames.body_since > allowed:
                        reason = f"frame of {frames.body_size} bytes not completed within {allowed:.1f} s"
                        self.penalize(conn.info.id, PENALTY_SLOW_FRAME, reason)
                        self._close(conn, reason)
                    continue
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

    # ------------------------------------------------------------------ what the dialer needs (dialer.Transport)
    @property
    def running(self) -> bool:
        return self._running

    def outbound_count(self) -> int:
        return sum(1 for conn in self._peers.values() if not conn.inbound)

    def address_connected(self, address: str) -> bool:
        peer_id = self._address_ids.get(address)
        return peer_id is not None and peer_id in self._peers

    def address_banned(self, address: str, now: float) -> bool:
        return self._reputation.address_banned(address, now, self._address_ids.get(address))

    async def run_dialled(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> str | None:
        conn = Connection(reader, writer, inbound=False, dial_address=address, settings=self.settings,
                           memory=self.frame_memory)
        await self._run_connection(conn)
        return None if conn.registered else conn.reason

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
        if not self._running:
            writer.transport.abort()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(reader, writer, inbound=True, dial_address=None, settings=self.settings,
                           memory=self.frame_memory)
        settings = self.settings
        # A full pool makes room rather than refusing: the oldest handshake is the likeliest
        # to be one that will never finish.
        eviction = slots.handshake_victim(list(self._handshaking), conn.ip, settings.max_handshaking,
                                          settings.max_handshaking_per_ip)
        if eviction is not None:
            victim, reason = eviction
            self._close(victim, reason)
        self._handshaking[conn] = None
        self._connections.add(conn)  # closed by stop() from now on
        self.spawn(self._run_connection(conn))

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

"""One TCP connection's state: who is at the other end, its send queue, its frame reader
and budgets.  Everything a peer costs the node hangs off this object, so it all goes
when the connection does."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from node.p2p.budgets import PeerBudgets
from node.p2p.frames import FrameMemory, FrameReader
from node.p2p.messages import format_peer_address
from node.p2p.network import PeerInfo
from node.p2p.settings import P2PSettings
from node.p2p.slots import network_group

WRITE_BATCH = 256


@dataclass(frozen=True)
class DisconnectRecord:
    peer_id: str  # "" when the peer never proved an identity
    address: str  # host:port of the socket's other end
    reason: str
    at: float  # time.time()


def describe_loss(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed by the peer"
    return f"connection lost: {exc or type(exc).__name__}"


class Connection:
    __slots__ = (
        "reader", "writer", "inbound", "dial_address", "ip", "group", "remote", "proven_id", "info", "queue", "writer_task",
        "queued_bytes", "queue_bytes_limit", "closed", "reason", "registered", "preferred", "since", "last_received",
        "last_ping", "frames", "budgets",
    )

    def __init__(self, reader, writer, inbound: bool, dial_address: str | None, settings: P2PSettings,
                 memory: FrameMemory):
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer
        self.inbound = inbound
        self.dial_address = dial_address
        peer = writer.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        self.group = network_group(self.ip)
        self.remote = format_peer_address(peer[0], peer[1]) if peer else "?"
        self.proven_id = ""  # the node id, once its AUTH verified
        self.info: PeerInfo | None = None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(settings.send_queue_limit)
        self.writer_task: asyncio.Task | None = None
        self.queued_bytes = 0
        self.queue_bytes_limit = settings.send_queue_bytes
        self.closed = False
        self.reason = ""
        self.registered = False
        self.preferred = False
        now = time.monotonic()
        self.since = now  # accepted; then admitted as a peer
        self.last_received = now
        self.last_ping = now
        self.frames = FrameReader(reader, memory, settings.frame_timeout)
        self.budgets = PeerBudgets(settings, now)

    def enqueue(self, frame: bytes) -> str | None:
        """Queue a frame for the writer; why not when the queue would overflow.

        With nothing queued and nothing waiting in the socket's buffer the frame goes to the
        socket at once: the writer task would send it only when the loop next runs it, and
        under a busy store thread that waits for the GIL (a Raft AppendEntries sat behind the
        leader's own durable write)."""
        transport = self.writer.transport
        if (self.writer_task is not None and self.queue.empty() and not transport.is_closing()
                and not transport.get_write_buffer_size()):
            transport.write(frame)
            return None
        if self.queued_bytes and self.queued_bytes + len(frame) > self.queue_bytes_limit:
            return f"send queue overflow ({self.queued_bytes} bytes): the peer does not keep up"
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            return f"send queue overflow ({self.queue.maxsize} messages): the peer does not keep up"
        self.queued_bytes += len(frame)
        return None

    async def write_loop(self) -> None:
        """Drain the queue onto the socket, in batches, until cancelled or the socket fails."""
        queue = self.queue
        writer = self.writer
        while True:
            frames = [await queue.get()]
            while len(frames) < WRITE_BATCH and not queue.empty():
                frames.append(queue.get_nowait())
            writer.writelines(frames)
            self.queued_bytes -= sum(map(len, frames))
            await writer.drain()

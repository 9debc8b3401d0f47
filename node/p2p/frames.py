"""Length-prefixed frames on asyncio streams, and the memory that unfinished frames hold.

A frame is a `u32` big-endian length, then that many bytes: one message (its `u8`
type and body, see `node.p2p.messages`).  The length is checked against the cap
before a single byte of the body is read, so a peer cannot make us buffer more
than the cap, whatever it claims.

Nor does a length make us hold memory the peer has not sent: `FrameReader` reads a
large body in chunks as its bytes arrive, after reserving its declared size from the
one `FrameMemory` that all connections share.  So the frames a node has half-read
never hold more than that budget together, and a frame cannot stall half-way for
lack of memory once it has started.  Frames of at most SMALL_FRAME bytes skip the
budget: the stream's own buffer limit already bounds them per connection.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque

MAX_FRAME = 32 * 1024 * 1024
FRAME_HEADER = struct.Struct(">I")
SMALL_FRAME = 64 * 1024
READ_CHUNK = 1024 * 1024


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


class FrameMemoryExhausted(Exception):
    """No room for a frame in the shared budget within the time allowed."""

    def __init__(self, size: int, waited: float):
        super().__init__(f"no frame memory for {size} bytes within {waited:g} s")
        self.size = size


def encode_frame(payload: bytes) -> bytes:
    """The frame carrying `payload` (a message encoding)."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("a frame carries at most 2^32 - 1 bytes")
    return FRAME_HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> bytes:
    """The next frame's payload, read whole (for handshakes and tests: tiny caps).

    Raises FrameTooLarge when the announced length exceeds `max_size` (nothing of the
    body has been read then), asyncio.IncompleteReadError when the stream ends first.
    """
    header = await reader.readexactly(FRAME_HEADER.size)
    (size,) = FRAME_HEADER.unpack(header)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    if size == 0:
        return b""
    return await reader.readexactly(size)


def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    """Queue one frame on the transport; the caller awaits `writer.drain()` for back-pressure."""
    writer.write(encode_frame(payload))


async def send_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    write_frame(writer, payload)
    await writer.drain()


class FrameMemory:
    """Bytes reserved by unfinished large frames, across all connections, at most `limit`.

    Waiters are served first come, first served, so a large frame is not starved by a
    stream of smaller ones.
    """

    def __init__(self, limit: int):
        if limit <= 0:
            raise ValueError("the frame memory budget is above 0")
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def reserve(self, size: int, timeout: float) -> None:
        """Hold `size` bytes of the budget; FrameMemoryExhausted when none frees up in `timeout`."""
        if size > self.limit:
            raise FrameMemoryExhausted(size, 0)
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await entry[1]
        except TimeoutError:
            # The timeout cancels the future, unless it was granted in the same moment:
            # then the memory is ours, so keep it.
            if not _granted(entry[1]):
                raise FrameMemoryExhausted(size, timeout) from None
        except BaseException:
            if _granted(entry[1]):
                self.release(size)
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._grant()  # the head of the queue may have been what blocked the others

    def release(self, size: int) -> None:
        self.used -= size
        assert self.used >= 0, "released more frame memory than was reserved"
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():  # its reader gave up
                self._waiters.popleft()
                continue
            if self.used + size > self.limit:
                return
            self._waiters.popleft()
            self.used += size
            future.set_result(None)


def _granted(future: asyncio.Future) -> bool:
    return future.done() and not future.cancelled()


class FrameReader:
    """Reads one connection's frames; `body_size` and `body_since` tell a watchdog which
    body is arriving since when (0 between frames), so a drip can be cut off."""

    __slots__ = ("reader", "memory", "memory_wait", "body_size", "body_since")

    def __init__(self, reader: asyncio.StreamReader, memory: FrameMemory | None, memory_wait: float):
        self.reader = reader
        self.memory = memory
        self.memory_wait = memory_wait
        self.body_size = 0
        self.body_since = 0.0

    async def read(self, max_size: int) -> bytes:
        """The next frame's payload.  Raises FrameTooLarge (nothing of the body read),
        FrameMemoryExhausted, or asyncio.IncompleteReadError when the stream ends first."""
        reader = self.reader
        (size,) = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
        if size > max_size:
            raise FrameTooLarge(size, max_size)
        if size == 0:
            return b""
        memory = self.memory if size > SMALL_FRAME else None
        if memory is not None:
            await memory.reserve(size, self.memory_wait)
        self.body_size = size
        self.body_since = time.monotonic()
        try:
            if memory is None:
                return await reader.readexactly(size)
            chunks = []
            remaining = size
            while remaining:
                chunk = await reader.read(min(remaining, READ_CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", size)
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        finally:
            self.body_size = 0
            self.body_since = 0.0
            if memory is not None:
                memory.release(size)

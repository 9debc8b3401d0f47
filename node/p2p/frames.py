"""Length-prefixed frames on asyncio streams.

A frame is a `u32` big-endian length, then that many bytes: one message (its `u8`
type and body, see `node.p2p.messages`).  The length is checked against the cap
before a single byte of the body is read, so a peer cannot make us buffer more
than the cap, whatever it claims.
"""

from __future__ import annotations

import asyncio
import struct

MAX_FRAME = 32 * 1024 * 1024
FRAME_HEADER = struct.Struct(">I")


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


def encode_frame(payload: bytes) -> bytes:
    """The frame carrying `payload` (a message encoding)."""
    if len(payload) > 0xFFFFFFFF:
        raise ValueError("a frame carries at most 2^32 - 1 bytes")
    return FRAME_HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME) -> bytes:
    """The next frame's payload.

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

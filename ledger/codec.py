"""The canonical byte encoding: one encoding for every value that is hashed, signed,
gossiped or stored raw.  `docs/protocol.md` describes it with test vectors.

Integers are fixed-width big-endian (so each value has exactly one encoding); byte
strings and text carry a u32 length prefix; text is UTF-8.  A decoder reads every
byte exactly once and refuses truncated input, over-long lengths and trailing bytes.
"""

from __future__ import annotations

import struct

MAX_U64 = (1 << 64) - 1
# Amounts, fees, balances and nonces must also fit a signed 64-bit SQL BIGINT.
MAX_AMOUNT = (1 << 63) - 1

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class DecodeError(ValueError):
    """Bytes that are not a canonical encoding; `field` names where decoding failed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self.parts.append(_U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        self.parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self.parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self.parts.append(_U64.pack(value))
        return self

    def fixed(self, value: bytes, size: int) -> Writer:
        if len(value) != size:
            raise ValueError(f"expected {size} bytes, got {len(value)}")
        self.parts.append(value)
        return self

    def var_bytes(self, value: bytes) -> Writer:
        self.parts.append(_U32.pack(len(value)))
        self.parts.append(value)
        return self

    def text(self, value: str) -> Writer:
        return self.var_bytes(value.encode("utf-8"))

    def raw(self, value: bytes) -> Writer:
        self.parts.append(value)
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def _take(self, size: int, field: str) -> int:
        start = self.pos
        if size < 0 or start + size > self.end:
            raise DecodeError(field, f"truncated: needs {size} bytes, {self.end - start} left")
        self.pos = start + size
        return start

    def u8(self, field: str) -> int:
        return self.data[self._take(1, field)]

    def u16(self, field: str) -> int:
        return _U16.unpack_from(self.data, self._take(2, field))[0]

    def u32(self, field: str) -> int:
        return _U32.unpack_from(self.data, self._take(4, field))[0]

    def u64(self, field: str) -> int:
        return _U64.unpack_from(self.data, self._take(8, field))[0]

    def amount(self, field: str) -> int:
        value = self.u64(field)
        if value > MAX_AMOUNT:
            raise DecodeError(field, f"exceeds the maximum {MAX_AMOUNT}")
        return value

    def fixed(self, size: int, field: str) -> bytes:
        start = self._take(size, field)
        return self.data[start : start + size]

    def var_bytes(self, field: str, max_size: int) -> bytes:
        size = self.u32(field)
        if size > max_size:
            raise DecodeError(field, f"{size} bytes exceeds the limit of {max_size}")
        return self.fixed(size, field)

    def text(self, field: str, max_size: int) -> str:
        raw = self.var_bytes(field, max_size)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(field, "not valid UTF-8") from None

    def finish(self) -> None:
        if self.pos != self.end:
            raise DecodeError("encoding", f"{self.end - self.pos} trailing bytes")

"""The peer messages and their canonical encoding (see "Peer protocol" in docs/protocol.md).

A message's encoding is one `u8` message type followed by its body, built with the
primitives of `ledger.codec`.  `decode_message` is the only way in from the wire: it
refuses an unknown type, truncation, trailing bytes, over-limit lengths and counts,
and malformed peer addresses with `DecodeError`, so the transport only ever hands
well-formed dataclasses to the runtime.  `encode()` refuses (ValueError) to build
what a peer would refuse to decode.

Every list carries a `u32` count that is checked against its limit before any item is
read, so a hostile count costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Union

from ledger.codec import MAX_AMOUNT, DecodeError, Reader, Writer
from ledger.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from ledger.transaction import MAX_CHAIN_ID, MAX_TX_SIZE

HASH_SIZE = 32
NONCE_SIZE = 32

MAX_PEER_ADDRESSES = 64
# A DNS name is at most 253 bytes; brackets around an IPv6 literal, ":" and a 5-digit port.
MAX_PEER_ADDRESS = 253 + 2 + 1 + 5
MAX_TX_IDS = 4096
MAX_TX_BATCH = 4096
MAX_LOCATOR = 64
MAX_BLOCKS = 1000
# No single block or engine payload may exceed the default frame cap.
MAX_BLOCK_BYTES = 32 * 1024 * 1024
MAX_ENGINE_PAYLOAD = 32 * 1024 * 1024
MAX_DISCONNECT_REASON = 256


class MessageType(IntEnum):
    HELLO = 1
    AUTH = 2
    PING = 3
    PONG = 4
    GET_PEERS = 5
    PEERS = 6
    STATUS = 7
    TX_ANNOUNCE = 8
    TX_REQUEST = 9
    TX_BATCH = 10
    NEW_BLOCK = 11
    GET_BLOCKS = 12
    BLOCKS = 13
    ENGINE = 14
    DISCONNECT = 15


# ----------------------------------------------------------------------------- peer addresses
_HOST_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})"
_IPV6_LITERAL = r"\[[0-9A-Fa-f:.]{2,45}\]"
_PEER_ADDRESS = re.compile(rf"^({_HOST_NAME}|{_IPV6_LITERAL}):([0-9]{{1,5}})\Z")


def parse_peer_address(text: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 hosts in brackets) into (host, port); ValueError when malformed."""
    match = _PEER_ADDRESS.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not host:port")
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"'{text}': port {port} is not in 1-65535")
    return host.removeprefix("[").removesuffix("]"), port


def format_peer_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------- helpers
def _check_amount(value: int, field: str) -> None:
    if not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{field}: {value} is not in 0..{MAX_AMOUNT}")


def _check_count(items: tuple, limit: int, field: str) -> None:
    if len(items) > limit:
        raise ValueError(f"{field}: {len(items)} items exceeds the limit of {limit}")


def _check_size(value: bytes, limit: int, field: str) -> None:
    if len(value) > limit:
        raise ValueError(f"{field}: {len(value)} bytes exceeds the limit of {limit}")


def _read_count(reader: Reader, limit: int, field: str) -> int:
    count = reader.u32(field)
    if count > limit:
        raise DecodeError(field, f"{count} items exceeds the limit of {limit}")
    return count


def _write_hashes(writer: Writer, hashes: tuple[bytes, ...], limit: int, field: str) -> None:
    _check_count(hashes, limit, field)
    writer.u32(len(hashes))
    for value in hashes:
        writer.fixed(value, HASH_SIZE)


def _read_hashes(reader: Reader, limit: int, field: str) -> tuple[bytes, ...]:
    count = _read_count(reader, limit, field)
    raw = reader.fixed(count * HASH_SIZE, field)
    return tuple(raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE))


def _write_blobs(writer: Writer, blobs: tuple[bytes, ...], limit: int, item_limit: int, field: str) -> None:
    _check_count(blobs, limit, field)
    writer.u32(len(blobs))
    for blob in blobs:
        _check_size(blob, item_limit, field)
        writer.var_bytes(blob)


def _read_blobs(reader: Reader, limit: int, item_limit: int, field: str) -> tuple[bytes, ...]:
    count = _read_count(reader, limit, field)
    return tuple(reader.var_bytes(field, item_limit) for _ in range(count))


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class Hello:
    """The first message on a connection, from both sides."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    chain_id: str
    genesis_hash: bytes
    protocol_version: int
    node_public_key: bytes
    listen_port: int  # 0: this node accepts no connections
    head_height: int
    head_hash: bytes
    finalized_height: int
    nonce: bytes  # fresh random bytes the peer's AUTH must sign

    def encode(self) -> bytes:
        if len(self.chain_id.encode("utf-8")) > MAX_CHAIN_ID:
            raise ValueError(f"hello.chain_id: longer than {MAX_CHAIN_ID} bytes")
        _check_amount(self.head_height, "hello.head_height")
        _check_amount(self.finalized_height, "hello.finalized_height")
        return (
            Writer()
            .u8(self.TYPE)
            .text(self.chain_id)
            .fixed(self.genesis_hash, HASH_SIZE)
            .u16(self.protocol_version)
            .fixed(self.node_public_key, PUBLIC_KEY_SIZE)
            .u16(self.listen_port)
            .u64(self.head_height)
            .fixed(self.head_hash, HASH_SIZE)
            .u64(self.finalized_height)
            .fixed(self.nonce, NONCE_SIZE)
            .bytes()
        )

    @classmethod
    def read(cls, reader: Reader) -> Hello:
        return cls(
            chain_id=reader.text("hello.chain_id", MAX_CHAIN_ID),
            genesis_hash=reader.fixed(HASH_SIZE, "hello.genesis_hash"),
            protocol_version=reader.u16("hello.protocol_version"),
            node_public_key=reader.fixed(PUBLIC_KEY_SIZE, "hello.node_public_key"),
            listen_port=reader.u16("hello.listen_port"),
            head_height=reader.amount("hello.head_height"),
            head_hash=reader.fixed(HASH_SIZE, "hello.head_hash"),
            finalized_height=reader.amount("hello.finalized_height"),
            nonce=reader.fixed(NONCE_SIZE, "hello.nonce"),
        )


@dataclass(frozen=True, slots=True)
class Auth:
    """Proves the HELLO's key: a signature over the peer's nonce and our own HELLO encoding."""

    TYPE: ClassVar[MessageType] = MessageType.AUTH
    signature: bytes

    def encode(self) -> bytes:
        return Writer().u8(self.TYPE).fixed(self.signature, SIGNATURE_SIZE).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Auth:
        return cls(reader.fixed(SIGNATURE_SIZE, "auth.signature"))


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[MessageType] = MessageType.PING
    nonce: int

    def encode(self) -> bytes:
        return Writer().u8(self.TYPE).u64(self.nonce).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Ping:
        return cls(reader.u64("ping.nonce"))


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[MessageType] = MessageType.PONG
    nonce: int

    def encode(self) -> bytes:
        return Writer().u8(self.TYPE).u64(self.nonce).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Pong:
        return cls(reader.u64("pong.nonce"))


@dataclass(frozen=True, slots=True)
class GetPeers:
    TYPE: ClassVar[MessageType] = MessageType.GET_PEERS

    def encode(self) -> bytes:
        return bytes((self.TYPE,))

    @classmethod
    def read(cls, reader: Reader) -> GetPeers:
        return cls()


@dataclass(frozen=True, slots=True)
class Peers:
    """Addresses ("host:port") where the sender's peers accept connections."""

    TYPE: ClassVar[MessageType] = MessageType.PEERS
    addresses: tuple[str, ...]

    def encode(self) -> bytes:
        _check_count(self.addresses, MAX_PEER_ADDRESSES, "peers.addresses")
        writer = Writer().u8(self.TYPE).u32(len(self.addresses))
        for address in self.addresses:
            parse_peer_address(address)
            writer.text(address)
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> Peers:
        count = _read_count(reader, MAX_PEER_ADDRESSES, "peers.addresses")
        addresses = []
        for _ in range(count):
            address = reader.text("peers.address", MAX_PEER_ADDRESS)
            try:
                parse_peer_address(address)
            except ValueError as exc:
                raise DecodeError("peers.address", str(exc)) from None
            addresses.append(address)
        return cls(tuple(addresses))


@dataclass(frozen=True, slots=True)
class Status:
    """The sender's head changed."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS
    head_height: int
    head_hash: bytes
    finalized_height: int

    def encode(self) -> bytes:
        _check_amount(self.head_height, "status.head_height")
        _check_amount(self.finalized_height, "status.finalized_height")
        return (
            Writer()
            .u8(self.TYPE)
            .u64(self.head_height)
            .fixed(self.head_hash, HASH_SIZE)
            .u64(self.finalized_height)
            .bytes()
        )

    @classmethod
    def read(cls, reader: Reader) -> Status:
        return cls(
            head_height=reader.amount("status.head_height"),
            head_hash=reader.fixed(HASH_SIZE, "status.head_hash"),
            finalized_height=reader.amount("status.finalized_height"),
        )


@dataclass(frozen=True, slots=True)
class TxAnnounce:
    """Ids of transactions the sender has; a peer that lacks one asks with TxRequest."""

    TYPE: ClassVar[MessageType] = MessageType.TX_ANNOUNCE
    ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        writer = Writer().u8(self.TYPE)
        _write_hashes(writer, self.ids, MAX_TX_IDS, "tx_announce.ids")
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> TxAnnounce:
        return cls(_read_hashes(reader, MAX_TX_IDS, "tx_announce.ids"))


@dataclass(frozen=True, slots=True)
class TxRequest:
    TYPE: ClassVar[MessageType] = MessageType.TX_REQUEST
    ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        writer = Writer().u8(self.TYPE)
        _write_hashes(writer, self.ids, MAX_TX_IDS, "tx_request.ids")
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> TxRequest:
        return cls(_read_hashes(reader, MAX_TX_IDS, "tx_request.ids"))


@dataclass(frozen=True, slots=True)
class TxBatch:
    """Signed transaction encodings, undecoded: the runtime decodes and verifies them."""

    TYPE: ClassVar[MessageType] = MessageType.TX_BATCH
    transactions: tuple[bytes, ...]

    def encode(self) -> bytes:
        writer = Writer().u8(self.TYPE)
        _write_blobs(writer, self.transactions, MAX_TX_BATCH, MAX_TX_SIZE, "tx_batch.transactions")
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> TxBatch:
        return cls(_read_blobs(reader, MAX_TX_BATCH, MAX_TX_SIZE, "tx_batch.transactions"))


@dataclass(frozen=True, slots=True)
class NewBlock:
    """A block encoding, pushed to peers when it is produced or first received."""

    TYPE: ClassVar[MessageType] = MessageType.NEW_BLOCK
    block: bytes

    def encode(self) -> bytes:
        _check_size(self.block, MAX_BLOCK_BYTES, "new_block.block")
        return Writer().u8(self.TYPE).var_bytes(self.block).bytes()

    @classmethod
    def read(cls, reader: Reader) -> NewBlock:
        return cls(reader.var_bytes("new_block.block", MAX_BLOCK_BYTES))


@dataclass(frozen=True, slots=True)
class GetBlocks:
    """Blocks after the first locator hash the peer has on its chain, at most `max_count`."""

    TYPE: ClassVar[MessageType] = MessageType.GET_BLOCKS
    locator: tuple[bytes, ...]
    max_count: int

    def encode(self) -> bytes:
        writer = Writer().u8(self.TYPE)
        _write_hashes(writer, self.locator, MAX_LOCATOR, "get_blocks.locator")
        return writer.u32(self.max_count).bytes()

    @classmethod
    def read(cls, reader: Reader) -> GetBlocks:
        locator = _read_hashes(reader, MAX_LOCATOR, "get_blocks.locator")
        return cls(locator, reader.u32("get_blocks.max_count"))


@dataclass(frozen=True, slots=True)
class Blocks:
    TYPE: ClassVar[MessageType] = MessageType.BLOCKS
    blocks: tuple[bytes, ...]

    def encode(self) -> bytes:
        writer = Writer().u8(self.TYPE)
        _write_blobs(writer, self.blocks, MAX_BLOCKS, MAX_BLOCK_BYTES, "blocks.blocks")
        return writer.bytes()

    @classmethod
    def read(cls, reader: Reader) -> Blocks:
        return cls(_read_blobs(reader, MAX_BLOCKS, MAX_BLOCK_BYTES, "blocks.blocks"))


@dataclass(frozen=True, slots=True)
class EngineMessage:
    """The consensus engine's own channel; the engine encodes and decodes the payload."""

    TYPE: ClassVar[MessageType] = MessageType.ENGINE
    payload: bytes

    def encode(self) -> bytes:
        _check_size(self.payload, MAX_ENGINE_PAYLOAD, "engine.payload")
        return Writer().u8(self.TYPE).var_bytes(self.payload).bytes()

    @classmethod
    def read(cls, reader: Reader) -> EngineMessage:
        return cls(reader.var_bytes("engine.payload", MAX_ENGINE_PAYLOAD))


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender is closing the connection, and why."""

    TYPE: ClassVar[MessageType] = MessageType.DISCONNECT
    reason: str

    @classmethod
    def because(cls, reason: str) -> Disconnect:
        """A Disconnect whose reason is cut to the limit (on a character boundary)."""
        raw = reason.encode("utf-8")[:MAX_DISCONNECT_REASON]
        return cls(raw.decode("utf-8", errors="ignore"))

    def encode(self) -> bytes:
        raw = self.reason.encode("utf-8")
        _check_size(raw, MAX_DISCONNECT_REASON, "disconnect.reason")
        return Writer().u8(self.TYPE).var_bytes(raw).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Disconnect:
        return cls(reader.text("disconnect.reason", MAX_DISCONNECT_REASON))


Message = Union[
    Hello, Auth, Ping, Pong, GetPeers, Peers, Status, TxAnnounce, TxRequest, TxBatch,
    NewBlock, GetBlocks, Blocks, EngineMessage, Disconnect,
]

MESSAGE_CLASSES: dict[int, type] = {
    cls.TYPE: cls
    for cls in (
        Hello, Auth, Ping, Pong, GetPeers, Peers, Status, TxAnnounce, TxRequest, TxBatch,
        NewBlock, GetBlocks, Blocks, EngineMessage, Disconnect,
    )
}
assert set(MESSAGE_CLASSES) == set(MessageType), "every message type has exactly one class"


def decode_message(payload: bytes) -> Message:
    """The message in `payload` (type byte and body); DecodeError for anything malformed."""
    reader = Reader(payload)
    type_code = reader.u8("message.type")
    cls = MESSAGE_CLASSES.get(type_code)
    if cls is None:
        raise DecodeError("message.type", f"unknown message type {type_code}")
    message = cls.read(reader)
    reader.finish()
    return message

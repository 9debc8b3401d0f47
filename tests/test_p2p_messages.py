"""Peer messages and frames: every message round-trips byte for byte, every malformed
payload is refused with DecodeError (never another exception), limits are checked
before anything is read, and the frame reader refuses an oversized length before it
reads a byte of the body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.codec import MAX_AMOUNT, DecodeError, Writer
from ledger.transaction import MAX_TX_SIZE
from node.p2p import messages as m
from node.p2p.frames import FrameTooLarge, encode_frame, read_frame

PROTOCOL_FILE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

hashes = st.binary(min_size=32, max_size=32)
heights = st.integers(0, MAX_AMOUNT)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
host_names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
peer_addresses = st.builds(
    m.format_peer_address, st.one_of(host_names, ipv4, st.just("::1"), st.just("fe80::1")), st.integers(1, 65535)
)
small_blobs = st.binary(max_size=64)

messages = st.one_of(
    st.builds(
        m.Hello,
        chain_id=st.text(max_size=16),
        genesis_hash=hashes,
        protocol_version=u16,
        node_public_key=st.binary(min_size=33, max_size=33),
        listen_port=u16,
        head_height=heights,
        head_hash=hashes,
        finalized_height=heights,
        nonce=hashes,
    ),
    st.builds(m.Auth, st.binary(min_size=64, max_size=64)),
    st.builds(m.Ping, u64),
    st.builds(m.Pong, u64),
    st.just(m.GetPeers()),
    st.builds(m.Peers, st.lists(peer_addresses, max_size=8).map(tuple)),
    st.builds(m.Status, heights, hashes, heights),
    st.builds(m.TxAnnounce, st.lists(hashes, max_size=8).map(tuple)),
    st.builds(m.TxRequest, st.lists(hashes, max_size=8).map(tuple)),
    st.builds(m.TxBatch, st.lists(st.binary(max_size=MAX_TX_SIZE), max_size=4).map(tuple)),
    st.builds(m.NewBlock, st.binary(max_size=512)),
    st.builds(m.GetBlocks, st.lists(hashes, max_size=8).map(tuple), u32),
    st.builds(m.Blocks, st.lists(small_blobs, max_size=6).map(tuple)),
    st.builds(m.EngineMessage, st.binary(max_size=256)),
    st.builds(m.Disconnect, st.text(max_size=64)),
)


# ----------------------------------------------------------------------------- round trips
@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_message_round_trips(message):
    encoded = message.encode()
    assert encoded[0] == message.TYPE
    decoded = m.decode_message(encoded)
    assert decoded == message
    assert type(decoded) is type(message)
    assert decoded.encode() == encoded


@settings(max_examples=150, deadline=None)
@given(messages)
def test_every_truncation_and_every_extension_is_refused(message):
    encoded = message.encode()
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            m.decode_message(encoded[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        m.decode_message(encoded + b"\x00")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_canonically_or_raise_decode_error(data):
    try:
        message = m.decode_message(data)
    except DecodeError:
        return
    assert message.encode() == data


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_a_flipped_byte_decodes_canonically_or_raises_decode_error(message, data):
    encoded = bytearray(message.encode())
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        decoded = m.decode_message(bytes(encoded))
    except DecodeError:
        return
    assert decoded.encode() == bytes(encoded)


def test_every_message_type_has_a_class_and_unknown_types_are_refused():
    assert sorted(m.MESSAGE_CLASSES) == list(range(1, 16))
    for code in (0, 16, 99, 255):
        with pytest.raises(DecodeError, match="unknown message type"):
            m.decode_message(bytes((code,)))
    with pytest.raises(DecodeError, match="message.type"):
        m.decode_message(b"")


# ----------------------------------------------------------------------------- exact layout
def test_layouts_are_the_documented_ones():
    assert m.Ping(1).encode().hex() == "030000000000000001"
    assert m.GetPeers().encode() == b"\x05"
    assert m.Status(7, b"\xaa" * 32, 5).encode() == (
        b"\x07" + struct.pack(">Q", 7) + b"\xaa" * 32 + struct.pack(">Q", 5)
    )
    assert m.TxAnnounce((b"\x01" * 32, b"\x02" * 32)).encode() == b"\x08" + struct.pack(">I", 2) + b"\x01" * 32 + b"\x02" * 32
    assert m.GetBlocks((b"\x03" * 32,), 500).encode() == b"\x0c" + struct.pack(">I", 1) + b"\x03" * 32 + struct.pack(">I", 500)
    assert m.Blocks((b"ab", b"")).encode() == b"\x0d" + struct.pack(">I", 2) + struct.pack(">I", 2) + b"ab" + struct.pack(">I", 0)
    assert m.Peers(("10.0.0.1:9000",)).encode() == b"\x06" + struct.pack(">I", 1) + struct.pack(">I", 13) + b"10.0.0.1:9000"
    assert m.Disconnect("bye").encode() == b"\x0f" + struct.pack(">I", 3) + b"bye"
    assert encode_frame(m.Ping(1).encode()).hex() == "00000009030000000000000001"


def documented_hello_vector():
    key = crypto.PrivateKey(bytes([1]) * 32)
    hello = m.Hello(
        chain_id="ledger-dev",
        genesis_hash=bytes.fromhex("933f6a55f89e97d8b286d2f55db4bb81ecb3b7bc729b368ae47b4510315bf9bb"),
        protocol_version=1,
        node_public_key=key.public_key,
        listen_port=9000,
        head_height=0,
        head_hash=bytes.fromhex("2ce48e31f4e45829a48c92a33a0bbd18a98252ec0365a2177cf457d9b49de010"),
        finalized_height=0,
        nonce=bytes([0x11]) * 32,
    )
    peer_nonce = bytes([0x22]) * 32
    auth = m.Auth(key.sign(crypto.DOMAIN_HANDSHAKE, peer_nonce + hello.encode()))
    return hello, auth


def test_protocol_document_shows_the_peer_vectors_and_limits():
    hello, auth = documented_hello_vector()
    document = "".join(PROTOCOL_FILE.read_text(encoding="utf-8").split())
    for value in (
        encode_frame(hello.encode()).hex(),
        auth.signature.hex(),
        crypto.signing_digest(crypto.DOMAIN_HANDSHAKE, bytes([0x22]) * 32 + hello.encode()).hex(),
        encode_frame(m.Ping(1).encode()).hex(),
        encode_frame(m.Status(7, b"\xaa" * 32, 5).encode()).hex(),
    ):
        assert value in document
    text = PROTOCOL_FILE.read_text(encoding="utf-8")
    assert "## Peer protocol" in text
    for name, code in m.MessageType.__members__.items():
        assert re.search(rf"\|\s*{code.value}\s*\|\s*`{name}`", text), name
    for limit in (m.MAX_PEER_ADDRESSES, m.MAX_TX_IDS, m.MAX_TX_BATCH, m.MAX_LOCATOR, m.MAX_BLOCKS, m.MAX_DISCONNECT_REASON):
        assert str(limit) in text


def test_handshake_signature_binds_the_nonce_and_the_hello():
    hello, auth = documented_hello_vector()
    key = crypto.PrivateKey(bytes([1]) * 32)
    assert crypto.verify(key.public_key, crypto.DOMAIN_HANDSHAKE, bytes([0x22]) * 32 + hello.encode(), auth.signature)
    assert not crypto.verify(key.public_key, crypto.DOMAIN_HANDSHAKE, bytes([0x23]) * 32 + hello.encode(), auth.signature)
    other = dataclasses.replace(hello, listen_port=9001)
    assert not crypto.verify(key.public_key, crypto.DOMAIN_HANDSHAKE, bytes([0x22]) * 32 + other.encode(), auth.signature)


# ----------------------------------------------------------------------------- limits on decode
def list_message(type_code: int, count: int, item: bytes = b"") -> bytes:
    return bytes((type_code,)) + struct.pack(">I", count) + item


@pytest.mark.parametrize(
    ("type_code", "limit", "field"),
    [
        (m.MessageType.TX_ANNOUNCE, m.MAX_TX_IDS, "tx_announce.ids"),
        (m.MessageType.TX_REQUEST, m.MAX_TX_IDS, "tx_request.ids"),
        (m.MessageType.TX_BATCH, m.MAX_TX_BATCH, "tx_batch.transactions"),
        (m.MessageType.GET_BLOCKS, m.MAX_LOCATOR, "get_blocks.locator"),
        (m.MessageType.BLOCKS, m.MAX_BLOCKS, "blocks.blocks"),
        (m.MessageType.PEERS, m.MAX_PEER_ADDRESSES, "peers.addresses"),
    ],
)
def test_list_counts_over_the_limit_are_refused_before_reading_items(type_code, limit, field):
    for count in (limit + 1, 0xFFFFFFFF):
        with pytest.raises(DecodeError, match="exceeds the limit") as info:
            m.decode_message(list_message(type_code, count))
        assert info.value.field == field


def test_lists_at_their_limit_decode():
    ids = tuple(i.to_bytes(32, "big") for i in range(m.MAX_TX_IDS))
    assert m.decode_message(m.TxAnnounce(ids).encode()).ids == ids
    locator = ids[: m.MAX_LOCATOR]
    assert m.decode_message(m.GetBlocks(locator, 1).encode()).locator == locator


def test_oversized_items_are_refused():
    big_tx = Writer().u8(m.MessageType.TX_BATCH).u32(1).var_bytes(b"\x00" * (MAX_TX_SIZE + 1)).bytes()
    with pytest.raises(DecodeError, match="tx_batch.transactions"):
        m.decode_message(big_tx)
    # The length is checked before the bytes are looked for: no body needed to be refused.
    huge_block = Writer().u8(m.MessageType.NEW_BLOCK).u32(m.MAX_BLOCK_BYTES + 1).bytes()
    with pytest.raises(DecodeError, match="exceeds the limit"):
        m.decode_message(huge_block)
    long_reason = Writer().u8(m.MessageType.DISCONNECT).text("x" * (m.MAX_DISCONNECT_REASON + 1)).bytes()
    with pytest.raises(DecodeError, match="disconnect.reason"):
        m.decode_message(long_reason)
    long_chain = m.Hello("c", b"\x00" * 32, 1, b"\x02" * 33, 1, 0, b"\x00" * 32, 0, b"\x00" * 32).encode()
    long_chain = long_chain[:1] + Writer().text("c" * 65).bytes() + long_chain[6:]
    with pytest.raises(DecodeError, match="hello.chain_id"):
        m.decode_message(long_chain)


def test_heights_above_the_amount_limit_are_refused():
    raw = b"\x07" + struct.pack(">Q", MAX_AMOUNT + 1) + b"\x00" * 32 + struct.pack(">Q", 0)
    with pytest.raises(DecodeError, match="status.head_height"):
        m.decode_message(raw)
    with pytest.raises(ValueError):
        m.Status(MAX_AMOUNT + 1, b"\x00" * 32, 0).encode()


def test_invalid_utf8_text_is_refused():
    raw = b"\x0f" + struct.pack(">I", 2) + b"\xff\xfe"
    with pytest.raises(DecodeError, match="UTF-8"):
        m.decode_message(raw)


@pytest.mark.parametrize(
    "address",
    ["", "nohost", ":9000", "host:", "host:0", "host:65536", "host:99999", "host: 80", "ho st:80", "host:８０",
     "-host:80", "::1:80", "[::1]", "host:80\n", "[zz]:80"],
)
def test_malformed_peer_addresses_are_refused(address):
    with pytest.raises(ValueError):
        m.parse_peer_address(address)
    raw = Writer().u8(m.MessageType.PEERS).u32(1).text(address).bytes()
    with pytest.raises(DecodeError, match="peers.address"):
        m.decode_message(raw)
    with pytest.raises(ValueError):
        m.Peers((address,)).encode()


def test_peer_addresses_parse():
    assert m.parse_peer_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert m.parse_peer_address("node-1.example:65535") == ("node-1.example", 65535)
    assert m.parse_peer_address("[::1]:9001") == ("::1", 9001)
    assert m.format_peer_address("::1", 9001) == "[::1]:9001"


def test_encode_refuses_what_a_peer_would_refuse():
    with pytest.raises(ValueError):
        m.TxAnnounce(tuple(bytes(32) for _ in range(m.MAX_TX_IDS + 1))).encode()
    with pytest.raises(ValueError):
        m.TxAnnounce((b"short",)).encode()
    with pytest.raises(ValueError):
        m.TxBatch((b"\x00" * (MAX_TX_SIZE + 1),)).encode()
    with pytest.raises(ValueError):
        m.Peers(tuple(f"h:{i + 1}" for i in range(m.MAX_PEER_ADDRESSES + 1))).encode()
    with pytest.raises(ValueError):
        m.Disconnect("x" * (m.MAX_DISCONNECT_REASON + 1)).encode()
    with pytest.raises(ValueError):
        m.Auth(b"\x00" * 63).encode()


def test_disconnect_because_cuts_long_reasons_on_a_character_boundary():
    reason = "é" * 200  # 400 bytes
    message = m.Disconnect.because(reason)
    assert len(message.reason.encode()) <= m.MAX_DISCONNECT_REASON
    assert reason.startswith(message.reason) and len(message.reason) == 128
    assert m.decode_message(message.encode()) == message


# ----------------------------------------------------------------------------- frames
def reader_with(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_frames_round_trip_and_follow_one_another():
    async def scenario():
        first, second = m.Ping(5).encode(), m.Disconnect("done").encode()
        reader = reader_with(encode_frame(first) + encode_frame(second))
        assert await read_frame(reader) == first
        assert await read_frame(reader) == second
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader)

    asyncio.run(scenario())


def test_an_oversized_length_is_refused_before_the_body_is_read():
    async def scenario():
        # No body follows and no EOF comes: reading it would hang, refusing it must not.
        reader = reader_with(struct.pack(">I", 2**31), eof=False)
        with pytest.raises(FrameTooLarge) as info:
            await asyncio.wait_for(read_frame(reader, max_size=1024), timeout=1)
        assert (info.value.size, info.value.limit) == (2**31, 1024)
        exact = reader_with(encode_frame(b"\x05" * 1024))
        assert len(await read_frame(exact, max_size=1024)) == 1024

    asyncio.run(scenario())


def test_a_truncated_frame_is_an_incomplete_read():
    async def scenario():
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader_with(struct.pack(">I", 10) + b"abc"))
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader_with(b"\x00\x00"))
        assert await read_frame(reader_with(struct.pack(">I", 0))) == b""

    asyncio.run(scenario())

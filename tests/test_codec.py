"""The canonical encoding: codec primitives, transactions, blocks and the Merkle root.

One value has exactly one encoding: every round trip is byte-identical, every
decodable byte string re-encodes to itself, and every malformed one is refused with
DecodeError (never another exception).
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.block import (
    BLOCK_VERSION,
    MAX_EXTRA,
    MAX_HEADER_SIZE,
    MAX_SEAL,
    ZERO_HASH,
    Block,
    BlockHeader,
    InvalidBlock,
    build_header,
)
from ledger.codec import MAX_AMOUNT, MAX_U64, DecodeError, Reader, Writer
from ledger.merkle import EMPTY_ROOT, merkle_root
from ledger.transaction import (
    MAX_CHAIN_ID,
    MAX_PAYLOAD,
    MAX_TX_SIZE,
    TX_FORMAT,
    InvalidTransaction,
    Transaction,
    TxKind,
    new_transfer,
)

CHAIN = "test-chain"
KEYS = [crypto.PrivateKey(bytes([i]) * 32) for i in range(1, 5)]

# --- strategies ---------------------------------------------------------------------------

keys = st.sampled_from(KEYS)
amounts = st.integers(min_value=0, max_value=MAX_AMOUNT)
hashes = st.binary(min_size=32, max_size=32)
accounts = st.binary(min_size=20, max_size=20)
chain_ids = st.text(max_size=MAX_CHAIN_ID).filter(lambda text: len(text.encode("utf-8")) <= MAX_CHAIN_ID)


@st.composite
def signed_transactions(draw, chain_id=None):
    key = draw(keys)
    unsigned = Transaction(
        chain_id=draw(chain_ids) if chain_id is None else chain_id,
        nonce=draw(amounts),
        sender=key.public_key,
        recipient=draw(accounts),
        amount=draw(amounts),
        fee=draw(amounts),
        kind=draw(st.integers(min_value=0, max_value=255)),
        payload=draw(st.binary(max_size=MAX_PAYLOAD)),
    )
    return unsigned.signed(key)


@st.composite
def headers(draw, tx_count=None):
    return BlockHeader(
        chain_id=draw(chain_ids),
        height=draw(amounts),
        parent=draw(hashes),
        timestamp=draw(amounts),
        tx_root=draw(hashes),
        tx_count=draw(st.integers(min_value=0, max_value=2**32 - 1)) if tx_count is None else tx_count,
        proposer=draw(accounts),
        extra=draw(st.binary(max_size=200)),
        seal=draw(st.binary(max_size=200)),
    )


@st.composite
def blocks(draw):
    transactions = draw(st.lists(signed_transactions(), max_size=4))
    header = draw(headers(tx_count=len(transactions)))
    return Block(header, tuple(transactions))


def rebuilt(tx: Transaction) -> Transaction:
    """The same transaction without the raw bytes it was decoded from, so encode() works from fields."""
    return dataclasses.replace(tx)


def transfer(nonce: int = 0, amount: int = 10, fee: int = 1, key: crypto.PrivateKey = KEYS[0]) -> Transaction:
    return new_transfer(key, CHAIN, nonce, crypto.sha256(b"recipient")[:20], amount, fee)


def tx_bytes(
    *, fmt=TX_FORMAT, chain_id=CHAIN.encode(), chain_len=None, nonce=0, amount=1, fee=0, kind=0, payload=b"",
    payload_len=None, signature=bytes(64),
) -> bytes:
    """A transaction encoding written field by field, free to break any rule."""
    return (
        Writer()
        .u8(fmt)
        .u32(len(chain_id) if chain_len is None else chain_len)
        .raw(chain_id)
        .u64(nonce)
        .raw(KEYS[0].public_key)
        .raw(bytes(20))
        .u64(amount)
        .u64(fee)
        .u8(kind)
        .u32(len(payload) if payload_len is None else payload_len)
        .raw(payload)
        .raw(signature)
        .bytes()
    )


# --- codec primitives ---------------------------------------------------------------------


def test_integers_are_fixed_width_big_endian():
    data = Writer().u8(0x12).u16(0x3456).u32(0x789ABCDE).u64(0x0102030405060708).bytes()
    assert data.hex() == "12" + "3456" + "789abcde" + "0102030405060708"
    reader = Reader(data)
    assert (reader.u8("a"), reader.u16("b"), reader.u32("c"), reader.u64("d")) == (
        0x12, 0x3456, 0x789ABCDE, 0x0102030405060708,
    )
    reader.finish()


def test_var_bytes_and_text_carry_a_u32_length_prefix():
    assert Writer().var_bytes(b"abc").bytes() == b"\x00\x00\x00\x03abc"
    assert Writer().text("é").bytes() == b"\x00\x00\x00\x02\xc3\xa9"
    assert Writer().var_bytes(b"").bytes() == bytes(4)


@given(
    u8=st.integers(0, 255), u16=st.integers(0, 2**16 - 1), u32=st.integers(0, 2**32 - 1),
    u64=st.integers(0, MAX_U64), blob=st.binary(max_size=100), text=st.text(max_size=50),
)
def test_primitive_round_trip(u8, u16, u32, u64, blob, text):
    data = Writer().u8(u8).u16(u16).u32(u32).u64(u64).var_bytes(blob).text(text).fixed(b"xyz", 3).bytes()
    reader = Reader(data)
    assert reader.u8("u8") == u8
    assert reader.u16("u16") == u16
    assert reader.u32("u32") == u32
    assert reader.u64("u64") == u64
    assert reader.var_bytes("blob", 100) == blob
    assert reader.text("text", 200) == text
    assert reader.fixed(3, "fixed") == b"xyz"
    reader.finish()


def test_reader_refuses_and_names_the_field():
    with pytest.raises(DecodeError) as caught:
        Reader(b"\x00\x01").u32("height")
    assert caught.value.field == "height"
    with pytest.raises(DecodeError) as caught:
        Reader(Writer().var_bytes(b"x" * 11).bytes()).var_bytes("memo", 10)
    assert caught.value.field == "memo"
    with pytest.raises(DecodeError):
        Reader(Writer().var_bytes(b"\xff\xfe").bytes()).text("name", 10)
    with pytest.raises(DecodeError) as caught:
        Reader(b"\x00\x00").finish()
    assert caught.value.field == "encoding"


def test_amount_limit_is_the_signed_64_bit_maximum():
    assert MAX_AMOUNT == 2**63 - 1
    assert Reader(Writer().u64(MAX_AMOUNT).bytes()).amount("amount") == MAX_AMOUNT
    with pytest.raises(DecodeError):
        Reader(Writer().u64(MAX_AMOUNT + 1).bytes()).amount("amount")


def test_writer_fixed_refuses_the_wrong_size():
    with pytest.raises(ValueError):
        Writer().fixed(b"abc", 4)


# --- transactions: round trip and canonical form ------------------------------------------


@settings(max_examples=150, deadline=None)
@given(tx=signed_transactions())
def test_transaction_round_trip_is_byte_identical(tx):
    data = tx.encode()
    decoded = Transaction.decode(data)
    assert decoded == tx
    assert rebuilt(decoded).encode() == data
    assert decoded.id == tx.id == hashlib.sha256(data).digest()
    assert decoded.signature_valid()


def test_transaction_layout():
    tx = transfer(nonce=3, amount=500, fee=7)
    unsigned = tx.unsigned_bytes()
    expected = (
        bytes([TX_FORMAT])
        + len(CHAIN).to_bytes(4, "big") + CHAIN.encode()
        + (3).to_bytes(8, "big")
        + tx.sender
        + tx.recipient
        + (500).to_bytes(8, "big")
        + (7).to_bytes(8, "big")
        + bytes([TxKind.TRANSFER])
        + bytes(4)  # empty payload
    )
    assert unsigned == expected
    assert tx.encode() == unsigned + tx.signature
    assert crypto.verify(tx.sender, crypto.DOMAIN_TX, unsigned, tx.signature)


def test_unsigned_transaction_cannot_be_encoded():
    tx = Transaction(CHAIN, 0, KEYS[0].public_key, bytes(20), 1, 0)
    with pytest.raises(ValueError):
        tx.encode()


def test_signing_with_another_key_is_refused():
    tx = Transaction(CHAIN, 0, KEYS[0].public_key, bytes(20), 1, 0)
    with pytest.raises(ValueError):
        tx.signed(KEYS[1])


def test_trailing_bytes_are_refused():
    data = transfer().encode()
    with pytest.raises(DecodeError) as caught:
        Transaction.decode(data + b"\x00")
    assert caught.value.field == "encoding"


def test_every_truncation_is_refused():
    data = transfer().encode()
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            Transaction.decode(data[:length])


def test_hand_written_encoding_decodes():
    # Guards the helper the refusal tests below rely on: unbroken, it must decode.
    tx = Transaction.decode(tx_bytes())
    assert tx.chain_id == CHAIN and tx.amount == 1


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [
        ({"fmt": 0}, "format"),
        ({"fmt": 2}, "format"),
        ({"chain_id": b"a" * (MAX_CHAIN_ID + 1)}, "chain_id"),
        ({"chain_len": 2**32 - 1}, "chain_id"),
        ({"chain_id": b"\xff\xfe"}, "chain_id"),  # not UTF-8
        ({"chain_id": b"\xc3"}, "chain_id"),  # truncated UTF-8 sequence
        ({"nonce": MAX_AMOUNT + 1}, "nonce"),
        ({"amount": MAX_AMOUNT + 1}, "amount"),
        ({"amount": MAX_U64}, "amount"),
        ({"fee": MAX_AMOUNT + 1}, "fee"),
        ({"payload": b"p" * (MAX_PAYLOAD + 1)}, "payload"),
        ({"payload_len": 2**31}, "payload"),
        ({"payload_len": 5, "payload": b"abc"}, "signature"),  # the length eats into the signature
    ],
)
def test_non_canonical_transactions_are_refused(fields, culprit):
    with pytest.raises(DecodeError) as caught:
        Transaction.decode(tx_bytes(**fields))
    assert caught.value.field == culprit


def test_oversized_transaction_is_refused_before_decoding():
    with pytest.raises(DecodeError) as caught:
        Transaction.decode(bytes(MAX_TX_SIZE + 1))
    assert caught.value.field == "transaction"


def test_largest_transaction_fits_the_size_limit():
    key = KEYS[0]
    tx = Transaction("c" * MAX_CHAIN_ID, 0, key.public_key, bytes(20), 1, 0, payload=b"p" * MAX_PAYLOAD).signed(key)
    assert len(tx.encode()) == MAX_TX_SIZE
    assert Transaction.decode(tx.encode()) == tx


@settings(max_examples=300, deadline=None)
@given(tx=signed_transactions(chain_id=CHAIN), data=st.data())
def test_changing_any_byte_breaks_decoding_or_the_signature(tx, data):
    encoded = tx.encode()
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255).filter(lambda v: v != encoded[position]))
    mutated = encoded[:position] + bytes([value]) + encoded[position + 1 :]
    try:
        decoded = Transaction.decode(mutated)
    except DecodeError:
        return
    assert decoded.id != tx.id
    assert rebuilt(decoded).encode() == mutated  # what decodes is canonical
    assert not decoded.signature_valid()
    with pytest.raises(InvalidTransaction):
        decoded.check_stateless(decoded.chain_id)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=MAX_TX_SIZE + 10))
def test_arbitrary_bytes_raise_only_decode_error(data):
    try:
        tx = Transaction.decode(data)
    except DecodeError:
        return
    assert rebuilt(tx).encode() == data


# --- transactions: stateless checks --------------------------------------------------------


def test_valid_transfer_passes_stateless_checks():
    transfer().check_stateless(CHAIN)


def _expect_invalid(tx: Transaction, reason: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        tx.check_stateless(CHAIN)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_wrong_chain_is_refused():
    tx = new_transfer(KEYS[0], "other-chain", 0, bytes(20), 1)
    _expect_invalid(tx, "wrong_chain")


def test_unknown_kind_is_refused():
    key = KEYS[0]
    _expect_invalid(Transaction(CHAIN, 0, key.public_key, bytes(20), 1, 0, kind=9).signed(key), "unknown_kind")


def test_zero_amount_is_refused():
    _expect_invalid(transfer(amount=0), "zero_amount")


@pytest.mark.parametrize(("amount", "fee"), [(MAX_AMOUNT, 1), (1, MAX_AMOUNT), (MAX_AMOUNT + 1, 0), (1, MAX_AMOUNT + 5)])
def test_amount_overflow_is_refused(amount, fee):
    _expect_invalid(transfer(amount=amount, fee=fee), "amount_overflow")


def test_largest_amount_plus_fee_is_accepted():
    transfer(amount=MAX_AMOUNT - 3, fee=3).check_stateless(CHAIN)


def test_invalid_sender_key_is_refused():
    tx = dataclasses.replace(transfer(), sender=b"\x02" + b"\xff" * 32)
    _expect_invalid(tx, "bad_public_key")


def test_high_s_signature_is_refused():
    tx = transfer()
    s = int.from_bytes(tx.signature[32:], "big")
    twin = tx.signature[:32] + (crypto.CURVE_ORDER - s).to_bytes(32, "big")
    _expect_invalid(dataclasses.replace(tx, signature=twin), "high_s_signature")


def test_bad_signature_is_refused():
    tx = transfer()
    _expect_invalid(dataclasses.replace(tx, amount=tx.amount + 1), "bad_signature")
    other = KEYS[1].sign(crypto.DOMAIN_TX, tx.unsigned_bytes())
    _expect_invalid(dataclasses.replace(tx, signature=other), "bad_signature")


def test_signature_check_can_be_skipped_for_already_verified_transactions():
    tx = dataclasses.replace(transfer(), amount=11)
    tx.check_stateless(CHAIN, verify_signature=False)


def test_transaction_signed_for_a_vote_is_not_a_transaction():
    tx = transfer()
    vote_signature = KEYS[0].sign(crypto.DOMAIN_VOTE, tx.unsigned_bytes())
    _expect_invalid(dataclasses.replace(tx, signature=vote_signature), "bad_signature")


# --- blocks --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(header=headers())
def test_header_round_trip_is_byte_identical(header):
    data = header.encode()
    decoded = BlockHeader.decode(data)
    assert decoded == header
    assert decoded.encode() == data
    assert decoded.hash == header.hash == hashlib.sha256(data).digest()


@settings(max_examples=60, deadline=None)
@given(block=blocks())
def test_block_round_trip_is_byte_identical(block):
    data = block.encode()
    decoded = Block.decode(data, max_transactions=10)
    assert decoded == block
    rebuilt_block = Block(decoded.header, tuple(rebuilt(tx) for tx in decoded.transactions))
    assert rebuilt_block.encode() == data
    assert decoded.hash == block.hash


def test_header_layout_and_seal_position():
    header = BlockHeader(
        chain_id=CHAIN, height=5, parent=b"\x11" * 32, timestamp=1_700_000_000_000, tx_root=b"\x22" * 32,
        tx_count=3, proposer=b"\x33" * 20, extra=b"ex", seal=b"seal",
    )
    unsealed = (
        BLOCK_VERSION.to_bytes(4, "big")
        + len(CHAIN).to_bytes(4, "big") + CHAIN.encode()
        + (5).to_bytes(8, "big")
        + b"\x11" * 32
        + (1_700_000_000_000).to_bytes(8, "big")
        + b"\x22" * 32
        + (3).to_bytes(4, "big")
        + b"\x33" * 20
        + (2).to_bytes(4, "big") + b"ex"
    )
    assert header.unsealed_bytes() == unsealed
    assert header.encode() == unsealed + (4).to_bytes(4, "big") + b"seal"
    assert header.sealing_digest() == crypto.signing_digest(crypto.DOMAIN_BLOCK, unsealed)


def test_seal_changes_the_hash_but_not_the_sealing_digest():
    header = BlockHeader(CHAIN, 1, ZERO_HASH, 0, EMPTY_ROOT, 0, bytes(20))
    sealed = header.with_seal(b"proof")
    assert sealed.seal == b"proof"
    assert sealed.sealing_digest() == header.sealing_digest()
    assert sealed.hash != header.hash
    assert dataclasses.replace(header, extra=b"x").sealing_digest() != header.sealing_digest()


def test_replaced_header_never_carries_a_stale_hash():
    # A miner or proposer builds variants of a template with dataclasses.replace.
    header = BlockHeader(CHAIN, 1, ZERO_HASH, 0, EMPTY_ROOT, 0, bytes(20))
    template_hash = header.hash
    for change in ({"seal": b"nonce"}, {"timestamp": 5}, {"extra": b"x"}):
        variant = dataclasses.replace(header, **change)
        assert variant.hash == hashlib.sha256(variant.encode()).digest() != template_hash


def test_replaced_transaction_never_carries_a_stale_id():
    tx = transfer()
    original_id = tx.id
    variant = dataclasses.replace(tx, fee=tx.fee + 1)
    assert variant.id == hashlib.sha256(variant.unsigned_bytes() + variant.signature).digest() != original_id


def _valid_block(count: int = 3) -> Block:
    transactions = [transfer(nonce=i) for i in range(count)]
    parent = BlockHeader(CHAIN, 0, ZERO_HASH, 0, EMPTY_ROOT, 0, bytes(20))
    header = build_header(CHAIN, parent, 1_000, transactions, proposer=b"\x44" * 20)
    return Block(header, tuple(transactions))


def test_build_header_links_to_the_parent():
    block = _valid_block()
    assert block.height == 1
    assert block.header.tx_count == 3
    assert block.header.tx_root == merkle_root([tx.id for tx in block.transactions])
    block.check_structure(CHAIN, max_transactions=10)


def _expect_invalid_block(block: Block, reason: str, max_transactions: int = 10) -> None:
    with pytest.raises(InvalidBlock) as caught:
        block.check_structure(CHAIN, max_transactions)
    assert caught.value.reason == reason


def test_bad_merkle_root_is_caught():
    block = _valid_block()
    header = dataclasses.replace(block.header, tx_root=b"\x00" * 32)
    _expect_invalid_block(Block(header, block.transactions), "bad_merkle_root")
    # Same transactions in another order: another root.
    _expect_invalid_block(Block(block.header, block.transactions[::-1]), "bad_merkle_root")


def test_duplicate_transaction_is_caught_even_with_a_matching_root():
    tx = transfer()
    transactions = [tx, tx]
    header = dataclasses.replace(
        _valid_block().header, tx_root=merkle_root([t.id for t in transactions]), tx_count=2
    )
    _expect_invalid_block(Block(header, tuple(transactions)), "duplicate_transaction")


def test_wrong_tx_count_is_caught():
    block = _valid_block()
    header = dataclasses.replace(block.header, tx_count=2)
    _expect_invalid_block(Block(header, block.transactions), "bad_tx_count")


def test_wrong_chain_is_caught():
    block = _valid_block()
    header = dataclasses.replace(block.header, chain_id="other")
    _expect_invalid_block(Block(header, block.transactions), "wrong_chain")


def test_too_many_transactions_is_caught():
    _expect_invalid_block(_valid_block(3), "too_many_transactions", max_transactions=2)


def test_block_decode_refuses_every_truncation():
    data = _valid_block().encode()
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            Block.decode(data[:length], max_transactions=10)


def test_block_decode_refuses_trailing_bytes():
    data = _valid_block().encode()
    with pytest.raises(DecodeError):
        Block.decode(data + b"\x00", max_transactions=10)


def test_the_header_of_an_encoded_block_decodes_alone_and_must_fill_its_length():
    block = _valid_block(3)
    data = block.encode()
    assert Block.decode_header(data) == block.header
    header = block.header.encode()
    padded = Writer().var_bytes(header + b"\x00").bytes() + data[4 + len(header):]
    for decode in (Block.decode_header, lambda raw: Block.decode(raw, max_transactions=10)):
        with pytest.raises(DecodeError):  # a header with bytes after it inside its length: not canonical
            decode(padded)
        with pytest.raises(DecodeError):
            decode(data[: 4 + len(header) - 1])


def test_block_decode_refuses_more_transactions_than_allowed():
    with pytest.raises(DecodeError) as caught:
        Block.decode(_valid_block(3).encode(), max_transactions=2)
    assert caught.value.field == "header.tx_count"


def test_block_decode_refuses_unknown_version():
    header = dataclasses.replace(_valid_block(0).header, version=BLOCK_VERSION + 1)
    with pytest.raises(DecodeError) as caught:
        Block.decode(Block(header).encode(), max_transactions=10)
    assert caught.value.field == "header.version"


def test_block_decode_refuses_oversized_parts():
    with pytest.raises(DecodeError):
        Block.decode(Writer().u32(MAX_HEADER_SIZE + 1).bytes() + bytes(100), max_transactions=10)
    block = _valid_block(1)
    too_big_tx = Writer().var_bytes(block.header.encode()).u32(MAX_TX_SIZE + 1).bytes() + bytes(MAX_TX_SIZE + 1)
    with pytest.raises(DecodeError):
        Block.decode(too_big_tx, max_transactions=10)
    header = dataclasses.replace(block.header, extra=bytes(MAX_EXTRA + 1))
    with pytest.raises(DecodeError):
        BlockHeader.decode(header.encode())
    header = dataclasses.replace(block.header, seal=bytes(MAX_SEAL + 1))
    with pytest.raises(DecodeError):
        BlockHeader.decode(header.encode())


def test_header_decode_refuses_heights_beyond_the_amount_limit():
    header = dataclasses.replace(_valid_block(0).header, height=MAX_AMOUNT + 1)
    with pytest.raises(DecodeError) as caught:
        BlockHeader.decode(header.encode())
    assert caught.value.field == "header.height"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_blocks_raise_only_decode_error(data):
    encoded = _MUTATION_BASE
    count = data.draw(st.integers(min_value=1, max_value=4))
    mutated = bytearray(encoded)
    for _ in range(count):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    try:
        block = Block.decode(bytes(mutated), max_transactions=10)
    except DecodeError:
        return
    assert Block(block.header, tuple(rebuilt(tx) for tx in block.transactions)).encode() == bytes(mutated)


_MUTATION_BASE = _valid_block(2).encode()


# --- Merkle root ----------------------------------------------------------------------------


def _leaf(value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + value).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


A, B, C, D, E = (hashlib.sha256(bytes([i])).digest() for i in range(5))


def test_merkle_empty_and_single():
    assert merkle_root([]) == hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert merkle_root([A]) == _leaf(A)


def test_merkle_hand_computed_cases():
    assert merkle_root([A, B]) == _node(_leaf(A), _leaf(B))
    # Odd node promoted, not duplicated.
    assert merkle_root([A, B, C]) == _node(_node(_leaf(A), _leaf(B)), _leaf(C))
    assert merkle_root([A, B, C, D]) == _node(_node(_leaf(A), _leaf(B)), _node(_leaf(C), _leaf(D)))
    assert merkle_root([A, B, C, D, E]) == _node(
        _node(_node(_leaf(A), _leaf(B)), _node(_leaf(C), _leaf(D))), _leaf(E)
    )


def test_merkle_duplicated_last_leaf_is_a_different_tree():
    assert merkle_root([A, B, C]) != merkle_root([A, B, C, C])
    assert merkle_root([A, B]) != merkle_root([A, B, B])


def test_merkle_inner_node_cannot_pass_for_a_leaf():
    inner = _leaf(A) + _leaf(B)
    assert merkle_root([A, B]) != merkle_root([inner])


def test_merkle_order_matters():
    assert merkle_root([A, B]) != merkle_root([B, A])


@settings(max_examples=200)
@given(first=st.lists(hashes, max_size=9), second=st.lists(hashes, max_size=9))
def test_merkle_distinct_lists_have_distinct_roots(first, second):
    assume(first != second)
    assert merkle_root(first) != merkle_root(second)

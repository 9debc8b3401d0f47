"""BFT consensus messages: canonical encodings that round-trip byte for byte, decoders that
refuse every malformed input with DecodeError (never another exception), signatures
bound to their domain and chain, certificates and evidence, and the vectors that
docs/protocol.md shows ("Consensus messages"), checked against the code and, for the
signatures, against the independent pure-Python `ecdsa` package."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from pathlib import Path

import ecdsa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.bft_evidence import Evidence, EvidenceType, InvalidEvidence, verify_evidence
from consensus.bft_messages import (
    MAX_ROUND,
    Certificate,
    Decision,
    MessageType,
    Proposal,
    SignedProposal,
    Status,
    Vote,
    VoteType,
    decode_message,
    encode_message,
)
from consensus.validators import MAX_VALIDATORS, validator_set_of
from ledger import crypto
from ledger.address import address_of
from ledger.block import ZERO_HASH, Block, BlockHeader, build_header
from ledger.codec import MAX_AMOUNT, DecodeError
from ledger.merkle import EMPTY_ROOT

PROTOCOL_FILE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
KEY_ONE = crypto.PrivateKey(bytes([1]) * 32)  # docs/protocol.md's key_one
DOC_CHAIN = "ledger-dev"
KEYS = [crypto.PrivateKey(hashlib.sha256(f"messages-{i}".encode()).digest()) for i in range(4)]
VALIDATORS = validator_set_of([(k.public_key, 1) for k in KEYS])
MAX_TX = 10

GENESIS = BlockHeader("msg-test", 0, ZERO_HASH, 1_700_000_000_000, EMPTY_ROOT, 0, bytes(20), extra=b"g")


def sealed_block(key: crypto.PrivateKey, timestamp: int = 1_700_000_000_001) -> Block:
    header = build_header("msg-test", GENESIS, timestamp, [], address_of(key.public_key))
    return Block(header.with_seal(key.sign_digest(header.sealing_digest())), ())


hashes = st.binary(min_size=32, max_size=32)
addresses = st.binary(min_size=20, max_size=20)
signatures = st.binary(min_size=64, max_size=64)
heights = st.integers(0, MAX_AMOUNT)
rounds = st.integers(0, MAX_ROUND)
votes = st.builds(Vote, st.sampled_from(list(VoteType)), heights, rounds, st.one_of(st.none(), hashes), addresses,
                  signatures)
signed_proposals = st.builds(SignedProposal, heights, rounds.filter(lambda r: r > 0),
                             st.integers(-1, 0), hashes, addresses, signatures)
certificates = st.builds(
    lambda height, round, block_hash, entries: Certificate(height, round, block_hash, tuple(sorted(dict(entries).items()))),
    heights, rounds, hashes, st.lists(st.tuples(addresses, signatures), min_size=1, max_size=5),
)
BLOCK = sealed_block(KEYS[0])
proposals = st.builds(
    lambda round, pol_votes: Proposal(
        SignedProposal(1, round, -1, BLOCK.hash, address_of(KEYS[0].public_key), bytes(64)), BLOCK, tuple(pol_votes)),
    rounds, st.lists(votes, max_size=3),
)
messages = st.one_of(
    votes,
    proposals,
    st.builds(Status, heights, rounds, st.booleans()),
    st.builds(lambda: Decision(Certificate(1, 0, BLOCK.hash, ((bytes(20), bytes(64)),)), BLOCK)),
    st.builds(lambda: Decision(Certificate(1, 0, BLOCK.hash, ((bytes(20), bytes(64)),)), None)),
)


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=200)
@given(messages)
def test_every_message_round_trips(message):
    encoded = encode_message(message)
    assert decode_message(encoded, MAX_TX) == message
    assert encode_message(decode_message(encoded, MAX_TX)) == encoded


@settings(max_examples=100)
@given(messages)
def test_every_truncation_and_every_extension_is_refused(message):
    encoded = encode_message(message)
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            decode_message(encoded[:cut], MAX_TX)
    with pytest.raises(DecodeError):
        decode_message(encoded + b"\x00", MAX_TX)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_decode_canonically_or_raise_decode_error(data):
    try:
        message = decode_message(data, MAX_TX)
    except DecodeError:
        return
    assert encode_message(message) == data


@settings(max_examples=200)
@given(messages, st.data())
def test_a_flipped_byte_decodes_canonically_or_raises_decode_error(message, data):
    encoded = bytearray(encode_message(message))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_message(bytes(encoded), MAX_TX)
    except DecodeError:
        return
    assert encode_message(decoded) == bytes(encoded)


@settings(max_examples=100)
@given(certificates)
def test_certificates_round_trip(certificate):
    assert Certificate.decode(certificate.encode()) == certificate


@settings(max_examples=100)
@given(votes, votes)
def test_evidence_round_trips_in_one_canonical_order(a, b):
    if a.encode() == b.encode():
        return
    evidence = Evidence.of(a, b)
    assert Evidence.of(b, a) == evidence
    assert Evidence.decode(evidence.encode()) == evidence


# ----------------------------------------------------------------------------- refusals


def test_unknown_types_flags_and_kinds_are_refused():
    vote = encode_message(Vote.sign(KEYS[0], DOC_CHAIN, VoteType.PREVOTE, 1, 0, None))
    for bad, field in (
        (b"\x09" + vote[1:], "message.type"),
        (vote[:1] + b"\x03" + vote[2:], "vote.kind"),
        (vote[:14] + b"\x02" + vote[15:], "vote.block_hash"),  # presence flag 2
        (encode_message(Status(1, 0, False))[:-1] + b"\x02", "status.wants_last_commit"),
        (b"", "message.type"),
    ):
        with pytest.raises(DecodeError, match=re.escape(field)):
            decode_message(bad, MAX_TX)


def test_certificate_signers_must_be_distinct_and_ordered():
    entries = sorted((address_of(k.public_key), bytes(64)) for k in KEYS[:2])
    good = Certificate(1, 0, bytes(32), tuple(entries)).encode()
    swapped = good[:48] + good[48 + 84:48 + 168] + good[48:48 + 84]
    with pytest.raises(DecodeError, match="order"):
        Certificate.decode(swapped)
    repeated = good[:48] + good[48:48 + 84] * 2
    with pytest.raises(DecodeError, match="order"):
        Certificate.decode(repeated)
    with pytest.raises(DecodeError):
        Certificate.decode(good[:44] + struct.pack(">I", 0))  # no signature at all
    with pytest.raises(DecodeError, match="signatures"):
        Certificate.decode(good[:44] + struct.pack(">I", MAX_VALIDATORS + 1))  # refused before reading
    with pytest.raises(ValueError):
        Certificate(1, 0, bytes(32), tuple(reversed(entries)))


def test_a_proposal_whose_block_is_not_the_signed_one_is_refused():
    other = sealed_block(KEYS[0], timestamp=1_700_000_000_005)
    signed = SignedProposal.sign(KEYS[0], "msg-test", 1, 0, -1, BLOCK.hash)
    with pytest.raises(DecodeError, match="proposal.block"):
        decode_message(encode_message(Proposal(signed, other)), MAX_TX)
    certificate = Certificate(1, 0, BLOCK.hash, ((bytes(20), bytes(64)),))
    with pytest.raises(DecodeError, match="decision.block"):
        decode_message(encode_message(Decision(certificate, other)), MAX_TX)


def test_a_proposal_block_over_the_transaction_limit_is_refused():
    signed = SignedProposal.sign(KEYS[0], "msg-test", 1, 0, -1, BLOCK.hash)
    header = dataclasses.replace(BLOCK.header, tx_count=MAX_TX + 1)
    encoded = encode_message(Proposal(signed, Block(header, ())))
    with pytest.raises(DecodeError, match="tx_count"):
        decode_message(encoded, MAX_TX)


def test_constructors_refuse_what_a_decoder_would_refuse():
    with pytest.raises(ValueError):
        Vote(VoteType.PREVOTE, -1, 0, None, bytes(20), bytes(64))
    with pytest.raises(ValueError):
        Vote(VoteType.PREVOTE, 1, MAX_ROUND + 1, None, bytes(20), bytes(64))
    with pytest.raises(ValueError):
        Vote(VoteType.PREVOTE, 1, 0, b"short", bytes(20), bytes(64))
    with pytest.raises(ValueError):
        Vote(3, 1, 0, None, bytes(20), bytes(64))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SignedProposal(1, 0, -2, bytes(32), bytes(20), bytes(64))
    with pytest.raises(ValueError):
        Status(1, -1)


# ----------------------------------------------------------------------------- signatures


def test_a_vote_signature_binds_chain_type_height_round_value_and_signer():
    vote = Vote.sign(KEYS[0], "chain-a", VoteType.PREVOTE, 5, 2, b"\x11" * 32)
    public = KEYS[0].public_key
    assert vote.verify("chain-a", public)
    assert not vote.verify("chain-b", public)
    for change in (
        {"kind": VoteType.PRECOMMIT}, {"height": 6}, {"round": 3}, {"block_hash": None},
        {"block_hash": b"\x12" * 32}, {"validator": address_of(KEYS[1].public_key)},
    ):
        assert not dataclasses.replace(vote, **change).verify("chain-a", public)
    assert not vote.verify("chain-a", KEYS[1].public_key)
    # The same bytes signed as a proposal never pass as a vote, nor the other way.
    proposal_signature = KEYS[0].sign(crypto.DOMAIN_PROPOSAL, vote.payload("chain-a"))
    assert not dataclasses.replace(vote, signature=proposal_signature).verify("chain-a", public)


def test_a_proposal_signature_binds_its_pol_round():
    signed = SignedProposal.sign(KEYS[0], "chain-a", 3, 2, 1, b"\x22" * 32)
    assert signed.verify("chain-a", KEYS[0].public_key)
    assert not dataclasses.replace(signed, pol_round=-1).verify("chain-a", KEYS[0].public_key)
    assert not dataclasses.replace(signed, pol_round=0).verify("chain-a", KEYS[0].public_key)
    assert not signed.verify("chain-b", KEYS[0].public_key)


def test_evidence_verification():
    a = Vote.sign(KEYS[1], "msg-test", VoteType.PRECOMMIT, 4, 1, b"\x01" * 32)
    b = Vote.sign(KEYS[1], "msg-test", VoteType.PRECOMMIT, 4, 1, None)
    evidence = verify_evidence(Evidence.of(a, b).encode(), VALIDATORS, "msg-test")
    assert evidence.kind == EvidenceType.DUPLICATE_VOTE and evidence.validator == address_of(KEYS[1].public_key)
    assert evidence.to_json()["vote_type"] == "precommit"
    refusals = {
        "same value": Evidence.of(a, dataclasses.replace(a, signature=bytes(64))),
        "other round": Evidence.of(a, Vote.sign(KEYS[1], "msg-test", VoteType.PRECOMMIT, 4, 2, None)),
        "other type": Evidence.of(a, Vote.sign(KEYS[1], "msg-test", VoteType.PREVOTE, 4, 1, None)),
        "other validator": Evidence.of(a, Vote.sign(KEYS[2], "msg-test", VoteType.PRECOMMIT, 4, 1, None)),
        "forged": Evidence.of(a, dataclasses.replace(b, signature=KEYS[2].sign(crypto.DOMAIN_VOTE, b.payload("msg-test")))),
    }
    for name, bad in refusals.items():
        with pytest.raises(InvalidEvidence):
            verify_evidence(bad, VALIDATORS, "msg-test")
            pytest.fail(name)
    with pytest.raises(InvalidEvidence):
        verify_evidence(Evidence.of(a, b), VALIDATORS, "another-chain")
    outsider = crypto.PrivateKey(bytes([9]) * 32)
    strangers = Evidence.of(Vote.sign(outsider, "msg-test", VoteType.PREVOTE, 1, 0, None),
                            Vote.sign(outsider, "msg-test", VoteType.PREVOTE, 1, 0, b"\x03" * 32))
    with pytest.raises(InvalidEvidence, match="not a validator"):
        verify_evidence(strangers, VALIDATORS, "msg-test")
    p1 = SignedProposal.sign(KEYS[3], "msg-test", 2, 0, -1, b"\x04" * 32)
    p2 = SignedProposal.sign(KEYS[3], "msg-test", 2, 0, -1, b"\x05" * 32)
    assert verify_evidence(Evidence.of(p1, p2), VALIDATORS, "msg-test").kind == EvidenceType.DUPLICATE_PROPOSAL
    with pytest.raises(DecodeError, match="byte order"):
        evidence_bytes = Evidence.of(a, b).encode()
        first_len = struct.unpack(">I", evidence_bytes[1:5])[0]
        first = evidence_bytes[1:5 + first_len]
        Evidence.decode(evidence_bytes[:1] + evidence_bytes[5 + first_len:] + first)


# ----------------------------------------------------------------------------- documented vectors


def documented_vectors() -> dict[str, str]:
    prevote = Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PREVOTE, 1, 0, b"\xaa" * 32)
    precommit_nil = Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PRECOMMIT, 2, 3, None)
    proposal = SignedProposal.sign(KEY_ONE, DOC_CHAIN, 1, 0, -1, b"\xbb" * 32)
    certificate = Certificate.from_votes([Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PRECOMMIT, 1, 0, b"\xaa" * 32)])
    return {
        "prevote payload": prevote.payload(DOC_CHAIN).hex(),
        "prevote digest": crypto.signing_digest(crypto.DOMAIN_VOTE, prevote.payload(DOC_CHAIN)).hex(),
        "prevote message": encode_message(prevote).hex(),
        "nil precommit message": encode_message(precommit_nil).hex(),
        "proposal payload": proposal.payload(DOC_CHAIN).hex(),
        "proposal digest": crypto.signing_digest(crypto.DOMAIN_PROPOSAL, proposal.payload(DOC_CHAIN)).hex(),
        "signed proposal": proposal.encode().hex(),
        "certificate": certificate.encode().hex(),
        "status": encode_message(Status(5, 2, True)).hex(),
    }


def test_protocol_document_shows_the_consensus_vectors_and_types():
    text = PROTOCOL_FILE.read_text(encoding="utf-8")
    assert "## Consensus messages" in text
    section = text[text.index("## Consensus messages"):]
    joined = "".join(section.split())
    missing = [name for name, value in documented_vectors().items() if value not in joined]
    assert not missing, f"docs/protocol.md lacks these consensus vectors: {missing}"
    for name, code in MessageType.__members__.items():
        assert re.search(rf"\|\s*{code.value}\s*\|\s*`{name}`", section), name
    assert str(MAX_VALIDATORS) in section


def test_layouts_are_the_documented_ones():
    address = address_of(KEY_ONE.public_key)
    prevote = Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PREVOTE, 1, 0, b"\xaa" * 32)
    assert prevote.payload(DOC_CHAIN) == (
        b"\x01" + struct.pack(">I", len(DOC_CHAIN)) + DOC_CHAIN.encode() + struct.pack(">QI", 1, 0)
        + b"\x01" + b"\xaa" * 32 + address
    )
    assert encode_message(prevote) == (
        b"\x02" + b"\x01" + struct.pack(">QI", 1, 0) + b"\x01" + b"\xaa" * 32 + address + prevote.signature
    )
    nil = Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PRECOMMIT, 2, 3, None)
    assert encode_message(nil) == b"\x02\x02" + struct.pack(">QI", 2, 3) + b"\x00" + address + nil.signature
    proposal = SignedProposal.sign(KEY_ONE, DOC_CHAIN, 7, 4, 2, b"\xbb" * 32)
    assert proposal.payload(DOC_CHAIN) == (
        struct.pack(">I", len(DOC_CHAIN)) + DOC_CHAIN.encode() + struct.pack(">QI", 7, 4) + b"\x01"
        + struct.pack(">I", 2) + b"\xbb" * 32 + address
    )
    assert encode_message(Status(5, 2, True)) == b"\x04" + struct.pack(">QI", 5, 2) + b"\x01"


def test_vote_signatures_verify_with_an_independent_ecdsa_implementation():
    prevote = Vote.sign(KEY_ONE, DOC_CHAIN, VoteType.PREVOTE, 1, 0, b"\xaa" * 32)
    digest = crypto.signing_digest(crypto.DOMAIN_VOTE, prevote.payload(DOC_CHAIN))
    verifying_key = ecdsa.VerifyingKey.from_string(KEY_ONE.public_key, curve=ecdsa.SECP256k1)
    assert verifying_key.verify_digest(prevote.signature, digest, sigdecode=ecdsa.util.sigdecode_string)
    proposal = SignedProposal.sign(KEY_ONE, DOC_CHAIN, 1, 0, -1, b"\xbb" * 32)
    digest = crypto.signing_digest(crypto.DOMAIN_PROPOSAL, proposal.payload(DOC_CHAIN))
    assert verifying_key.verify_digest(proposal.signature, digest, sigdecode=ecdsa.util.sigdecode_string)


def test_a_proposal_or_decision_for_a_known_block_takes_it_instead_of_decoding_the_copy():
    signed = SignedProposal.sign(KEYS[0], "msg-test", 1, 0, -1, BLOCK.hash)
    proposal = encode_message(Proposal(signed, BLOCK))
    decision = encode_message(Decision(Certificate(1, 0, BLOCK.hash, ((address_of(KEYS[1].public_key), bytes(64)),)), BLOCK))
    asked = []

    def known(block_hash):
        asked.append(block_hash)
        return BLOCK if block_hash == BLOCK.hash else None

    for data in (proposal, decision):
        # The copy inside is replaced by bytes that would not decode: the known block is used.
        body = BLOCK.encode()
        tampered = data.replace(body, bytes(len(body)))
        assert tampered != data
        assert decode_message(tampered, 10, known).block is BLOCK
        with pytest.raises(DecodeError):
            decode_message(tampered, 10)  # not known: the copy is decoded, and refused
        assert decode_message(data, 10, lambda block_hash: None).block == BLOCK
    assert asked == [BLOCK.hash, BLOCK.hash]

"""Proof-of-stake wire format: the layouts docs/protocol.md describes, byte for byte, and
the vectors it shows ("Proof-of-stake vectors"), recomputed here; the signatures also
verify with an independent ECDSA implementation (python-ecdsa)."""

from __future__ import annotations

import struct
from pathlib import Path

import ecdsa

from consensus.pos.messages import (
    DOMAIN_ATTESTATION,
    DOMAIN_POS_BLOCK,
    DOMAIN_RANDAO,
    Attestation,
    Checkpoint,
    PosExtra,
    ProposerSlashing,
    SealedDigest,
    encode_message,
    randao_payload,
)
from ledger import crypto
from ledger.codec import Writer

PROTOCOL_FILE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
KEY_ONE = crypto.PrivateKey(bytes([1]) * 32)  # docs/protocol.md's key_one
CHAIN = "ledger-dev"
SOURCE, TARGET = Checkpoint(1, b"\xbb" * 32), Checkpoint(2, b"\xcc" * 32)


def attestation() -> Attestation:
    return Attestation(0, 9, b"\xaa" * 32, SOURCE, TARGET).signed(KEY_ONE, CHAIN)


def sealed(digest: bytes) -> SealedDigest:
    payload = Writer().text(CHAIN).u64(5).fixed(digest, 32).bytes()
    return SealedDigest(5, digest, KEY_ONE.sign(DOMAIN_POS_BLOCK, payload))


def documented_vectors() -> dict[str, str]:
    att = attestation()
    reveal = KEY_ONE.sign(DOMAIN_RANDAO, randao_payload(CHAIN, 3))
    slashing = ProposerSlashing(0, sealed(b"\xdd" * 32), sealed(b"\xee" * 32))
    return {
        "attestation payload": att.signing_payload(CHAIN).hex(),
        "attestation digest": crypto.signing_digest(DOMAIN_ATTESTATION, att.signing_payload(CHAIN)).hex(),
        "attestation message": encode_message(att).hex(),
        "reveal": reveal.hex(),
        "proposer slashing message": encode_message(slashing).hex(),
        "extra": PosExtra(reveal, (att,)).encode().hex(),
    }


def test_protocol_document_shows_the_proof_of_stake_vectors():
    text = PROTOCOL_FILE.read_text(encoding="utf-8")
    section = text[text.index("### Proof-of-stake vectors"):text.index("## State files")]
    joined = "".join(section.split())
    missing = [name for name, value in documented_vectors().items() if value not in joined]
    assert not missing, f"docs/protocol.md lacks these proof-of-stake vectors: {missing}"


def test_layouts_are_the_documented_ones():
    att = attestation()
    checkpoints = struct.pack(">Q", 1) + b"\xbb" * 32 + struct.pack(">Q", 2) + b"\xcc" * 32
    body = struct.pack(">IQ", 0, 9) + b"\xaa" * 32 + checkpoints
    assert att.signing_payload(CHAIN) == struct.pack(">I", len(CHAIN)) + CHAIN.encode() + body
    assert encode_message(att) == b"\x01" + body + att.signature
    assert randao_payload(CHAIN, 3) == struct.pack(">I", len(CHAIN)) + CHAIN.encode() + struct.pack(">Q", 3)
    first, second = sealed(b"\xdd" * 32), sealed(b"\xee" * 32)
    assert encode_message(ProposerSlashing(0, first, second)) == (
        b"\x02" + struct.pack(">I", 0) + struct.pack(">Q", 5) + b"\xdd" * 32 + first.signature
        + struct.pack(">Q", 5) + b"\xee" * 32 + second.signature)
    reveal = b"\x11" * 64
    assert PosExtra(reveal, (att,)).encode() == (
        b"\x01" + reveal + struct.pack(">I", 1) + encode_message(att)[1:] + struct.pack(">IIII", 0, 0, 0, 0))


def test_signatures_verify_with_an_independent_ecdsa_implementation():
    verifying_key = ecdsa.VerifyingKey.from_string(KEY_ONE.public_key, curve=ecdsa.SECP256k1)
    att = attestation()
    for domain, payload, signature in [
        (DOMAIN_ATTESTATION, att.signing_payload(CHAIN), att.signature),
        (DOMAIN_RANDAO, randao_payload(CHAIN, 3), KEY_ONE.sign(DOMAIN_RANDAO, randao_payload(CHAIN, 3))),
        (DOMAIN_POS_BLOCK, Writer().text(CHAIN).u64(5).fixed(b"\xdd" * 32, 32).bytes(), sealed(b"\xdd" * 32).signature),
    ]:
        digest = crypto.signing_digest(domain, payload)
        assert verifying_key.verify_digest(signature, digest, sigdecode=ecdsa.util.sigdecode_string)
    assert sealed(b"\xdd" * 32).valid_for(KEY_ONE.public_key, CHAIN)
    assert att.signature_valid(KEY_ONE.public_key, CHAIN)

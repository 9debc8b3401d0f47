"""Signatures on secp256k1, cross-checked against the independent pure-Python `ecdsa`.

libsecp256k1 (through coincurve) and `ecdsa` share no code, so agreement in both
directions, and byte-for-byte agreement of the deterministic nonce, means our
wrapper feeds the library the right bytes and reads back the right ones.
"""

from __future__ import annotations

import hashlib

import ecdsa
import pytest
from ecdsa.util import sigdecode_string, sigencode_string
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.crypto import CURVE_ORDER, PrivateKey

# The pure-Python side is slow (hundreds of operations a second): keep examples few.
CROSS_CHECK = settings(max_examples=40, deadline=None)

secrets = st.integers(min_value=1, max_value=CURVE_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=300)
ALL_DOMAINS = [
    crypto.DOMAIN_TX, crypto.DOMAIN_BLOCK, crypto.DOMAIN_HANDSHAKE, crypto.DOMAIN_VOTE, crypto.DOMAIN_PROPOSAL,
]


def ecdsa_signing_key(secret: bytes) -> ecdsa.SigningKey:
    return ecdsa.SigningKey.from_string(secret, curve=ecdsa.SECP256k1)


def ecdsa_verifying_key(public_key: bytes) -> ecdsa.VerifyingKey:
    return ecdsa.VerifyingKey.from_string(public_key, curve=ecdsa.SECP256k1)


def normalize_low_s(signature: bytes) -> bytes:
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if s > CURVE_ORDER // 2:
        s = CURVE_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def to_high_s(signature: bytes) -> bytes:
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (CURVE_ORDER - s).to_bytes(32, "big")


# --- agreement with ecdsa ---------------------------------------------------------------


@CROSS_CHECK
@given(secret=secrets, digest=digests)
def test_our_signature_verifies_under_ecdsa(secret, digest):
    key = PrivateKey(secret)
    signature = key.sign_digest(digest)
    assert len(signature) == 64
    assert crypto.is_low_s(signature)
    verifying_key = ecdsa_verifying_key(key.public_key)
    assert verifying_key.verify_digest(signature, digest, sigdecode=sigdecode_string)


@CROSS_CHECK
@given(secret=secrets, digest=digests)
def test_ecdsa_signature_verifies_under_ours(secret, digest):
    signing_key = ecdsa_signing_key(secret)
    raw = signing_key.sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=sigencode_string)
    signature = normalize_low_s(raw)
    public_key = signing_key.get_verifying_key().to_string("compressed")
    assert crypto.verify_digest(public_key, digest, signature)


@CROSS_CHECK
@given(secret=secrets, digest=digests)
def test_signature_is_rfc6979_deterministic_and_matches_ecdsa(secret, digest):
    ours = PrivateKey(secret).sign_digest(digest)
    assert PrivateKey(secret).sign_digest(digest) == ours
    theirs = ecdsa_signing_key(secret).sign_digest_deterministic(
        digest, hashfunc=hashlib.sha256, sigencode=sigencode_string
    )
    assert ours == normalize_low_s(theirs)


@CROSS_CHECK
@given(secret=secrets)
def test_public_key_matches_ecdsa(secret):
    expected = ecdsa_signing_key(secret).get_verifying_key().to_string("compressed")
    assert PrivateKey(secret).public_key == expected
    assert crypto.is_valid_public_key(expected)


# --- malleability and domain separation -------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(secret=secrets, payload=payloads)
def test_high_s_twin_is_rejected_though_mathematically_valid(secret, payload):
    key = PrivateKey(secret)
    signature = key.sign(crypto.DOMAIN_TX, payload)
    twin = to_high_s(signature)
    assert not crypto.is_low_s(twin)
    assert not crypto.verify(key.public_key, crypto.DOMAIN_TX, payload, twin)
    assert crypto.verify(key.public_key, crypto.DOMAIN_TX, payload, signature)


def test_high_s_twin_is_accepted_by_plain_ecdsa():
    """The twin is a real ECDSA signature: only the low-S rule refuses it."""
    key = PrivateKey(bytes([7]) * 32)
    digest = crypto.signing_digest(crypto.DOMAIN_TX, b"payload")
    twin = to_high_s(key.sign_digest(digest))
    assert ecdsa_verifying_key(key.public_key).verify_digest(twin, digest, sigdecode=sigdecode_string)
    assert not crypto.verify_digest(key.public_key, digest, twin)


@settings(max_examples=50, deadline=None)
@given(secret=secrets, payload=payloads, data=st.data())
def test_signature_under_one_domain_fails_under_every_other(secret, payload, data):
    signed_domain = data.draw(st.sampled_from(ALL_DOMAINS))
    key = PrivateKey(secret)
    signature = key.sign(signed_domain, payload)
    assert crypto.verify(key.public_key, signed_domain, payload, signature)
    for other in ALL_DOMAINS:
        if other != signed_domain:
            assert not crypto.verify(key.public_key, other, payload, signature)


def test_domain_tags_are_distinct():
    assert len(set(ALL_DOMAINS)) == len(ALL_DOMAINS)


def test_signing_digest_layout():
    tag = crypto.DOMAIN_VOTE
    payload = b"\x00\x01payload"
    expected = hashlib.sha256(bytes([len(tag)]) + tag + payload).digest()
    assert crypto.signing_digest(tag, payload) == expected


def test_length_prefix_keeps_tag_and_payload_apart():
    # Without the length byte, tag "ab" + payload "c" would hash like tag "a" + payload "bc".
    assert crypto.signing_digest(b"ab", b"c") != crypto.signing_digest(b"a", b"bc")


@settings(max_examples=50, deadline=None)
@given(first=secrets, second=secrets, payload=payloads)
def test_signature_fails_under_another_key(first, second, payload):
    if first == second:
        return
    signature = PrivateKey(first).sign(crypto.DOMAIN_TX, payload)
    assert not crypto.verify(PrivateKey(second).public_key, crypto.DOMAIN_TX, payload, signature)


@settings(max_examples=50, deadline=None)
@given(secret=secrets, payload=payloads, other=payloads)
def test_signature_fails_for_another_payload(secret, payload, other):
    if payload == other:
        return
    key = PrivateKey(secret)
    signature = key.sign(crypto.DOMAIN_TX, payload)
    assert not crypto.verify(key.public_key, crypto.DOMAIN_TX, other, signature)


# --- hostile inputs return False, never raise --------------------------------------------

KEY = PrivateKey(bytes([1]) * 32)
DIGEST = crypto.signing_digest(crypto.DOMAIN_TX, b"hostile")
GOOD_SIGNATURE = KEY.sign_digest(DIGEST)


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        GOOD_SIGNATURE[:63],
        GOOD_SIGNATURE + b"\x00",
        bytes(64),  # r = s = 0
        b"\xff" * 64,  # r and s above the curve order
        CURVE_ORDER.to_bytes(32, "big") + GOOD_SIGNATURE[32:],  # r == n
        GOOD_SIGNATURE[:32] + CURVE_ORDER.to_bytes(32, "big"),  # s == n
        GOOD_SIGNATURE[:32] + bytes(32),  # s = 0
    ],
    ids=["empty", "short", "long", "zeros", "overflow", "r_is_n", "s_is_n", "s_zero"],
)
def test_garbage_signatures_return_false(signature):
    assert crypto.verify_digest(KEY.public_key, DIGEST, signature) is False
    assert crypto.verify(KEY.public_key, crypto.DOMAIN_TX, b"hostile", signature) is False


FIELD_PRIME = 2**256 - 2**32 - 977


def _not_on_curve_key() -> bytes:
    """A compressed key whose x has no point: x^3 + 7 is not a square modulo p (Euler's criterion)."""
    x = next(x for x in range(1, 100) if pow(x**3 + 7, (FIELD_PRIME - 1) // 2, FIELD_PRIME) != 1)
    return b"\x02" + x.to_bytes(32, "big")


@pytest.mark.parametrize(
    "public_key",
    [
        b"",
        KEY.public_key[:32],
        KEY.public_key + b"\x00",
        b"\x04" + KEY.public_key[1:],  # wrong prefix byte
        b"\x05" + KEY.public_key[1:],
        ecdsa.SigningKey.from_string(bytes([1]) * 32, curve=ecdsa.SECP256k1)
        .get_verifying_key()
        .to_string("uncompressed"),  # 65-byte uncompressed: not our format
        _not_on_curve_key(),
        b"\x02" + b"\xff" * 32,  # x above the field prime
        bytes(33),
    ],
    ids=["empty", "short", "long", "prefix4", "prefix5", "uncompressed", "not_on_curve", "x_overflow", "zeros"],
)
def test_invalid_public_keys_return_false(public_key):
    assert crypto.is_valid_public_key(public_key) is False
    assert crypto.verify_digest(public_key, DIGEST, GOOD_SIGNATURE) is False


@settings(max_examples=300, deadline=None)
@given(public_key=st.binary(max_size=70), digest=st.binary(max_size=40), signature=st.binary(max_size=70))
def test_random_bytes_never_raise(public_key, digest, signature):
    assert crypto.verify_digest(public_key, digest, signature) in (True, False)
    assert crypto.verify(public_key, crypto.DOMAIN_TX, digest, signature) in (True, False)
    assert crypto.is_valid_public_key(public_key) in (True, False)


def test_wrong_digest_length_returns_false():
    assert crypto.verify_digest(KEY.public_key, DIGEST[:31], GOOD_SIGNATURE) is False
    with pytest.raises(ValueError):
        KEY.sign_digest(DIGEST[:31])


# --- private keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [bytes(32), CURVE_ORDER.to_bytes(32, "big"), b"\xff" * 32, bytes(31), b"\x01" * 33],
    ids=["zero", "order", "max", "short", "long"],
)
def test_out_of_range_private_keys_are_refused(secret):
    with pytest.raises(crypto.InvalidKey):
        PrivateKey(secret)


def test_private_key_bounds_are_inclusive_of_valid_extremes():
    assert PrivateKey((1).to_bytes(32, "big")).public_key[0] in (2, 3)
    assert PrivateKey((CURVE_ORDER - 1).to_bytes(32, "big")).public_key[0] in (2, 3)


def test_private_key_from_hex():
    text = "0x" + "01" * 32
    assert PrivateKey.from_hex(text).secret == bytes([1]) * 32
    with pytest.raises(crypto.InvalidKey):
        PrivateKey.from_hex("zz" * 32)
    with pytest.raises(crypto.InvalidKey):
        PrivateKey.from_hex("01" * 31)


def test_private_key_repr_hides_the_secret():
    key = PrivateKey(bytes([0xAB]) * 32)
    assert "ab" not in repr(key).lower()
    assert "abab" not in str(key).lower()


def test_generated_keys_are_distinct_and_valid():
    keys = {PrivateKey.generate().secret for _ in range(20)}
    assert len(keys) == 20
    for secret in keys:
        assert crypto.is_valid_public_key(PrivateKey(secret).public_key)

"""Keys, signatures and signing digests on secp256k1.

Signatures are 64-byte compact (r || s), deterministic (RFC 6979, as libsecp256k1
signs) and low-S: libsecp256k1 only produces low-S signatures and its verifier
rejects high-S ones, so a signed message has exactly one valid encoding.

Every digest is domain-separated: a tag per message kind, so that a signature
made for one purpose (a transaction, a block seal, a vote) can never be
accepted as another.  The chain id is inside every signed payload, so a
signature can never be replayed on another chain.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from functools import lru_cache

import coincurve
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

PUBLIC_KEY_SIZE = 33  # compressed SEC1
SIGNATURE_SIZE = 64  # compact r || s
PRIVATE_KEY_SIZE = 32
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# One tag per kind of signed message.  Adding a kind means adding a tag here.
DOMAIN_TX = b"ledger/tx/v1"
DOMAIN_BLOCK = b"ledger/block/v1"
DOMAIN_HANDSHAKE = b"ledger/handshake/v1"
DOMAIN_VOTE = b"ledger/vote/v1"
DOMAIN_PROPOSAL = b"ledger/proposal/v1"

_CTX = GLOBAL_CONTEXT.ctx


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def signing_digest(domain: bytes, payload: bytes) -> bytes:
    """SHA-256 over the domain tag (length-prefixed) and the payload."""
    return hashlib.sha256(bytes((len(domain),)) + domain + payload).digest()


class InvalidKey(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PrivateKey:
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != PRIVATE_KEY_SIZE:
            raise InvalidKey("a private key is 32 bytes")
        value = int.from_bytes(self.secret, "big")
        if not 0 < value < CURVE_ORDER:
            raise InvalidKey("private key out of range for secp256k1")

    @classmethod
    def generate(cls) -> PrivateKey:
        while True:
            candidate = secrets.token_bytes(PRIVATE_KEY_SIZE)
            if 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
                return cls(candidate)

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        text = text.strip().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise InvalidKey("a private key is 64 hex characters") from exc
        return cls(raw)

    @property
    def public_key(self) -> bytes:
        return _public_key_of(self.secret)

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte digest; returns the 64-byte compact low-S signature."""
        if len(digest) != 32:
            raise ValueError("a signing digest is 32 bytes")
        sig = ffi.new("secp256k1_ecdsa_signature *")
        # A NULL nonce function selects RFC 6979, libsecp256k1's default.
        if not lib.secp256k1_ecdsa_sign(_CTX, sig, digest, self.secret, ffi.NULL, ffi.NULL):
            raise InvalidKey("libsecp256k1 refused to sign with this key")
        out = ffi.new("unsigned char[64]")
        lib.secp256k1_ecdsa_signature_serialize_compact(_CTX, out, sig)
        return bytes(ffi.buffer(out, 64))

    def sign(self, domain: bytes, payload: bytes) -> bytes:
        return self.sign_digest(signing_digest(domain, payload))

    def __repr__(self) -> str:  # never print a secret by accident
        return "PrivateKey(<hidden>)"


@lru_cache(maxsize=1024)
def _public_key_of(secret: bytes) -> bytes:
    return coincurve.PrivateKey(secret).public_key.format(compressed=True)


# Parsed public keys are cached: a busy sender signs many transactions with one key,
# and parsing (a square root on the curve) costs about as much as half a verification.
@lru_cache(maxsize=65536)
def _parsed_public_key(public_key: bytes):
    parsed = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_CTX, parsed, public_key, len(public_key)):
        return None
    return parsed


def is_valid_public_key(public_key: bytes) -> bool:
    return (
        len(public_key) == PUBLIC_KEY_SIZE
        and public_key[0] in (2, 3)
        and _parsed_public_key(public_key) is not None
    )


def verify_digest(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """True when `signature` (compact, low-S) is valid for `digest` under `public_key`."""
    if len(signature) != SIGNATURE_SIZE or len(digest) != 32:
        return False
    if len(public_key) != PUBLIC_KEY_SIZE or public_key[0] not in (2, 3):
        return False
    parsed = _parsed_public_key(public_key)
    if parsed is None:
        return False
    sig = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(_CTX, sig, signature):
        return False  # r or s not below the curve order
    # secp256k1_ecdsa_verify rejects high-S signatures by design.
    return bool(lib.secp256k1_ecdsa_verify(_CTX, sig, digest, parsed))


def verify(public_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> bool:
    return verify_digest(public_key, signing_digest(domain, payload), signature)


def is_low_s(signature: bytes) -> bool:
    s = int.from_bytes(signature[32:64], "big")
    return 0 < s <= CURVE_ORDER // 2

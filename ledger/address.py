"""Addresses: bech32m (BIP-350) over the first 20 bytes of SHA-256 of a compressed key.

The human-readable prefix comes from genesis, so an address names its network: an
address of another network, or one with a typo, fails its checksum or its prefix
check and is refused before anything is signed or sent.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

ADDRESS_SIZE = 20

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(_CHARSET)}
_BECH32M_CONST = 0x2BC830A3
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_MAX_LENGTH = 90


class InvalidAddress(ValueError):
    """An address string that does not decode; `reason` is a stable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def address_of(public_key: bytes) -> bytes:
    """The 20-byte account id of a compressed public key."""
    return hashlib.sha256(public_key).digest()[:ADDRESS_SIZE]


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                checksum ^= _GENERATOR[i]
    return checksum


def _expand_prefix(prefix: str) -> list[int]:
    return [ord(c) >> 5 for c in prefix] + [0] + [ord(c) & 31 for c in prefix]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    accumulator = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        accumulator = (accumulator << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((accumulator >> bits) & max_value)
    if pad:
        if bits:
            out.append((accumulator << (to_bits - bits)) & max_value)
    elif bits >= from_bits or (accumulator << (to_bits - bits)) & max_value:
        return None
    return out


def is_valid_prefix(prefix: str) -> bool:
    return 1 <= len(prefix) <= 83 and all(33 <= ord(c) <= 126 for c in prefix) and prefix == prefix.lower()


def bech32m_encode(prefix: str, data: bytes) -> str:
    words = _convert_bits(data, 8, 5, pad=True)
    assert words is not None
    polymod = _polymod(_expand_prefix(prefix) + words + [0] * 6) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return prefix + "1" + "".join(_CHARSET[w] for w in words + checksum)


def bech32m_decode(text: str) -> tuple[str, bytes]:
    """Decode any bech32m string into (prefix, data bytes)."""
    if not text or len(text) > _MAX_LENGTH:
        raise InvalidAddress("bad_length", f"an address is at most {_MAX_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) > 126 for c in text):
        raise InvalidAddress("bad_character", "an address holds printable ASCII only")
    if text.lower() != text and text.upper() != text:
        raise InvalidAddress("mixed_case", "an address is all lower case or all upper case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or separator + 7 > len(text):
        raise InvalidAddress("bad_format", "an address is a prefix, '1', and at least six checksum characters")
    prefix, rest = text[:separator], text[separator + 1 :]
    try:
        words = [_CHARSET_INDEX[c] for c in rest]
    except KeyError:
        raise InvalidAddress("bad_character", "an address uses the bech32 alphabet only") from None
    if _polymod(_expand_prefix(prefix) + words) != _BECH32M_CONST:
        raise InvalidAddress("bad_checksum", "address checksum does not match (a typo?)")
    data = _convert_bits(words[:-6], 5, 8, pad=False)
    if data is None:
        raise InvalidAddress("bad_padding", "address data has invalid padding")
    return prefix, bytes(data)


# Pages, events and API answers show the same few thousand accounts again and again,
# and bech32m in Python costs ~30 us an address.
@lru_cache(maxsize=65536)
def encode_address(prefix: str, account: bytes) -> str:
    if len(account) != ADDRESS_SIZE:
        raise ValueError("an account id is 20 bytes")
    return bech32m_encode(prefix, account)


def decode_address(text: str, expected_prefix: str) -> bytes:
    """The 20-byte account id of `text`, which must carry `expected_prefix`."""
    prefix, data = bech32m_decode(text.strip())
    if prefix != expected_prefix:
        raise InvalidAddress(
            "wrong_network", f"address is for network '{prefix}', this network is '{expected_prefix}'"
        )
    if len(data) != ADDRESS_SIZE:
        raise InvalidAddress("bad_length", "an address carries 20 bytes")
    return data

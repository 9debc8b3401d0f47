"""Addresses: bech32m (BIP-350) over the first 20 bytes of SHA-256 of a compressed key."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.address import (
    ADDRESS_SIZE,
    InvalidAddress,
    address_of,
    bech32m_decode,
    bech32m_encode,
    decode_address,
    encode_address,
    is_valid_prefix,
)
from ledger.crypto import PrivateKey

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

# BIP-350, "Test vectors for Bech32m": strings with a valid bech32m checksum.
BIP350_VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]

# BIP-350, with the reason the BIP gives and the reason code we report.
BIP350_INVALID = [
    ("\x20" + "1xj0phk", "HRP character out of range", "bad_character"),
    ("\x7f" + "1g6xzxy", "HRP character out of range", "bad_character"),
    ("\x80" + "1vctc34", "HRP character out of range", "bad_character"),
    (
        "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
        "overall max length exceeded",
        "bad_length",
    ),
    ("qyrz8wqd2c9m", "No separator character", "bad_format"),
    ("1qyrz8wqd2c9m", "Empty HRP", "bad_format"),
    ("y1b0jsk6g", "Invalid data character", "bad_character"),
    ("lt1igcx5c0", "Invalid data character", "bad_character"),
    ("in1muywd", "Too short checksum", "bad_format"),
    ("mm1crxm3i", "Invalid character in checksum", "bad_character"),
    ("au1s5cgom", "Invalid character in checksum", "bad_character"),
    ("M1VUXWEZ", "checksum calculated with uppercase form of HRP", "bad_checksum"),
    ("16plkw9", "empty HRP", "bad_format"),
    ("1p2gdwpf", "empty HRP", "bad_format"),
]

# BIP-350 segwit vectors whose checksum is bech32 (BIP-173), not bech32m: must be refused.
BECH32_NOT_BECH32M = [
    "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
    "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
    "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
    "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",
]


def _words_of(text: str) -> list[int]:
    """The 5-bit data words after the separator, checksum excluded (independent of the code)."""
    data_part = text.lower()[text.rfind("1") + 1 :]
    return [CHARSET.index(c) for c in data_part[:-6]]


def _bytes_if_aligned(words: list[int]) -> bytes | None:
    """Regroup 5-bit words into bytes; None when the padding rule (BIP-173) forbids it."""
    bits = "".join(format(w, "05b") for w in words)
    whole, leftover = divmod(len(bits), 8)
    if leftover >= 5 or "1" in bits[whole * 8 :]:
        return None
    return bytes(int(bits[i : i + 8], 2) for i in range(0, whole * 8, 8))


@pytest.mark.parametrize("text", BIP350_VALID)
def test_bip350_valid_strings(text):
    """Each has a valid checksum; those whose data regroups into bytes decode to those bytes."""
    expected = _bytes_if_aligned(_words_of(text))
    if expected is None:
        with pytest.raises(InvalidAddress) as caught:
            bech32m_decode(text)
        assert caught.value.reason == "bad_padding"  # the checksum passed, the byte regrouping did not
        return
    prefix, data = bech32m_decode(text)
    assert prefix == text[: text.rfind("1")].lower()
    assert data == expected
    assert bech32m_encode(prefix, data) == text.lower()


def test_some_bip350_valid_strings_decode_fully():
    # Guard the test above: most vectors must take the full decode path, not the padding escape.
    decodable = [t for t in BIP350_VALID if _bytes_if_aligned(_words_of(t)) is not None]
    assert len(decodable) >= 4


@pytest.mark.parametrize(("text", "bip_reason", "reason"), BIP350_INVALID, ids=[r[1] for r in BIP350_INVALID])
def test_bip350_invalid_strings(text, bip_reason, reason):
    with pytest.raises(InvalidAddress) as caught:
        bech32m_decode(text)
    assert caught.value.reason == reason, bip_reason


@pytest.mark.parametrize("text", BECH32_NOT_BECH32M)
def test_bech32_checksums_are_not_bech32m(text):
    with pytest.raises(InvalidAddress) as caught:
        bech32m_decode(text)
    assert caught.value.reason == "bad_checksum"


# --- our addresses ------------------------------------------------------------------------

accounts = st.binary(min_size=ADDRESS_SIZE, max_size=ADDRESS_SIZE)
prefixes = st.sampled_from(["dev", "led", "test", "a", "ledger-main"])


def test_address_of_is_first_20_bytes_of_sha256_of_the_compressed_key():
    key = PrivateKey(bytes([1]) * 32)
    assert address_of(key.public_key) == hashlib.sha256(key.public_key).digest()[:20]
    assert len(address_of(key.public_key)) == ADDRESS_SIZE


@given(account=accounts, prefix=prefixes)
def test_round_trip(account, prefix):
    text = encode_address(prefix, account)
    assert text.startswith(prefix + "1")
    assert text == text.lower()
    assert decode_address(text, prefix) == account


@given(account=accounts, prefix=prefixes)
def test_upper_case_is_accepted(account, prefix):
    text = encode_address(prefix, account).upper()
    assert decode_address(text, prefix) == account


@given(account=accounts, data=st.data())
def test_mixed_case_is_refused(account, data):
    text = encode_address("dev", account)
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    flip = data.draw(st.integers(min_value=0, max_value=len(letters) - 1))
    mixed = "".join(c.upper() if i == letters[flip] else c for i, c in enumerate(text))
    if mixed.upper() == mixed:  # only one letter in the string: upper case is fine
        return
    with pytest.raises(InvalidAddress) as caught:
        decode_address(mixed, "dev")
    assert caught.value.reason == "mixed_case"


@settings(max_examples=300)
@given(account=accounts, prefix=prefixes, data=st.data())
def test_any_single_character_typo_is_caught(account, prefix, data):
    text = encode_address(prefix, account)
    # Any position after the separator: data or checksum.
    position = data.draw(st.integers(min_value=len(prefix) + 1, max_value=len(text) - 1))
    replacement = data.draw(st.sampled_from([c for c in CHARSET if c != text[position]]))
    typo = text[:position] + replacement + text[position + 1 :]
    with pytest.raises(InvalidAddress) as caught:
        decode_address(typo, prefix)
    assert caught.value.reason == "bad_checksum"


@settings(max_examples=100)
@given(account=accounts, data=st.data())
def test_typo_in_the_prefix_is_caught(account, data):
    text = encode_address("ledger", account)
    position = data.draw(st.integers(min_value=0, max_value=len("ledger") - 1))
    replacement = data.draw(st.sampled_from([c for c in "abcdefghijklmnopqrstuvwxyz" if c != text[position]]))
    typo = text[:position] + replacement + text[position + 1 :]
    with pytest.raises(InvalidAddress) as caught:
        bech32m_decode(typo)
    assert caught.value.reason == "bad_checksum"


@settings(max_examples=100)
@given(account=accounts, data=st.data())
def test_swapping_adjacent_characters_is_caught(account, data):
    text = encode_address("dev", account)
    position = data.draw(st.integers(min_value=len("dev1"), max_value=len(text) - 2))
    if text[position] == text[position + 1]:
        return
    swapped = text[:position] + text[position + 1] + text[position] + text[position + 2 :]
    with pytest.raises(InvalidAddress):
        decode_address(swapped, "dev")


@given(account=accounts)
def test_wrong_network_prefix_is_refused(account):
    text = encode_address("test", account)
    with pytest.raises(InvalidAddress) as caught:
        decode_address(text, "dev")
    assert caught.value.reason == "wrong_network"
    assert "test" in str(caught.value) and "dev" in str(caught.value)


def test_wrong_payload_length_is_refused():
    text = bech32m_encode("dev", bytes(19))
    with pytest.raises(InvalidAddress) as caught:
        decode_address(text, "dev")
    assert caught.value.reason == "bad_length"
    text = bech32m_encode("dev", bytes(21))
    with pytest.raises(InvalidAddress) as caught:
        decode_address(text, "dev")
    assert caught.value.reason == "bad_length"


def test_encode_refuses_wrong_account_size():
    with pytest.raises(ValueError):
        encode_address("dev", bytes(19))


def test_surrounding_whitespace_is_ignored():
    account = bytes(range(20))
    assert decode_address("  " + encode_address("dev", account) + "\n", "dev") == account


@pytest.mark.parametrize("text", ["", "dev1", "dev1qqqqq", "x" * 91, "dev1\u00e9qqqqqqqq"])
def test_malformed_strings_are_refused_with_a_reason(text):
    with pytest.raises(InvalidAddress) as caught:
        decode_address(text, "dev")
    assert caught.value.reason in {"bad_length", "bad_format", "bad_character", "bad_checksum"}
    assert str(caught.value)


@settings(max_examples=300)
@given(text=st.text(max_size=100))
def test_arbitrary_text_raises_only_invalid_address(text):
    try:
        account = decode_address(text, "dev")
    except InvalidAddress as exc:
        assert exc.reason and str(exc)
    else:
        assert len(account) == ADDRESS_SIZE


@pytest.mark.parametrize(
    ("prefix", "valid"),
    [("dev", True), ("a", True), ("x" * 83, True), ("x" * 84, False), ("", False), ("Dev", False), ("d v", False)],
)
def test_prefix_rules(prefix, valid):
    assert is_valid_prefix(prefix) is valid

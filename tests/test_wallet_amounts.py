"""Amounts as people type them, in integer base units: exact both ways, refused when wrong."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import MAX_AMOUNT
from wallet.amounts import format_amount, parse_amount
from wallet.errors import BadInput, ExitCode


@pytest.mark.parametrize(
    ("text", "decimals", "units"),
    [
        ("1.5", 9, 1_500_000_000),
        ("0.000000001", 9, 1),
        ("1000000", 9, 1_000_000 * 10**9),
        ("1.", 9, 10**9),
        (".25", 2, 25),
        ("1.500", 2, 150),  # trailing zeros beyond the decimals change nothing
        ("7", 0, 7),
        ("0", 9, 0),
        (" 2.5 ", 1, 25),
        ("9223372036.854775807", 9, MAX_AMOUNT),
    ],
)
def test_parses_whole_and_decimal_amounts_exactly(text, decimals, units):
    assert parse_amount(text, decimals) == units


@pytest.mark.parametrize(
    ("text", "decimals", "reason"),
    [
        ("-1", 9, "negative_amount"),
        ("-0.5", 9, "negative_amount"),
        ("1.0000000001", 9, "too_many_decimals"),
        ("0.5", 0, "too_many_decimals"),
        ("9223372036.854775808", 9, "amount_overflow"),
        ("99999999999999999999", 9, "amount_overflow"),
        ("", 9, "bad_amount"),
        (".", 9, "bad_amount"),
        ("1e5", 9, "bad_amount"),
        ("1,5", 9, "bad_amount"),
        ("+1", 9, "bad_amount"),
        ("1.2.3", 9, "bad_amount"),
        ("0x10", 9, "bad_amount"),
        ("1" * 65, 9, "bad_amount"),
        ("½", 9, "bad_amount"),
        ("١", 9, "bad_amount"),  # an Arabic-Indic digit: \d would take it, int() too; we must not
    ],
)
def test_refuses_bad_amounts_with_a_reason(text, decimals, reason):
    with pytest.raises(BadInput) as caught:
        parse_amount(text, decimals, "amount", "LED")
    assert caught.value.reason == reason
    assert caught.value.code == ExitCode.USAGE


def test_error_names_the_denomination_and_its_decimals():
    with pytest.raises(BadInput, match="LED has at most 9"):
        parse_amount("0.0000000001", 9, "amount", "LED")


@pytest.mark.parametrize(
    ("units", "decimals", "text"),
    [(1_500_000_000, 9, "1.5"), (1, 9, "0.000000001"), (0, 9, "0"), (10**9, 9, "1"), (42, 0, "42"), (-15, 1, "-1.5")],
)
def test_formats_without_trailing_zeros(units, decimals, text):
    assert format_amount(units, decimals) == text


@given(st.integers(0, MAX_AMOUNT), st.integers(0, 18))
def test_format_then_parse_is_the_identity(units, decimals):
    assert parse_amount(format_amount(units, decimals), decimals) == units


@given(st.integers(0, MAX_AMOUNT // 10**9 - 1), st.integers(0, 10**9 - 1))
def test_decimal_text_means_exactly_its_digits(whole, fraction):
    text = f"{whole}.{fraction:09d}"
    assert parse_amount(text, 9) == whole * 10**9 + fraction

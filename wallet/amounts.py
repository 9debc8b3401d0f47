"""Amounts as people write them ("1.5") and as the chain counts them (base units).

Only integer arithmetic: the text is split at the decimal point and each side is
parsed as digits, so no float or Decimal rounding can ever change an amount.
"""

from __future__ import annotations

import re

from ledger.codec import MAX_AMOUNT
from wallet.errors import BadInput

# Room for MAX_AMOUNT (19 digits) with up to 18 decimals, and a few leading zeros.
_MAX_TEXT = 64
# ASCII digits only: \d and int() would also take other scripts' digits.
_AMOUNT = re.compile(r"([0-9]*)(?:\.([0-9]*))?")


def parse_amount(text: str, decimals: int, what: str = "amount", denomination: str = "") -> int:
    """Base units of `text`, a whole number or a decimal in units of the denomination.

    Refuses (BadInput) anything but digits with at most one '.', a sign, more
    fractional digits than `decimals` (trailing zeros aside), and values above
    MAX_AMOUNT.
    """
    unit = f" {denomination}" if denomination else ""
    shown = text.strip()
    if not shown:
        raise BadInput(f"{what} is empty", "bad_amount")
    if shown.startswith("-"):
        raise BadInput(f"{what} cannot be negative: '{shown}'", "negative_amount")
    if len(shown) > _MAX_TEXT:
        raise BadInput(f"{what} is too long ({len(shown)} characters)", "bad_amount")
    match = _AMOUNT.fullmatch(shown)
    if match is None or not (match.group(1) or match.group(2)):
        raise BadInput(
            f"{what} '{shown}' is not a number of{unit or ' units'}: use digits and at most one '.', e.g. 1.5",
            "bad_amount",
        )
    whole, fraction = match.group(1) or "0", (match.group(2) or "").rstrip("0")
    if len(fraction) > decimals:
        raise BadInput(
            f"{what} '{shown}' has {len(fraction)} decimals; {denomination or 'the denomination'} has at most {decimals}",
            "too_many_decimals",
        )
    units = int(whole) * 10**decimals + int(fraction.ljust(decimals, "0") or "0")
    if units > MAX_AMOUNT:
        raise BadInput(
            f"{what} '{shown}' is too large: at most {format_amount(MAX_AMOUNT, decimals)}{unit}", "amount_overflow"
        )
    return units


def format_amount(units: int, decimals: int) -> str:
    """`units` base units as a decimal string without trailing zeros: 1500000000, 9 -> '1.5'."""
    if units < 0:
        return "-" + format_amount(-units, decimals)
    if decimals == 0:
        return str(units)
    whole, fraction = divmod(units, 10**decimals)
    fraction_text = str(fraction).rjust(decimals, "0").rstrip("0")
    return f"{whole}.{fraction_text}" if fraction_text else str(whole)

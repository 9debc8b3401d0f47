"""What the explorer's Validators page must agree with: GET /v1/validators of the same node.

The chain moves while a test reads the API and then the page, so a page value is checked
to lie between an API answer read before the page and one read after it (a validator's
proposals and last signed height only grow).  Used by the HTTP and the browser tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ValidatorView:
    address: str
    blocks_proposed: int
    last_signed_height: int | None


def from_api(answer: dict) -> dict[str, ValidatorView]:
    """GET /v1/validators' rows by address."""
    return {
        row["address"]: ValidatorView(row["address"], row["blocks_proposed"], row["last_signed_height"])
        for row in answer["validators"]
    }


def page_row(address: str, proposed_text: str, last_signed_text: str) -> ValidatorView:
    """A row as the page shows it: a count with thousands separators, "#<height>" or "none yet"."""
    match = re.search(r"#(\d+)", last_signed_text)
    return ValidatorView(address, int(proposed_text.strip().replace(",", "")), int(match.group(1)) if match else None)


def assert_between(before: dict[str, ValidatorView], shown: list[ValidatorView], after: dict[str, ValidatorView],
                   prefix: str) -> None:
    """Every validator the API lists is on the page once, under its address of this network,
    with values no older than the first API answer and no newer than the second."""
    assert sorted(row.address for row in shown) == sorted(before) == sorted(after)
    for row in shown:
        assert row.address.startswith(prefix + "1"), row.address
        low, high = before[row.address], after[row.address]
        assert low.blocks_proposed <= row.blocks_proposed <= high.blocks_proposed, (row, low, high)
        if row.last_signed_height is None:
            assert low.last_signed_height is None, (row, low)
        else:
            assert (low.last_signed_height or 0) <= row.last_signed_height <= (high.last_signed_height or 0), (row, low, high)

"""ledger/recent.py: a bounded memory of the newest keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.recent import RecentMap, RecentSet


@given(st.integers(2, 50), st.lists(st.integers(0, 80), max_size=400))
def test_the_newest_half_is_always_remembered_and_never_more_than_the_capacity(capacity, keys):
    recent: RecentMap[int, int] = RecentMap(capacity)
    for position, key in enumerate(keys):
        recent[key] = position
        assert len(recent) <= capacity
        newest: list[int] = []
        for earlier in reversed(keys[: position + 1]):
            if earlier not in newest:
                newest.append(earlier)
            if len(newest) == capacity // 2:
                break
        for kept in newest:
            assert kept in recent
            # the value last set for it
            assert recent.get(kept) == max(i for i, k in enumerate(keys[: position + 1]) if k == kept)


def test_old_keys_are_forgotten_whole_generations_at_a_time():
    seen = RecentSet(4)
    for key in range(10):
        seen.add(key)
    assert [key for key in range(10) if key in seen] == [8, 9] or [key for key in range(10) if key in seen] == [6, 7, 8, 9]
    assert 0 not in seen and len(seen) <= 4
    assert RecentMap(10).get("absent", "default") == "default"


def test_a_capacity_below_two_is_refused():
    with pytest.raises(ValueError):
        RecentMap(1)

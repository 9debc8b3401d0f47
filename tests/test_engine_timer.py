"""The engine's deadline on the event loop (node/engine_timer.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.engine_timer import EngineTimer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize("first, second", [(40, 120), (400, 60), (50, 50), (30, 0)])
def test_one_tick_at_or_after_the_latest_deadline(first, second):
    """A SetTimer replaces the deadline before it, whether later (the armed timer re-arms for
    the rest when it fires) or earlier (re-armed at once): one Tick, never before it."""
    ticks: list[tuple[int, int]] = []  # (the Tick's time, the wall clock when it came)

    async def scenario() -> int:
        timer = EngineTimer(now_ms, lambda at: ticks.append((at, now_ms())))
        start = now_ms()
        timer.set(start + first)
        await asyncio.sleep(0.01)
        timer.set(start + second)
        await asyncio.sleep((max(first, second) + 100) / 1000)
        assert not timer.armed  # nothing left to fire
        return start + second

    deadline = asyncio.run(scenario())
    assert len(ticks) == 1, ticks
    [(tick_at, came_at)] = ticks
    # (The loop's clock and the wall clock may disagree by a millisecond.)
    assert tick_at >= deadline and came_at >= deadline - 2, (ticks, deadline)
    # An earlier deadline is kept, not left to the timer armed for a later one (slack for a
    # busy machine).
    assert came_at < deadline + 150, (ticks, deadline)


def test_a_cancelled_timer_never_ticks():
    ticks: list[int] = []

    async def scenario() -> None:
        timer = EngineTimer(now_ms, ticks.append)
        timer.set(now_ms() + 20)
        timer.set(now_ms() + 60)  # later: the first loop timer stays armed
        timer.cancel()
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert ticks == []

"""The engine's one deadline (`SetTimer`) on the event loop: a `Tick` at or after it.

Each `SetTimer` replaces the deadline before it.  A later deadline leaves the armed loop
timer alone, which re-arms for the rest when it fires: a Raft leader moves its heartbeat
with every block and a follower its election timeout with every append, and a loop timer
cancelled and made anew at each step cost a few percent of the node's CPU.  An earlier
deadline re-arms at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class EngineTimer:
    def __init__(self, now_ms: Callable[[], int], on_due: Callable[[int], None]):
        self._now_ms = now_ms
        self._on_due = on_due  # called with the Tick's time, never before the deadline
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = 0  # the deadline the loop timer was set for
        self._deadline = 0  # the engine's deadline now

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def set(self, at_ms: int) -> None:
        self._deadline = at_ms
        if self._handle is not None:
            if self._armed_for <= at_ms:
                return
            self._handle.cancel()
        self._arm(at_ms)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, at_ms: int) -> None:
        delay = max(0.0, (at_ms - self._now_ms()) / 1000)
        self._armed_for = at_ms
        self._handle = asyncio.get_running_loop().call_later(delay, self._fired)

    def _fired(self) -> None:
        self._handle = None
        at_ms = self._deadline
        if at_ms > self._armed_for:
            self._arm(at_ms)  # moved later since this one was armed
            return
        # The wall clock and the loop's monotonic clock can disagree by a millisecond.
        self._on_due(max(self._now_ms(), at_ms))

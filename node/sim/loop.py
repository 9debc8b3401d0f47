"""An asyncio event loop whose clock is virtual.

The loop polls the real selector without waiting; when nothing is ready it moves its
clock straight to the next timer instead of sleeping.  Ten minutes of timers run in
milliseconds, and since computation takes no virtual time at all, a run depends only
on the order of events, which the simulator draws from one seed.

Work is owned by *actors* (one per node incarnation): a task or timer created while
the `ACTOR` context variable names an actor belongs to it, and `kill_actor` cancels
them all, which is how the simulator crashes a node without calling its `stop()`.
Worker threads would break determinism (the clock would move while a thread works),
so the loop's default executor runs every function inline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Which actor (node incarnation) the running code belongs to; None for the harness itself.
ACTOR: contextvars.ContextVar[object | None] = contextvars.ContextVar("sim_actor", default=None)


class SimulationIdle(RuntimeError):
    """Nothing is ready and no timer is set: the simulation would wait forever."""


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each submitted function at once, on the caller's thread (so asyncio.to_thread
    and run_in_executor stay deterministic under the simulator)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # the caller sees it through the future, as with a thread
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


class _VirtualSelector(selectors.BaseSelector):
    """Wraps the real selector (the loop still needs its self-pipe) and never blocks."""

    def __init__(self, real: selectors.BaseSelector, advance: Callable[[float], None]):
        self._real = real
        self._advance = advance

    def register(self, fileobj, events, data=None):
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self._real.modify(fileobj, events, data)

    def get_map(self):
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout=None):
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationIdle("no task is ready and no timer is set: the simulation would wait forever")
        # Asyncio asked to sleep until its next timer: that much virtual time passes, at once.
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time, with actor-owned tasks and timers."""

    def __init__(self, start: float = 0.0):
        self._virtual_now = float(start)
        super().__init__(_VirtualSelector(selectors.DefaultSelector(), self._advance))
        self.set_default_executor(_InlineExecutor(max_workers=1))
        self.set_task_factory(self._new_task)
        self._actor_tasks: dict[object, dict[asyncio.Task, None]] = {}  # dicts: creation order, never a set's
        self.steps = 0
        # Called after every iteration of the loop (the simulator checks its invariants there).
        self.after_step: Callable[[], None] | None = None

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds

    def _run_once(self) -> None:
        super()._run_once()
        self.steps += 1
        if self.after_step is not None:
            self.after_step()

    def _new_task(self, loop, coro, context=None) -> asyncio.Task:
        task = asyncio.Task(coro, loop=self, context=context)
        actor = context.get(ACTOR) if context is not None else ACTOR.get()
        if actor is not None:
            tasks = self._actor_tasks.setdefault(actor, {})
            tasks[task] = None
            task.add_done_callback(tasks.pop)
        return task

    def actor_tasks(self, actor: object) -> list[asyncio.Task]:
        return [task for task in self._actor_tasks.get(actor, {}) if not task.done()]

    def kill_actor(self, actor: object) -> int:
        """Cancel every task and pending timer the actor owns; the number of things cancelled."""
        cancelled = 0
        for task in list(self._actor_tasks.pop(actor, {})):
            if not task.done():
                task.cancel()
                cancelled += 1
        for handle in list(self._scheduled):  # pending call_later/call_at timers
            if not handle.cancelled() and handle._context.get(ACTOR) is actor:
                handle.cancel()
                cancelled += 1
        return cancelled


def inline_blocking(function: Callable[..., T], *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
    """The runtime's `blocking` executor under the simulator: call the function in place."""

    async def call() -> T:
        return function(*args, **kwargs)

    return call()


def run(main: Coroutine[Any, Any, T], loop: VirtualTimeLoop | None = None) -> T:
    """Run a coroutine to completion on a virtual-time loop, then cancel what is left and close it."""
    loop = loop if loop is not None else VirtualTimeLoop()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("the simulator cannot run inside another running event loop")
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_remaining(loop: VirtualTimeLoop) -> None:
    loop.after_step = None
    remaining = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not remaining:
        return
    for task in remaining:
        task.cancel()
    try:
        loop.run_until_complete(asyncio.gather(*remaining, return_exceptions=True))
    except SimulationIdle:
        pass  # a task that swallows its cancellation and waits forever: nothing more to run

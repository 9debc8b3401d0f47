"""Proof of work: SHA-256 hashcash over the header, a compact target, per-block retargeting.

The rules of a block at height h > 0 (all checked by `verify_seal`, a pure function):

- `extra` holds the block's target in compact form (4 bytes, Bitcoin's nBits), so the
  block hash commits to it, and that target is exactly `next_target(ancestors)`;
- `seal` is an 8-byte nonce, and the block hash (SHA-256 of the whole header, seal
  included) read as a big-endian integer is at most the target;
- the timestamp is after the median of the last 11 timestamps, and at most
  `max_future_ms` ahead of the receiver's clock.

The target follows a linearly weighted moving average (LWMA) of the last
`retarget_window` solve times, recent blocks weighing most, so it answers a change of
hash rate within a few blocks; it moves at most `max_step` times per block either way.
A block's work is 2**256 // (target + 1), the expected number of hashes to find it; the
branch with the most cumulative work is the chain.  Finality is a confirmation depth.

`PowEngine` is the state machine around these rules: it asks the runtime for a block
template, hands it to a miner, commits what the miner finds, and starts over whenever
the head moves.  It reads no clock and holds no socket: the same events give the same
actions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ledger.address import ADDRESS_SIZE
from ledger.block import Block, BlockHeader
from ledger.engine_status import EngineStatus, Finality
from ledger.validate import too_far_ahead

from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BuildBlock,
    Commit,
    Engine,
    Event,
    InvalidSeal,
    Mine,
    Mined,
    SetTimer,
    Started,
    StopMining,
    Tick,
    TxsAvailable,
)
from consensus.mining import NONCE_SIZE

MEDIAN_SPAN = 11  # timestamps the "not before the median" rule looks at, as in Bitcoin
SOLVE_TIME_CAP = 6  # a solve time counts for at most this many target block times
COMPACT_SIZE = 4
MAX_TARGET = 0x7FFFFF << (8 * 29)  # the largest target with a 32-byte compact exponent: half of all hashes
REBUILD_INTERVAL_MS = 1000  # a template is rebuilt for new transactions at most this often

# ----------------------------------------------------------------------------- compact targets


def to_compact(target: int) -> int:
    """Bitcoin's nBits: exponent byte (the target's length in bytes) and a 3-byte mantissa
    (its most significant bytes, the top bit clear).  Rounds down to 3 significant bytes."""
    if not 1 <= target < 1 << 256:
        raise ValueError("a target is an integer from 1 to 2**256-1")
    size = (target.bit_length() + 7) // 8
    mantissa = target << 8 * (3 - size) if size <= 3 else target >> 8 * (size - 3)
    if mantissa & 0x800000:  # the top mantissa bit is a sign bit in nBits: keep it clear
        mantissa >>= 8
        size += 1
    return size << 24 | mantissa


def from_compact(bits: int) -> int:
    """The target `bits` stands for.  Only the canonical encoding (what `to_compact` makes)
    is accepted, so one target has exactly one valid `extra`."""
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ValueError("compact bits are a 32-bit unsigned integer")
    size, mantissa = bits >> 24, bits & 0xFFFFFF
    if mantissa & 0x800000:
        raise ValueError(f"compact target {bits:08x} is negative")
    target = mantissa >> 8 * (3 - size) if size <= 3 else mantissa << 8 * (size - 3)
    if target == 0:
        raise ValueError(f"compact target {bits:08x} is zero")
    if target >= 1 << 256:
        raise ValueError(f"compact target {bits:08x} overflows 256 bits")
    if to_compact(target) != bits:
        raise ValueError(f"compact target {bits:08x} is not in canonical form ({to_compact(target):08x})")
    return target


def round_target(target: int) -> int:
    """The largest compact-representable target not above `target`."""
    return from_compact(to_compact(target))


def _round_target_up(target: int) -> int:
    """The smallest compact-representable target not below `target`."""
    below = round_target(target)
    if below == target:
        return target
    size = to_compact(target) >> 24
    # One unit of the mantissa's last byte; when the mantissa overflows, the sum is
    # 0x800000 << 8*(size-3) = 0x8000 << 8*(size-2), representable one exponent up.
    return below + (1 << 8 * max(size - 3, 0))


def compact_bytes(target: int) -> bytes:
    return to_compact(target).to_bytes(COMPACT_SIZE, "big")


def header_target(header: BlockHeader, params: PowParams) -> int:
    """The target a header declares; genesis declares none and stands for the initial target."""
    if header.height == 0:
        return params.initial_target
    if len(header.extra) != COMPACT_SIZE:
        raise ValueError(
            f"block {header.height}: extra must be the {COMPACT_SIZE}-byte compact target, got {len(header.extra)} bytes"
        )
    return from_compact(int.from_bytes(header.extra, "big"))


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class PowParams:
    target_block_ms: int
    initial_target: int
    retarget_window: int = 45
    max_step: Fraction = Fraction(2)
    finality_depth: int = 6
    max_future_ms: int = 15_000
    max_reorg_depth: int = 100

    @property
    def ancestors_needed(self) -> int:
        """Headers ending with the parent that the rules read: N solve times take N+1 timestamps."""
        return max(self.retarget_window + 1, MEDIAN_SPAN)

    @classmethod
    def from_genesis(cls, params: Any) -> PowParams:
        """Validate genesis `engine.params`; a missing or misspelt key is an error, not a default."""
        if not isinstance(params, dict):
            raise ValueError("pow engine: genesis engine.params must be an object")
        known = {"target_block_ms", "initial_target", "retarget_window", "max_step", "finality_depth",
                 "max_future_ms", "max_reorg_depth"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"pow engine: unknown engine.params {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for required in ("target_block_ms", "initial_target"):
            if required not in params:
                raise ValueError(f"pow engine: genesis engine.params.{required} is required")
        return cls(
            target_block_ms=_int_param(params, "target_block_ms", 1, 24 * 3600 * 1000),
            initial_target=_target_param(params["initial_target"]),
            retarget_window=_int_param(params, "retarget_window", 1, 1000, default=45),
            max_step=_step_param(params.get("max_step", 2)),
            finality_depth=_int_param(params, "finality_depth", 0, 10_000, default=6),
            max_future_ms=_int_param(params, "max_future_ms", 0, 24 * 3600 * 1000, default=15_000),
            max_reorg_depth=_int_param(params, "max_reorg_depth", 1, 1_000_000, default=100),
        )


def _int_param(params: dict, name: str, low: int, high: int, default: int | None = None) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"pow engine: engine.params.{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _target_param(value: Any) -> int:
    """Eight hex digits are compact bits ("1f00ffff"); "0x..." or 64 hex digits, or a JSON
    integer, a full target (rounded down to what the compact form can say)."""
    where = "pow engine: engine.params.initial_target"
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if len(text) == 8 and not text.startswith("0x"):
                return _bounded_target(from_compact(int(text, 16)), where)
            if text.startswith("0x") or len(text) == 64:
                return _bounded_target(round_target(int(text, 16)), where)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        raise ValueError(f"{where}: 8 hex digits of compact bits (e.g. '1f00ffff') or a 0x-prefixed 256-bit hex target")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value < 1 << 256:
            raise ValueError(f"{where}: a target is from 1 to 2**256-1")
        return _bounded_target(round_target(value), where)
    raise ValueError(f"{where}: a hex string or an integer, got {value!r}")


def _bounded_target(target: int, where: str) -> int:
    if target > MAX_TARGET:
        raise ValueError(f"{where}: above the largest target {to_compact(MAX_TARGET):08x}")
    return target


def _step_param(value: Any) -> Fraction:
    # From the number's decimal text, so 1.5 is exactly 3/2 on every machine.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"pow engine: engine.params.max_step must be a number from 1.01 to 16, got {value!r}")
    step = Fraction(str(value))
    if not Fraction(101, 100) <= step <= 16:
        raise ValueError(f"pow engine: engine.params.max_step must be a number from 1.01 to 16, got {value!r}")
    return step


# ----------------------------------------------------------------------------- the rules


def _check_chain(ancestors: Sequence[BlockHeader], params: PowParams) -> list[BlockHeader]:
    """The tail of `ancestors` the rules read, after checking the caller handed a real chain
    and enough of it.  A mistake here is the caller's, not the block's: ValueError."""
    if not ancestors:
        raise ValueError("proof of work needs the parent's recent headers (at least the parent)")
    parent = ancestors[-1]
    needed = min(params.ancestors_needed, parent.height + 1)
    if len(ancestors) < needed:
        raise ValueError(
            f"proof of work needs the last {needed} headers up to height {parent.height}, got {len(ancestors)}"
        )
    tail = len(ancestors) - params.ancestors_needed
    window = list(ancestors)[max(tail, 0):]  # a deque does not slice
    for older, newer in zip(window, window[1:]):
        if newer.parent != older.hash or newer.height != older.height + 1:
            raise ValueError(f"ancestors are not a chain at height {newer.height}")
    return window


def median_time_past(ancestors: Sequence[BlockHeader]) -> int:
    """The median timestamp of the last 11 headers (of all of them near genesis; the upper
    median when their number is even)."""
    times = sorted(header.timestamp for header in list(ancestors)[-MEDIAN_SPAN:])
    return times[len(times) // 2]


def next_target(ancestors: Sequence[BlockHeader], params: PowParams) -> int:
    """The target of the block after `ancestors[-1]`, from the headers before it (oldest first).

    LWMA: the average target of the last N blocks, scaled by their solve times weighted
    1..N (the newest weighs N) against the target block time.  A timestamp earlier than
    its predecessor's counts as 1 ms after it (and the next solve time from there), so
    out-of-order timestamps cannot drive the target up; a solve time counts for at most
    6 target block times, so one late block cannot drive it up much either.  Genesis
    times nothing (it is written, not mined): blocks 1 and 2 take the initial target.
    The result moves at most `max_step` either way from the parent's target, stays
    within 1 .. MAX_TARGET, and is exactly representable in compact form.
    """
    window = _check_chain(ancestors, params)
    parent = window[-1]
    previous = header_target(parent, params)
    # Genesis was written, not mined: its timestamp says when someone ran `init`, so the
    # first solve time counted is block 1 to block 2.
    span = [header for header in window[-(params.retarget_window + 1):] if header.height > 0]
    if len(span) < 2:
        return previous
    cap = SOLVE_TIME_CAP * params.target_block_ms
    last_time = span[0].timestamp
    weighted_solve_time = 0
    target_sum = 0
    for weight, header in enumerate(span[1:], start=1):
        this_time = max(header.timestamp, last_time + 1)
        weighted_solve_time += weight * min(this_time - last_time, cap)
        last_time = this_time
        target_sum += header_target(header, params)
    count = len(span) - 1
    # average target * weighted solve time / (sum of weights * T), in exact integers
    lwma = target_sum * weighted_solve_time * 2 // (count * count * (count + 1) * params.target_block_ms)
    step = params.max_step
    lowest = max(1, -(-previous * step.denominator // step.numerator))
    highest = min(MAX_TARGET, previous * step.numerator // step.denominator)
    bounded = min(max(lwma, lowest), highest)
    rounded = round_target(bounded)
    if rounded < lowest:
        # Rounding down to 3 significant bytes must not step further than max_step.
        rounded = _round_target_up(lowest)
    return rounded


def block_work(header: BlockHeader) -> int:
    """Expected hashes to find this block: 2**256 // (target + 1).  Genesis is mined by no
    one and weighs nothing (every branch shares it)."""
    if header.height == 0:
        return 0
    if len(header.extra) != COMPACT_SIZE:
        raise ValueError(f"block {header.height} carries no compact target")
    return work_of_target(from_compact(int.from_bytes(header.extra, "big")))


def work_of_target(target: int) -> int:
    return (1 << 256) // (target + 1)


def verify_seal(header: BlockHeader, ancestors: Sequence[BlockHeader], now_ms: int | None, params: PowParams) -> None:
    """Raise InvalidSeal unless `header` is a valid proof-of-work block on top of
    `ancestors[-1]`, with `ancestors` the branch's last `params.ancestors_needed` headers,
    oldest first.  `now_ms` is the receiver's clock (None skips the future-time rule, for
    blocks accepted before).  ValueError if the ancestors are too few or not a chain."""
    window = _check_chain(ancestors, params)
    parent = window[-1]
    if header.parent != parent.hash:
        raise InvalidSeal(f"block {header.height} does not extend the given parent {parent.hash.hex()[:16]}")
    if header.height != parent.height + 1:
        raise InvalidSeal(f"block height {header.height} does not follow its parent's {parent.height}")
    if len(header.extra) != COMPACT_SIZE:
        raise InvalidSeal(
            f"header extra must be the {COMPACT_SIZE}-byte compact target, got {len(header.extra)} bytes"
        )
    expected = compact_bytes(next_target(window, params))
    if header.extra != expected:
        raise InvalidSeal(
            f"wrong target for height {header.height}: the block says {header.extra.hex()}, "
            f"the retarget rule gives {expected.hex()}"
        )
    if len(header.seal) != NONCE_SIZE:
        raise InvalidSeal(f"seal must be an {NONCE_SIZE}-byte nonce, got {len(header.seal)} bytes")
    target = from_compact(int.from_bytes(header.extra, "big"))
    if int.from_bytes(header.hash, "big") > target:
        raise InvalidSeal(f"block hash {header.hash.hex()} is above its target {target:064x}")
    median = median_time_past(window)
    if header.timestamp <= median:
        raise InvalidSeal(
            f"timestamp {header.timestamp} is not after {median}, the median of the last {min(len(window), MEDIAN_SPAN)} blocks"
        )
    problem = too_far_ahead(header.timestamp, now_ms, params.max_future_ms)
    if problem is not None:
        raise InvalidSeal(problem)


def finalized_height(head_height: int, params: PowParams) -> int:
    return max(0, head_height - params.finality_depth)


# ----------------------------------------------------------------------------- the state machine


class PowEngine(Engine):
    """Mines on the head when `mine` is set; either way knows the rules for import.

    The engine keeps the last `ancestors_needed` headers of the head's chain (its window).
    Started.recent fills it; a BlockCommitted whose header is a child of the head extends
    it; any other head (a reorg) must come with BlockCommitted.recent.  Without a full
    window (a runtime that sent none) the engine cannot know the next target, so it does
    not mine and says so in `status()`.

    Requests and what answers them:
      BuildBlock(extra = compact target) -> BlockBuilt: the template; the engine keeps its
        transactions and sends Mine(header, target), after a StopMining when a job runs.
      Mine -> Mined(header with the nonce): Commit(the template's block with that header).
      Commit -> BlockCommitted.
    Every head change stops the job and builds on the new head.  When the mempool holds
    ready transactions the template lacks (TxsAvailable.count, the ready total, exceeds
    the template's), the template is rebuilt, at most once every REBUILD_INTERVAL_MS (a
    SetTimer covers the wait).  The job keeps running meanwhile, and a nonce found for the
    replaced template on the same parent still commits: work done is work kept.
    """

    name = "pow"
    finality = Finality.DEPTH

    def __init__(
        self, params: dict | PowParams, miner_address: bytes | None = None, mine: bool = False,
        max_block_transactions: int | None = None,
    ):
        self.params = params if isinstance(params, PowParams) else PowParams.from_genesis(params)
        if mine and (not isinstance(miner_address, bytes) or len(miner_address) != ADDRESS_SIZE):
            raise ValueError(f"pow engine: mining needs a {ADDRESS_SIZE}-byte miner address")
        self.miner_address = miner_address
        self.mine = mine
        self.max_block_transactions = max_block_transactions
        self.ancestors_needed = self.params.ancestors_needed
        self.max_reorg_depth = self.params.max_reorg_depth
        self.max_future_ms = self.params.max_future_ms
        self._window: deque[BlockHeader] = deque(maxlen=self.ancestors_needed)
        self._next_target: int | None = None  # for the block after the head, once the window is full
        self._build_parent: bytes | None = None  # parent of the BuildBlock awaiting its BlockBuilt
        self._templates: dict[bytes, Block] = {}  # unsealed header bytes -> template, on the head only
        self._job: BlockHeader | None = None  # the header being mined (Mine sent, no Mined or StopMining since)
        self._committing: bytes | None = None  # hash of the mined block sent to Commit
        self._last_build_at = 0
        self._ready = 0  # ready transactions in the mempool, as last reported since the head moved
        self._timer_at: int | None = None

    # ------------------------------------------------------------------ pure checks
    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        """With the parent alone the target cannot be checked, except on genesis or on the
        engine's own head (its window holds the rest); elsewhere call verify_header."""
        if self._window and self._window[-1].hash == parent.hash and self._next_target is not None:
            ancestors: Sequence[BlockHeader] = self._window
        elif parent.height == 0:
            ancestors = [parent]
        else:
            raise ValueError("proof of work checks a block against its ancestors: use verify_header(header, ancestors)")
        verify_seal(header, ancestors, None, self.params)

    def verify_header(self, header: BlockHeader, ancestors: Sequence[BlockHeader], now_ms: int | None = None) -> None:
        verify_seal(header, ancestors, now_ms, self.params)

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        return finalized_height(head_height, self.params)

    def block_work(self, header: BlockHeader) -> int:
        """Heaviest cumulative work wins, not the longest chain."""
        return block_work(header)

    # ------------------------------------------------------------------ events
    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Started):
            self._set_window(event.head, event.recent, extend=False)
            return self._on_new_head(event.now)
        if isinstance(event, BlockCommitted):
            self._set_window(event.header, event.recent, extend=True)
            return self._on_new_head(event.now)
        if isinstance(event, BlockBuilt):
            return self._on_built(event)
        if isinstance(event, Mined):
            return self._on_mined(event)
        if isinstance(event, TxsAvailable):
            if not self.mine:
                return []
            self._ready = event.count
            return self._maybe_rebuild(event.now)
        if isinstance(event, Tick):
            return self._on_tick(event.now)
        # Blocks from peers reach the engine as BlockCommitted once the runtime has checked
        # them (ledger/validate.py), stored them and chosen the head (`fork_choice`: the
        # default over `block_work`, the most cumulative work).
        return []

    def _set_window(self, head: BlockHeader, recent: tuple[BlockHeader, ...], extend: bool) -> None:
        if recent:
            if recent[-1].hash != head.hash:
                raise ValueError("the recent headers must end with the head")
            for older, newer in zip(recent, recent[1:]):
                if newer.parent != older.hash or newer.height != older.height + 1:
                    raise ValueError(f"the recent headers are not a chain at height {newer.height}")
            self._window.clear()
            self._window.extend(recent)
        elif extend and self._window and head.hash == self._window[-1].hash:
            pass  # the head again (say, the answer to a Commit that lost to a peer's block)
        elif extend and self._window and head.parent == self._window[-1].hash:
            self._window.append(head)
        else:
            self._window.clear()
            self._window.append(head)
        complete = len(self._window) == self.ancestors_needed or self._window[0].height == 0
        self._next_target = next_target(self._window, self.params) if complete else None

    def _on_new_head(self, now: int) -> list[Action]:
        actions: list[Action] = []
        self._templates.clear()
        self._committing = None
        self._ready = 0  # the runtime reports what is still ready after a commit
        if self._job is not None:
            actions.append(StopMining())
            self._job = None
        # Build at once even if a build on the old head is in flight: its answer is dropped
        # when it comes (or never comes: a runtime may refuse to build on a replaced head).
        self._build_parent = None
        return actions + self._build(now)

    def _build(self, now: int) -> list[Action]:
        if not self.mine or self._next_target is None:
            return []
        head = self._window[-1]
        assert self.miner_address is not None
        self._build_parent = head.hash
        self._last_build_at = now
        timestamp = max(now, median_time_past(self._window) + 1)
        return [BuildBlock(head.hash, head.height + 1, timestamp, self.miner_address, compact_bytes(self._next_target))]

    def _on_built(self, event: BlockBuilt) -> list[Action]:
        header = event.block.header
        if self._build_parent is None or header.parent != self._build_parent:
            return []  # the answer to a build on a head that has moved on
        self._build_parent = None
        if self._committing is not None:
            return []  # our block commits meanwhile; its BlockCommitted starts the next build
        assert self._next_target is not None  # a build was asked for, so the target was known
        if header.height != self._window[-1].height + 1 or header.extra != compact_bytes(self._next_target):
            raise ValueError("the runtime built a block other than the one asked for")
        self._templates[header.unsealed_bytes()] = event.block
        while len(self._templates) > 2:  # the running job's template and the one replacing it
            del self._templates[next(iter(self._templates))]
        actions: list[Action] = [StopMining()] if self._job is not None else []
        self._job = header
        actions.append(Mine(header, self._next_target))
        return actions + self._maybe_rebuild(event.now)

    def _on_mined(self, event: Mined) -> list[Action]:
        header = event.header
        template = self._templates.get(header.unsealed_bytes())
        if template is None or self._committing is not None or self._next_target is None:
            return []  # found for a head that has moved on, or a second find while committing
        if len(header.seal) != NONCE_SIZE or int.from_bytes(header.hash, "big") > self._next_target:
            raise ValueError("the miner returned a header that does not meet its target")
        actions: list[Action] = []
        if self._job is not None and self._job.unsealed_bytes() != header.unsealed_bytes():
            actions.append(StopMining())  # the replaced template won; its successor's job is moot
        self._job = None
        self._committing = header.hash
        actions.append(Commit(Block(header, template.transactions)))
        return actions

    def _on_tick(self, now: int) -> list[Action]:
        if self._timer_at is not None and now >= self._timer_at:
            self._timer_at = None
        if not self.mine or self._build_parent is not None or self._committing is not None:
            return []
        if self._job is None:
            return self._build(now)  # nothing runs (e.g. the window was incomplete): try again
        return self._maybe_rebuild(now)

    def _maybe_rebuild(self, now: int) -> list[Action]:
        job = self._job
        if job is None or self._build_parent is not None or self._committing is not None:
            return []
        full = self.max_block_transactions is not None and job.tx_count >= self.max_block_transactions
        if full or self._ready <= job.tx_count:
            return []
        due = self._last_build_at + REBUILD_INTERVAL_MS
        if now >= due:
            return self._build(now)
        if self._timer_at == due:
            return []
        self._timer_at = due
        return [SetTimer(due)]

    def status(self) -> EngineStatus:
        head = self._window[-1] if self._window else None
        if not self.mine:
            phase = "following"
        elif self._next_target is None:
            phase = "waiting for the head's recent headers"
        elif self._committing is not None:
            phase = "committing"
        elif self._job is not None:
            phase = "mining"
        else:
            phase = "building"
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role="miner" if self.mine else "follower",
            phase=phase,
            height=head.height + 1 if head is not None else None,
            validators=None,  # any miner may extend the chain
            details={
                "miner_address": self.miner_address.hex() if self.miner_address else None,
                "next_target": f"{self._next_target:064x}" if self._next_target is not None else None,
                "next_block_work": work_of_target(self._next_target) if self._next_target is not None else None,
                "target_block_ms": self.params.target_block_ms,
                "finality_depth": self.params.finality_depth,
            },
        )

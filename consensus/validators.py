"""The validator set of a BFT chain: who votes, with how much power, and who proposes.

Validators come from genesis (`engine.params.validators`: a list of
`{"public_key": hex, "power": int}`); a validator's address is the account id of its
key (`ledger.address.address_of`), so block fees go to the account it controls.

A quorum is *more than* two thirds of the total power (3 * power > 2 * total), and the
"f + 1" threshold of the paper is more than one third (3 * power > total): whatever
the split of power, two quorums always share more than a third, so they share an
honest validator as long as the faulty ones hold less than a third.

The proposer of (height, round) follows CometBFT's proposer priority, a weighted
round robin: every run, each priority grows by the validator's power, the highest
priority (ties: the smaller address) proposes and drops by the total power.  Before
a run, priorities whose spread exceeds twice the total power are scaled down and all
are centred on zero (no-ops for a set that never changes, kept so a later validator
set change follows the same rules).  Starting from zero priorities, the set of height
h has run h times (genesis runs once for height 1, as CometBFT's `NewValidatorSet`),
and round r of that height runs r more times from there in one call.  In any P
consecutive runs (P the total power), a validator proposes exactly its power times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
import threading
from functools import lru_cache
from typing import Any

from ledger import crypto
from ledger.address import address_of
from ledger.state import ValidatorUpdate

MAX_VALIDATORS = 500  # a commit certificate of all of them (84 bytes each) must fit a header's 64 KiB extra
# CometBFT's bound (int64 max / 8): priorities of +-2 P plus a power always fit 64 bits.
MAX_TOTAL_POWER = ((1 << 63) - 1) // 8
PRIORITY_WINDOW_FACTOR = 2  # priorities are rescaled when they spread over more than 2 P
_CHECKPOINT_EVERY = 256  # heights between remembered priority states


class InvalidValidatorSet(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Validator:
    address: bytes
    public_key: bytes
    power: int


class ValidatorSet:
    """An immutable validator set, ordered by address (the order certificates use)."""

    def __init__(self, validators: Iterable[Validator]):
        members = sorted(validators, key=lambda v: v.address)
        if not members:
            raise InvalidValidatorSet("a validator set needs at least one validator")
        if len(members) > MAX_VALIDATORS:
            raise InvalidValidatorSet(f"at most {MAX_VALIDATORS} validators")
        for member in members:
            if not crypto.is_valid_public_key(member.public_key):
                raise InvalidValidatorSet(f"validator {member.public_key.hex()} is not a compressed secp256k1 key")
            if member.address != address_of(member.public_key):
                raise InvalidValidatorSet(f"validator address {member.address.hex()} is not the address of its key")
            if isinstance(member.power, bool) or not isinstance(member.power, int) or member.power < 1:
                raise InvalidValidatorSet(f"validator {member.address.hex()}: power must be a positive integer")
        for first, second in zip(members, members[1:]):
            if first.address == second.address:
                raise InvalidValidatorSet(f"validator {first.address.hex()} is listed twice")
        total = sum(member.power for member in members)
        if total > MAX_TOTAL_POWER:
            raise InvalidValidatorSet(f"total voting power {total} exceeds {MAX_TOTAL_POWER}")
        self.validators: tuple[Validator, ...] = tuple(members)
        self.total_power = total
        self._by_address = {member.address: member for member in members}
        self._schedule = _ProposerSchedule(tuple(m.power for m in members), tuple(m.address for m in members))

    @classmethod
    def from_genesis(cls, entries: Any) -> ValidatorSet:
        """From genesis `engine.params.validators`; a clear error names the bad entry."""
        if not isinstance(entries, list) or not entries:
            raise InvalidValidatorSet("engine.params.validators must be a non-empty list of {public_key, power}")
        members = []
        for index, entry in enumerate(entries):
            where = f"engine.params.validators[{index}]"
            if not isinstance(entry, dict):
                raise InvalidValidatorSet(f"{where} must be an object {{public_key, power}}")
            unknown = sorted(set(entry) - {"public_key", "power"})
            if unknown:
                raise InvalidValidatorSet(f"{where}: unknown fields {', '.join(unknown)}")
            text = entry.get("public_key")
            if not isinstance(text, str):
                raise InvalidValidatorSet(f"{where}.public_key must be a hex string")
            try:
                public_key = bytes.fromhex(text.removeprefix("0x"))
            except ValueError:
                raise InvalidValidatorSet(f"{where}.public_key is not hex") from None
            if not crypto.is_valid_public_key(public_key):
                raise InvalidValidatorSet(f"{where}.public_key is not a compressed secp256k1 public key")
            power = entry.get("power")
            if isinstance(power, bool) or not isinstance(power, int) or not 1 <= power <= MAX_TOTAL_POWER:
                raise InvalidValidatorSet(f"{where}.power must be an integer from 1 to {MAX_TOTAL_POWER}")
            members.append(Validator(address_of(public_key), public_key, power))
        return cls(members)

    def updated(self, updates: Iterable[ValidatorUpdate]) -> ValidatorSet:
        """The set after `updates`, in order: a key's power becomes the update's; 0 removes it.
        Raises InvalidValidatorSet if the result is not a valid set (empty, too many, a bad key)."""
        members = {v.address: v for v in self.validators}
        for update in updates:
            address = address_of(update.public_key)
            if update.power == 0:
                members.pop(address, None)
            else:
                members[address] = Validator(address, update.public_key, update.power)
        return ValidatorSet(members.values())

    def to_genesis(self) -> list[dict]:
        return [{"public_key": v.public_key.hex(), "power": v.power} for v in self.validators]

    # ------------------------------------------------------------------ membership
    def __len__(self) -> int:
        return len(self.validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self.validators)

    def __contains__(self, address: object) -> bool:
        return address in self._by_address

    def get(self, address: bytes) -> Validator | None:
        return self._by_address.get(address)

    def power_of(self, addresses: Iterable[bytes]) -> int:
        """Total power of the distinct validators among `addresses` (others count nothing)."""
        seen: dict[bytes, int] = {}
        for address in addresses:
            member = self._by_address.get(address)
            if member is not None:
                seen[address] = member.power
        return sum(seen.values())

    # ------------------------------------------------------------------ thresholds
    def is_quorum(self, power: int) -> bool:
        """More than two thirds of the total power: the paper's 2f + 1."""
        return 3 * power > 2 * self.total_power

    def is_one_third(self, power: int) -> bool:
        """More than one third of the total power: the paper's f + 1 (at least one honest)."""
        return 3 * power > self.total_power

    @property
    def quorum_power(self) -> int:
        """The smallest power that is a quorum."""
        return 2 * self.total_power // 3 + 1

    # ------------------------------------------------------------------ proposer rotation
    def proposer(self, height: int, round: int) -> Validator:
        if height < 1 or round < 0:
            raise ValueError("a proposer exists for heights from 1 and rounds from 0")
        return self.validators[self._schedule.proposer(height, round)]


# ----------------------------------------------------------------------------- priorities


def _truncating_division(value: int, divisor: int) -> int:
    """Go's integer division (towards zero), as CometBFT's rescaling uses it."""
    quotient = abs(value) // divisor
    return quotient if value >= 0 else -quotient


def increment_priorities(
    priorities: Sequence[int], powers: Sequence[int], addresses: Sequence[bytes], times: int
) -> tuple[tuple[int, ...], int]:
    """CometBFT's IncrementProposerPriority: rescale and centre once, then `times` runs.
    Returns the new priorities and the index of the last run's proposer."""
    if times < 1:
        raise ValueError("at least one run")
    total = sum(powers)
    values = list(priorities)
    # Scale priorities whose spread is too wide (CometBFT's RescalePriorities).
    window = PRIORITY_WINDOW_FACTOR * total
    spread = max(values) - min(values)
    if spread > window:
        ratio = -(-spread // window)
        values = [_truncating_division(value, ratio) for value in values]
    # Centre on zero (shiftByAvgProposerPriority; big.Int division floors for n > 0).
    average = sum(values) // len(values)
    values = [value - average for value in values]
    proposer = -1
    for _ in range(times):
        values = [value + power for value, power in zip(values, powers)]
        proposer = 0
        for index in range(1, len(values)):
            if values[index] > values[proposer] or (
                values[index] == values[proposer] and addresses[index] < addresses[proposer]
            ):
                proposer = index
        values[proposer] -= total
    return tuple(values), proposer


class _ProposerSchedule:
    """Priorities by height, computed forward once and remembered at checkpoints; when
    the priorities come back to all zeros the sequence repeats, and heights fold onto
    its period (for a stable set the period divides the total power).

    The event loop and API threads (an engine's `status()`) both ask for proposers, and
    computing forward moves the frontier in two steps: one lock keeps it consistent."""

    def __init__(self, powers: tuple[int, ...], addresses: tuple[bytes, ...]):
        self.powers = powers
        self.addresses = addresses
        zero = tuple(0 for _ in powers)
        self._zero = zero
        self._checkpoints: dict[int, tuple[tuple[int, ...], int]] = {0: (zero, -1)}
        self._frontier = 0  # highest height computed
        self._frontier_state: tuple[tuple[int, ...], int] = (zero, -1)
        self._period: int | None = None
        self._lock = threading.Lock()
        self.proposer = lru_cache(maxsize=4096)(self._proposer)

    def _step(self, state: tuple[tuple[int, ...], int]) -> tuple[tuple[int, ...], int]:
        return increment_priorities(state[0], self.powers, self.addresses, 1)

    def height_state(self, height: int) -> tuple[tuple[int, ...], int]:
        """(priorities, proposer of round 0) of the set at `height` >= 1."""
        with self._lock:
            return self._height_state(height)

    def _height_state(self, height: int) -> tuple[tuple[int, ...], int]:
        while self._period is None and self._frontier < height:
            self._frontier_state = self._step(self._frontier_state)
            self._frontier += 1
            if self._frontier % _CHECKPOINT_EVERY == 0:
                self._checkpoints[self._frontier] = self._frontier_state
            if self._frontier_state[0] == self._zero:
                self._period = self._frontier
                self._checkpoints[self._frontier] = self._frontier_state
        if self._period is not None:
            height = (height - 1) % self._period + 1
        if height == self._frontier:
            return self._frontier_state
        at = height - height % _CHECKPOINT_EVERY  # a checkpoint: every one up to the frontier is kept
        state = self._checkpoints[at]
        while at < height:
            state = self._step(state)
            at += 1
        return state

    def _proposer(self, height: int, round: int) -> int:
        priorities, proposer = self.height_state(height)
        if round == 0:
            return proposer
        return increment_priorities(priorities, self.powers, self.addresses, round)[1]


def validator_set_of(keys: Iterable[tuple[bytes, int]]) -> ValidatorSet:
    """A set from (public key, power) pairs, for tests and tools."""
    return ValidatorSet(Validator(address_of(key), key, power) for key, power in keys)


class ValidatorSchedule:
    """The validator set of every height an engine still checks blocks of.

    Updates that executing block h decided take effect at h + UPDATE_DELAY (CometBFT's
    rule: the block after h is already being agreed on by the old set when h commits).
    Each set's proposer rotation starts afresh at its first height.  Sets no height in the
    window needs any more are dropped (`forget_below`).
    """

    UPDATE_DELAY = 2

    def __init__(self, genesis_set: ValidatorSet):
        self._sets: list[tuple[int, ValidatorSet]] = [(1, genesis_set)]  # (first height, set), ascending

    def at(self, height: int) -> ValidatorSet:
        """The set that proposes and votes at `height` (heights beyond the newest change use the newest set)."""
        for first, validators in reversed(self._sets):
            if first <= height:
                return validators
        return self._sets[0][1]

    def proposer(self, height: int, round: int) -> Validator:
        for first, validators in reversed(self._sets):
            if first <= height:
                return validators.proposer(height - first + 1, round)
        raise ValueError(f"no validator set covers height {height}")

    def apply(self, height: int, updates: Sequence[ValidatorUpdate]) -> None:
        """Block `height` committed with `updates`; a set decided before for a later height (a
        branch since reverted) is replaced."""
        first = height + self.UPDATE_DELAY
        self._sets = [(start, s) for start, s in self._sets if start < first]
        if updates:
            self._sets.append((first, self.at(first).updated(updates)))

    def forget_below(self, height: int) -> None:
        """Drop the sets that only heights below `height` used (the oldest kept still covers it)."""
        while len(self._sets) > 1 and self._sets[1][0] <= height:
            self._sets.pop(0)

    def __len__(self) -> int:
        return len(self._sets)

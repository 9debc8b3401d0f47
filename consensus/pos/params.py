"""Proof-of-stake parameters, from genesis `engine.params` (every key checked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger.codec import MAX_AMOUNT

_BPS = 10_000  # basis points in one whole


@dataclass(frozen=True, slots=True)
class PosParams:
    slot_ms: int = 1000
    slots_per_epoch: int = 8
    # The least bonded stake that makes an active validator; below it a validator exits whole.
    min_stake: int = 10**9
    # At most this many validators enter, and this many leave, at one epoch boundary.
    churn_limit: int = 4
    # Epochs between an exit and the release of its stake (slashable meanwhile).
    exit_delay_epochs: int = 2
    # New money each epoch (0.1 coin: a missed vote costs little beside a 32-coin stake,
    # yet shows): 7/8 shared by timely attesters by stake, 1/8 by proposers for the
    # attestations they include (Ethereum's split of the base reward).
    issuance_per_epoch: int = 10**8
    # What a slashing takes of the offender's stake, and what of that the includer receives.
    slash_bps: int = 1000
    whistleblower_bps: int = 1000
    # Epochs without finality before the inactivity leak starts, and what it takes each epoch
    # of the stake of those who did not attest.
    inactivity_leak_after: int = 4
    inactivity_leak_bps: int = 1000
    # True: every active validator attests in every slot (small sets); False: once an epoch, in
    # a slot the epoch's seed assigns.
    attest_every_slot: bool = True
    max_attestations_per_block: int = 256
    max_slashings_per_block: int = 4

    @property
    def epoch_ms(self) -> int:
        return self.slot_ms * self.slots_per_epoch

    @classmethod
    def from_genesis(cls, params: Any) -> PosParams:
        if not isinstance(params, dict):
            raise ValueError("pos engine: genesis engine.params must be an object")
        defaults = cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"pos engine: unknown engine.params {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        ranges = {
            "slot_ms": (50, 3_600_000), "slots_per_epoch": (2, 1024), "min_stake": (1, MAX_AMOUNT),
            "churn_limit": (1, 10_000), "exit_delay_epochs": (1, 10_000), "issuance_per_epoch": (0, 10**15),
            "slash_bps": (1, _BPS), "whistleblower_bps": (0, _BPS), "inactivity_leak_after": (1, 10_000),
            "inactivity_leak_bps": (0, _BPS), "max_attestations_per_block": (1, 4096),
            "max_slashings_per_block": (1, 64),
        }
        values: dict[str, Any] = {}
        for name, (low, high) in ranges.items():
            value = params.get(name, getattr(defaults, name))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"pos engine: engine.params.{name} must be an integer from {low} to {high}, got {value!r}")
            values[name] = value
        every = params.get("attest_every_slot", defaults.attest_every_slot)
        if not isinstance(every, bool):
            raise ValueError("pos engine: engine.params.attest_every_slot must be true or false")
        return cls(attest_every_slot=every, **values)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def bps(amount: int, basis_points: int) -> int:
    return amount * basis_points // _BPS

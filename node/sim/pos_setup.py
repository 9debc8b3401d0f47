"""Proof of stake in the simulator: the genesis of a run whose nodes are validators of
equal stake, and the bound its partitions keep.

Slots are short (500 ms, 4 an epoch) so a run of the default 20 virtual seconds spans ten
epochs.  A partition heals by itself after `inactivity_leak_after` epochs: under a longer
one the inactivity leak drains each side's absent half until both sides hold two thirds of
what is left and finalize different branches.  That is Gasper's known limit (the paper's
"finality under a long partition" discussion), not a bug for the simulator to report, as
a branch past the finality depth is not for proof of work.
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.pos.params import PosParams
from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis, GenesisStake

STAKE = 32 * 10**9


def pos_genesis(chain_id: str, timestamp: int, validators: Sequence[PrivateKey], accounts: Sequence[PrivateKey],
                balance: int, slot_ms: int, slots_per_epoch: int) -> Genesis:
    return Genesis(
        chain_id=chain_id,
        address_prefix="dev",
        timestamp=timestamp,
        engine="pos",
        engine_params={"slot_ms": slot_ms, "slots_per_epoch": slots_per_epoch},
        allocations={address_of(key.public_key): balance for key in accounts},
        stakes=tuple(GenesisStake(address_of(key.public_key), key.public_key, STAKE) for key in validators),
    )


def partition_bound_seconds(slot_ms: int, slots_per_epoch: int) -> float:
    """How long a partition may last before the inactivity leak could let both sides finalize."""
    return PosParams().inactivity_leak_after * slot_ms * slots_per_epoch / 1000

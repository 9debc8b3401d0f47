"""The double-sign guard (a validator's own slashing protection), and the saved state it
travels in.

The newest slot proposed and the newest FFG vote signed are in the `Persist` that precedes
every signed message, and a vote is signed only when its target epoch is beyond every
earlier one (or the very same vote again) and its source no older: such a vote can neither
double nor surround.  The saved state also holds the node's key (a restart with another key
starts a fresh guard) and the beacon states the engine needs to go on after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger.codec import DecodeError, Reader, Writer

from consensus.pos import beacon
from consensus.pos.beacon import BeaconState
from consensus.pos.messages import Checkpoint


@dataclass(frozen=True, slots=True)
class Guard:
    """What this validator signed last: enough to never sign a slashable pair."""

    proposed_slot: int = -1
    source: Checkpoint | None = None
    target: Checkpoint | None = None

    def may_propose(self, slot: int) -> bool:
        return slot > self.proposed_slot

    def may_vote(self, source: Checkpoint, target: Checkpoint) -> bool:
        if self.target is None or self.source is None:
            return True
        if (source, target) == (self.source, self.target):
            return True
        return target.epoch > self.target.epoch and source.epoch >= self.source.epoch


def encode_saved(key: bytes, guard: Guard, states: Sequence[BeaconState]) -> bytes:
    w = Writer().u8(1).var_bytes(key).u64(guard.proposed_slot + 1).u8(guard.target is not None)
    if guard.target is not None and guard.source is not None:
        guard.source.write(w)
        guard.target.write(w)
    w.u8(len(states))
    for state in states:
        w.var_bytes(beacon.encode_state(state))
    return w.bytes()


def decode_saved(data: bytes) -> tuple[bytes, Guard, list[BeaconState]]:
    r = Reader(data)
    if r.u8("saved.version") != 1:
        raise DecodeError("saved.version", "unknown proof-of-stake saved state")
    key = r.var_bytes("saved.key", 33)
    proposed = r.u64("saved.proposed") - 1
    guard = Guard(proposed)
    if r.u8("saved.voted"):
        guard = Guard(proposed, Checkpoint.read(r, "saved.source"), Checkpoint.read(r, "saved.target"))
    states = []
    for _ in range(r.u8("saved.states")):
        inner = Reader(r.var_bytes("saved.state", 1 << 24))
        states.append(beacon.read_state(inner))
        inner.finish()
    r.finish()
    return key, guard, states

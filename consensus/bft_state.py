"""Tendermint's parameters, read from genesis, and what a validator persists to never sign
twice (CometBFT's "last sign state"): the round it is in, its locks, the last thing it signed
and its own votes, restored from `Started.persisted` (consensus/bft.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ledger.block import HASH_SIZE
from ledger.codec import DecodeError, Reader, Writer

from consensus.bft_messages import MAX_BLOCK_BYTES, MAX_CERTIFICATE_BYTES, Vote
from consensus.validators import MAX_VALIDATORS, InvalidValidatorSet, ValidatorSet

PERSIST_VERSION = 1
MAX_SIGNED_PAYLOAD = 1024
MAX_EVIDENCE_AGE = 10_000  # heights; the runtime keeps this many recent headers in memory


class Step(IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


# ----------------------------------------------------------------------------- parameters

_TIMEOUT_LIMIT = 24 * 3600 * 1000


@dataclass(frozen=True)
class BftParams:
    timeout_propose_ms: int = 3000
    timeout_prevote_ms: int = 1000
    timeout_precommit_ms: int = 1000
    timeout_delta_ms: int = 500
    create_empty_blocks: bool = False
    max_block_interval_ms: int = 0  # 0: round 0 waits for transactions as long as it takes
    min_block_interval_ms: int = 0
    gossip_interval_ms: int = 1000
    # Evidence older than this many heights can no longer go into a block.  It bounds the
    # headers a block's evidence is checked against for duplicates (`ancestors_needed`).
    evidence_max_age: int = 100

    def timeout_propose(self, round: int) -> int:
        return self.timeout_propose_ms + round * self.timeout_delta_ms

    def timeout_prevote(self, round: int) -> int:
        return self.timeout_prevote_ms + round * self.timeout_delta_ms

    def timeout_precommit(self, round: int) -> int:
        return self.timeout_precommit_ms + round * self.timeout_delta_ms

    @classmethod
    def from_genesis(cls, params: Any) -> tuple[BftParams, ValidatorSet]:
        """Validate genesis `engine.params`; a misspelt key is an error, not a default."""
        if not isinstance(params, dict):
            raise ValueError("bft engine: genesis engine.params must be an object")
        known = {"validators", "timeout_propose_ms", "timeout_prevote_ms", "timeout_precommit_ms",
                 "timeout_delta_ms", "create_empty_blocks", "max_block_interval_ms", "min_block_interval_ms",
                 "gossip_interval_ms", "evidence_max_age"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"bft engine: unknown engine.params {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            validators = ValidatorSet.from_genesis(params.get("validators"))
        except InvalidValidatorSet as exc:
            raise ValueError(f"bft engine: {exc}") from None
        empty = params.get("create_empty_blocks", False)
        if not isinstance(empty, bool):
            raise ValueError("bft engine: engine.params.create_empty_blocks must be true or false")
        defaults = cls()
        return cls(
            timeout_propose_ms=_int_param(params, "timeout_propose_ms", 1, defaults.timeout_propose_ms),
            timeout_prevote_ms=_int_param(params, "timeout_prevote_ms", 1, defaults.timeout_prevote_ms),
            timeout_precommit_ms=_int_param(params, "timeout_precommit_ms", 1, defaults.timeout_precommit_ms),
            timeout_delta_ms=_int_param(params, "timeout_delta_ms", 0, defaults.timeout_delta_ms),
            create_empty_blocks=empty,
            max_block_interval_ms=_int_param(params, "max_block_interval_ms", 0, 0),
            min_block_interval_ms=_int_param(params, "min_block_interval_ms", 0, 0),
            gossip_interval_ms=_int_param(params, "gossip_interval_ms", 1, defaults.gossip_interval_ms),
            evidence_max_age=_int_param(params, "evidence_max_age", 1, defaults.evidence_max_age, MAX_EVIDENCE_AGE),
        ), validators


def _int_param(params: dict, name: str, low: int, default: int, high: int = _TIMEOUT_LIMIT) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"bft engine: engine.params.{name} must be an integer from {low} to {high}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- persisted state


@dataclass(frozen=True, slots=True)
class LastSigned:
    """The last thing this validator signed (the double-sign guard)."""

    height: int
    round: int
    step: Step
    payload: bytes
    signature: bytes

    @property
    def hrs(self) -> tuple[int, int, int]:
        return (self.height, self.round, int(self.step))


@dataclass(frozen=True, slots=True)
class SavedState:
    signer: bytes
    height: int
    round: int
    step: Step
    locked: tuple[int, bytes] | None
    valid: tuple[int, bytes] | None
    signed: LastSigned | None
    # Our votes of (height, round), both of them: after a restart they are repeated, not
    # re-signed.  Without the prevote a validator that restarted in the precommit step
    # could leave its round with too few prevotes ever to arm a timeout.
    own_votes: tuple[bytes, ...]
    # The valid value (lines 42-43) and the prevotes that made it valid (its POL): a
    # validator locked on it can still re-propose it after a restart (lines 15-16, 28).
    # Lost, the locked validators would prevote nil on every other value for ever.
    valid_block: bytes
    pol_votes: tuple[bytes, ...]
    certificate: bytes  # the newest certificate this validator decided (b"" if none)

    def encode(self) -> bytes:
        writer = Writer().u8(PERSIST_VERSION).fixed(self.signer, 20).u64(self.height).u32(self.round).u8(int(self.step))
        for pair in (self.locked, self.valid):
            if pair is None:
                writer.u8(0)
            else:
                writer.u8(1).u32(pair[0]).fixed(pair[1], HASH_SIZE)
        if self.signed is None:
            writer.u8(0)
        else:
            s = self.signed
            writer.u8(1).u64(s.height).u32(s.round).u8(int(s.step)).var_bytes(s.payload).fixed(s.signature, 64)
        writer.u8(len(self.own_votes))
        for vote in self.own_votes:
            writer.var_bytes(vote)
        writer.var_bytes(self.valid_block).u32(len(self.pol_votes))
        for vote in self.pol_votes:
            writer.var_bytes(vote)
        return writer.var_bytes(self.certificate).bytes()

    @classmethod
    def decode(cls, data: bytes) -> SavedState:
        reader = Reader(data)
        version = reader.u8("state.version")
        if version != PERSIST_VERSION:
            raise DecodeError("state.version", f"unknown version {version}")
        signer = reader.fixed(20, "state.signer")
        height = reader.amount("state.height")
        round = reader.u32("state.round")
        step = _read_step(reader, "state.step")
        pairs: list[tuple[int, bytes] | None] = []
        for name in ("state.locked", "state.valid"):
            flag = reader.u8(name)
            if flag not in (0, 1):
                raise DecodeError(name, "flag must be 0 or 1")
            pairs.append((reader.u32(name), reader.fixed(HASH_SIZE, name)) if flag else None)
        flag = reader.u8("state.signed")
        if flag not in (0, 1):
            raise DecodeError("state.signed", "flag must be 0 or 1")
        signed = None
        if flag:
            signed = LastSigned(
                reader.amount("state.signed.height"), reader.u32("state.signed.round"),
                _read_step(reader, "state.signed.step"), reader.var_bytes("state.signed.payload", MAX_SIGNED_PAYLOAD),
                reader.fixed(64, "state.signed.signature"),
            )
        count = reader.u8("state.own_votes")
        if count > 2:
            raise DecodeError("state.own_votes", f"{count} votes; a round has at most a prevote and a precommit")
        own_votes = tuple(reader.var_bytes("state.own_votes", MAX_SIGNED_PAYLOAD) for _ in range(count))
        valid_block = reader.var_bytes("state.valid_block", MAX_BLOCK_BYTES)
        count = reader.u32("state.pol_votes")
        if count > MAX_VALIDATORS:
            raise DecodeError("state.pol_votes", f"{count} votes exceeds {MAX_VALIDATORS}")
        pol_votes = tuple(reader.var_bytes("state.pol_votes", MAX_SIGNED_PAYLOAD) for _ in range(count))
        for vote in own_votes + pol_votes:
            Vote.decode(vote)
        certificate = reader.var_bytes("state.certificate", MAX_CERTIFICATE_BYTES)
        reader.finish()
        return cls(signer, height, round, step, pairs[0], pairs[1], signed, own_votes, valid_block, pol_votes,
                   certificate)


def _read_step(reader: Reader, field: str) -> Step:
    value = reader.u8(field)
    if value not in (1, 2, 3):
        raise DecodeError(field, f"unknown step {value}")
    return Step(value)

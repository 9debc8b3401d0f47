"""What a consensus engine reports about itself, as types every engine shares.

The engines (`consensus/`) produce these; the API and the explorer render them without
knowing which engine runs (one schema, `GET /v1/consensus` and `GET /v1/validators`).
They live in `ledger` because both sides import it and neither imports the other.
A field an engine has no notion of stays None (PoW has no round, BFT no epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ledger.evidence import EvidenceRecord


class Finality(str, Enum):
    """How a block of this engine becomes final (DESIGN.md principle 8)."""

    AT_COMMIT = "at_commit"  # final the moment it commits (solo: one authority)
    DEPTH = "depth"  # probabilistic: final under a configured number of blocks (proof of work)
    CERTIFICATE = "certificate"  # a commit certificate of 2/3+ of the voting power (BFT)
    REPLICATION = "replication"  # stored on a majority of the members (Raft)
    CHECKPOINT = "checkpoint"  # its epoch checkpoint finalized by 2/3 of the stake (proof of stake)


@dataclass(frozen=True, slots=True)
class ValidatorStatus:
    """One member of the set that may produce or vote for blocks."""

    address: bytes  # 20-byte account id of its key
    public_key: bytes
    power: int  # voting power, or stake
    blocks_proposed: int = 0  # blocks of the chain this node holds that it proposed
    last_signed_height: int | None = None  # the newest height it signed (a proposal or a commit vote)
    jailed: bool = False
    slashed: int = 0  # amount taken for misbehaviour
    # Where it stands in a set that changes (proof of stake): pending, active, exiting,
    # exited or slashed; None where the set is fixed.
    status: str | None = None
    # Proof of stake: whether its vote for the previous / the current epoch is on the chain.
    attested_previous_epoch: bool | None = None
    attested_current_epoch: bool | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    epoch: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class EngineStatus:
    engine: str  # the registry name: solo, pow, bft, ...
    finality: Finality
    role: str  # what this node does: producer, follower, validator, miner, leader, ...
    phase: str  # what the engine waits for now, in a few words
    height: int | None = None  # the height the engine is working on (None: not started)
    round: int | None = None
    step: str | None = None
    term: int | None = None
    slot: int | None = None  # proof of stake: the current slot (epoch = slot // slots per epoch)
    epoch: int | None = None
    justified: Checkpoint | None = None
    finalized: Checkpoint | None = None
    # None: the engine has no validator set (proof of work: any miner may extend the chain).
    validators: tuple[ValidatorStatus, ...] | None = None
    total_power: int | None = None
    quorum_power: int | None = None
    evidence: tuple[EvidenceRecord, ...] = ()  # misbehaviour the engine saw (not only what blocks record)
    # Engine-specific state for debugging (votes by round, targets, parameters): JSON values only.
    details: Mapping[str, object] = field(default_factory=dict)

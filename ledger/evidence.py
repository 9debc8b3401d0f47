"""Evidence of validator misbehaviour as the chain records it, whatever the engine.

An engine that punishes misbehaviour (BFT: two conflicting signed votes or proposals)
puts the proof in a block; the runtime stores one record per proof with the block, so
the API can list them by validator without knowing the engine's encoding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    validator: bytes  # 20-byte address of the validator that misbehaved
    height: int  # where the misbehaviour happened
    round: int
    kind: str  # e.g. "duplicate_vote", "duplicate_proposal"
    data: bytes  # the engine's encoding of the proof, verifiable on its own

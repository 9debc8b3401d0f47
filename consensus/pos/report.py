"""What PosEngine tells others rather than decides: the evidence records of the slashings
a committed block carries (for the store's evidence table) and its `status()` for the API
(slot and epoch, checkpoints, the registry, participation).

Nothing here moves the head or a checkpoint: the rules in consensus/pos/engine.py and
beacon.py do.  Mixed into PosEngine, whose state it reads.
"""

from __future__ import annotations

from ledger.block import BlockHeader
from ledger.engine_status import Checkpoint as StatusCheckpoint
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus
from ledger.evidence import EvidenceRecord

from consensus.pos import beacon
from consensus.pos.beacon import BeaconState
from consensus.pos.forkchoice import BlockTree
from consensus.pos.messages import (
    Attestation,
    AttesterSlashing,
    PosExtra,
    ProposerSlashing,
    encode_message,
    slashable_votes,
)
from consensus.pos.params import PosParams


class ReportPart:
    """Mixed into PosEngine."""

    name: str
    finality: Finality
    params: PosParams
    genesis_state: BeaconState
    head: BlockHeader | None
    tree: BlockTree
    pool: dict[tuple[int, int], Attestation]
    evidence_seen: dict[bytes, EvidenceRecord]
    proposed: dict[int, int]
    refused_messages: int
    _states: dict[bytes, BeaconState]

    def _head_state(self) -> BeaconState: ...

    def current_slot(self) -> int: ...

    def _my_index(self, state: BeaconState) -> int | None: ...

    def block_evidence(self, header: BlockHeader) -> list[EvidenceRecord]:
        if header.height == 0:
            return []
        extra = PosExtra.decode(header.extra)
        state = self._states.get(header.hash) or self._head_state()
        records = []
        for item in extra.proposer_slashings:
            records.append(self._record(item, state))
        for item in extra.attester_slashings:
            records.append(self._record(item, state))
        return records

    def _record(self, item: ProposerSlashing | AttesterSlashing, state: BeaconState) -> EvidenceRecord:
        validator = state.validators[item.validator] if item.validator < len(state.validators) else None
        owner = validator.owner if validator is not None else bytes(20)
        if isinstance(item, ProposerSlashing):
            return EvidenceRecord(owner, item.first.slot, 0, "proposer_equivocation", encode_message(item))
        kind = slashable_votes(item.first, item.second) or "invalid"
        return EvidenceRecord(owner, item.second.slot, 0, kind, encode_message(item))

    def status(self) -> EngineStatus:
        # Asked before Started too (a node that is still opening): the genesis state then.
        state = self._head_state() if self.head is not None else self.genesis_state
        slot = self.current_slot()
        epoch = slot // self.params.slots_per_epoch
        index = self._my_index(state)
        total = sum(state.epoch_stake)
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role="validator" if index is not None else "follower",
            phase="not started" if self.head is None else f"slot {slot} of epoch {epoch}",
            height=self.head.height + 1 if self.head is not None else None,
            slot=slot,
            epoch=epoch,
            justified=StatusCheckpoint(state.justified.epoch, state.justified.root),
            finalized=StatusCheckpoint(state.finalized.epoch, state.finalized.root),
            validators=tuple(
                ValidatorStatus(
                    address=v.owner, public_key=v.key, power=v.stake, blocks_proposed=self.proposed.get(i, 0),
                    jailed=v.slashed, slashed=v.slashed_amount, status=v.status(epoch),
                    attested_previous_epoch=i in state.previous_votes, attested_current_epoch=i in state.votes,
                )
                for i, v in enumerate(state.validators)
            ),
            total_power=total,
            quorum_power=(2 * total + 2) // 3,
            evidence=tuple(self.evidence_seen.values()),
            details={
                "slot": slot,
                "slot_ms": self.params.slot_ms,
                "slots_per_epoch": self.params.slots_per_epoch,
                "head_slot": state.slot,
                # The best checkpoints any known branch reached (the fork choice starts there).
                "store_justified": {"epoch": self.tree.justified.epoch, "root": self.tree.justified.root.hex()},
                "store_finalized": {"epoch": self.tree.finalized.epoch, "root": self.tree.finalized.root.hex()},
                "missed_slots": state.missed,
                "randao_mix": state.randao_mix.hex(),
                "validator_index": index,
                "participation": {
                    "previous_epoch": sorted(state.previous_votes),
                    "current_epoch": sorted(state.votes),
                },
                "registry": [
                    {"index": i, "owner": v.owner.hex(), "activation_epoch": None if v.activation_epoch == beacon.FAR else v.activation_epoch,
                     "exit_epoch": None if v.exit_epoch == beacon.FAR else v.exit_epoch, "unbonding": v.unbonding,
                     "release_epoch": v.release_epoch, "exit_requested": v.exit_requested}
                    for i, v in enumerate(state.validators)
                ],
                "attestation_pool": len(self.pool),
                "refused_messages": self.refused_messages,
                "params": self.params.to_json(),
            },
        )

"""What BftEngine keeps and tells others rather than decides: the evidence of
equivocation it has seen (reported with ReportEvidence, chosen for the blocks it builds,
and learnt from the blocks it commits) and its `status()` for the API.

Nothing here moves a height or a round: the rules in consensus/bft.py only hand it the
evidence they catch and read back what to record.  Mixed into BftEngine, whose state it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.block import Block, BlockHeader
from ledger.codec import DecodeError
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus

from consensus.bft_headers import evidence_record
from consensus.bft_evidence import MAX_BLOCK_EVIDENCE, BlockExtra, Evidence, InvalidEvidence, verify_evidence
from consensus.bft_messages import Certificate, Vote, VoteType
from consensus.bft_state import BftParams, Step
from consensus.engine import Action, ReportEvidence
from consensus.validators import ValidatorSchedule, ValidatorSet

MAX_EVIDENCE = 1000  # kept for the API; older ones are dropped (they were reported)


class EvidenceAndStatus:
    """Mixed into BftEngine: its state is initialised by BftEngine.__init__."""

    name: str
    finality: Finality
    chain_id: str
    params: BftParams
    schedule: ValidatorSchedule
    validators: ValidatorSet  # the current height's
    address: bytes | None
    is_validator: bool
    head: BlockHeader | None
    decided: tuple[Block, Certificate] | None
    height: int
    round: int
    step: Step
    locked_round: int
    locked_hash: bytes | None
    valid_round: int
    valid_hash: bytes | None
    waiting_for_txs: bool
    refused_messages: int
    evidence: dict[tuple[bytes, int, int, int], Evidence]
    _recorded: dict[tuple[bytes, int, int, int], int]
    _by_value: dict[tuple[int, VoteType], dict[bytes | None, dict[bytes, Vote]]]
    _proposed_count: dict[bytes, int]
    _last_signed_height: dict[bytes, int]
    _out: list[Action]

    if TYPE_CHECKING:
        # Defined by BftEngine: declared for type checkers only, so the stub can never
        # stand in for a missing method.
        def _proposer_address(self, round: int) -> bytes: ...

    # ------------------------------------------------------------------ evidence
    def _report(self, evidence: Evidence) -> None:
        if evidence.key in self.evidence:
            return
        try:
            # What we keep we put in blocks: it must pass the check every node makes there.
            verify_evidence(evidence, self.schedule.at(evidence.height), self.chain_id)
        except InvalidEvidence:
            return
        self._keep(evidence)
        self._out.append(ReportEvidence(evidence.encode()))

    def _keep(self, evidence: Evidence) -> None:
        self.evidence[evidence.key] = evidence
        while len(self.evidence) > MAX_EVIDENCE:
            del self.evidence[next(iter(self.evidence))]

    def _evidence_to_record(self) -> tuple[Evidence, ...]:
        """Evidence for the block being built: seen, not yet in a block, not too old."""
        oldest = self.height - self.params.evidence_max_age
        chosen = [
            evidence for key, evidence in self.evidence.items()
            if key not in self._recorded and oldest <= evidence.height < self.height
        ]
        return tuple(chosen[:MAX_BLOCK_EVIDENCE])

    def _note_recorded(self, header: BlockHeader) -> BlockExtra | None:
        """Remember the evidence a committed header records (and forget what aged out)."""
        try:
            extra = BlockExtra.decode(header.extra)
        except DecodeError:
            return None  # a header from before Started or a foreign one: nothing to learn
        for evidence in extra.evidence:
            self._recorded[evidence.key] = header.height
            if evidence.key not in self.evidence:
                self._keep(evidence)  # shown by the API, though another validator caught it
        oldest = header.height + 1 - self.params.evidence_max_age
        if self._recorded and min(key[1] for key in self._recorded) < oldest:
            self._recorded = {key: at for key, at in self._recorded.items() if key[1] >= oldest}
        return extra

    # ================================================================== status
    def status(self) -> EngineStatus:
        # The runtime calls this between events (under its lock); the set and our address are
        # still read once, so every row and total comes from the same set.
        validators, address = self.validators, self.address
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role="validator" if self.is_validator else "follower",
            phase=self._phase(),
            height=self.height if self.head is not None else None,
            round=self.round,
            step="decided" if self.decided is not None else self.step.name.lower(),
            validators=tuple(
                ValidatorStatus(
                    address=v.address, public_key=v.public_key, power=v.power,
                    blocks_proposed=self._proposed_count.get(v.address, 0),
                    last_signed_height=self._last_signed_height.get(v.address),
                )
                for v in validators
            ),
            total_power=validators.total_power,
            quorum_power=validators.quorum_power,
            evidence=tuple(evidence_record(evidence) for evidence in list(self.evidence.values())),
            details={
                "address": address.hex() if address else None,
                "waiting_for_transactions": self.waiting_for_txs,
                "proposer": self._proposer_address(self.round).hex() if self.height >= 1 else None,
                "locked": {"round": self.locked_round, "block": self.locked_hash.hex() if self.locked_hash else None},
                "valid": {"round": self.valid_round, "block": self.valid_hash.hex() if self.valid_hash else None},
                "decided": self.decided[0].hash.hex() if self.decided is not None else None,
                "votes": self._votes_by_round(),
                "refused_messages": self.refused_messages,
                "params": {
                    "timeout_propose_ms": self.params.timeout_propose_ms,
                    "timeout_prevote_ms": self.params.timeout_prevote_ms,
                    "timeout_precommit_ms": self.params.timeout_precommit_ms,
                    "timeout_delta_ms": self.params.timeout_delta_ms,
                    "create_empty_blocks": self.params.create_empty_blocks,
                    "max_block_interval_ms": self.params.max_block_interval_ms,
                    "min_block_interval_ms": self.params.min_block_interval_ms,
                },
            },
        )

    def _phase(self) -> str:
        if self.head is None:
            return "not started"
        if self.decided is not None:
            return "committing the decided block"
        if self.waiting_for_txs:
            return "waiting for transactions"
        return {
            Step.PROPOSE: "waiting for the proposal",
            Step.PREVOTE: "collecting prevotes",
            Step.PRECOMMIT: "collecting precommits",
        }[self.step]

    def _votes_by_round(self) -> dict[str, dict[str, dict[str, int]]]:
        """The voting power seen for each value, by vote type, in the last four rounds."""
        rounds = sorted({round for round, _ in list(self._by_value)})[-4:]
        return {
            str(round): {
                kind.name.lower(): {
                    (value.hex() if value is not None else "nil"): self.validators.power_of(list(signers))
                    for value, signers in list(self._by_value.get((round, kind), {}).items()) if signers
                }
                for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT)
            }
            for round in rounds
        }

"""The upon-rules of Algorithm 1 of "The latest gossip on BFT consensus" (lines 22-56):
what a validator does once the proposals, votes and verdicts on blocks it holds satisfy a
rule's condition, up to the decision (line 51).  Comments cite the paper's line numbers.

Mixed into BftEngine (consensus/bft.py), whose state they read and change: the rules fire
after every event, until none does (`_run_rules`); the round, signing and timeouts they
call on are BftEngine's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.block import Block, BlockHeader

from consensus.bft_messages import Certificate, Proposal, Vote, VoteType
from consensus.bft_state import BftParams, Step
from consensus.engine import Action, Commit
from consensus.validators import ValidatorSet

NIL = None


class UponRules:
    """Mixed into BftEngine: its state is initialised by BftEngine.__init__ and
    `_reset_height_state`."""

    params: BftParams
    validators: ValidatorSet  # the current height's
    head: BlockHeader | None
    decided: tuple[Block, Certificate] | None
    height: int
    round: int
    step: Step
    waiting_for_txs: bool
    locked_hash: bytes | None
    locked_round: int
    valid_hash: bytes | None
    valid_round: int
    proposals: dict[int, Proposal]
    certified: dict[bytes, tuple[Block, Certificate]]
    validity: dict[bytes, bool]
    votes: dict[tuple[int, VoteType], dict[bytes, Vote]]
    _by_value: dict[tuple[int, VoteType], dict[bytes | None, dict[bytes, Vote]]]
    _round_senders: dict[int, dict[bytes, None]]
    _fired: set[tuple[int, int]]
    _timeouts: dict[tuple[str, int, int], int]
    _now: int
    _out: list[Action]

    if TYPE_CHECKING:
        # Defined by BftEngine: declared for type checkers only, so a stub can neither
        # shadow the real method nor stand in for a missing one.
        def _vote(self, kind: VoteType, block_hash: bytes | None) -> None: ...

        def _schedule(self, kind: str, round: int, at: int) -> None: ...

        def _start_round(self, round: int) -> None: ...

        def _consider_block(self, block: Block) -> None: ...

        def _persist(self) -> None: ...

    def _run_rules(self) -> None:
        """Apply the paper's upon-rules until none fires (each may enable another)."""
        if self.head is None:
            return
        while self.decided is None and (
            self._line_55() or self._line_49() or self._line_22() or self._line_28() or self._line_34()
            or self._line_36() or self._line_44() or self._line_47()
        ):
            pass

    def _power(self, round: int, kind: VoteType, value: bytes | None) -> int:
        return self.validators.power_of(self._by_value.get((round, kind), {}).get(value, {}))

    def _total(self, round: int, kind: VoteType) -> int:
        return self.validators.power_of(self.votes.get((round, kind), {}))

    def _line_22(self) -> bool:
        """Lines 22-27: a fresh proposal in the propose step gets our prevote."""
        proposal = self.proposals.get(self.round)
        if self.step is not Step.PROPOSE or self.waiting_for_txs or proposal is None or proposal.pol_round != -1:
            return False
        value = proposal.block_hash
        if self.locked_round == -1 or self.locked_hash == value:  # line 23
            validity = self.validity.get(value)
            if validity is None:
                return False  # valid(v) still being decided by ExecuteBlock
            vote = value if validity else NIL  # lines 24, 26
        else:
            vote = NIL  # line 26: locked on another value
        # Line 27 before the broadcast, so the Persist that precedes it records the new step.
        self.step = Step.PREVOTE
        self._vote(VoteType.PREVOTE, vote)
        return True

    def _line_28(self) -> bool:
        """Lines 28-33: a re-proposal backed by 2f+1 prevotes of its valid round."""
        proposal = self.proposals.get(self.round)
        if self.step is not Step.PROPOSE or self.waiting_for_txs or proposal is None:
            return False
        value, pol_round = proposal.block_hash, proposal.pol_round
        if not 0 <= pol_round < self.round:
            return False
        if not self.validators.is_quorum(self._power(pol_round, VoteType.PREVOTE, value)):
            return False
        if self.locked_round <= pol_round or self.locked_hash == value:  # line 29
            validity = self.validity.get(value)
            if validity is None:
                return False
            vote = value if validity else NIL  # lines 30, 32
        else:
            vote = NIL  # line 32
        self.step = Step.PREVOTE  # line 33
        self._vote(VoteType.PREVOTE, vote)
        return True

    def _line_34(self) -> bool:
        """Lines 34-35: 2f+1 prevotes of any kind: arm the prevote timeout, once."""
        if self.step is not Step.PREVOTE or (34, self.round) in self._fired:
            return False
        if not self.validators.is_quorum(self._total(self.round, VoteType.PREVOTE)):
            return False
        self._fired.add((34, self.round))
        self._schedule("prevote", self.round, self._now + self.params.timeout_prevote(self.round))
        return True

    def _line_36(self) -> bool:
        """Lines 36-43: 2f+1 prevotes for the proposal: lock and precommit it (in the
        prevote step), and in any case remember it as the valid value."""
        if self.step < Step.PREVOTE or (36, self.round) in self._fired:
            return False
        proposal = self.proposals.get(self.round)
        if proposal is None:
            return False
        value = proposal.block_hash
        if self.validity.get(value) is not True:
            return False
        if not self.validators.is_quorum(self._power(self.round, VoteType.PREVOTE, value)):
            return False
        self._fired.add((36, self.round))
        if self.step is Step.PREVOTE:  # line 37
            self.locked_hash, self.locked_round = value, self.round  # lines 38-39
            self.valid_hash, self.valid_round = value, self.round  # lines 42-43
            self.step = Step.PRECOMMIT  # line 41
            self._vote(VoteType.PRECOMMIT, value)  # line 40
        else:
            self.valid_hash, self.valid_round = value, self.round  # lines 42-43
        return True

    def _line_44(self) -> bool:
        """Lines 44-46: 2f+1 prevotes for nil: precommit nil."""
        if self.step is not Step.PREVOTE:
            return False
        if not self.validators.is_quorum(self._power(self.round, VoteType.PREVOTE, NIL)):
            return False
        self.step = Step.PRECOMMIT  # line 46
        self._vote(VoteType.PRECOMMIT, NIL)  # line 45
        return True

    def _line_47(self) -> bool:
        """Lines 47-48: 2f+1 precommits of any kind: arm the precommit timeout, once."""
        if (47, self.round) in self._fired:
            return False
        if not self.validators.is_quorum(self._total(self.round, VoteType.PRECOMMIT)):
            return False
        self._fired.add((47, self.round))
        self._schedule("precommit", self.round, self._now + self.params.timeout_precommit(self.round))
        return True

    def _line_49(self) -> bool:
        """Lines 49-54: a proposal of any round r and 2f+1 precommits for it: decide.
        A DECISION (block + certificate) is both at once: 2f+1 precommits cannot exist
        unless an honest validator saw the proposal."""
        for block, certificate in self.certified.values():
            self._consider_block(block)
            if self.validity.get(block.hash) is True:  # line 50
                self._decide(certificate.round, block, certificate)
                return True
        for (round, kind), by_value in self._by_value.items():
            if kind is not VoteType.PRECOMMIT:
                continue
            for value, signers in by_value.items():
                if value is None or not self.validators.is_quorum(self.validators.power_of(signers)):
                    continue
                proposal = self.proposals.get(round)
                if proposal is None or proposal.block_hash != value:
                    continue
                block = proposal.block
                self._consider_block(block)
                if self.validity.get(value) is True:  # line 50
                    self._decide(round, block)
                    return True
        return False

    def _line_55(self) -> bool:
        """Lines 55-56: f+1 validators sent messages of a higher round: go to that round."""
        best = None
        for round, senders in self._round_senders.items():
            if round > self.round and (best is None or round > best):
                if self.validators.is_one_third(self.validators.power_of(senders)):
                    best = round
        if best is None:
            return False
        self._start_round(best)
        return True

    def _decide(self, round: int, block: Block, certificate: Certificate | None = None) -> None:
        """Line 51: decision_p[h_p] = v.  Lines 52-54 (next height) wait for BlockCommitted."""
        if certificate is None:
            certificate = Certificate.from_votes(list(self._by_value[(round, VoteType.PRECOMMIT)][block.hash].values()))
        self.decided = (block, certificate)
        self._timeouts = {key: at for key, at in self._timeouts.items() if key[1] > self.height}
        self._persist()  # the certificate survives a restart, for the next block's extra
        self._out.append(Commit(block, certificate.encode()))

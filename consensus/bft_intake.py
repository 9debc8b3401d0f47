"""What BftEngine does with the messages its peers send: decoding them, keeping a
validator's messages of later rounds and the next height within bounds, checking and
counting votes and proposals (equivocations among them become evidence), and answering
a peer's STATUS or DECISION so a peer that fell behind catches up.

None of this is a rule of the algorithm: it decides which messages the rules in
consensus/bft.py get to see, and how much a peer can make us keep or send.  Mixed into
BftEngine, whose state it reads and fills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.block import Block, BlockHeader
from ledger.codec import DecodeError

from consensus.bft_evidence import Evidence
from consensus.bft_messages import (
    Certificate,
    Decision,
    InvalidCertificate,
    Proposal,
    SignedProposal,
    Status,
    Vote,
    VoteType,
    decode_message,
    encode_message,
    verify_certificate,
)
from consensus.bft_state import BftParams
from consensus.engine import Action, Send
from consensus.validators import ValidatorSchedule, ValidatorSet

MAX_FUTURE_ROUNDS = 4  # rounds above round_p + 1 kept per validator (their newest ones)
MAX_PROPOSAL_LOOKAHEAD = 64  # proposals further ahead than this many rounds are ignored


class MessageIntake:
    """Mixed into BftEngine: its state is initialised by BftEngine.__init__ and
    `_reset_height_state`."""

    chain_id: str
    params: BftParams
    schedule: ValidatorSchedule
    validators: ValidatorSet  # the current height's
    max_block_transactions: int
    head: BlockHeader | None
    last_commit: Certificate | None
    last_block: Block | None
    decided: tuple[Block, Certificate] | None
    height: int
    round: int
    proposals: dict[int, Proposal]
    blocks: dict[bytes, Block]
    certified: dict[bytes, tuple[Block, Certificate]]
    votes: dict[tuple[int, VoteType], dict[bytes, Vote]]
    _by_value: dict[tuple[int, VoteType], dict[bytes | None, dict[bytes, Vote]]]
    _round_senders: dict[int, dict[bytes, None]]
    _future_rounds: dict[bytes, list[int]]
    _future: list[tuple[str, Proposal | Vote]]
    _previous: tuple[int, dict, dict[int, Proposal]] | None
    evidence: dict[tuple[bytes, int, int, int], Evidence]
    refused_messages: int
    _catchup_sent: dict[str, tuple[int, int]]
    _round_votes_sent: dict[str, int]
    _now: int
    _out: list[Action]

    if TYPE_CHECKING:
        # Defined by BftEngine, and _report by EvidenceAndStatus (consensus/bft_report.py),
        # which follows this class among BftEngine's bases: declared for type checkers only,
        # so a stub can neither shadow the real method nor stand in for a missing one.
        def _stop_waiting(self) -> None: ...

        def _progress(self, round: int) -> None: ...

        def _proposer_address(self, round: int) -> bytes: ...

        def _consider_block(self, block: Block) -> None: ...

        def _report(self, evidence: Evidence) -> None: ...

    def _on_peer_message(self, peer: str, data: bytes) -> None:
        try:
            message = decode_message(data, self.max_block_transactions, self._known_block)
        except DecodeError:
            self.refused_messages += 1
            return
        if isinstance(message, Status):
            self._on_status(peer, message)
        elif isinstance(message, Decision):
            self._on_decision(message)
        else:
            self._on_message(peer, message)

    def _known_block(self, block_hash: bytes) -> Block | None:
        block = self.blocks.get(block_hash)
        if block is None and self.last_block is not None and self.last_block.hash == block_hash:
            return self.last_block
        return block

    def _on_message(self, peer: str, message: Proposal | Vote) -> None:
        if message.height == self.height + 1:
            self._buffer_future(peer, message)
            return
        if message.height != self.height or self.decided is not None:
            self._check_late(message)
            return
        accepted = self._accept_vote(message) if isinstance(message, Vote) else self._accept_proposal(message)
        if accepted:
            self._stop_waiting()  # the round has begun elsewhere

    def _check_late(self, message: Proposal | Vote) -> None:
        """A vote or proposal for a height decided here counts for nothing, but is still
        compared with what its signer sent before: a Byzantine validator can time its
        second message to arrive late, and should be caught all the same."""
        if message.height == self.height:
            votes, proposals = self.votes, self.proposals
        elif self._previous is not None and message.height == self._previous[0]:
            _, votes, proposals = self._previous
        else:
            return
        if isinstance(message, Vote):
            earlier: Vote | SignedProposal | None = votes.get((message.round, message.kind), {}).get(message.validator)
            signed: Vote | SignedProposal = message
            signer = message.validator
            same = earlier is None or earlier.block_hash == message.block_hash
        else:
            proposal = proposals.get(message.round)
            earlier = proposal.signed if proposal is not None else None
            signed = message.signed
            signer = signed.proposer
            same = earlier is None or earlier.proposer != signer or earlier.proposes_the_same(signed)
        if same:
            return
        assert earlier is not None
        if Evidence.of(earlier, signed).key in self.evidence:
            return  # known already: no signature check for a replayed late message
        member = self.schedule.at(message.height).get(signer)  # the set of the message's height, not ours
        if member is not None and signed.verify(self.chain_id, member.public_key):
            self._report(Evidence.of(earlier, signed))

    def _buffer_future(self, peer: str, message: Proposal | Vote) -> None:
        limit = 4 * len(self.validators) + 8
        proposals = sum(1 for _, m in self._future if isinstance(m, Proposal))
        if len(self._future) >= limit or (isinstance(message, Proposal) and proposals >= 2):
            return
        self._future.append((peer, message))

    def _admit_round(self, validator: bytes, round: int) -> bool:
        """Bound what one validator can make us keep: rounds up to round_p + 1 freely, and
        at most MAX_FUTURE_ROUNDS above that (its newest ones; an older one is dropped)."""
        if round <= self.round + 1:
            return True
        rounds = [r for r in self._future_rounds.get(validator, []) if r > self.round + 1]
        if round in rounds:
            self._future_rounds[validator] = rounds
            return True
        if len(rounds) >= MAX_FUTURE_ROUNDS:
            oldest = min(rounds)
            if round < oldest:
                return False
            rounds.remove(oldest)
            self._forget(validator, oldest)
        rounds.append(round)
        self._future_rounds[validator] = rounds
        return True

    def _forget(self, validator: bytes, round: int) -> None:
        for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            self.votes.get((round, kind), {}).pop(validator, None)
            for signers in self._by_value.get((round, kind), {}).values():
                signers.pop(validator, None)
        proposal = self.proposals.get(round)
        if proposal is not None and proposal.signed.proposer == validator:
            del self.proposals[round]
        self._round_senders.get(round, {}).pop(validator, None)

    def _accept_vote(self, vote: Vote, proof: bool = False) -> bool:
        member = self.validators.get(vote.validator)
        if member is None:
            self.refused_messages += 1
            return False
        if self._by_value.get((vote.round, vote.kind), {}).get(vote.block_hash, {}).get(vote.validator) == vote:
            return False  # a repeat
        if not vote.verify(self.chain_id, member.public_key):
            self.refused_messages += 1
            return False
        # Only after the signature: a forged vote must not use up a validator's budget.
        if not self._admit_round(vote.validator, vote.round):
            return False
        return self._add_vote(vote, proof)

    def _add_vote(self, vote: Vote, proof: bool = False) -> bool:
        """Count a verified vote.  A second value from one validator is evidence; it counts
        for its value too, but an equivocator gets one such extra value per (round, type)
        unless the vote comes inside a proof (a proposal's POL), which is bounded."""
        key = (vote.round, vote.kind)
        first = self.votes.setdefault(key, {})
        by_value = self._by_value.setdefault(key, {})
        existing = first.get(vote.validator)
        if existing is None:
            first[vote.validator] = vote
            self._progress(vote.round)
        elif existing.block_hash != vote.block_hash:
            self._report(Evidence.of(existing, vote))
            values = sum(1 for signers in by_value.values() if vote.validator in signers)
            if values >= 2 and not proof:
                return False
        else:
            return False
        by_value.setdefault(vote.block_hash, {})[vote.validator] = vote
        self._note_sender(vote.round, vote.validator)
        return True

    def _note_sender(self, round: int, validator: bytes) -> None:
        self._round_senders.setdefault(round, {})[validator] = None

    def _accept_proposal(self, proposal: Proposal) -> bool:
        signed = proposal.signed
        # Working out a far round's proposer costs a run per round: refuse those first.
        if signed.round > self.round + MAX_PROPOSAL_LOOKAHEAD or signed.pol_round >= signed.round:
            self.refused_messages += 1
            return False
        # Lines 22, 28, 36, 49: only a proposal "from proposer(h_p, r)" counts.
        if signed.proposer != self._proposer_address(signed.round):
            self.refused_messages += 1
            return False
        existing = self.proposals.get(signed.round)
        if existing is not None and existing.signed.proposes_the_same(signed):
            return False  # a repeat, maybe signed anew: no equivocation
        member = self.validators.get(signed.proposer)
        assert member is not None
        if not signed.verify(self.chain_id, member.public_key):
            self.refused_messages += 1
            return False
        if existing is not None:
            self._report(Evidence.of(existing.signed, signed))
            return False
        if not self._admit_round(signed.proposer, signed.round):
            return False
        for vote in proposal.pol_votes:
            if (vote.kind, vote.height, vote.round, vote.block_hash) != (
                VoteType.PREVOTE, signed.height, signed.pol_round, signed.block_hash
            ):
                self.refused_messages += 1
                return False
        for vote in proposal.pol_votes:
            self._accept_vote(vote, proof=True)
        self.proposals[signed.round] = proposal
        self._progress(signed.round)
        self._note_sender(signed.round, signed.proposer)
        self._consider_block(proposal.block)
        return True

    def _on_decision(self, decision: Decision) -> None:
        certificate, block = decision.certificate, decision.block
        head = self.head
        assert head is not None
        if block is None:
            block = self.blocks.get(certificate.block_hash)
            if block is None and certificate.block_hash == head.hash:
                block = self.last_block
        if block is None:
            if certificate.height == head.height and certificate.block_hash == head.hash and self.last_commit is None:
                try:
                    self.last_commit = verify_certificate(certificate, head, self.schedule.at(head.height))
                except InvalidCertificate:
                    self.refused_messages += 1
            return  # a certificate of a block we have not seen: the runtime's sync brings it
        if certificate.height == self.height and self.decided is None:
            try:
                verify_certificate(certificate, block.header, self.validators)
            except InvalidCertificate:
                self.refused_messages += 1
                return
            # The certificate is the 2f+1 precommits of line 49 in itself.  (Its votes are not
            # merged into the tallies: where an equivocator's other vote came first, the
            # tally would not show the quorum the certificate proves.)
            self.certified[block.hash] = (block, certificate)
            self._consider_block(block)
        elif certificate.height == head.height and block.hash == head.hash and self.last_commit is None:
            try:
                self.last_commit = verify_certificate(certificate, head, self.schedule.at(head.height))
            except InvalidCertificate:
                self.refused_messages += 1
                return
            self.last_block = block

    def _on_status(self, peer: str, status: Status) -> None:
        """Help a peer that is behind: the block (and certificate) it needs next, or at our
        height in an older round, the votes that moved us on."""
        if status.height == self.height and status.round < self.round and self.decided is None:
            self._send_round_votes(peer, status.round)
            return
        answer: tuple[Block | None, Certificate] | None = None
        if status.height == self.height and self.decided is not None:
            answer = self.decided
        elif self.last_commit is not None and (
            status.height == self.height - 1 or (status.height == self.height and status.wants_last_commit)
        ):
            # Without the block at hand (say, after a restart) the certificate alone helps a
            # peer that holds the block from its proposal.
            answer = (self.last_block, self.last_commit)
        if answer is None:
            return
        block, certificate = answer
        sent = self._catchup_sent.get(peer)
        asked_before = sent is not None and sent[0] == certificate.height
        if asked_before and self._now < sent[1] + self.params.gossip_interval_ms:
            return
        self._catchup_sent[peer] = (certificate.height, self._now)
        # The certificate first: a peer a height behind mostly holds the block from its
        # proposal, and every validator that decided answers, so sending the block each
        # time cost every node a decode per peer and height under load.  A peer that asks
        # again a gossip interval later lacks the block too and gets it.
        self._out.append(Send(peer, encode_message(Decision(certificate, block if asked_before else None))))

    def _send_round_votes(self, peer: str, their_round: int) -> None:
        """The paper assumes what a correct process receives, every correct process receives
        eventually; our own repeats cover only our round.  A peer left in an older round
        (its messages lost, say) gets every vote we hold of its round, which lets it time
        out as we did (lines 34-35, 47-48), and of ours: f + 1 senders of a higher round
        move it there (line 55).  CometBFT's vote gossip does the same per peer round.
        At most once a gossip interval a peer, at most two rounds of votes."""
        sent_at = self._round_votes_sent.get(peer)
        if sent_at is not None and self._now < sent_at + self.params.gossip_interval_ms:
            return  # whatever round it names: a peer must not make us send votes on demand
        self._round_votes_sent[peer] = self._now
        for round in (their_round, self.round):
            for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT):
                for vote in self.votes.get((round, kind), {}).values():
                    self._out.append(Send(peer, encode_message(vote)))

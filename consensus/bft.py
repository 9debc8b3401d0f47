"""BFT consensus: the Tendermint algorithm as a deterministic state machine.

This is Algorithm 1 of "The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic,
2018), the algorithm CometBFT runs; comments cite its line numbers ("line 36").  Blocks
are final the moment they commit: no two different blocks can ever be committed at one
height while the faulty validators hold less than a third of the voting power, whatever
the network does (drops, delays, partitions); once the network delivers messages again
and more than two thirds of the power is honest and connected, heights keep committing.

One height at a time:

- round r of height h has one proposer (CometBFT's weighted rotation,
  `ValidatorSet.proposer`).  It proposes its valid value if it has one (lines 15-16),
  otherwise asks the runtime for a block (`BuildBlock`, line 18: getValue), seals it
  and broadcasts a signed PROPOSAL carrying the whole block (line 19);
- every validator checks the block (the cheap rules here, then `ExecuteBlock` ->
  `BlockExecuted`, ABCI's ProcessProposal: valid(v)) and prevotes it or nil
  (lines 22-33), precommits once more than two thirds prevoted one value (lines
  36-46), and decides when more than two thirds precommitted it (line 49):
  `Commit(block, certificate)`, the certificate being those precommits;
- timeouts (lines 57-67) grow with the round: timeout_x(r) = timeout_x_ms + r *
  timeout_delta_ms; f + 1 messages of a higher round pull a validator into it (line 55).

The block of height h + 1 carries the certificate of height h in its header's
`extra` (CometBFT's LastCommit), so the chain alone proves every block but the newest
final; `verify_certificate` checks one (pure), and consensus/bft_headers.py the headers.

Safety across restarts: every signature goes through one guard (CometBFT's
"last sign state"): the engine never signs at a (height, round, step) below the last
one it signed, and at the same one only the very same payload.  The guard, the locks
and the round are in the `Persist` that precedes every broadcast of a vote or a
proposal, and `Started.persisted` restores them, so a restarted validator never signs
twice at one height and round.

Equivocation (two different votes of one type, or two different proposals, signed by
one validator at one height and round) is kept as evidence, reported with
`ReportEvidence` and listed in `status()`.

Catch-up: when no progress is made for `gossip_interval_ms`, an engine repeats its
own votes (and proposal) of the current round and a STATUS; a peer that is a height
behind (or lacks the certificate of its head) gets a DECISION (block + certificate)
in answer and commits it.  Longer gaps are the runtime's block sync.

A node whose key is not a validator's follows: it runs the same rules without signing
and commits through line 49 or a DECISION.

Empty blocks: round 0 of a height waits until transactions are ready, unless
`create_empty_blocks` is set or `max_block_interval_ms` (> 0) has passed since the
height began; `min_block_interval_ms` delays round 0 after the previous commit (as
CometBFT's timeout_commit).  Later rounds never wait.

Rounds, signing, timeouts and commits are here; `BftEngine` mixes in the upon-rules of
lines 22-56 (consensus/bft_rules.py), the intake of what peers send
(consensus/bft_intake.py), the evidence kept and the status reported
(consensus/bft_report.py) and the header rules (consensus/bft_headers.py).
"""

from __future__ import annotations

from ledger import crypto
from ledger.address import address_of
from ledger.block import Block, BlockHeader
from ledger.engine_status import Finality
from ledger.state import ValidatorUpdate

from consensus.bft_evidence import BlockExtra, Evidence
from consensus.bft_messages import (
    Certificate,
    InvalidCertificate,
    Proposal,
    SignedProposal,
    Status,
    Vote,
    VoteType,
    encode_message,
    verify_certificate,
)
from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BlockExecuted,
    Broadcast,
    BuildBlock,
    Engine,
    Event,
    ExecuteBlock,
    InvalidSeal,
    PeerConnected,
    PeerDisconnected,
    PeerMessage,
    Persist,
    Send,
    SetTimer,
    Started,
    Tick,
    TxsAvailable,
)
from consensus.bft_headers import HeaderRules
from consensus.bft_intake import MessageIntake
from consensus.bft_report import EvidenceAndStatus
from consensus.bft_rules import NIL, UponRules
from consensus.bft_state import BftParams, LastSigned, SavedState, Step
from consensus.validators import ValidatorSchedule, ValidatorSet

__all__ = ["BftEngine", "BftParams", "Step", "verify_certificate", "InvalidCertificate"]


# ----------------------------------------------------------------------------- the engine


class BftEngine(UponRules, MessageIntake, EvidenceAndStatus, HeaderRules, Engine):
    """Tendermint for one node.  `signer` is the node key: a validator's key makes it vote,
    any other key (or None) makes it a follower."""

    name = "bft"
    finality = Finality.CERTIFICATE
    ancestors_needed = 1
    # A block is proven final by the certificate in the next block's header, and travels
    # as a proposal (an engine message), not as a pushed block.
    import_waits_for_certificate = True
    pushes_own_blocks = False

    def __init__(
        self, chain_id: str, validators: ValidatorSet, params: BftParams, signer: crypto.PrivateKey | None,
        max_block_transactions: int,
    ):
        self.chain_id = chain_id
        # The set of each height still checked (changes arrive with BlockCommitted); the
        # current height's is `self.validators`.
        self.schedule = ValidatorSchedule(validators)
        self.params = params
        self.max_block_transactions = max_block_transactions
        self.ancestors_needed = params.evidence_max_age
        # The node key votes while it is a validator's of the current height; any other follows.
        self._key = signer
        self._key_address = address_of(signer.public_key) if signer is not None else None
        # Chain position.
        self.head: BlockHeader | None = None
        self.last_commit: Certificate | None = None  # certificate of the head
        self.last_block: Block | None = None  # the head block, when this engine decided it
        self.decided: tuple[Block, Certificate] | None = None  # awaiting BlockCommitted
        # The paper's variables (lines 2-9) for the current height.
        self.height = 0
        self.round = 0
        self.step = Step.PROPOSE
        self.locked_round = -1
        self.locked_hash: bytes | None = None
        self.valid_round = -1
        self.valid_hash: bytes | None = None
        self._signed: LastSigned | None = None
        self._encoded_valid: tuple[bytes | None, bytes] = (None, b"")
        self._now = 0
        self._future: list[tuple[str, Proposal | Vote]] = []  # messages for the next height
        self._reset_height_state()
        self._timeouts: dict[tuple[str, int, int], int] = {}
        self._timer_at: int | None = None
        self._out: list[Action] = []
        self._catchup_sent: dict[str, tuple[int, int]] = {}  # peer -> (height sent, at)
        self._round_votes_sent: dict[str, int] = {}  # peer -> when we last sent it votes of a round
        self._last_progress = 0  # when our round last saw a new vote or proposal
        # The votes and proposals of the height decided last, for late evidence only.
        self._previous: tuple[int, dict, dict[int, Proposal]] | None = None
        self.evidence: dict[tuple[bytes, int, int, int], Evidence] = {}  # seen, by Evidence.key
        # Evidence recorded by the recent blocks (Evidence.key -> height of the block): not
        # proposed again.  The recent headers themselves, for `verify_header` of proposals.
        self._recorded: dict[tuple[bytes, int, int, int], int] = {}
        self._recent: tuple[BlockHeader, ...] = ()
        self.refused_messages = 0
        self._last_signed_height: dict[bytes, int] = {}
        self._proposed_count: dict[bytes, int] = {}

    @classmethod
    def from_genesis(cls, genesis, signer: crypto.PrivateKey | None) -> BftEngine:
        params, validators = BftParams.from_genesis(genesis.engine_params)
        return cls(genesis.chain_id, validators, params, signer, genesis.max_block_transactions)

    @property
    def validators(self) -> ValidatorSet:
        return self.schedule.at(max(self.height, 1))

    @property
    def signer(self) -> crypto.PrivateKey | None:
        return self._key if self._key_address is not None and self._key_address in self.validators else None

    @property
    def address(self) -> bytes | None:
        return self._key_address if self.signer is not None else None

    @property
    def is_validator(self) -> bool:
        return self.signer is not None

    def _reset_height_state(self) -> None:
        self.proposals: dict[int, Proposal] = {}
        self.blocks: dict[bytes, Block] = {}
        self.certified: dict[bytes, tuple[Block, Certificate]] = {}  # from a DECISION, certificate checked
        self.validity: dict[bytes, bool] = {}
        self.invalid_reasons: dict[bytes, str] = {}
        self._executing: set[bytes] = set()
        # Each validator's first vote per (round, type): what "2f+1 of any kind" counts.
        self.votes: dict[tuple[int, VoteType], dict[bytes, Vote]] = {}
        # Every counted vote per (round, type, value): what "2f+1 for id(v)" counts.  The
        # paper counts signed messages, so an equivocator's vote counts for each value it
        # signed (with f faulty, 2f+1 signers of v still include f+1 honest ones); else a
        # lock that an equivocator's vote helped form could never be shown to others.
        self._by_value: dict[tuple[int, VoteType], dict[bytes | None, dict[bytes, Vote]]] = {}
        self._round_senders: dict[int, dict[bytes, None]] = {}
        self._future_rounds: dict[bytes, list[int]] = {}
        self._fired: set[tuple[int, int]] = set()  # (paper line, round) of "for the first time" rules
        self._building: int | None = None  # round of the outstanding BuildBlock
        self.waiting_for_txs = False
        self._txs_ready = False
        self._height_began = self._now

    # ================================================================== events
    def handle(self, event: Event) -> list[Action]:
        self._out = []
        self._now = event.now
        if isinstance(event, Started):
            self._on_started(event)
        elif self.head is None:
            return []  # nothing happens before Started
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, PeerMessage):
            self._on_peer_message(event.peer, event.message)
        elif isinstance(event, BlockExecuted):
            self._on_executed(event)
        elif isinstance(event, BlockBuilt):
            self._on_built(event.block)
        elif isinstance(event, BlockCommitted):
            self._on_committed(event.header, event.recent, event.validator_updates)
        elif isinstance(event, TxsAvailable):
            if event.count > 0:
                self._txs_ready = True
                if self.waiting_for_txs:
                    self._stop_waiting()
        elif isinstance(event, PeerConnected):
            # Tell a new peer where we are: if it is ahead it answers with a DECISION.
            self._out.append(Send(event.peer, encode_message(self._status())))
        elif isinstance(event, PeerDisconnected):
            self._catchup_sent.pop(event.peer, None)
            self._round_votes_sent.pop(event.peer, None)
        self._run_rules()
        self._arm_timer()
        return self._out

    # ------------------------------------------------------------------ start and restart
    def _on_started(self, event: Started) -> None:
        self.head = event.head
        self._recent = event.recent or (event.head,)
        self._recorded = {}
        for header in self._recent:
            self._note_recorded(header)
        self.last_commit = None
        self.last_block = None
        self.decided = None
        self._timeouts.clear()
        self._timer_at = None
        saved = SavedState.decode(event.persisted) if event.persisted else None  # corrupt: refuse to run
        self._enter_height(event.head.height + 1, start=False)
        self._adopt_stored_head(event)
        if saved is not None and self.address is not None and saved.signer == self.address:
            self._signed = saved.signed  # the double-sign guard outlives heights
            if saved.certificate:
                certificate = Certificate.decode(saved.certificate)
                if certificate.height == event.head.height and certificate.block_hash == event.head.hash:
                    self.last_commit = certificate
            if saved.height == self.height:
                self.locked_round, self.locked_hash = saved.locked if saved.locked else (-1, None)
                self.valid_round, self.valid_hash = saved.valid if saved.valid else (-1, None)
                if saved.valid_block:
                    block = Block.decode(saved.valid_block, self.max_block_transactions)
                    if block.hash == self.valid_hash:
                        self.blocks[block.hash] = block
                        self.validity[block.hash] = True  # it was, on this same head
                for encoded in saved.pol_votes:
                    self._add_vote(Vote.decode(encoded), proof=True)
                if saved.step is Step.PROPOSE:
                    self._start_round(saved.round)
                else:
                    self.round, self.step = saved.round, saved.step
                    self._arm_gossip()
                    self._repeat_own_votes(saved.own_votes)
                self._out.append(Broadcast(encode_message(self._status())))
                return
        self._start_round(0)
        self._out.append(Broadcast(encode_message(self._status())))

    def _adopt_stored_head(self, event: Started) -> None:
        """The head's block and certificate from the store: a peer still deciding the head's
        height needs both (a certificate alone is no help to a peer that missed the
        proposal), and the next block needs the certificate.  A follower or a validator that
        imported its head by sync has no persisted certificate, only the stored one."""
        head = event.head
        if event.head_block is not None and event.head_block.hash == head.hash:
            self.last_block = event.head_block
        if event.head_certificate and head.height > 0:
            try:
                self.last_commit = verify_certificate(event.head_certificate, head, self.schedule.at(head.height))
            except InvalidCertificate:
                self.last_commit = None  # the persisted one, if any, is tried next

    def _repeat_own_votes(self, own_votes: tuple[bytes, ...]) -> None:
        """After a restart mid-round: count and resend the votes signed before (same bytes)."""
        for encoded in own_votes:
            vote = Vote.decode(encoded)
            if (vote.height, vote.round, vote.validator) == (self.height, self.round, self.address):
                self._add_vote(vote)
                self._out.append(Broadcast(encode_message(vote)))

    def _enter_height(self, height: int, start: bool = True) -> None:
        self.height = height
        self.round = 0
        self.step = Step.PROPOSE
        # Line 53: reset the locks, the valid value and the message log.
        self.locked_round, self.locked_hash = -1, None
        self.valid_round, self.valid_hash = -1, None
        future, self._future = self._future, []
        self._previous = (self.height - 1, self.votes, self.proposals) if height > 1 else None
        self._reset_height_state()
        self._height_began = self._now
        self._timeouts = {key: at for key, at in self._timeouts.items() if key[1] >= height}
        if start:
            self._start_round(0)  # line 54
            for peer, message in future:
                if message.height == height:
                    self._on_message(peer, message)

    # ------------------------------------------------------------------ lines 11-21
    def _start_round(self, round: int) -> None:
        """StartRound(round), lines 11-21, with the wait for transactions before round 0."""
        self.round = round  # line 12
        self.step = Step.PROPOSE  # line 13
        self._building = None
        self._timeouts = {key: at for key, at in self._timeouts.items() if (key[1], key[2]) >= (self.height, round)}
        self._arm_gossip()
        if round == 0 and self._must_wait():
            self.waiting_for_txs = True
            return
        self._propose_or_wait()

    def _must_wait(self) -> bool:
        """Round 0 waits for transactions (or the intervals); the wait timer re-checks."""
        began = self._height_began
        start_at = began + self.params.min_block_interval_ms
        if self._now < start_at:
            self._schedule("wait", 0, start_at)
            return True
        if self.params.create_empty_blocks or self._txs_ready:
            return False
        if self.params.max_block_interval_ms:
            deadline = began + self.params.max_block_interval_ms
            if self._now >= deadline:
                return False
            self._schedule("wait", 0, deadline)
        return True

    def _stop_waiting(self) -> None:
        if self.waiting_for_txs and self.round == 0 and self.step is Step.PROPOSE:
            self.waiting_for_txs = False
            self._timeouts.pop(("wait", self.height, 0), None)
            self._propose_or_wait()

    def _propose_or_wait(self) -> None:
        self.waiting_for_txs = False
        if self.is_validator and self._proposer_address(self.round) == self.address:  # line 14
            if self.valid_hash is not None and self.valid_hash in self.blocks:  # lines 15-16
                self._propose(self.blocks[self.valid_hash], self.valid_round)
            elif self.height == 1 or self.last_commit is not None:  # line 18: getValue()
                self._building = self.round
                head = self.head
                assert head is not None
                extra = BlockExtra(self.last_commit, self._evidence_to_record()).encode()
                self._out.append(BuildBlock(head.hash, self.height, max(self._now, head.timestamp), self.address, extra))
            # else: without the head's certificate no valid block can be built; STATUS asks for it.
        # Line 21.  CometBFT arms the propose timeout for the proposer too: if its own
        # block never comes (a slow or failed build), it still moves on.
        self._schedule("propose", self.round, self._now + self.params.timeout_propose(self.round))

    def _on_built(self, block: Block) -> None:
        round = self._building
        header = block.header
        head = self.head
        assert head is not None
        if round is None or header.parent != head.hash or header.height != self.height or self.decided is not None:
            return  # the answer to a build on a head or height that has moved on
        self._building = None
        if round != self.round or self.step is not Step.PROPOSE or self.signer is None:
            return
        sealed = header.with_seal(self.signer.sign_digest(header.sealing_digest()))
        block = Block(sealed, block.transactions)
        self.blocks[block.hash] = block
        self.validity[block.hash] = True  # the runtime built it by applying it to the head
        self._propose(block, -1)

    def _propose(self, block: Block, pol_round: int) -> None:
        """Line 19: broadcast <PROPOSAL, h, round, proposal, validRound>."""
        assert self.signer is not None and self.address is not None
        payload = SignedProposal.signing_payload(self.chain_id, self.height, self.round, pol_round, block.hash, self.address)
        signature = self._sign(Step.PROPOSE, payload, crypto.DOMAIN_PROPOSAL)
        if signature is None:
            return
        signed = SignedProposal(self.height, self.round, pol_round, block.hash, self.address, signature)
        pol_votes: tuple[Vote, ...] = ()
        if pol_round >= 0:
            pol_votes = tuple(self._by_value.get((pol_round, VoteType.PREVOTE), {}).get(block.hash, {}).values())
        proposal = Proposal(signed, block, pol_votes)
        self.proposals[self.round] = proposal
        self.blocks[block.hash] = block
        self._note_sender(self.round, self.address)
        self._out.append(Broadcast(encode_message(proposal)))

    # ------------------------------------------------------------------ signing
    def _sign(self, step: Step, payload: bytes, domain: bytes, vote: tuple[VoteType, bytes | None] | None = None) -> bytes | None:
        """The double-sign guard: never below the last signed (height, round, step); at the
        same one only the same payload (its signature is reused).  A new signature is
        persisted (Persist is durable before the broadcast that follows leaves)."""
        assert self.signer is not None and self.address is not None
        hrs = (self.height, self.round, int(step))
        last = self._signed
        if last is not None:
            if hrs < last.hrs:
                return None
            if hrs == last.hrs:
                return last.signature if last.payload == payload else None
        signature = self.signer.sign(domain, payload)
        self._signed = LastSigned(self.height, self.round, step, payload, signature)
        if vote is not None:  # counted before the Persist, so the Persist holds it
            self._add_vote(Vote(vote[0], self.height, self.round, vote[1], self.address, signature))
        self._persist()
        return signature

    def _vote(self, kind: VoteType, block_hash: bytes | None) -> None:
        """Broadcast <PREVOTE|PRECOMMIT, h, round, value> (followers only change step)."""
        if self.signer is None or self.address is None:
            return
        payload = Vote.signing_payload(self.chain_id, kind, self.height, self.round, block_hash, self.address)
        step = Step.PREVOTE if kind is VoteType.PREVOTE else Step.PRECOMMIT
        signature = self._sign(step, payload, crypto.DOMAIN_VOTE, (kind, block_hash))
        if signature is None:
            return
        vote = Vote(kind, self.height, self.round, block_hash, self.address, signature)
        self._add_vote(vote)  # a no-op when _sign counted it already
        self._out.append(Broadcast(encode_message(vote)))

    def _state_bytes(self) -> bytes:
        assert self.address is not None
        certificate = self.decided[1] if self.decided is not None else self.last_commit
        valid_block, pol_votes = b"", ()
        if self.valid_hash is not None and self.decided is None and self.valid_hash in self.blocks:
            if self._encoded_valid[0] != self.valid_hash:
                self._encoded_valid = (self.valid_hash, self.blocks[self.valid_hash].encode())
            valid_block = self._encoded_valid[1]
            signers = self._by_value.get((self.valid_round, VoteType.PREVOTE), {}).get(self.valid_hash, {})
            pol_votes = tuple(vote.encode() for vote in signers.values())
        return SavedState(
            self.address, self.height, self.round, self.step,
            (self.locked_round, self.locked_hash) if self.locked_hash is not None else None,
            (self.valid_round, self.valid_hash) if self.valid_hash is not None else None,
            self._signed, self._own_votes(), valid_block, pol_votes,
            certificate.encode() if certificate is not None else b"",
        ).encode()

    def _own_votes(self) -> tuple[bytes, ...]:
        assert self.address is not None
        own = (self.votes.get((self.round, kind), {}).get(self.address) for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT))
        return tuple(vote.encode() for vote in own if vote is not None)

    def _persist(self) -> None:
        if self.address is not None:
            self._out.append(Persist(self._state_bytes()))

    # ------------------------------------------------------------------ timeouts (lines 57-67)
    def _schedule(self, kind: str, round: int, at: int) -> None:
        self._timeouts[(kind, self.height, round)] = at

    def _progress(self, round: int) -> None:
        """A new vote or proposal of our round: the round moves, nothing needs repeating
        yet; the gossip timer, when it fires, waits out a quiet interval from here.  (Only
        our round counts: a validator can sign a bounded number of messages for it, so it
        cannot keep our repeats from ever being sent.)"""
        if round == self.round:
            self._last_progress = self._now

    def _arm_gossip(self) -> None:
        self._timeouts = {key: at for key, at in self._timeouts.items() if key[0] != "gossip"}
        self._schedule("gossip", self.round, self._now + self.params.gossip_interval_ms)

    def _arm_timer(self) -> None:
        if not self._timeouts:
            return
        earliest = min(self._timeouts.values())
        if earliest != self._timer_at:
            self._timer_at = earliest
            self._out.append(SetTimer(earliest))

    def _on_tick(self) -> None:
        now = self._now
        # Every Tick answers our one timer: forget it, so the next one is always armed again,
        # even if the Tick came a hair before its deadline.
        self._timer_at = None
        while True:
            due = sorted((at, key) for key, at in self._timeouts.items() if at <= now)
            if not due:
                return
            _, key = due[0]
            del self._timeouts[key]
            kind, height, round = key
            if height != self.height or self.decided is not None:
                continue
            if kind == "propose":
                # Lines 57-60 (the paper's condition is step = propose).
                if round == self.round and self.step is Step.PROPOSE:
                    self.step = Step.PREVOTE
                    self._vote(VoteType.PREVOTE, NIL)
            elif kind == "prevote":
                # Lines 61-64.
                if round == self.round and self.step is Step.PREVOTE:
                    self.step = Step.PRECOMMIT
                    self._vote(VoteType.PRECOMMIT, NIL)
            elif kind == "precommit":
                # Lines 65-67.
                if round == self.round:
                    self._start_round(self.round + 1)
            elif kind == "wait":
                if self.waiting_for_txs and not self._must_wait():
                    self._stop_waiting()
            elif kind == "gossip":
                quiet_until = self._last_progress + self.params.gossip_interval_ms
                if round == self.round and now < quiet_until:
                    self._schedule("gossip", round, quiet_until)
                else:
                    self._gossip()
            self._run_rules()

    def _gossip(self) -> None:
        """No progress for a gossip interval: repeat our own messages of this round
        (bounded: one proposal, two votes, one status) so peers that lost them catch up."""
        proposal = self.proposals.get(self.round)
        if proposal is not None and self.address is not None and proposal.signed.proposer == self.address:
            self._out.append(Broadcast(encode_message(proposal)))
        if self.address is not None:
            for kind in (VoteType.PREVOTE, VoteType.PRECOMMIT):
                own = self.votes.get((self.round, kind), {}).get(self.address)
                if own is not None:
                    self._out.append(Broadcast(encode_message(own)))
        self._out.append(Broadcast(encode_message(self._status())))
        self._schedule("gossip", self.round, self._now + self.params.gossip_interval_ms)

    def _status(self) -> Status:
        return Status(self.height, self.round, self.last_commit is None and self.height > 1)

    # ------------------------------------------------------------------ valid(v)
    def _consider_block(self, block: Block) -> None:
        """The cheap rules of a valid block here; the rest (transactions, state) by the
        runtime through ExecuteBlock, once per block."""
        block_hash = block.hash
        self.blocks[block_hash] = block
        if block_hash in self.validity or block_hash in self._executing:
            return
        reason = self._block_problem(block)
        if reason is not None:
            self.validity[block_hash] = False
            self.invalid_reasons[block_hash] = reason
            return
        head = self.head
        assert head is not None
        if self.last_commit is None and block.header.extra and head.height > 0:
            # The block proves our head final (checked just now): adopt its certificate.
            self.last_commit = BlockExtra.decode(block.header.extra).certificate
        self._executing.add(block_hash)
        self._out.append(ExecuteBlock(block))

    def _block_problem(self, block: Block) -> str | None:
        header = block.header
        head = self.head
        assert head is not None
        if header.chain_id != self.chain_id:
            return "wrong chain id"
        if header.height != self.height or header.parent != head.hash:
            return "does not extend the head"
        if header.tx_count != len(block.transactions):
            return "tx_count does not match the transactions"
        try:
            self.verify_header(header, self._recent)
        except InvalidSeal as exc:
            return str(exc)
        return None

    def _on_executed(self, event: BlockExecuted) -> None:
        if event.block_hash not in self._executing:
            return
        self._executing.discard(event.block_hash)
        self.validity[event.block_hash] = event.valid
        if not event.valid:
            self.invalid_reasons[event.block_hash] = event.reason or "refused by the runtime"

    # ------------------------------------------------------------------ commits
    def _on_committed(
        self, header: BlockHeader, recent: tuple[BlockHeader, ...], validator_updates: tuple[ValidatorUpdate, ...],
    ) -> None:
        head = self.head
        assert head is not None
        if header.hash == head.hash:
            return  # the head again (a Commit the runtime dropped, or a repeat)
        self.schedule.apply(header.height, validator_updates)
        # Blocks up to evidence_max_age back are still checked (evidence, late certificates).
        self.schedule.forget_below(header.height + 1 - self.params.evidence_max_age)
        self._proposed_count[header.proposer] = self._proposed_count.get(header.proposer, 0) + 1
        extra = self._note_recorded(header)
        if extra is not None and extra.certificate is not None:
            for signer in extra.certificate.signers:
                self._last_signed_height[signer] = max(self._last_signed_height.get(signer, 0), header.height - 1)
        self._recent = recent if recent else (header,)
        decided = self.decided
        self.head = header
        if decided is not None and decided[0].hash == header.hash:
            self.last_block, self.last_commit = decided
            for signer in decided[1].signers:
                self._last_signed_height[signer] = max(self._last_signed_height.get(signer, 0), header.height)
        else:
            self.last_block, self.last_commit = None, None  # imported by the runtime's sync
        self.decided = None
        self._enter_height(header.height + 1)  # lines 52-54

    # ================================================================== pure checks
    # The header rules are in consensus/bft_headers.py (HeaderRules).
    def _proposer_address(self, round: int) -> bytes:
        return self.schedule.proposer(self.height, round).address

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        return head_height

"""Raft (Ongaro and Ousterhout, "In Search of an Understandable Consensus Algorithm", and
Ongaro's dissertation, 2014) as a deterministic state machine on the engine boundary.

The log is the chain (consensus/raft/log.py): the leader appends blocks, replicates them
with AppendEntries, and a block stored on a majority is committed, which is final: only
then does the engine ask the runtime to `Commit` it.  Figure 2's rules are named where they
are implemented:

- "All servers": a message with a higher term makes this node a follower of that term
  (`_observe_term`); entries are applied in order once committed (`_apply_committed`).
- "Followers": answer RequestVote and AppendEntries; an election timeout without a word from
  a leader or a granted vote starts an election (`_on_tick`).
- "Candidates": vote for yourself, ask the others, become leader on a majority
  (`_campaign`, `_on_vote_response`).
- "Leaders": heartbeats, replicate from nextIndex, decrement it on a refusal, and commit
  an index stored on a majority only if its entry is of the current term (`_advance_commit`,
  the rule that Figure 8 motivates).
- RequestVote receiver: grant at most one vote a term, only to a log at least as up to date
  (`_on_vote_request`).  AppendEntries receiver: refuse an older term or a log that does not
  match at prevIndex; remove a conflicting uncommitted suffix; append; commit up to
  min(leaderCommit, last new entry) (`_on_append`).

Beside Figure 2, from the dissertation: pre-vote (9.6), so a member back from a partition
does not raise the term of a working majority; check-quorum with a leader lease (6.2, 4.2.3
of etcd's design), so a leader that lost its majority steps down and voters ignore a
candidate while they hear from a live leader; a leader starts its term with an empty block
(the no-op of 8), which commits what earlier terms left.

Durability: `currentTerm`, `votedFor` and the uncommitted entries are `Persist`ed before
any vote or acknowledgement that depends on them leaves the node.  The leader builds a
block only when nothing is uncommitted, so the runtime always builds on its head.
"""

from __future__ import annotations

import hashlib

from ledger import crypto
from ledger.address import address_of, encode_address
from ledger.block import Block, BlockHeader, InvalidSeal, build_header
from ledger.codec import DecodeError, Reader, Writer
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus

from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    Broadcast,
    BuildBlock,
    Commit,
    Engine,
    Event,
    LeadershipTransferRequested,
    PeerConnected,
    PeerMessage,
    Persist,
    ReadIndexRequested,
    Send,
    SetTimer,
    Started,
    Tick,
    TxsAvailable,
)
from consensus.raft import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE
from consensus.raft.log import RaftLog, term_of
from consensus.raft.reads import ReadIndexPart
from consensus.raft.messages import (
    MAX_APPEND_BYTES,
    MAX_ENTRIES,
    AppendEntries,
    AppendResponse,
    Message,
    RaftParams,
    ReadIndex,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_extra,
    encode_message,
    term_of_extra,
)

SAVED_VERSION = 1
MAX_SAVED_ENTRIES = 1024


class RaftEngine(ReadIndexPart, Engine):
    name = "raft"
    finality = Finality.REPLICATION
    ancestors_needed = 64  # terms of recent entries, to match a follower's log after a restart
    pushes_own_blocks = False  # AppendEntries carries them; peers import only committed ones by sync
    transfers_leadership = True
    reads_linearizable = True

    def __init__(self, genesis, signer: crypto.PrivateKey | None):
        self.params = RaftParams.from_genesis(genesis.engine_params)
        self.chain_id = genesis.chain_id
        self.address_prefix = genesis.address_prefix
        self.max_block_transactions = genesis.max_block_transactions
        self.members = self.params.members
        self.addresses = tuple(address_of(key) for key in self.members)
        self._key = signer
        self.me: int | None = self.members.index(signer.public_key) if signer is not None and signer.public_key in self.members else None
        self.term = 0
        self.voted_for: int | None = None
        self.role = FOLLOWER
        self.leader: int | None = None
        self.log: RaftLog | None = None
        self.commit_index = 0
        self._applying = 0  # the highest index a Commit was asked for
        self._now = 0
        self._out: list[Action] = []
        self._election_at = 0
        self._heartbeat_at = 0
        self._quorum_check_at = 0
        self._leader_heard_at: int | None = None  # when a leader of the current term last spoke
        self._draws = 0
        self._votes: set[int] = set()
        self.next_index: dict[int, int] = {}
        self.match_index: dict[int, int] = {}
        self._acked_at: dict[int, int] = {}  # leader: when each member last answered
        self.peer_of: dict[int, str] = {}  # member -> peer id, learned from messages it signed
        self._building = False
        self._txs_waiting = 0
        self._transfer_to: int | None = None  # leader: the member it is handing the lead to
        self._transfer_until = 0
        self._init_reads()
        self.proposed: dict[int, int] = {}  # member -> blocks it appended that this node saw committed
        self.last_signed: dict[int, int] = {}  # member -> height of the newest of them
        self.elections = 0  # elections this node started
        self.refused_messages = 0

    # ------------------------------------------------------------------ pure checks
    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        try:
            term = term_of_extra(header.extra)
        except DecodeError as exc:
            raise InvalidSeal(f"raft block extra: {exc}") from None
        if term < 1 or term < term_of(parent):
            raise InvalidSeal(f"raft block of term {term} follows a block of term {term_of(parent)}")
        if header.proposer not in self.addresses:
            raise InvalidSeal("raft block appended by no member")
        key = self.members[self.addresses.index(header.proposer)]
        if not crypto.verify_digest(key, header.sealing_digest(), header.seal):
            raise InvalidSeal("raft block seal is not its leader's signature")

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        return head_height  # only committed entries reach the store

    def block_labels(self, header: BlockHeader, parent: BlockHeader | None) -> list[tuple[str, str]]:
        if header.height == 0:
            return []
        return [("term", str(term_of(header))), ("leader", encode_address(self.address_prefix, header.proposer))]

    # ------------------------------------------------------------------ events
    def handle(self, event: Event) -> list[Action]:
        self._out = []
        self._now = event.now
        if isinstance(event, Started):
            self._on_started(event)
        elif self.log is None:
            return []
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, PeerMessage):
            self._on_peer_message(event.peer, event.message)
        elif isinstance(event, TxsAvailable):
            self._txs_waiting = event.count
        elif isinstance(event, BlockBuilt):
            self._on_built(event.block)
        elif isinstance(event, BlockCommitted):
            self._on_committed(event.header, event.recent)
        elif isinstance(event, LeadershipTransferRequested):
            self._on_transfer_requested(event.to)
        elif isinstance(event, ReadIndexRequested):
            self._on_read_requested(None, event.request)
        elif isinstance(event, PeerConnected) and self.role == LEADER:
            self._heartbeat_at = self._now  # a member may be back: tell it who leads
        self._maybe_build()
        self._arm_timer()
        return self._out

    def _on_started(self, event: Started) -> None:
        # Decoded before anything is set: saved state that does not decode raises here and
        # leaves the engine unstarted (it ignores every event), never voting again in a term
        # it may have voted in already.
        term, voted_for, entries = (_decode_saved(event.persisted, self.max_block_transactions)
                                    if event.persisted else (0, None, []))
        log = RaftLog(event.head, event.recent)
        for block in entries:
            if block.header.height > log.last_index and block.header.parent == log.last_hash:
                log.append(block)
        self.term, self.voted_for = term, voted_for
        if log.last_term > self.term:
            self.term, self.voted_for = log.last_term, None  # a vote belongs to its term
        self.log = log
        self.commit_index = self._applying = event.head.height
        self._reset_election_timer()
        if len(self.members) == 1 and self.me is not None:
            self._election_at = self._now  # alone: no one to wait for

    # ------------------------------------------------------------------ timers
    def _election_timeout(self) -> int:
        """A timeout in [T, 2T), drawn from this node's own seeded sequence (its key and how
        many it drew), so runs replay and members rarely time out together."""
        self._draws += 1
        seed = (self._key.public_key if self._key is not None else b"follower") + self._draws.to_bytes(8, "big")
        spread = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") % self.params.election_timeout_ms
        return self.params.election_timeout_ms + spread

    def _reset_election_timer(self) -> None:
        self._election_at = self._now + self._election_timeout()

    def _arm_timer(self) -> None:
        if self.role == LEADER:
            at = min(self._heartbeat_at, self._quorum_check_at)
            if self._transfer_to is not None:
                at = min(at, self._transfer_until)
        elif self.me is not None:
            at = self._election_at
        else:
            return  # not a member: it follows by sync and never campaigns
        deadlines = self._read_deadlines()
        if deadlines:
            at = min(at, min(deadlines))
        self._out.append(SetTimer(max(at, self._now)))

    def _on_tick(self) -> None:
        self._expire_reads()
        if self.role == LEADER:
            if self._now >= self._quorum_check_at:
                # Check-quorum: a leader that heard from no majority in an election timeout
                # may be on the small side of a partition; it stops serving.
                heard = 1 + sum(1 for member, at in self._acked_at.items()
                                if member != self.me and at > self._now - self.params.election_timeout_ms)
                if heard < self.params.majority:
                    self._become_follower(self.term, None)
                    return
                self._quorum_check_at = self._now + self.params.election_timeout_ms
            if self._transfer_to is not None and self._now >= self._transfer_until:
                self._transfer_to = None  # the target did not take over in time: lead on
            if self._now >= self._heartbeat_at:
                self._replicate()
        elif self.me is not None and self._now >= self._election_at:
            self._campaign(pre_vote=True)

    # ------------------------------------------------------------------ elections
    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        """Candidates: vote for yourself and ask the others.  A pre-vote first asks whether
        they would vote for us in the next term, changing no term."""
        assert self.me is not None and self.log is not None
        self._reset_election_timer()
        self._votes = {self.me}
        if pre_vote:
            self.role = PRE_CANDIDATE
            term = self.term + 1
        else:
            self.role = CANDIDATE
            self.term += 1
            self.voted_for = self.me
            self.leader = None
            self.elections += 1
            self._persist()
            term = self.term
        if len(self._votes) >= self.params.majority:
            self._won(pre_vote)
            return
        request = VoteRequest(pre_vote, term, self.me, self.log.last_index, self.log.last_term, transfer)
        self._out.append(Broadcast(self._encode(request)))

    def _in_lease(self) -> bool:
        """Whether a leader of our term spoke within the shortest election timeout: then a
        candidate is ignored (it is cut off from the leader, not the other way round)."""
        if self.role == LEADER:
            return True
        return (self._leader_heard_at is not None and self.leader is not None
                and self._now - self._leader_heard_at < self.params.election_timeout_ms)

    def _on_vote_request(self, peer: str, request: VoteRequest) -> None:
        """RequestVote receiver: grant if the term is current, no other vote was given in it,
        and the candidate's log is at least as up to date."""
        assert self.log is not None and self.me is not None
        if request.term < self.term or (self._in_lease() and not request.transfer):
            if request.term < self.term:
                self._send(peer, VoteResponse(request.pre_vote, self.term, self.me, False))
            return
        up_to_date = self.log.up_to_date(request.last_index, request.last_term)
        if request.pre_vote:
            # Would vote in that term: changes nothing here.
            granted = request.term > self.term and up_to_date
            self._send(peer, VoteResponse(True, request.term if granted else self.term, self.me, granted))
            return
        self._observe_term(request.term)
        granted = up_to_date and self.voted_for in (None, request.candidate)
        if granted:
            self.voted_for = request.candidate
            self._reset_election_timer()
        self._persist()  # the term, and the vote, before the answer leaves
        self._send(peer, VoteResponse(False, self.term, self.me, granted))

    def _on_vote_response(self, response: VoteResponse) -> None:
        if response.pre_vote:
            if self.role != PRE_CANDIDATE:
                return
            if response.granted and response.term == self.term + 1:
                self._votes.add(response.voter)
                if len(self._votes) >= self.params.majority:
                    self._won(pre_vote=True)
            elif not response.granted and response.term > self.term:
                self._observe_term(response.term)
            return
        if response.term > self.term:
            self._observe_term(response.term)
            return
        if self.role == CANDIDATE and response.term == self.term and response.granted:
            self._votes.add(response.voter)
            if len(self._votes) >= self.params.majority:
                self._won(pre_vote=False)

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        assert self.me is not None and self.log is not None
        self.role, self.leader = LEADER, self.me
        last = self.log.last_index
        self.next_index = {m: last + 1 for m in range(len(self.members)) if m != self.me}
        self.match_index = {m: 0 for m in range(len(self.members)) if m != self.me}
        self._acked_at = {m: self._now for m in range(len(self.members)) if m != self.me}
        self._acked_round = {}
        self._quorum_check_at = self._now + self.params.election_timeout_ms
        # The no-op of the term (dissertation 8): an entry of the current term, whose commit
        # commits everything before it, including what earlier terms left uncommitted.
        self._append(self._empty_block())

    def _become_follower(self, term: int, leader: int | None) -> None:
        changed = term != self.term
        self.term = term
        if changed:
            self.voted_for = None
        if self.role == LEADER:
            self._fail_leader_reads()
        self.role = FOLLOWER
        self.leader = leader
        self._building = False
        self._transfer_to = None
        self._reset_election_timer()
        if changed:
            self._persist()

    def _observe_term(self, term: int) -> None:
        """All servers: a higher term seen makes this node a follower of it."""
        if term > self.term:
            self._become_follower(term, None)

    # ------------------------------------------------------------------ leadership transfer
    def _on_transfer_requested(self, to: bytes) -> None:
        """Leadership transfer (dissertation 3.10): stop appending new blocks, bring the
        target's log up to ours, then tell it to campaign at once (TimeoutNow).  If it has not
        taken over within an election timeout, this leader goes on leading."""
        if self.role != LEADER or to not in self.addresses:
            return
        target = self.addresses.index(to)
        if target == self.me or target not in self.peer_of:
            return
        assert self.log is not None and self.me is not None
        self._transfer_to = target
        self._transfer_until = self._now + self.params.election_timeout_ms
        if self.match_index.get(target, 0) >= self.log.last_index:
            self._send(self.peer_of[target], TimeoutNow(self.term, self.me))
        else:
            self._send_append(target)

    def _on_timeout_now(self, message: TimeoutNow) -> None:
        """The leader of our term hands us the lead: campaign now, and voters set aside the
        lease that would otherwise make them ignore a candidate while their leader lives."""
        if message.term != self.term or self.role == LEADER or message.leader != self.leader:
            return
        self._campaign(pre_vote=False, transfer=True)

    # ------------------------------------------------------------------ replication
    def _on_append(self, peer: str, request: AppendEntries) -> None:
        """AppendEntries receiver."""
        log = self.log
        assert log is not None and self.me is not None
        if request.term < self.term:
            self._send(peer, AppendResponse(self.term, self.me, False, log.last_index, request.round))
            return
        if request.term > self.term or self.role != FOLLOWER:
            self._become_follower(request.term, request.leader)
        self.leader = request.leader
        self._leader_heard_at = self._now
        self._reset_election_timer()
        if request.prev_index > log.last_index:
            self._send(peer, AppendResponse(self.term, self.me, False, log.last_index, request.round))
            return
        known = log.term_at(request.prev_index)
        if request.prev_index > log.head.height and known != request.prev_term:
            # No match at prevIndex: an uncommitted entry of another term.  Drop it and what
            # follows; the leader will come back one entry earlier.
            log.truncate_from(request.prev_index)
            self._persist()
            self._send(peer, AppendResponse(self.term, self.me, False, request.prev_index - 1, request.round))
            return
        # At or below our head the entry is committed, and by the leader completeness
        # property every leader's log holds it: it matches.
        changed = False
        index = request.prev_index
        for block in request.entries:
            index += 1
            if block.header.height != index:
                self.refused_messages += 1
                return
            if index <= log.head.height:
                continue
            if index <= log.last_index:
                if log.term_at(index) == term_of(block.header):
                    continue  # the same entry (log matching)
                log.truncate_from(index)  # a conflicting uncommitted suffix goes
            if block.header.parent != log.last_hash:
                self.refused_messages += 1
                break
            try:
                self.verify_seal(block.header, log.last_header())
            except InvalidSeal:
                self.refused_messages += 1
                break
            log.append(block)
            changed = True
        if changed:
            self._persist()
        matched = min(index, log.last_index)
        self._send(peer, AppendResponse(self.term, self.me, True, matched, request.round))
        if request.commit > self.commit_index:
            self.commit_index = max(self.commit_index, min(request.commit, matched))
            self._apply_committed()

    def _on_append_response(self, response: AppendResponse) -> None:
        if response.term > self.term:
            self._observe_term(response.term)
            return
        if self.role != LEADER or response.term != self.term or response.follower == self.me:
            return
        follower = response.follower
        self._acked_at[follower] = self._now
        if response.round > self._acked_round.get(follower, 0):
            self._acked_round[follower] = response.round
            self._confirm_reads()
        # An answer is followed at once by the next message only when it made progress (the
        # follower stored more, or we back off to an earlier entry); otherwise the next
        # heartbeat retries, so an answer that repeats itself cannot start a message storm.
        if response.success:
            progressed = response.index > self.match_index.get(follower, 0)
            if progressed:
                self.match_index[follower] = response.index
            self.next_index[follower] = max(self.next_index.get(follower, 1), self.match_index[follower] + 1)
            self._advance_commit()
            if follower == self._transfer_to and self.match_index[follower] >= self.log.last_index:
                self._send(self.peer_of[follower], TimeoutNow(self.term, self.me))
            elif progressed and self.next_index[follower] <= self.log.last_index:
                self._send_append(follower)
        else:
            # Leaders: on a refusal, try again from an earlier entry (at once to where the
            # follower's log ends, if that is earlier).
            before = self.next_index.get(follower, 1)
            target = max(1, min(before - 1, response.index + 1))
            if not self._can_send_from(target):
                # Below what this leader holds: the follower syncs committed blocks, and the
                # next heartbeat probes at our head again.  No resend now: that would only
                # bounce between the same two answers.
                target = self.log.head.height + 1
            self.next_index[follower] = target
            if target < before:
                self._send_append(follower)

    def _advance_commit(self) -> None:
        """Leaders: the highest N stored on a majority, if log[N] is of the current term."""
        log = self.log
        assert log is not None and self.me is not None
        stored = sorted([log.last_index] + list(self.match_index.values()), reverse=True)
        candidate = stored[self.params.majority - 1]
        if candidate > self.commit_index and log.term_at(candidate) == self.term:
            self.commit_index = candidate
            # Followers learn the commit index now, not at the next heartbeat, and before this
            # node writes the blocks: their writes overlap with ours.
            self._replicate()
            self._apply_committed()
            self._confirm_reads()

    def _apply_committed(self) -> None:
        """All servers: entries up to commitIndex go to the state machine, in order."""
        log = self.log
        assert log is not None
        start = max(self._applying, log.head.height) + 1
        for index in range(start, min(self.commit_index, log.last_index) + 1):
            block = log.block_at(index)
            if block is None:
                break
            self._out.append(Commit(block))
            self._applying = index

    def _replicate(self) -> None:
        assert self.me is not None
        for member in range(len(self.members)):
            if member != self.me:
                self._send_append(member)
        self._heartbeat_at = self._now + self.params.heartbeat_ms

    def _send_append(self, member: int) -> None:
        log = self.log
        assert log is not None and self.me is not None
        next_index = self.next_index.get(member, log.last_index + 1)
        if not self._can_send_from(next_index):
            # Committed blocks this leader no longer holds whole: the follower takes them by
            # block sync, and we probe at our head (always known) with what follows it.
            next_index = self.next_index[member] = log.head.height + 1
        prev = next_index - 1
        prev_term = log.term_at(prev)
        assert prev_term is not None
        entries: list[Block] = []
        size = 0
        for index in range(next_index, min(log.last_index, next_index + MAX_ENTRIES - 1) + 1):
            block = log.block_at(index)
            assert block is not None, "_can_send_from said this leader holds it"
            size += len(block.encode())
            if entries and size > MAX_APPEND_BYTES:
                break  # the rest goes in the next message: one must fit a peer frame
            entries.append(block)
        message = AppendEntries(self.term, self.me, prev, prev_term, self.commit_index, tuple(entries), self._round)
        peer = self.peer_of.get(member)
        if peer is None:
            self._out.append(Broadcast(self._encode(message)))  # who is who is learned from answers
        else:
            self._out.append(Send(peer, self._encode(message)))

    def _can_send_from(self, index: int) -> bool:
        """Whether this leader can send entries from `index` on: it knows the term before it
        and holds every block from it to the end of its log."""
        log = self.log
        assert log is not None
        if index > log.head.height:
            return log.term_at(index - 1) is not None
        return log.term_at(index - 1) is not None and all(
            log.block_at(i) is not None for i in range(index, log.head.height + 1))

    def _append(self, block: Block) -> None:
        """Leaders: an entry of the current term at the end of the log, sent to the followers
        and then made durable here.  The leader writes in parallel with replicating
        (dissertation 10.2.1): it counts its own copy only once an answer comes back, and the
        runtime feeds that answer only after this event's Persist is done."""
        assert self.log is not None
        self.log.append(block)
        self._replicate()
        self._persist()
        self._advance_commit()  # a cluster of one commits at once

    # ------------------------------------------------------------------ blocks
    def _empty_block(self) -> Block:
        assert self.log is not None and self._key is not None
        parent = self.log.last_header()
        header = build_header(self.chain_id, parent, max(self._now, parent.timestamp + 1), [],
                              address_of(self._key.public_key), encode_extra(self.term))
        return Block(header.with_seal(self._key.sign_digest(header.sealing_digest())), ())

    def _maybe_build(self) -> None:
        log = self.log
        if (self.role != LEADER or self._building or self._txs_waiting <= 0 or log is None
                or self._transfer_to is not None
                or log.last_index != log.head.height or self._key is None):
            return
        self._building = True
        head = log.head
        self._out.append(BuildBlock(head.hash, head.height + 1, max(self._now, head.timestamp + 1),
                                    address_of(self._key.public_key), encode_extra(self.term)))

    def _on_built(self, block: Block) -> None:
        self._building = False
        log = self.log
        assert log is not None
        if (self.role != LEADER or self._key is None or block.header.parent != log.last_hash
                or log.last_index != log.head.height or term_of(block.header) != self.term
                or self._transfer_to is not None):
            return  # the term or the head moved on while it was built, or the lead is being handed over
        sealed = Block(block.header.with_seal(self._key.sign_digest(block.header.sealing_digest())), block.transactions)
        self._txs_waiting = 0  # until the mempool says again
        self._append(sealed)

    def _on_committed(self, header: BlockHeader, recent: tuple[BlockHeader, ...]) -> None:
        log = self.log
        assert log is not None
        log.committed(header, recent)
        if header.proposer in self.addresses and header.height > 0:
            member = self.addresses.index(header.proposer)
            self.proposed[member] = self.proposed.get(member, 0) + 1
            self.last_signed[member] = header.height
        self.commit_index = max(self.commit_index, header.height)
        # Every Commit asked for before this event was performed already (the runtime performs
        # an event's actions before it feeds the next), and it drops one only when the head is
        # already past it: what we asked for stays asked.
        self._applying = max(self._applying, header.height)
        self._apply_committed()

    # ------------------------------------------------------------------ messages
    def _on_peer_message(self, peer: str, data: bytes) -> None:
        if self.me is None:
            return  # a follower outside the membership takes blocks by sync only
        try:
            message = decode_message(data, self.members, self.chain_id, self.max_block_transactions)
        except DecodeError:
            self.refused_messages += 1
            return
        if message.sender == self.me:
            return
        self.peer_of[message.sender] = peer
        if isinstance(message, VoteRequest):
            self._on_vote_request(peer, message)
        elif isinstance(message, VoteResponse):
            self._on_vote_response(message)
        elif isinstance(message, AppendEntries):
            self._on_append(peer, message)
        elif isinstance(message, TimeoutNow):
            self._on_timeout_now(message)
        elif isinstance(message, ReadIndex):
            if message.term == self.term:
                self._on_read_requested(message.member, message.request)
        elif isinstance(message, ReadIndexResponse):
            self._on_read_answer(message)
        else:
            self._on_append_response(message)

    def _encode(self, message: Message) -> bytes:
        assert self._key is not None
        return encode_message(message, self._key, self.chain_id)

    def _send(self, peer: str, message: Message) -> None:
        self._out.append(Send(peer, self._encode(message)))

    def _persist(self) -> None:
        assert self.log is not None
        self._out.append(Persist(_encode_saved(self.term, self.voted_for, self.log.entries)))

    # ------------------------------------------------------------------ status
    def status(self) -> EngineStatus:
        log = self.log
        head = log.head.height if log is not None else None
        leader = self.addresses[self.leader] if self.leader is not None else None
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role=self.role if self.me is not None else "observer",
            phase="not started" if log is None else (
                f"leading term {self.term}" if self.role == LEADER else
                f"following {leader.hex()[:12]} in term {self.term}" if leader is not None else
                f"electing in term {self.term}"),
            height=head + 1 if head is not None else None,
            term=self.term,
            validators=tuple(ValidatorStatus(address=address, public_key=key, power=1,
                                             blocks_proposed=self.proposed.get(member, 0),
                                             last_signed_height=self.last_signed.get(member))
                             for member, (address, key) in enumerate(zip(self.addresses, self.members))),
            total_power=len(self.members),
            quorum_power=self.params.majority,
            details={
                "leader": leader.hex() if leader is not None else None,
                "voted_for": self.addresses[self.voted_for].hex() if self.voted_for is not None else None,
                "commit_index": self.commit_index,
                "last_index": log.last_index if log is not None else 0,
                "last_term": log.last_term if log is not None else 0,
                "member_index": self.me,
                "match_index": {self.addresses[m].hex(): i for m, i in sorted(self.match_index.items())}
                if self.role == LEADER else {},
                "transferring_to": self.addresses[self._transfer_to].hex() if self._transfer_to is not None else None,
                "elections_started": self.elections,
                "election_timeout_ms": self.params.election_timeout_ms,
                "heartbeat_ms": self.params.heartbeat_ms,
                "refused_messages": self.refused_messages,
            },
        )


def _encode_saved(term: int, voted_for: int | None, entries: list[Block]) -> bytes:
    writer = Writer().u8(SAVED_VERSION).u64(term).u32(0 if voted_for is None else voted_for + 1).u32(len(entries))
    for block in entries:
        writer.var_bytes(block.encode())
    return writer.bytes()


def _decode_saved(data: bytes, max_block_transactions: int) -> tuple[int, int | None, list[Block]]:
    reader = Reader(data)
    if reader.u8("saved.version") != SAVED_VERSION:
        raise DecodeError("saved.version", "unknown Raft saved state")
    term = reader.u64("saved.term")
    voted = reader.u32("saved.voted_for")
    count = reader.u32("saved.entries")
    if count > MAX_SAVED_ENTRIES:
        raise DecodeError("saved.entries", f"{count} entries is more than {MAX_SAVED_ENTRIES}")
    entries = [Block.decode(reader.var_bytes("saved.entry", 1 << 26), max_block_transactions) for _ in range(count)]
    reader.finish()
    return term, (voted - 1 if voted else None), entries

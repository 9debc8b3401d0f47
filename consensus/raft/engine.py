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

Replication, the AppendEntries receiver and the leader's side of it down to commit, is in
consensus/raft/replication.py; elections in consensus/raft/elections.py.

Members are named by their public keys; who they are is the membership the last entry of
the log names (consensus/raft/membership.py: voters, and learners that only follow), which
an operator changes one server at a time (consensus/raft/operators.py, with leadership
transfer).  What the engine reports, its status and the explorer's labels for a block, is
in consensus/raft/report.py.

Durability: `currentTerm`, `votedFor` and the uncommitted entries are `Persist`ed before
any vote or acknowledgement that depends on them leaves the node.  The leader builds a
block only when nothing is uncommitted, so the runtime always builds on its head.
"""

from __future__ import annotations

from ledger import crypto
from ledger.address import address_of
from ledger.block import Block, BlockHeader, InvalidSeal, build_header
from ledger.codec import DecodeError
from ledger.engine_status import Finality

from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BuildBlock,
    Engine,
    Event,
    LeadershipTransferRequested,
    MembershipChangeRequested,
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
from consensus.raft import FOLLOWER, LEADER
from consensus.raft.elections import ElectionPart
from consensus.raft.log import RaftLog, decode_saved, encode_saved, term_of
from consensus.raft.membership import Membership, Memberships, encode_extra
from consensus.raft.operators import OperatorPart
from consensus.raft.reads import ReadIndexPart
from consensus.raft.replication import ReplicationPart
from consensus.raft.report import ReportPart
from consensus.raft.messages import (
    AppendEntries,
    Message,
    RaftParams,
    ReadIndex,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_message,
)


class RaftEngine(ReplicationPart, ElectionPart, ReadIndexPart, OperatorPart, ReportPart, Engine):
    name = "raft"
    finality = Finality.REPLICATION
    ancestors_needed = 64  # terms of recent entries, to match a follower's log after a restart
    pushes_own_blocks = False  # AppendEntries carries them; peers import only committed ones by sync
    transfers_leadership = True
    changes_membership = True
    reads_linearizable = True

    def __init__(self, genesis, signer: crypto.PrivateKey | None):
        self.params = RaftParams.from_genesis(genesis.engine_params)
        self.chain_id = genesis.chain_id
        self.address_prefix = genesis.address_prefix
        self.max_block_transactions = genesis.max_block_transactions
        self.sync_grace_ms = 2 * self.params.heartbeat_ms  # a heartbeat lost, and the next one brings them
        self.genesis_members = Membership(self.params.members)
        self.memberships = Memberships(self.genesis_members)
        self._key = signer
        self.key: bytes | None = signer.public_key if signer is not None else None
        self.term = 0
        self.voted_for: bytes | None = None
        self.role = FOLLOWER
        self.leader: bytes | None = None
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
        self._votes: set[bytes] = set()
        self.next_index: dict[bytes, int] = {}  # leader: per member but itself, voters and learners
        self.match_index: dict[bytes, int] = {}
        self._acked_at: dict[bytes, int] = {}  # leader: when each member last answered
        self.peer_of: dict[bytes, str] = {}  # member -> peer id, learned from messages it signed
        self._building = False
        self._txs_waiting = 0
        self._answered: tuple[int, int] = (0, -1)  # follower: (term, round) of the last append it answered
        self._last_append: tuple[tuple | None, bytes] = (None, b"")  # leader: (what it says, signed bytes)
        self._init_operators()
        self._init_reads()
        self._init_report()

    # ------------------------------------------------------------------ members
    @property
    def me(self) -> bytes | None:
        """This node's key while it is a member (voter or learner) of its log's membership."""
        return self.key if self.key is not None and self.log is not None and self.key in self._members() else None

    def _is_voter(self) -> bool:
        return self.log is not None and self.key in self._members().voters

    def _members(self) -> Membership:
        """The membership in force here: the one the last entry of the log names (4.1)."""
        assert self.log is not None
        return self.memberships.of(self.log.last_header())

    def _voters_among(self, keys) -> int:
        voters = self._members().voters
        return sum(1 for key in set(keys) if key in voters)

    # ------------------------------------------------------------------ pure checks
    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        key = self.memberships.sealer(header, parent)
        if not crypto.verify_digest(key, header.sealing_digest(), header.seal):
            raise InvalidSeal("raft block seal is not its leader's signature")

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        return head_height  # only committed entries reach the store

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
            self._on_committed(event.header, event.recent, event.txs_ready)
        elif isinstance(event, LeadershipTransferRequested):
            self._on_transfer_requested(event.to)
        elif isinstance(event, MembershipChangeRequested):
            self._on_membership_requested(event.key, event.add)
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
        term, voted_for, entries = (decode_saved(event.persisted, self.max_block_transactions, self.params.members)
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
        if self._members().voters == (self.key,):
            self._election_at = self._now  # alone: no one to wait for

    # ------------------------------------------------------------------ timers
    def _arm_timer(self) -> None:
        if self.role == LEADER:
            at = min(self._heartbeat_at, self._quorum_check_at)
            if self._transfer_to is not None:
                at = min(at, self._transfer_until)
        elif self._is_voter():
            at = self._election_at
        elif self.me is None:
            return  # not a member: it follows by sync and never campaigns
        else:
            at = None  # a learner follows and never campaigns
        deadlines = self._read_deadlines()
        if at is None:
            if deadlines:
                self._out.append(SetTimer(max(min(deadlines), self._now)))
            return
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
                recent = self._now - self.params.election_timeout_ms
                heard = self._voters_among([self.key] + [m for m, at in self._acked_at.items() if at > recent])
                if heard < self._members().majority:
                    self._become_follower(self.term, None)
                    return
                self._quorum_check_at = self._now + self.params.election_timeout_ms
            if self._transfer_to is not None and self._now >= self._transfer_until:
                self._transfer_to = None  # the target did not take over in time: lead on
            if self._now >= self._heartbeat_at:
                self._round += 1  # a heartbeat every member answers (check-quorum hears them)
                self._replicate()
        elif self._is_voter() and self._now >= self._election_at:
            self._campaign(pre_vote=True)

    def _become_leader(self) -> None:
        assert self.key is not None and self.log is not None
        self.role, self.leader = LEADER, self.key
        self._note_leader()
        self.next_index, self.match_index, self._acked_at, self._acked_round = {}, {}, {}, {}
        self._track_followers()
        self._quorum_check_at = self._now + self.params.election_timeout_ms
        # The no-op of the term (dissertation 8): an entry of the current term, whose commit
        # commits everything before it, including what earlier terms left uncommitted.
        self._append(self._empty_block())

    def _track_followers(self) -> None:
        """Leaders: replication state for every member but this one, as the membership
        changes (a new member starts at our end and backs off; a removed one is dropped)."""
        assert self.log is not None
        members = [m for m in self._members().everyone if m != self.key]
        for member in members:
            if member not in self.next_index:
                self.next_index[member] = self.log.last_index + 1
                self.match_index[member] = 0
                self._acked_at[member] = self._now
        for table in (self.next_index, self.match_index, self._acked_at, self._acked_round):
            for gone in [m for m in table if m not in members]:
                del table[gone]

    def _become_follower(self, term: int, leader: bytes | None) -> None:
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

    def _note_leader(self) -> None:
        """Who led each term, as this node learned it: the explorer shows elections as events."""
        if self.leader is not None and (not self.leaders_seen or self.leaders_seen[-1][1] != self.term):
            self.leaders_seen.append((self._now, self.term, self.leader))

    def _observe_term(self, term: int) -> None:
        """All servers: a higher term seen makes this node a follower of it."""
        if term > self.term:
            self._become_follower(term, None)

    # ------------------------------------------------------------------ blocks
    def _extra(self, membership: Membership | None = None) -> bytes:
        return encode_extra(self.term, membership or self._members(), self.genesis_members)

    def _empty_block(self, membership: Membership | None = None) -> Block:
        assert self.log is not None and self._key is not None
        parent = self.log.last_header()
        header = build_header(self.chain_id, parent, max(self._now, parent.timestamp + 1), [],
                              address_of(self._key.public_key), self._extra(membership))
        return Block(header.with_seal(self._key.sign_digest(header.sealing_digest())), ())

    def _may_build(self) -> bool:
        """Leaders: transactions wait and nothing is being built or left uncommitted."""
        log = self.log
        return not (self.role != LEADER or self._building or self._txs_waiting <= 0 or log is None
                    or self._transfer_to is not None
                    or log.last_index != log.head.height or self._key is None)

    def _maybe_build(self) -> None:
        if not self._may_build():
            return
        log = self.log
        assert log is not None and self._key is not None
        self._building = True
        head = log.head
        self._out.append(BuildBlock(head.hash, head.height + 1, max(self._now, head.timestamp + 1),
                                    address_of(self._key.public_key), self._extra()))

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

    def _on_committed(self, header: BlockHeader, recent: tuple[BlockHeader, ...], txs_ready: int | None) -> None:
        log = self.log
        assert log is not None
        moved = header.height > log.head.height  # not the head repeated
        log.committed(header, recent)
        if txs_ready is not None:
            # What waits now is known: the next block is built at once, and its append
            # carries the commit index, not a note of its own ahead of it (a follower would
            # apply the note's block before it stored and answered the new one).
            self._txs_waiting = txs_ready
        elif moved:
            # The mempool drops a committed block's transactions, and the count of waiting
            # ones it last gave included them: counted still, they would start an empty block
            # (the runtime's next TxsAvailable says how many wait now).
            self._txs_waiting = max(0, self._txs_waiting - header.tx_count)
        if header.height > 0:
            self.proposed[header.proposer] = self.proposed.get(header.proposer, 0) + 1
            self.last_signed[header.proposer] = header.height
        if self.role != FOLLOWER and not self._is_voter():
            self._become_follower(self.term, None)  # a synced block removed this node
        if self.role == LEADER:
            self._track_followers()  # entries beyond the head may have gone with a jump
            self._promote_caught_up()
        self.commit_index = max(self.commit_index, header.height)
        if self.role == LEADER and header.height == self.commit_index and not self._may_build():
            # The last block committed is written: the followers learn the commit index now,
            # not at the next heartbeat.  When a block is about to be built its append
            # brings them the commit index a moment later, and a note of its own would only
            # be one more message to sign and check.
            self._replicate()
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
            message = decode_message(data, self._members(), self.chain_id, self.max_block_transactions)
        except DecodeError:
            self.refused_messages += 1
            return
        if message.sender == self.key:
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
        self._out.append(Persist(encode_saved(self.term, self.voted_for, self.log.entries)))

"""Raft's log replication, as a part of RaftEngine: the AppendEntries receiver of Figure 2
(log matching at prevIndex, a conflicting uncommitted suffix removed, commit up to
min(leaderCommit, last new entry)), and the leader's side: appending its own entry and
writing it in parallel with sending it (dissertation 10.2.1), nextIndex and matchIndex
from the answers, pipelining what is on its way, and committing an index stored on a
majority only if its entry is of the current term (the rule Figure 8 motivates).
Entries go to the state machine in order once committed (`_apply_committed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.block import Block, BlockHeader, InvalidSeal

from consensus.engine import Action, Broadcast, Commit, Send
from consensus.raft import FOLLOWER, LEADER
from consensus.raft.log import RaftLog, term_of
from consensus.raft.messages import (
    MAX_APPEND_BYTES,
    MAX_ENTRIES,
    AppendEntries,
    AppendResponse,
    Message,
    RaftParams,
    TimeoutNow,
)


class ReplicationPart:
    """Mixed into RaftEngine, first among its parts: the state it uses is the engine's.  The
    methods it calls elsewhere are declared for the type checker only, so no stub of them
    can stand in front of the real one in the engine's method order."""

    role: str
    term: int
    key: bytes | None
    leader: bytes | None
    log: RaftLog | None
    params: RaftParams
    commit_index: int
    next_index: dict[bytes, int]
    match_index: dict[bytes, int]
    peer_of: dict[bytes, str]
    refused_messages: int
    _now: int
    _out: list[Action]
    _applying: int
    _answered: tuple[int, int]
    _last_append: tuple[tuple | None, bytes]
    _acked_at: dict[bytes, int]
    _acked_round: dict[bytes, int]
    _round: int
    _heartbeat_at: int
    _leader_heard_at: int | None
    _transfer_to: bytes | None

    if TYPE_CHECKING:
        def _members(self): ...

        def _send(self, peer: str, message: Message) -> None: ...

        def _persist(self) -> None: ...

        def _encode(self, message: Message) -> bytes: ...

        def _become_follower(self, term: int, leader: bytes | None) -> None: ...

        def _note_leader(self) -> None: ...

        def _observe_term(self, term: int) -> None: ...

        def _track_followers(self) -> None: ...

        def _reset_election_timer(self) -> None: ...

        def _confirm_reads(self) -> None: ...

        def _promote_caught_up(self) -> None: ...

        def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None: ...

    def _on_append(self, peer: str, request: AppendEntries) -> None:
        """AppendEntries receiver."""
        log = self.log
        assert log is not None and self.key is not None
        if request.term < self.term:
            self._send(peer, AppendResponse(self.term, self.key, False, log.last_index, request.round))
            return
        if request.term > self.term or self.role != FOLLOWER:
            self._become_follower(request.term, request.leader)
        self.leader = request.leader
        self._note_leader()
        self._leader_heard_at = self._now
        self._reset_election_timer()
        if request.prev_index > log.last_index:
            self._send(peer, AppendResponse(self.term, self.key, False, log.last_index, request.round))
            return
        known = log.term_at(request.prev_index)
        if request.prev_index > log.head.height and known != request.prev_term:
            # No match at prevIndex: an uncommitted entry of another term.  Drop it and what
            # follows; the leader will come back one entry earlier.
            log.truncate_from(request.prev_index)
            self._persist()
            self._send(peer, AppendResponse(self.term, self.key, False, request.prev_index - 1, request.round))
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
        # An append that brought nothing and repeats a round already answered only carries
        # the commit index (the leader's note after each commit): answering it would tell
        # the leader nothing, at two messages a block.
        if request.entries or (self.term, request.round) != self._answered:
            self._answered = (self.term, request.round)
            self._send(peer, AppendResponse(self.term, self.key, True, matched, request.round))
        if request.commit > self.commit_index:
            self.commit_index = max(self.commit_index, min(request.commit, matched))
            self._apply_committed()

    def _on_append_response(self, response: AppendResponse) -> None:
        if response.term > self.term:
            self._observe_term(response.term)
            return
        if (self.role != LEADER or response.term != self.term or response.follower == self.key
                or response.follower not in self.next_index):
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
            self._promote_caught_up()
            if follower not in self.next_index:
                return  # the commit applied a membership without it
            if follower == self._transfer_to and self.match_index[follower] >= self.log.last_index:
                self._send(self.peer_of[follower], TimeoutNow(self.term, self.key))
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
                self.next_index[follower] = self.log.head.height + 1
                return
            self.next_index[follower] = target
            if target < before:
                self._send_append(follower)

    def _advance_commit(self) -> None:
        """Leaders: the highest N stored on a majority, if log[N] is of the current term."""
        log = self.log
        assert log is not None and self.key is not None
        members = self._members()
        stored = sorted([log.last_index] + [self.match_index.get(m, 0) for m in members.voters if m != self.key],
                        reverse=True)
        candidate = stored[members.majority - 1]
        if candidate > self.commit_index and log.term_at(candidate) == self.term:
            self.commit_index = candidate
            # Followers learn the new commit index once this node has written the blocks
            # (_on_committed), not before: signing and sending their notes first would hold
            # back the write, and with it the answer to the client waiting here.
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
        for member in list(self.next_index):
            self._send_append(member)
        self._heartbeat_at = self._now + self.params.heartbeat_ms

    def _send_append(self, member: bytes) -> None:
        log = self.log
        assert log is not None and self.key is not None
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
        if entries:
            # Pipelining (etcd's replicate state): what is on its way is not sent again with the
            # next heartbeat or commit note.  If it is lost, the follower refuses the next
            # append (it lacks the entry before it), and that takes next_index back.
            self.next_index[member] = entries[-1].header.height + 1
        # Followers at the same place get the same message: it is signed once for all of them.
        shape = (self.term, prev, prev_term, self.commit_index, self._round, tuple(block.hash for block in entries))
        if shape != self._last_append[0]:
            message = AppendEntries(self.term, self.key, prev, prev_term, self.commit_index, tuple(entries), self._round)
            self._last_append = (shape, self._encode(message))
        encoded = self._last_append[1]
        peer = self.peer_of.get(member)
        if peer is None:
            self._out.append(Broadcast(encoded))  # who is who is learned from answers
        else:
            self._out.append(Send(peer, encoded))

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
        self._track_followers()  # the block may change the membership: it is in force at once
        self._replicate()
        self._persist()
        self._advance_commit()  # a cluster of one commits at once

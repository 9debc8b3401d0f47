"""Raft's elections, as a part of RaftEngine: randomized timeouts, pre-vote (dissertation
9.6), the RequestVote rules of Figure 2 and the lease that makes a voter ignore a
candidate while its leader lives (6.2), and TimeoutNow's election without a pre-vote
(leadership transfer, 3.10).  Who becomes leader or follower, and what that sets up, is
the engine's (`_become_leader`, `_become_follower`, `_observe_term`).
"""

from __future__ import annotations

import hashlib

from ledger import crypto

from consensus.engine import Action, Broadcast
from consensus.raft import CANDIDATE, LEADER, PRE_CANDIDATE
from consensus.raft.log import RaftLog
from consensus.raft.membership import Membership
from consensus.raft.messages import Message, RaftParams, TimeoutNow, VoteRequest, VoteResponse


class ElectionPart:
    """Mixed into RaftEngine: the state it uses is the engine's."""

    role: str
    term: int
    key: bytes | None
    voted_for: bytes | None
    leader: bytes | None
    log: RaftLog | None
    params: RaftParams
    elections: int
    _key: crypto.PrivateKey | None
    _now: int
    _out: list[Action]
    _draws: int
    _election_at: int
    _votes: set[bytes]
    _leader_heard_at: int | None

    def _is_voter(self) -> bool: ...

    def _members(self) -> Membership: ...

    def _voters_among(self, keys) -> int: ...

    def _persist(self) -> None: ...

    def _send(self, peer: str, message: Message) -> None: ...

    def _encode(self, message: Message) -> bytes: ...

    def _become_leader(self) -> None: ...

    def _become_follower(self, term: int, leader: bytes | None) -> None: ...

    def _observe_term(self, term: int) -> None: ...

    def _election_timeout(self) -> int:
        """A timeout in [T, 2T), drawn from this node's own seeded sequence (its key and how
        many it drew), so runs replay and members rarely time out together."""
        self._draws += 1
        seed = (self._key.public_key if self._key is not None else b"follower") + self._draws.to_bytes(8, "big")
        spread = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") % self.params.election_timeout_ms
        return self.params.election_timeout_ms + spread

    def _reset_election_timer(self) -> None:
        self._election_at = self._now + self._election_timeout()

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        """Candidates: vote for yourself and ask the others.  A pre-vote first asks whether
        they would vote for us in the next term, changing no term."""
        assert self.key is not None and self.log is not None and self._is_voter()
        self._reset_election_timer()
        self._votes = {self.key}
        if pre_vote:
            self.role = PRE_CANDIDATE
            term = self.term + 1
        else:
            self.role = CANDIDATE
            self.term += 1
            self.voted_for = self.key
            self.leader = None
            self.elections += 1
            self._persist()
            term = self.term
        if self._voters_among(self._votes) >= self._members().majority:
            self._won(pre_vote)
            return
        request = VoteRequest(pre_vote, term, self.key, self.log.last_index, self.log.last_term, transfer)
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
        and the candidate's log is at least as up to date.  A learner answers too (as etcd's
        do): it may have been promoted by an entry it has not received yet, which a majority
        without it committed, and the candidate counts only the votes of its own voters."""
        assert self.log is not None and self.key is not None
        if request.term < self.term or (self._in_lease() and not request.transfer):
            if request.term < self.term:
                self._send(peer, VoteResponse(request.pre_vote, self.term, self.key, False))
            return
        up_to_date = self.log.up_to_date(request.last_index, request.last_term)
        if request.pre_vote:
            # Would vote in that term: changes nothing here.
            granted = request.term > self.term and up_to_date
            self._send(peer, VoteResponse(True, request.term if granted else self.term, self.key, granted))
            return
        self._observe_term(request.term)
        granted = up_to_date and self.voted_for in (None, request.candidate)
        if granted:
            self.voted_for = request.candidate
            self._reset_election_timer()
        self._persist()  # the term, and the vote, before the answer leaves
        self._send(peer, VoteResponse(False, self.term, self.key, granted))

    def _on_vote_response(self, response: VoteResponse) -> None:
        if response.pre_vote:
            if self.role != PRE_CANDIDATE:
                return
            if response.granted and response.term == self.term + 1:
                self._votes.add(response.voter)
                if self._voters_among(self._votes) >= self._members().majority:
                    self._won(pre_vote=True)
            elif not response.granted and response.term > self.term:
                self._observe_term(response.term)
            return
        if response.term > self.term:
            self._observe_term(response.term)
            return
        if self.role == CANDIDATE and response.term == self.term and response.granted:
            self._votes.add(response.voter)
            if self._voters_among(self._votes) >= self._members().majority:
                self._won(pre_vote=False)

    def _won(self, pre_vote: bool) -> None:
        if not self._is_voter():
            # The log changed under the campaign (a synced block removed this node).
            self._become_follower(self.term, None)
            return
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    def _on_timeout_now(self, message: TimeoutNow) -> None:
        """The leader of our term hands us the lead: campaign now, and voters set aside the
        lease that would otherwise make them ignore a candidate while their leader lives."""
        if (message.term != self.term or self.role == LEADER or message.leader != self.leader
                or not self._is_voter()):
            return
        self._campaign(pre_vote=False, transfer=True)

"""Raft's linearizable reads (ReadIndex, dissertation 6.4), as a part of RaftEngine.

The leader numbers its heartbeat rounds (`_round`, carried by append entries and echoed
in the answers); a read waits for a majority to answer a round sent after it arrived,
which proves no other leader had been elected by then, and for an entry of the leader's
own term to be committed, which makes its commit index current.  It is then answered
with that commit index: the node serves the read once its head is there.  A follower asks
its leader with a ReadIndex message and answers when the leader does.
"""

from __future__ import annotations

from consensus.engine import Action, ReadIndexFailed, ReadIndexReady
from consensus.raft import LEADER
from consensus.raft.log import RaftLog
from consensus.raft.messages import Message, RaftParams, ReadIndex, ReadIndexResponse


class ReadIndexPart:
    """Mixed into RaftEngine: the state it keeps is initialised by `_init_reads`."""

    role: str
    term: int
    key: bytes | None
    leader: bytes | None
    commit_index: int
    log: RaftLog | None
    params: RaftParams
    peer_of: dict[bytes, str]
    me: bytes | None  # this node's key while it is a member
    _now: int
    _out: list[Action]

    def _send(self, peer: str, message: Message) -> None: ...

    def _replicate(self) -> None: ...

    def _members(self): ...

    def _voters_among(self, keys) -> int: ...

    def _init_reads(self) -> None:
        self._round = 0
        self._acked_round: dict[bytes, int] = {}  # leader: the newest round each member answered
        # Pending reads on the leader: (origin member, or None for this node's own client,
        # request id, round, deadline).
        self._reads: list[tuple[bytes | None, int, int, int]] = []
        self._forwarded: dict[int, int] = {}  # follower: request id -> deadline, asked of the leader

    def _read_deadlines(self) -> list[int]:
        return [deadline for *_, deadline in self._reads] + list(self._forwarded.values())

    def _fail_leader_reads(self) -> None:
        for origin, request, _, _ in self._reads:
            self._answer_read(origin, request, None, "this node stopped leading before the read was confirmed")
        self._reads = []

    def _on_read_requested(self, origin: bytes | None, request: int) -> None:
        """ReadIndex (dissertation 6.4): the leader notes the read, starts a heartbeat round,
        and answers with its commit index once a majority has answered that round (it still
        leads) and an entry of its own term is committed (its commit index is current).  A
        follower asks its leader and answers when the leader does."""
        deadline = self._now + self.params.election_timeout_ms
        if self.role == LEADER:
            self._round += 1
            self._reads.append((origin, request, self._round, deadline))
            self._replicate()
            self._confirm_reads()
            return
        if origin is not None:
            return  # a member took us for its leader: it times out and asks again
        if self.me is None:
            self._out.append(ReadIndexFailed(request, "this node is not a member of the cluster: ask a member"))
        elif self.leader is None or self.leader not in self.peer_of:
            self._out.append(ReadIndexFailed(request, "no leader is known now (an election may be under way)"))
        else:
            self._forwarded[request] = deadline
            self._send(self.peer_of[self.leader], ReadIndex(self.term, self.me, request))

    def _confirm_reads(self) -> None:
        if self.role != LEADER or not self._reads:
            return
        log = self.log
        assert log is not None
        if log.term_at(self.commit_index) != self.term:
            return  # the no-op of this term is not committed yet: the commit index may lag
        waiting = []
        for origin, request, round_, deadline in self._reads:
            answered = self._voters_among([self.key] + [m for m, acked in self._acked_round.items() if acked >= round_])
            if answered >= self._members().majority:
                self._answer_read(origin, request, self.commit_index, "")
            else:
                waiting.append((origin, request, round_, deadline))
        self._reads = waiting

    def _answer_read(self, origin: bytes | None, request: int, index: int | None, reason: str) -> None:
        if origin is None:
            self._out.append(ReadIndexReady(request, index) if index is not None else ReadIndexFailed(request, reason))
        elif origin in self.peer_of:
            self._send(self.peer_of[origin], ReadIndexResponse(self.term, self.key, request, index is not None, index or 0))

    def _on_read_answer(self, answer: ReadIndexResponse) -> None:
        if self._forwarded.pop(answer.request, None) is None:
            return  # not ours, or past its deadline already
        if answer.ok:
            self._out.append(ReadIndexReady(answer.request, answer.index))
        else:
            self._out.append(ReadIndexFailed(answer.request, "the leader lost its lead before confirming the read"))

    def _expire_reads(self) -> None:
        late = "leadership was not confirmed within an election timeout"
        for origin, request, _, _ in [r for r in self._reads if r[3] <= self._now]:
            self._answer_read(origin, request, None, late)
        self._reads = [r for r in self._reads if r[3] > self._now]
        for request in [r for r, deadline in self._forwarded.items() if deadline <= self._now]:
            del self._forwarded[request]
            self._out.append(ReadIndexFailed(request, f"the leader did not answer: {late}"))

"""What an operator asks of a Raft leader, as a part of RaftEngine: hand the lead to another
member (dissertation 3.10), and change the membership one server at a time (chapter 4).

A change is an empty block whose `extra` names the new membership, appended by the leader
like any entry (consensus/raft/membership.py).  The leader starts one only when the last
change is committed and an entry of its own term is committed (the rule the dissertation's
errata add: otherwise two leaders of adjacent terms could each commit a one-step change
from the same membership, and the two results need not overlap).  A new member joins as a
learner: it catches up from the chain (block sync, then append entries), and the leader
promotes it to voter once it holds every committed block, so it never counts toward a
majority before it can vote for an up-to-date log.
"""

from __future__ import annotations

from consensus.engine import Action
from consensus.raft import LEADER
from consensus.raft.log import RaftLog, term_of
from consensus.raft.membership import Membership, Memberships
from consensus.raft.messages import Message, RaftParams, TimeoutNow
from ledger.block import Block


class OperatorPart:
    """Mixed into RaftEngine: the state it keeps is initialised by `_init_operators`."""

    role: str
    term: int
    key: bytes | None
    log: RaftLog | None
    params: RaftParams
    peer_of: dict[bytes, str]
    match_index: dict[bytes, int]
    _round: int
    memberships: Memberships
    _now: int
    _out: list[Action]

    def _send(self, peer: str, message: Message) -> None: ...

    def _send_append(self, member: bytes) -> None: ...

    def _members(self) -> Membership: ...

    def _append(self, block: Block) -> None: ...

    def _empty_block(self, membership: Membership | None = None) -> Block: ...

    def _init_operators(self) -> None:
        self._transfer_to: bytes | None = None  # leader: the member it is handing the lead to
        self._transfer_until = 0

    # ------------------------------------------------------------------ leadership transfer
    def _on_transfer_requested(self, to: bytes) -> None:
        """Leadership transfer (dissertation 3.10): stop appending new blocks, bring the
        target's log up to ours, then tell it to campaign at once (TimeoutNow).  If it has not
        taken over within an election timeout, this leader goes on leading."""
        if self.role != LEADER:
            return
        target = next((k for k in self._members().voters if self.memberships.address(k) == to), None)
        if target is None or target == self.key or target not in self.peer_of:
            return
        assert self.log is not None and self.key is not None
        self._transfer_to = target
        self._transfer_until = self._now + self.params.election_timeout_ms
        self._round += 1  # the target answers what we send now, even with nothing new in it
        if self.match_index.get(target, 0) >= self.log.last_index:
            self._send(self.peer_of[target], TimeoutNow(self.term, self.key))
        else:
            self._send_append(target)

    # ------------------------------------------------------------------ membership
    def _change_pending(self) -> bool:
        """Whether the log holds a membership change that is not committed yet."""
        assert self.log is not None
        return self.memberships.of(self.log.last_header()) != self.memberships.of(self.log.head)

    def _may_change_membership(self) -> bool:
        """Leaders: one change at a time, after an entry of this term is committed."""
        log = self.log
        return (self.role == LEADER and log is not None and self._transfer_to is None
                and term_of(log.head) == self.term and not self._change_pending())

    def _on_membership_requested(self, key: bytes, add: bool) -> None:
        if not self._may_change_membership():
            return
        members = self._members()
        if add:
            if key in members or members.full:
                return
            changed = members.adding_learner(key)
        else:
            if key not in members or key == self.key or members.voters == (key,):
                return  # the leader hands the lead over before it leaves
            changed = members.removing(key)
        self._append(self._empty_block(changed))

    def _promote_caught_up(self) -> None:
        """Leaders: a learner holding every committed block becomes a voter (one at a time)."""
        log = self.log
        if log is None or not self._may_change_membership():
            return
        members = self._members()
        for learner in members.learners:
            if self.match_index.get(learner, 0) >= log.head.height:
                self._append(self._empty_block(members.promoting(learner)))
                return

"""What RaftEngine tells others rather than decides: its `status()` for the API (term,
role, leader, commit index, members, the elections it saw) and the labels the explorer
shows beside each block (its term and leader, a membership change).

Nothing here moves a term or an index: the rules in consensus/raft/engine.py and its other
parts count what is reported (`_init_report`).  Mixed into RaftEngine, whose state it reads.
"""

from __future__ import annotations

from collections import deque

from ledger.address import encode_address
from ledger.block import BlockHeader
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus

from consensus.raft import LEADER
from consensus.raft.log import RaftLog, term_of
from consensus.raft.membership import MAX_MEMBERS, Membership, Memberships
from consensus.raft.messages import RaftParams


class ReportPart:
    """Mixed into RaftEngine: the counters it reports are initialised by `_init_report`."""

    name: str
    finality: Finality
    role: str
    term: int
    key: bytes | None
    leader: bytes | None
    voted_for: bytes | None
    commit_index: int
    log: RaftLog | None
    params: RaftParams
    address_prefix: str
    genesis_members: Membership
    memberships: Memberships
    match_index: dict[bytes, int]
    me: bytes | None  # this node's key while it is a member
    _transfer_to: bytes | None

    def _members(self) -> Membership: ...

    def _change_pending(self) -> bool: ...

    def _may_change_membership(self) -> bool: ...

    def _init_report(self) -> None:
        self.proposed: dict[bytes, int] = {}  # address -> blocks it appended that this node saw committed
        self.last_signed: dict[bytes, int] = {}  # address -> height of the newest of them
        self.elections = 0  # elections this node started
        self.leaders_seen: deque[tuple[int, int, bytes]] = deque(maxlen=16)  # (when, term, leader), newest last
        self.refused_messages = 0

    def block_labels(self, header: BlockHeader, parent: BlockHeader | None) -> list[tuple[str, str]]:
        if header.height == 0:
            return []
        labels = [("term", str(term_of(header))), ("leader", encode_address(self.address_prefix, header.proposer))]
        change = self.memberships.change(header, parent) if parent is not None else None
        if change is not None:
            step, key = change
            labels.append(("membership", f"{step} {encode_address(self.address_prefix, self.memberships.address(key))}"))
        return labels

    def status(self) -> EngineStatus:
        log = self.log
        head = log.head.height if log is not None else None
        members = self._members() if log is not None else self.genesis_members

        def hex_address(key: bytes | None) -> str | None:
            return self.memberships.address(key).hex() if key is not None else None

        def validator(key: bytes, power: int) -> ValidatorStatus:
            address = self.memberships.address(key)
            return ValidatorStatus(address=address, public_key=key, power=power,
                                   blocks_proposed=self.proposed.get(address, 0),
                                   last_signed_height=self.last_signed.get(address))

        leader = hex_address(self.leader)
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role=("observer" if self.me is None else "learner" if self.key in members.learners else self.role),
            phase="not started" if log is None else (
                f"leading term {self.term}" if self.role == LEADER else
                f"following {leader[:12]} in term {self.term}" if leader is not None else
                f"electing in term {self.term}"),
            height=head + 1 if head is not None else None,
            term=self.term,
            # Learners are listed with power 0: they follow the log but count toward no majority.
            validators=tuple([validator(k, 1) for k in members.voters] + [validator(k, 0) for k in members.learners]),
            total_power=len(members.voters),
            quorum_power=members.majority,
            details={
                "leader": leader,
                "voted_for": hex_address(self.voted_for),
                "commit_index": self.commit_index,
                "last_index": log.last_index if log is not None else 0,
                "last_term": log.last_term if log is not None else 0,
                "member": hex_address(self.me),
                "voters": [hex_address(k) for k in members.voters],
                "learners": [hex_address(k) for k in members.learners],
                "membership_change_pending": log is not None and self._change_pending(),
                "accepts_membership_change": self._may_change_membership(),
                "member_limit": MAX_MEMBERS,
                "match_index": {hex_address(m): i for m, i in sorted(self.match_index.items())}
                if self.role == LEADER else {},
                "transferring_to": hex_address(self._transfer_to),
                "elections_started": self.elections,
                "leaders_seen": [{"at": at, "term": term, "leader": hex_address(leader)}
                                 for at, term, leader in self.leaders_seen],
                "election_timeout_ms": self.params.election_timeout_ms,
                "heartbeat_ms": self.params.heartbeat_ms,
                "refused_messages": self.refused_messages,
            },
        )


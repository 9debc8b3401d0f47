"""What the admin endpoint changes on a running node: faults on its peer links, who leads
(Raft's leadership transfer) and who the members are (Raft's membership changes).

Mixed into Node.  Each change is logged by the network and published on the events
stream (`event: fault`), so whoever watches the node sees when its links were cut.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from pathlib import Path

from api.admin import AdminRefused
from consensus import engine as ev
from consensus.engine import Engine
from ledger.address import address_of
from ledger.genesis import Genesis
from node.keys import write_private_file
from node.p2p.faults import LinkFaults
from node.p2p.network import Network

ADMIN_TOKEN_FILE = "admin.token"


def write_admin_token(data_dir: Path) -> str:
    """A fresh token each start, readable by the node's user only (bitcoind's cookie file)."""
    token = secrets.token_hex(32)
    write_private_file(Path(data_dir) / ADMIN_TOKEN_FILE, token + "\n")
    return token


MAX_FAULT_RECORDS = 20


class LinkFaultControl:
    network: Network | None
    now_ms: Callable[[], int]
    fault_log: deque[dict]  # the newest changes, for GET /v1/node and the explorer's dashboard

    def publish(self, kind: str, data: dict) -> None: ...

    def link_faults(self) -> dict:
        """The faults on this node's links; LookupError when it has no TCP peer network."""
        return self._faultable().faults.as_json()

    def set_link_faults(self, blocked: frozenset[str], delay_ms: int, loss_percent: float) -> dict:
        """Lay these faults (none heals); InvalidFaults (a ValueError naming its field) changes nothing."""
        network = self._faultable()
        faults = LinkFaults(blocked, delay_ms, loss_percent)
        network.set_faults(faults)
        record = {**faults.as_json(), "description": faults.describe(), "at": self.now_ms()}
        self.fault_log.append(record)
        self.publish("fault", record)
        return faults.as_json()

    def _faultable(self):
        network = self.network
        if network is None or not hasattr(network, "set_faults"):
            raise LookupError("this node runs without a peer network (no peers to cut off, delay or drop)")
        return network


class ClusterControl:
    engine: Engine
    genesis: Genesis
    lock: object
    now_ms: Callable[[], int]

    def feed(self, event: ev.Event) -> None: ...

    def transfer_leadership(self, to: bytes) -> dict:
        """Ask this node's engine, which must lead, to hand the lead to member `to` (an
        address).  Returns at once: the new leader takes over within an election timeout or
        the old one leads on; /v1/consensus says which.  On the event loop only."""
        engine = self.engine
        if not engine.transfers_leadership:
            raise AdminRefused("no_leader_to_move", f"the {engine.name} engine has no leader to move")
        with self.lock:  # type: ignore[attr-defined]
            status = engine.status()
        leader = status.details.get("leader")
        self._must_lead(status)
        members = [validator.address for validator in status.validators if validator.power]
        if to not in members:
            raise AdminRefused("not_a_member", f"{to.hex()} is not a voting member")
        if to.hex() == leader:
            raise AdminRefused("already_leader", "that member leads already")
        self.feed(ev.LeadershipTransferRequested(self.now_ms(), to))
        return {"from": leader, "to": to.hex(), "term": status.term}

    def change_membership(self, add: bytes | None, remove: bytes | None) -> dict:
        """Ask this node's engine, which must lead, to add the member with node key `add` (it
        joins as a learner; the leader promotes it once it has caught up) or to remove the
        member with address `remove`.  Returns at once ({change, member, term}); /v1/consensus
        shows the membership as it changes.  On the event loop only."""
        engine = self.engine
        if not engine.changes_membership:
            raise AdminRefused("no_membership", f"the {engine.name} engine has no membership to change on request")
        with self.lock:  # type: ignore[attr-defined]
            status = engine.status()
        self._must_lead(status)
        if not status.details.get("accepts_membership_change"):
            raise AdminRefused("change_pending", "the last membership change, or this leader's first block, is not "
                                                 "committed yet: one change at a time; try again in a moment")
        listed = {validator.address: validator for validator in status.validators}
        if add is not None:
            if address_of(add) in listed:
                raise AdminRefused("already_member", f"{self.genesis.address(address_of(add))} is a member already")
            limit = status.details.get("member_limit")
            if limit is not None and len(listed) >= limit:
                raise AdminRefused("too_many_members", f"the cluster has {len(listed)} members, the most it can "
                                                       "have: remove one first")
            self.feed(ev.MembershipChangeRequested(self.now_ms(), add, add=True))
            return {"change": "add learner", "member": address_of(add).hex(), "term": status.term}
        assert remove is not None
        member = listed.get(remove)
        if member is None:
            raise AdminRefused("not_a_member", f"{self.genesis.address(remove)} is not a member")
        if remove.hex() == status.details.get("leader"):
            raise AdminRefused("is_leader", "this node leads: hand the lead to another member first "
                                            "(ledger raft transfer-leadership), then remove it through the new leader")
        self.feed(ev.MembershipChangeRequested(self.now_ms(), member.public_key, add=False))
        return {"change": "remove voter" if member.power else "remove learner", "member": remove.hex(),
                "term": status.term}

    def _must_lead(self, status) -> None:
        if status.role != "leader":
            leader = status.details.get("leader")
            where = f" (it follows {self.genesis.address(bytes.fromhex(leader))})" if leader else " (no leader is known now)"
            raise AdminRefused("not_leader", f"this node is not the leader{where}: ask the leader")

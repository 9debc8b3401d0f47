"""What the admin endpoint changes on a running node: faults on its peer links, and who
leads (Raft's leadership transfer).

Mixed into Node.  Each change is logged by the network and published on the events
stream (`event: fault`), so whoever watches the node sees when its links were cut.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from pathlib import Path

from api.admin import LeadershipRefused
from consensus import engine as ev
from consensus.engine import Engine
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


class LeadershipControl:
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
            raise LeadershipRefused("no_leader_to_move", f"the {engine.name} engine has no leader to move")
        with self.lock:  # type: ignore[attr-defined]
            status = engine.status()
        leader = status.details.get("leader")
        if status.role != "leader":
            where = f" (it follows {self.genesis.address(bytes.fromhex(leader))})" if leader else " (no leader is known now)"
            raise LeadershipRefused("not_leader", f"this node is not the leader{where}: ask the leader")
        members = [validator.address for validator in status.validators]
        if to not in members:
            raise LeadershipRefused("not_a_member", f"{to.hex()} is not a member")
        if to.hex() == leader:
            raise LeadershipRefused("already_leader", "that member leads already")
        self.feed(ev.LeadershipTransferRequested(self.now_ms(), to))
        return {"from": leader, "to": to.hex(), "term": status.term}

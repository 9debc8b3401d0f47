"""What the admin endpoint changes on a running node: faults on its peer links.

Mixed into Node.  Each change is logged by the network and published on the events
stream (`event: fault`), so whoever watches the node sees when its links were cut.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from pathlib import Path

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

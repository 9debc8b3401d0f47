"""The interface between the node runtime and its peers.

The runtime talks to peers only through `Network`; `node.p2p.tcp` implements it
over asyncio TCP, the simulator implements it in memory with virtual time.
Messages are the dataclasses of `node.p2p.messages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class PeerInfo:
    id: str  # hex of the 20-byte account id of the peer's node key (verified in the handshake)
    address: str  # host:port it listens on (for peer exchange), or "" if unknown
    inbound: bool
    head_height: int = 0
    head_hash: bytes = b""
    finalized_height: int = 0
    score: int = 0


class PeerHandler(Protocol):
    """What the runtime provides to its network; each call runs on the node's event loop."""

    def on_peer_connected(self, peer: PeerInfo) -> None: ...

    def on_peer_message(self, peer_id: str, message: object) -> None: ...

    def on_peer_disconnected(self, peer_id: str) -> None: ...


class Network(Protocol):
    async def start(self, handler: PeerHandler) -> None: ...

    async def stop(self) -> None: ...

    def send(self, peer_id: str, message: object) -> None:
        """Queue a message for one peer (bounded queue; a peer that cannot keep up is dropped)."""
        ...

    def broadcast(self, message: object, exclude: frozenset[str] = frozenset()) -> None: ...

    def peers(self) -> list[PeerInfo]: ...

    def penalize(self, peer_id: str, points: int, reason: str) -> None:
        """Lower a peer's score for bad data; at the ban threshold it is disconnected and banned for a while."""
        ...

    def update_status(self, head_height: int, head_hash: bytes, finalized_height: int) -> None:
        """Our head changed: tell the peers (a Status message) and use it in future handshakes."""
        ...

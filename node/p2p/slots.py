"""Connection slots: who gets in when the node is full, and who makes room.

Slots go to whoever comes first unless something decides otherwise, and then a
peer that holds connections open (silent, or authenticated and idle) keeps every
honest newcomer out.  The rules here decide otherwise:

* Unauthenticated inbound connections share a small pool.  An honest handshake takes
  milliseconds, so a newcomer to a full pool evicts the oldest connection of the network
  group (an IPv4 /16, an IPv6 /32, as Bitcoin Core groups addresses) that holds the most
  of the pool, and an IP that already holds `per_ip` of them loses its own oldest first.
  To keep an honest peer out an attacker has to outpace its handshake from more network
  groups than the honest peer's, not merely arrive first or reconnect fast.
* Authenticated peers we dial and peers that dial us have separate slots, so inbound
  peers, however many, never take the slots of the peers we chose.
* When the inbound slots are full a newcomer evicts one inbound peer, as Bitcoin Core
  does: never a peer at an address of our static list, never one of the few that have
  been connected longest (an attacker cannot make those by connecting now); of the rest,
  the lowest score if any is below 0, else the newest of the network group holding the
  most slots.
  If every peer is protected the newcomer is refused.

The functions are pure, over anything with an ip, a group and a since (a connection,
or a `Slot` view), so the order is tested without sockets.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Placed(Protocol):
    ip: str
    group: str
    since: float


P = TypeVar("P", bound=Placed)


@dataclass(frozen=True)
class Slot(Generic[T]):
    ref: T  # the connection this describes
    ip: str
    since: float  # monotonic time it was accepted (unauthenticated) or admitted (a peer)
    score: int = 0
    protected: bool = False  # its address is one of our static peers

    @property
    def group(self) -> str:
        return network_group(self.ip)


@lru_cache(maxsize=4096)
def network_group(ip: str) -> str:
    """The block of addresses one operator most likely holds: an IPv4 /16, an IPv6 /32."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 16 if address.version == 4 else 32
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def handshake_victim(pending: Sequence[P], ip: str, pool: int, per_ip: int) -> tuple[P, str] | None:
    """The unauthenticated connection a new one from `ip` replaces, with the reason it
    is told, or None when there is room.  Runs at every accept of a flood: keep it lean."""
    same_ip = [slot for slot in pending if slot.ip == ip]
    if len(same_ip) >= per_ip:
        return min(same_ip, key=lambda slot: slot.since), f"evicted: {per_ip} handshakes from {ip} at once"
    if len(pending) >= pool:
        groups = Counter(slot.group for slot in pending)
        groups[network_group(ip)] += 1  # the newcomer counts in its group's share
        crowded = max(groups[slot.group] for slot in pending)
        oldest = min((slot for slot in pending if groups[slot.group] == crowded), key=lambda slot: slot.since)
        return oldest, f"evicted: {pool} handshakes at once"
    return None


def inbound_victim(peers: Sequence[Slot[T]], protect_longest: int) -> Slot[T] | None:
    """The inbound peer that makes room for a new one, or None when all are protected."""
    candidates = [slot for slot in peers if not slot.protected]
    candidates.sort(key=lambda slot: slot.since)
    candidates = candidates[protect_longest:]
    if not candidates:
        return None
    worst = min(candidates, key=lambda slot: (slot.score, -slot.since))
    if worst.score < 0:
        return worst
    groups = Counter(slot.group for slot in candidates)
    crowded = max(groups.values())
    return max((slot for slot in candidates if groups[slot.group] == crowded), key=lambda slot: slot.since)

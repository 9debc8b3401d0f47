"""Per-peer budgets: a token bucket for every message and one per kind of message.

A limit on messages alone lets a peer send cheap messages that are expensive to
handle: 4,096 transaction ids in one announcement, a block range request that costs a
database read.  So, as Bitcoin Core and CometBFT do, each peer also has a bucket per
kind, charged in what the kind costs us: ids for announcements and requests, messages
for block range requests, consensus messages and everything else.  The charge is
computed from the frame's first bytes, before the message is decoded, so a message
over its budget costs almost nothing: it is dropped and its sender scored down.
"""

from __future__ import annotations

import struct
from enum import Enum

from node.p2p.messages import HASH_SIZE, MAX_TX_IDS, MessageType
from node.p2p.settings import P2PSettings

_COUNT = struct.Struct(">I")


class Kind(str, Enum):
    """A budget; its value names it in logs and disconnect reasons."""

    MESSAGES = "message rate"  # every message draws from it too
    TX_ANNOUNCE = "transaction announcement"
    TX_REQUEST = "transaction request"
    GET_BLOCKS = "block request"
    CONSENSUS = "consensus message"
    OTHER = "message"


_KIND_OF_TYPE = {
    MessageType.TX_ANNOUNCE: Kind.TX_ANNOUNCE,
    MessageType.TX_REQUEST: Kind.TX_REQUEST,
    MessageType.GET_BLOCKS: Kind.GET_BLOCKS,
    MessageType.ENGINE: Kind.CONSENSUS,
}
_COUNTED_IN_IDS = frozenset((Kind.TX_ANNOUNCE, Kind.TX_REQUEST))


def cost(payload: bytes) -> tuple[Kind, int]:
    """The budget a frame draws from and how much: ids for announcements and requests
    (the ids actually present, so a lying count is never cheaper), else 1 message."""
    kind = _KIND_OF_TYPE.get(payload[0] if payload else -1, Kind.OTHER)
    if kind not in _COUNTED_IN_IDS:
        return kind, 1
    if len(payload) < 1 + _COUNT.size:
        return kind, 1  # truncated: the decoder refuses it and scores the sender down
    (declared,) = _COUNT.unpack_from(payload, 1)
    present = (len(payload) - 1 - _COUNT.size) // HASH_SIZE
    return kind, max(1, min(declared, present, MAX_TX_IDS))


class TokenBucket:
    """`rate` tokens a second up to `burst`; starts full.

    A take that does not fit takes nothing, so an oversized request never drains what
    smaller ones could use, and an empty bucket refills at `rate` whatever is asked.
    """

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a rate and a burst above 0")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, amount: float, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class PeerBudgets:
    """One peer's buckets.  Created per connection, so they go with it."""

    __slots__ = ("_messages", "_kinds")

    def __init__(self, settings: P2PSettings, now: float):
        s = settings
        self._messages = TokenBucket(s.rate_per_second, s.rate_burst, now)
        self._kinds = {
            Kind.TX_ANNOUNCE: TokenBucket(s.tx_announce_ids_per_second, s.tx_announce_ids_burst, now),
            Kind.TX_REQUEST: TokenBucket(s.tx_request_ids_per_second, s.tx_request_ids_burst, now),
            Kind.GET_BLOCKS: TokenBucket(s.get_blocks_per_second, s.get_blocks_burst, now),
            Kind.CONSENSUS: TokenBucket(s.consensus_per_second, s.consensus_burst, now),
            Kind.OTHER: TokenBucket(s.other_per_second, s.other_burst, now),
        }

    def charge(self, payload: bytes, now: float) -> Kind | None:
        """None when the frame fits its budgets (and is charged), else the budget it overran."""
        if not self._messages.take(1, now):
            return Kind.MESSAGES
        kind, amount = cost(payload)
        if not self._kinds[kind].take(amount, now):
            return kind
        return None


def overrun_reason(kind: Kind) -> str:
    if kind is Kind.MESSAGES:
        return "message rate limit exceeded"
    return f"{kind.value} budget exceeded"

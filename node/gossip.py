"""Transaction gossip: announce ids in batches, let peers fetch what they lack.

Each transaction crosses each peer link about once: the node announces the ids it
admitted (in batches every few milliseconds), a peer requests only the ids it has
not seen, and the seen-cache stops an id from being requested twice or looping.

What a peer can make the node hold is bounded, whatever it announces (Bitcoin Core's
txrequest does the same): at most `max_in_flight` ids requested from one peer and not
yet delivered, at most `max_waiting` more of its announcements waiting for those to
clear (oldest dropped first; `max_waiting_total` over all peers), and nothing of a
peer's is kept once it disconnects.  Only transactions we asked that peer for are
admitted from its batches: what nobody asked for costs no signature checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from api.service import Rejection, SubmitResult
from ledger.codec import DecodeError
from ledger.recent import RecentSet
from ledger.transaction import Transaction
from node.p2p.messages import TxAnnounce, TxBatch, TxRequest
from node.p2p.network import Network

log = logging.getLogger("ledger.gossip")

FLUSH_SECONDS = 0.01
# Ids seen (announced, fetched, admitted): at least half of this many of the newest are
# remembered, five seconds of traffic at 12,000 transfers a second; what still waits is in
# the mempool, which gossip asks too.  An older id announced again is fetched once more
# and refused by the mempool (nonce too low): a little traffic, no state.
SEEN_CAPACITY = 131_072
REQUEST_TIMEOUT_MS = 2_000  # an id requested but not delivered by then may be requested again
MAX_IDS_PER_MESSAGE = 4096
# One announcement's worth in flight per peer: an honest peer answers a request within
# milliseconds, so even at ~12,000 transfers/s only a few hundred ids are ever outstanding.
MAX_IN_FLIGHT_PER_PEER = MAX_IDS_PER_MESSAGE
MAX_WAITING_PER_PEER = 5_000
MAX_WAITING_TOTAL = 50_000
# Refusals that prove a peer sent something no honest node would relay.
MALICIOUS_REASONS = frozenset({"bad_signature", "high_s_signature", "wrong_chain", "bad_public_key", "decode_error"})
# A transaction nobody asked for: a late answer from an honest peer costs little, a stream of them adds up.
PENALTY_UNSOLICITED = 1


@dataclass
class _PeerRequests:
    """What one peer announced: requested from it (id -> when, ms) and waiting to be."""

    in_flight: dict[bytes, int] = field(default_factory=dict)
    waiting: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


class TxGossip:
    def __init__(
        self,
        network: Network,
        submit: Callable[[list[Transaction], str | None], Awaitable[list[SubmitResult]]],
        pending: Callable[[bytes], Transaction | None],
        clock: Callable[[], int],
        seen_capacity: int = SEEN_CAPACITY,
        *,
        max_in_flight: int = MAX_IN_FLIGHT_PER_PEER,
        max_waiting: int = MAX_WAITING_PER_PEER,
        max_waiting_total: int = MAX_WAITING_TOTAL,
    ):
        self.network = network
        self._submit = submit
        self._pending = pending
        self.seen = RecentSet(seen_capacity)
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.max_waiting_total = max_waiting_total
        self._requested: dict[bytes, str] = {}  # id -> the peer it is requested from
        self._peers: dict[str, _PeerRequests] = {}
        self._waiting_total = 0
        self._outbox: dict[str | None, list[bytes]] = {}
        self._flusher: asyncio.Task | None = None
        self.announced = 0  # ids sent in announcements, for the messages-per-transaction figure
        self.dropped_announcements = 0  # ids forgotten because a peer announced more than it may

    # ------------------------------------------------------------------ announcing ours
    def admitted(self, transactions: list[Transaction], origin: str | None) -> None:
        """Transactions entered the mempool: announce them to every peer but their origin."""
        ids = self._outbox.setdefault(origin, [])
        for tx in transactions:
            tx_id = tx.id
            self.seen.add(tx_id)
            ids.append(tx_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        self.flush()

    def flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        pending = self._pending
        for origin, ids in outbox.items():
            # What left the mempool meanwhile is in a block (or was refused or replaced): peers
            # get it with the block, and an announcement would only make them ask for nothing.
            ids = [tx_id for tx_id in ids if pending(tx_id) is not None]
            exclude = frozenset((origin,)) if origin is not None else frozenset()
            for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
                chunk = ids[start : start + MAX_IDS_PER_MESSAGE]
                self.network.broadcast(TxAnnounce(tuple(chunk)), exclude=exclude)
                self.announced += len(chunk)

    def reannounce(self, ids: list[bytes]) -> None:
        """Announce pending transactions again (an announcement can be lost; peers that have
        them ignore it)."""
        for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
            self.network.broadcast(TxAnnounce(tuple(ids[start : start + MAX_IDS_PER_MESSAGE])))
            self.announced += len(ids[start : start + MAX_IDS_PER_MESSAGE])

    # ------------------------------------------------------------------ fetching theirs
    def on_announce(self, peer_id: str, ids: tuple[bytes, ...]) -> None:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _PeerRequests()
        requested, seen, waiting, pending = self._requested, self.seen, peer.waiting, self._pending
        for tx_id in ids:
            # Requested once, from the first peer that announced it, unless that answer is
            # lost; never while our mempool holds it (seen may have forgotten it by then).
            if tx_id in seen or tx_id in requested or tx_id in waiting or pending(tx_id) is not None:
                continue
            waiting[tx_id] = None
            self._waiting_total += 1
            if len(waiting) > self.max_waiting:
                waiting.popitem(last=False)
                self._waiting_total -= 1
                self.dropped_announcements += 1
        if self._waiting_total > self.max_waiting_total:
            self._shed_waiting()
        self._request_from(peer_id, peer)

    def _request_from(self, peer_id: str, peer: _PeerRequests) -> None:
        room = self.max_in_flight - len(peer.in_flight)
        if room <= 0 or not peer.waiting:
            return
        now = self._clock()
        wanted = []
        waiting, requested, seen = peer.waiting, self._requested, self.seen
        while waiting and len(wanted) < room:
            tx_id, _ = waiting.popitem(last=False)
            self._waiting_total -= 1
            if tx_id in seen or tx_id in requested:
                continue  # delivered by another peer meanwhile
            wanted.append(tx_id)
            requested[tx_id] = peer_id
            peer.in_flight[tx_id] = now
        if wanted:
            self.network.send(peer_id, TxRequest(tuple(wanted)))

    def _shed_waiting(self) -> None:
        """Over the total: drop the oldest waiting ids of the peers holding the most."""
        excess = self._waiting_total - self.max_waiting_total
        for peer in sorted(self._peers.values(), key=lambda p: len(p.waiting), reverse=True):
            while excess > 0 and peer.waiting:
                peer.waiting.popitem(last=False)
                self._waiting_total -= 1
                self.dropped_announcements += 1
                excess -= 1
            if excess <= 0:
                return

    def expire_requests(self) -> None:
        """Forget requests that were never answered, so the ids can be asked of another
        peer that announces them, and let each peer's waiting ids take their place."""
        deadline = self._clock() - REQUEST_TIMEOUT_MS
        for peer_id, peer in list(self._peers.items()):
            late = [tx_id for tx_id, at in peer.in_flight.items() if at <= deadline]
            for tx_id in late:
                del peer.in_flight[tx_id]
                if self._requested.get(tx_id) == peer_id:
                    del self._requested[tx_id]
            if late:
                self._request_from(peer_id, peer)
            if not peer.in_flight and not peer.waiting:
                del self._peers[peer_id]

    def peer_gone(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        self._waiting_total -= len(peer.waiting)
        for tx_id in peer.in_flight:
            if self._requested.get(tx_id) == peer_id:
                del self._requested[tx_id]

    def outstanding(self) -> tuple[int, int]:
        """(ids requested and not delivered, ids announced and waiting), over all peers."""
        return len(self._requested), self._waiting_total

    # ------------------------------------------------------------------ serving and receiving
    def on_request(self, peer_id: str, ids: tuple[bytes, ...]) -> None:
        found = [tx.encode() for tx in map(self._pending, ids) if tx is not None]
        if found:
            self.network.send(peer_id, TxBatch(tuple(found)))

    async def on_batch(self, peer_id: str, raws: tuple[bytes, ...]) -> None:
        transactions = []
        for raw in raws:
            try:
                transactions.append(Transaction.decode(raw))
            except DecodeError as exc:
                self.network.penalize(peer_id, 20, f"undecodable transaction: {exc}")
                return
        peer = self._peers.get(peer_id)
        asked = []
        unsolicited = 0
        for tx in transactions:
            tx_id = tx.id
            if peer is None or peer.in_flight.pop(tx_id, None) is None:
                # A duplicate or a late answer carries what we have already seen; anything
                # else was pushed at us unasked.
                unsolicited += tx_id not in self.seen
                continue
            if self._requested.get(tx_id) == peer_id:
                del self._requested[tx_id]
            self.seen.add(tx_id)  # admitted or not, there is no need to fetch it again
            asked.append(tx)
        if unsolicited:
            self.network.penalize(peer_id, PENALTY_UNSOLICITED * min(unsolicited, 10), "transactions nobody asked for")
        if peer is not None:
            self._request_from(peer_id, peer)
        if not asked:
            return
        results = await self._submit(asked, peer_id)
        bad = [r for r in results if isinstance(r, Rejection) and r.reason in MALICIOUS_REASONS]
        if bad:
            self.network.penalize(peer_id, 20 * len(bad), f"invalid transaction: {bad[0].reason}")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

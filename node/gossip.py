"""Transaction gossip: announce ids in batches, let peers fetch what they lack.

Each transaction crosses each peer link about once: the node announces the ids it
admitted (in batches every few milliseconds), a peer requests only the ids it has
not seen, and the seen-cache stops an id from being requested twice or looping.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from api.service import Rejection, SubmitResult
from ledger.codec import DecodeError
from ledger.transaction import Transaction
from node.p2p.messages import TxAnnounce, TxBatch, TxRequest
from node.p2p.network import Network

log = logging.getLogger("ledger.gossip")

FLUSH_SECONDS = 0.01
REQUEST_TIMEOUT_MS = 2_000  # an id requested but not delivered by then may be requested again
MAX_IDS_PER_MESSAGE = 4096
# Refusals that prove a peer sent something no honest node would relay.
MALICIOUS_REASONS = frozenset({"bad_signature", "high_s_signature", "wrong_chain", "bad_public_key", "decode_error"})


class SeenCache:
    """A bounded set of recently seen ids, oldest forgotten first."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, tx_id: bytes) -> bool:
        return tx_id in self._ids

    def add(self, tx_id: bytes) -> None:
        self._ids[tx_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class TxGossip:
    def __init__(
        self,
        network: Network,
        submit: Callable[[list[Transaction], str | None], Awaitable[list[SubmitResult]]],
        pending: Callable[[bytes], Transaction | None],
        clock: Callable[[], int],
        seen_capacity: int = 500_000,
    ):
        self.network = network
        self._submit = submit
        self._pending = pending
        self.seen = SeenCache(seen_capacity)
        self._clock = clock
        self._requested: dict[bytes, int] = {}  # id -> when we asked for it (ms)
        self._outbox: dict[str | None, list[bytes]] = {}
        self._flusher: asyncio.Task | None = None
        self.announced = 0  # ids sent in announcements, for the messages-per-transaction figure

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
        for origin, ids in outbox.items():
            exclude = frozenset((origin,)) if origin is not None else frozenset()
            for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
                chunk = ids[start : start + MAX_IDS_PER_MESSAGE]
                self.network.broadcast(TxAnnounce(tuple(chunk)), exclude=exclude)
                self.announced += len(chunk)

    def on_announce(self, peer_id: str, ids: tuple[bytes, ...]) -> None:
        now = self._clock()
        requested = self._requested
        # Requested once, from the first peer that announced it, unless that answer is lost.
        wanted = [
            tx_id for tx_id in ids
            if tx_id not in self.seen and now - requested.get(tx_id, -REQUEST_TIMEOUT_MS) >= REQUEST_TIMEOUT_MS
        ]
        for tx_id in wanted:
            requested[tx_id] = now
        if wanted:
            self.network.send(peer_id, TxRequest(tuple(wanted)))

    def reannounce(self, ids: list[bytes]) -> None:
        """Announce pending transactions again (an announcement can be lost; peers that have
        them ignore it), and forget requests that were never answered."""
        now = self._clock()
        for tx_id in [i for i, at in self._requested.items() if now - at >= REQUEST_TIMEOUT_MS]:
            del self._requested[tx_id]
        for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
            self.network.broadcast(TxAnnounce(tuple(ids[start : start + MAX_IDS_PER_MESSAGE])))
            self.announced += len(ids[start : start + MAX_IDS_PER_MESSAGE])

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
        for tx in transactions:
            self.seen.add(tx.id)  # admitted or not, there is no need to fetch it again
            self._requested.pop(tx.id, None)
        results = await self._submit(transactions, peer_id)
        bad = [r for r in results if isinstance(r, Rejection) and r.reason in MALICIOUS_REASONS]
        if bad:
            self.network.penalize(peer_id, 20 * len(bad), f"invalid transaction: {bad[0].reason}")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

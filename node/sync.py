"""Block sync: catch up with peers that are ahead by fetching blocks in ranges.

A node asks one peer at a time for the blocks after the newest hash they share (a
Bitcoin-style locator: our hashes at heights head, head-1, head-2, head-4, ... 0) and
imports what comes back, until it has reached the best head it has heard of.  It asks for
the next range as soon as a full answer arrives, after the last block that answer's import
keeps, so that the peer reads and sends it while this node imports (of the answers it asked
for, one waits at most).  Serving is the mirror: find the first locator hash on our chain
and send up to BATCH blocks after it.

Serving is bounded so that no peer can make the node busy at will: one request per peer
is served at a time (an honest node has one outstanding: asking again before the answer
is a flood and costs score), the reads run on `serving`, a pool of their own, so block
commits never wait behind them, and a locator with no hash of our chain, which no node
of this chain sends since every locator ends at the shared genesis, is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from ledger.block import Block, BlockHeader
from ledger.codec import DecodeError
from ledger.store import ChainStore
from node.p2p.messages import MAX_LOCATOR, Blocks, GetBlocks
from node.p2p.network import Network, PeerInfo

log = logging.getLogger("ledger.sync")

BATCH = 500
MAX_BATCH_BYTES = 8 * 1024 * 1024
REQUEST_TIMEOUT_SECONDS = 5.0
PROGRESS_LOG_SECONDS = 5.0
PENALTY_OVERLAPPING_REQUEST = 5
PENALTY_FOREIGN_LOCATOR = 20


class BlockSync:
    """`head` reads the node's current head; `lag` is how many blocks behind a peer's claimed
    head we can get (1 when a block is proven only by the certificate in the next one:
    the engine's `import_waits_for_certificate`); `serving` runs the store reads that answer
    peers off the loop, apart from the node's own store work; `grace_ms` is how long to wait
    before asking a peer that is ahead, when the engine's own messages normally bring the
    blocks (the engine's `sync_grace_ms`)."""

    def __init__(
        self, network: Network | None, store: ChainStore, head: Callable[[], BlockHeader], *, lag: int,
        now_ms: Callable[[], int], serving: Callable[..., Awaitable], max_block_transactions: int,
        grace_ms: int = 0,
    ):
        self.network = network
        self.store = store
        self.head = head
        self.lag = lag
        self.now_ms = now_ms
        self.serving = serving
        self._serving: set[str] = set()  # peers whose request is being answered
        self.max_block_transactions = max_block_transactions
        self.best_height = 0  # the highest head a peer has told us about
        self._outstanding: tuple[str, float] | None = None  # (peer, when asked)
        # Answers decoded and not yet imported, oldest first: (peer, the header of the last
        # block its import keeps, if the answer was full).  Of the answers this node asked
        # for, at most two: the next request goes out when one arrives and none is waiting.
        self._pending: deque[tuple[str, BlockHeader | None]] = deque()
        # Peers whose answer moved our head nowhere (a lie, a stale status, a longer but lighter
        # chain), by the head hash they claimed: not asked again until they announce another
        # head, or the node would ask them in a loop as fast as they answer.
        self._fruitless: dict[str, tuple[int, bytes]] = {}
        self._last_log = 0.0
        self._started_height = 0
        self._started_at = 0.0
        self.grace_s = grace_ms / 1000
        self._recheck: asyncio.TimerHandle | None = None

    def _now(self) -> float:
        """Seconds on the node's clock (virtual under the simulator, so timeouts fire there too)."""
        return self.now_ms() / 1000

    # ------------------------------------------------------------------ state
    @property
    def syncing(self) -> bool:
        return self.best_height > self.head().height + 1 + self.lag

    def progress(self) -> float:
        if not self.best_height:
            return 1.0
        return min(1.0, self.head().height / self.best_height)

    # ------------------------------------------------------------------ asking
    def on_peer_status(self, peer: PeerInfo) -> None:
        if self._fruitless.get(peer.id) == (peer.head_height, peer.head_hash):
            return
        self._fruitless.pop(peer.id, None)
        if peer.head_height > self.best_height:
            self.best_height = peer.head_height
        if peer.head_height > self.head().height + self.lag:
            if self.grace_s and self._outstanding is None:
                # The engine's messages are likely bringing these blocks already (a Raft
                # follower hears of a commit from the leader's status a moment before the
                # commit index arrives): ask only if we are still behind after the grace.
                if self._recheck is None:
                    self._recheck = asyncio.get_running_loop().call_later(self.grace_s, self._recheck_now)
                return
            self._request(peer.id)

    def _recheck_now(self) -> None:
        self._recheck = None
        if self._outstanding is None:
            self._ask_best_peer()

    def fetch_branch(self, peer_id: str, tip_height: int, tip_hash: bytes) -> None:
        """A peer sent a block whose ancestry we lack on a branch no longer than ours: ask it
        for the blocks after the newest one we share.  Under proof of stake a shorter branch
        can be the heavier one (LMD-GHOST weighs votes, not length), and a node that only
        fetched from peers ahead would never see it after a partition heals."""
        if self._fruitless.get(peer_id) != (tip_height, tip_hash):
            self._request(peer_id)

    def peer_gone(self, peer_id: str) -> None:
        # The best height is what the connected peers claim: a peer that lied about its head
        # must not leave the node reporting "syncing" forever once it is gone.
        self._fruitless.pop(peer_id, None)
        self.best_height = self._best_claim(exclude=peer_id)
        if self.awaits(peer_id):
            self._outstanding = None
            self._ask_best_peer()

    def check_timeout(self) -> None:
        if self._outstanding is not None and self._now() - self._outstanding[1] > REQUEST_TIMEOUT_SECONDS:
            peer_id = self._outstanding[0]
            log.warning("peer %s did not answer a block request in time", peer_id[:12])
            self._outstanding = None
            self.network.penalize(peer_id, 10, "block request timed out")
            self._ask_best_peer()

    def _request(self, peer_id: str, after: bytes | None = None) -> None:
        """Ask `peer_id` for the blocks after our head, or after the block `after` (our locator
        follows it, in case the peer's chain has moved off that block)."""
        if self._outstanding is not None:
            return
        if not self._started_at:
            self._started_at, self._started_height = self._now(), self.head().height
        self._outstanding = (peer_id, self._now())
        locator = self.locator()
        if after is not None:
            locator = [after, *locator[: MAX_LOCATOR - 1]]
        self.network.send(peer_id, GetBlocks(tuple(locator), BATCH))

    def _best_claim(self, exclude: str = "") -> int:
        """The highest head a connected peer claims that we have not found to be empty."""
        return max((p.head_height for p in self.network.peers()
                    if p.id != exclude and self._fruitless.get(p.id) != (p.head_height, p.head_hash)), default=0)

    def _ask_best_peer(self) -> None:
        ahead = [p for p in self.network.peers()
                 if p.head_height > self.head().height + self.lag and self._fruitless.get(p.id) != (p.head_height, p.head_hash)]
        if ahead:
            self._request(max(ahead, key=lambda p: p.head_height).id)
        else:
            self._started_at = 0.0

    def awaits(self, peer_id: str) -> bool:
        """Whether this node's outstanding request is to `peer_id` (its answer was asked for)."""
        return self._outstanding is not None and self._outstanding[0] == peer_id

    def decode_response(self, peer_id: str, message: Blocks) -> list[Block] | None:
        """The blocks of an answer, or None (and a lower score) if it does not decode.  The
        caller imports every answer this returns and calls `after_import` after each."""
        asked = self.awaits(peer_id)
        if asked:
            self._outstanding = None
        limit = self.max_block_transactions
        try:
            blocks = [Block.decode(raw, limit) for raw in message.blocks]
        except DecodeError as exc:
            self.network.penalize(peer_id, 50, f"undecodable block: {exc}")
            return None
        # Only an answer as large as a peer sends promises more after it; a shorter one ended
        # at the peer's head (or the peer lies about its head, and is not asked twice).
        full = len(blocks) >= BATCH or sum(map(len, message.blocks)) >= MAX_BATCH_BYTES // 2
        # The import keeps all but the last `lag` blocks (a BFT block waits for the certificate
        # the next one carries): the next range starts after the last block it keeps.
        kept = blocks[-1 - self.lag].header if full and len(blocks) > self.lag else None
        self._pending.append((peer_id, kept))
        if asked and len(self._pending) == 1:
            self._ask_ahead()
        return blocks

    def _ask_ahead(self) -> bool:
        """Ask the peer of the newest answer not yet imported for what follows it, so that the
        peer reads and sends the next batch while this node checks and writes the ones it
        has, after the last block that answer's import keeps.  False: nothing to ask for."""
        peer_id, last = self._pending[-1]
        if last is None:
            return False
        claimed = max((p.head_height for p in self.network.peers() if p.id == peer_id), default=0)
        if claimed <= last.height + self.lag:
            return False
        self._request(peer_id, after=last.hash)
        return True

    def after_import(self, head_before: bytes) -> None:
        """The oldest answer waiting was imported (`head_before`: our head when its import
        began): log progress and ask for more while someone is ahead."""
        peer_id, _ = self._pending.popleft()
        if self.head().hash == head_before:
            claimed = [(p.head_height, p.head_hash) for p in self.network.peers() if p.id == peer_id]
            if claimed:
                self._fruitless[peer_id] = claimed[0]
            self.best_height = self._best_claim()
        now = self._now()
        height = self.head().height
        if self._started_at and now - self._last_log >= PROGRESS_LOG_SECONDS:
            self._last_log = now
            rate = (height - self._started_height) / max(now - self._started_at, 1e-6)
            log.info("syncing: height %d of %d (%.0f%%, %.0f blocks/s)", height, self.best_height,
                     100 * self.progress(), rate)
        if self._outstanding is None:
            if self._pending:
                # An answer still waits: ask after it, or not at all (when it ends the range,
                # its own import asks again; asking from our head now would fetch it twice).
                self._ask_ahead()
            else:
                self._ask_best_peer()

    def locator(self) -> list[bytes]:
        """Our block hashes at heights head, head-1, head-2, head-4, ... and genesis."""
        head = self.head()
        heights = []
        step, height = 1, head.height
        while height > 0:
            heights.append(height)
            if len(heights) >= 10:
                step *= 2
            height -= step
        heights.append(0)
        hashes = []
        for h in heights[:64]:
            header = head if h == head.height else self.store.block_header(h)
            if header is not None:
                hashes.append(header.hash)
        return hashes

    # ------------------------------------------------------------------ serving
    async def serve(self, peer_id: str, request: GetBlocks) -> None:
        if peer_id in self._serving:
            self.network.penalize(peer_id, PENALTY_OVERLAPPING_REQUEST, "asked for blocks before the last answer")
            return
        self._serving.add(peer_id)
        try:
            raws = await self.serving(self._blocks_after, request.locator, min(request.max_count, BATCH))
        finally:
            self._serving.discard(peer_id)
        if raws is None:
            self.network.penalize(peer_id, PENALTY_FOREIGN_LOCATOR, "block request names no block of this chain")
            return
        self.network.send(peer_id, Blocks(tuple(raws)))

    def _blocks_after(self, locator: tuple[bytes, ...], count: int) -> list[bytes] | None:
        """Up to `count` encoded blocks after the first locator hash on our chain (None: no hash is)."""
        store = self.store
        start = None
        for block_hash in locator:
            header = store.block_header_by_hash(block_hash)
            if header is not None:
                start = header.height + 1
                break
        if start is None:
            return None
        last = min(start + count - 1, self.head().height)
        if last < start:
            return []
        return store.encoded_blocks(start, last - start + 1, MAX_BATCH_BYTES)

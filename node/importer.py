"""The block importer: blocks from peers (sync answers and pushed blocks), side branches, reorgs.

Every block is checked with the one block-validity rule (ledger/validate.py) against the
state it would apply to: on our head, on the tip of a sync batch (an in-memory overlay),
or on the fork point of a branch.  A block that does not extend our head waits as a side
block; once its branch is complete and its seals check, the engine's fork choice says
whether the node switches to it (a reorg: one database transaction), and the engine also
hears of it (BlockReceived) and may ask for the switch itself (SetHead).  Engines whose
blocks are final only with a certificate (`import_waits_for_certificate`) import a block
only with the certificate the next block carries, and never keep orphans.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from typing import Protocol

from consensus import engine as ev
from ledger.block import Block, BlockHeader
from ledger.engine_status import Finality
from ledger.evidence import EvidenceRecord
from ledger.genesis import Genesis
from ledger.mempool import Mempool
from ledger.state import Account, BlockEffects, Overlay, State
from ledger.store import ChainStore
from ledger.validate import BLOCK_REFUSALS
from node.finality import FinalityWaiters
from node.forks import SideBlocks
from node.metrics import NodeMetrics
from node.p2p import messages as wire
from node.p2p.network import Network, PeerInfo
from node.signatures import CheckBatch, SignatureChecks
from node.sync import BlockSync

log = logging.getLogger("ledger.node")

MAX_REORGS_SHOWN = 10


@dataclass(frozen=True)
class Import:
    """Blocks from a peer, imported by the engine task in order with everything else."""

    blocks: list[Block]
    peer: str
    relay: bool  # a pushed new block: pass it on to the other peers once it is our head
    # The signature checks of a sync answer, begun by the workers when it arrived
    # (`BlockImporter.check_early`): the ids found good.
    verdicts: asyncio.Future[frozenset[bytes]] | None = None


class ImportingNode(Protocol):
    """What the importer needs of the runtime (node/runtime.py's Node)."""

    genesis: Genesis
    engine: ev.Engine
    store: ChainStore
    state: State
    pool: Mempool
    head: BlockHeader
    recent: deque[BlockHeader]
    lock: threading.Lock
    network: Network | None
    metrics: NodeMetrics
    finality: FinalityWaiters
    blocking: Callable[..., Awaitable]
    now_ms: Callable[[], int]
    finalized_height: int

    sync: BlockSync
    signatures: SignatureChecks

    def validate_header(self, block: Block, recent: tuple[BlockHeader, ...]) -> None: ...

    def validate(
        self, block: Block, recent: tuple[BlockHeader, ...], accounts: Mapping[bytes, Account],
        verified: Container[bytes] = (), header_checked: bool = False,
    ) -> BlockEffects: ...

    async def commit(self, block: Block, certificate: bytes, effects: BlockEffects | None = None, announce: bool = True) -> None: ...

    def committed(self, block: Block, effects: BlockEffects, elapsed: float, announce: bool = True) -> None: ...

    def feed(self, event: ev.Event) -> None: ...

    def head_changed(self, event: ev.BlockCommitted) -> None: ...

    def publish(self, kind: str, data: dict) -> None: ...

    def load_recent(self) -> None: ...

    def signal_txs(self) -> None: ...


class BlockImporter:
    def __init__(self, node: ImportingNode):
        self.node = node
        self.side_blocks = SideBlocks()
        self.reorgs: list[dict] = []  # the most recent reorgs, newest last (GET /v1/node shows them)
        self._early_recent: deque[BlockHeader] | None = None  # the chain as the last early check left it

    # ------------------------------------------------------------------ entry points
    async def import_blocks(self, item: Import) -> None:
        node = self.node
        engine = node.engine
        run = _Run.on_head(self)  # sync: consecutive blocks on our head, committed together
        if item.verdicts is not None:
            # Checked against the engine as it was when the answer came: only the signatures
            # carry over, the run checks every header again.
            run.verified = await item.verdicts
        elif not item.relay:
            run.headers_checked, run.verified = await self._check_ahead(item.blocks)
        for position, block in enumerate(item.blocks):
            header = block.header
            certificate = b""
            if engine.import_waits_for_certificate and header.height > run.tip.height:
                if item.relay or position + 1 >= len(item.blocks):
                    break  # its certificate comes with the next block
                certificate = engine.parent_certificate(item.blocks[position + 1].header)
                try:
                    engine.verify_commit(header, certificate)
                except ValueError as exc:
                    self.refuse(block, item.peer, exc)
                    break
            if not item.relay and header.parent == run.tip.hash:
                if not run.add(block, certificate, item.peer):
                    break
                if run.checked[-1][1].validator_updates:
                    # The engine checks later headers against the set this block changes, and
                    # hears of the change only once it is committed: the batch ends here and
                    # sync asks for the rest after the engine has taken it in.
                    break
                continue
            await run.flush()
            if header.parent != node.head.hash:
                if header.hash in self.side_blocks or self.main_header(header.hash) is not None:
                    continue  # known
                if not await self._consider_fork(block, item.peer):
                    break
                continue
            if not await self.extend(block, certificate, item.peer, announce=item.relay):
                break
            if item.relay and node.network is not None:
                node.network.broadcast(wire.NewBlock(block.encode()), exclude=self._peers_past(block.header, item.peer))
            if not engine.import_waits_for_certificate:
                await self._adopt_orphans(announce=item.relay)
        await run.flush()

    async def _check_ahead(self, blocks: list[Block]) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """A sync answer's signatures, by the signature workers and the loop together.  Returns
        the hashes of the headers that passed and the ids found good.  The engine's state does
        not move during an import, so the run need not check those headers' seals again."""
        node = self.node
        passed, batch = self._begin_checks(blocks, deque(node.recent, maxlen=node.recent.maxlen), loop_share=True)
        if batch is None:
            return frozenset(), frozenset()
        return passed, await batch.finish()

    def check_early(self, blocks: list[Block]) -> asyncio.Future[frozenset[bytes]] | None:
        """Hand the signatures of a sync answer to the workers as it arrives, so that they check
        them while the answers before it are imported; the loop takes no share, as the store
        thread writing an answer would wait for it.  Its headers are checked on the chain the
        answer before it ends.  None if it follows neither our head nor the last answer checked
        early, or the checks are inline."""
        node = self.node
        if not blocks or not node.signatures.ahead:
            return None
        parent = blocks[0].header.parent
        recent = self._early_recent
        if parent == node.recent[-1].hash:
            recent = deque(node.recent, maxlen=node.recent.maxlen)
        elif recent is not None and len(recent) > 1 and recent[-1].hash != parent and recent[-2].hash == parent:
            recent.pop()  # the answer before ended with a block that waits for its certificate
        if recent is None or recent[-1].hash != parent:
            return None
        _, batch = self._begin_checks(blocks, recent, loop_share=False)
        self._early_recent = recent
        return None if batch is None else asyncio.ensure_future(batch.finish())

    def _begin_checks(
        self, blocks: list[Block], recent: deque[BlockHeader], loop_share: bool,
    ) -> tuple[frozenset[bytes], CheckBatch | None]:
        """Check the headers of `blocks` in order from `recent` (which grows by each header that
        passes) and hand the signatures of their transactions to the workers: only of blocks
        whose header passed, as a peer cannot make the node check the signatures of blocks it
        could not seal.  Returns the hashes that passed, and the batch (None if the checks are
        inline: no workers, or too few transactions to share)."""
        node = self.node
        pool = node.pool
        batch = node.signatures.begin(sum(len(block.transactions) for block in blocks), loop_share=loop_share)
        passed: list[bytes] = []
        for block in blocks:
            if block.header.parent != recent[-1].hash:
                break
            try:
                node.validate_header(block, tuple(recent))
            except BLOCK_REFUSALS:
                break  # the run refuses it, with the reason, when it gets there
            passed.append(block.hash)
            recent.append(block.header)
            if batch is not None:
                batch.add([tx for tx in block.transactions if tx.id not in pool])  # the workers start on it
        return frozenset(passed), batch

    async def set_head(self, block_hash: bytes) -> None:
        """The engine chose this block as the head (SetHead): switch to its branch, within the
        same bounds as any reorg.  A block we do not hold is logged and ignored: the engine
        hears of every head change (BlockCommitted), so it learns the head stayed."""
        node = self.node
        if block_hash == node.head.hash:
            return
        side = self.side_blocks.get(block_hash)
        if side is not None:
            found = self.side_blocks.branch(side, self.main_header)
            if found is None:
                log.warning("the engine chose block %s, whose ancestry this node lacks", block_hash.hex()[:12])
                return
            fork_point, branch = found
        else:
            fork_point = self.main_header(block_hash)
            if fork_point is None:
                log.warning("the engine chose block %s, which this node does not hold", block_hash.hex()[:12])
                return
            branch = []
        if self._within_bounds(fork_point, branch[-1] if branch else None, "the engine"):
            await self._reorg(fork_point, branch, None)

    # ------------------------------------------------------------------ our head
    async def extend(self, block: Block, certificate: bytes, peer: str | None, announce: bool) -> bool:
        """Validate a block on our head and commit it; False (and the sender penalized) if invalid."""
        node = self.node
        try:
            effects = node.validate(block, tuple(node.recent), node.state.accounts)
        except BLOCK_REFUSALS as exc:
            self.refuse(block, peer, exc)
            self.side_blocks.discard(block.hash)
            return False
        await node.commit(block, certificate, effects, announce=announce)
        self.side_blocks.discard(block.hash)
        return True

    async def _adopt_orphans(self, announce: bool) -> None:
        """Blocks that arrived before their parent wait as side blocks; once the parent is our
        head they apply (the simulator found them skipped as known when sync sent them again)."""
        while True:
            children = self.side_blocks.children(self.node.head.hash)
            if not children:
                return
            if not await self.extend(children[0], b"", None, announce):
                continue  # that one was invalid and is gone; a sibling may still apply

    def refuse(self, block: Block, peer: str | None, exc: Exception) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        log.warning("refused block %d from %s: %s (%s)", block.height, (peer or "an earlier peer")[:12], exc, reason)
        if self.node.network is not None and peer is not None:
            self.node.network.penalize(peer, 50, f"invalid block: {exc}")

    def have_block(self, header: BlockHeader) -> bool:
        node = self.node
        block_hash = header.hash
        if block_hash == node.head.hash or block_hash in self.side_blocks:
            return True
        return header.height < node.head.height and node.store.block_header_by_hash(block_hash) is not None

    def _peers_past(self, header: BlockHeader, sender: str) -> frozenset[str]:
        """Peers a relayed block would be no news to: its sender, and the peers whose last
        Status shows it as their head.  (Not those merely higher: under proof of work a
        longer branch can be the lighter one, and its peers need our blocks.)"""
        assert self.node.network is not None
        return frozenset([sender] + [peer.id for peer in self.node.network.peers() if peer.head_hash == header.hash])

    def main_header(self, block_hash: bytes) -> BlockHeader | None:
        node = self.node
        if block_hash == node.head.hash:
            return node.head
        return node.store.block_header_by_hash(block_hash)

    # ------------------------------------------------------------------ side branches
    async def _consider_fork(self, block: Block, peer: str) -> bool:
        """A block that does not extend our head: keep it, and reorg if the engine's fork
        choice prefers its branch. False when its ancestry is missing (we ask the peer for it)."""
        node = self.node
        self.side_blocks.add(block)
        found = self.side_blocks.branch(block, self.main_header)
        if found is None:
            if block.height > node.head.height + node.sync.lag:
                node.sync.on_peer_status(PeerInfo(peer, "", False, block.height, block.hash))
            else:
                node.sync.fetch_branch(peer, block.height, block.hash)
            return False
        fork_point, branch = found
        if not self._within_bounds(fork_point, block, peer):
            self.side_blocks.discard(block.hash)
            return True
        try:
            self._check_branch_headers(fork_point, branch)
        except BLOCK_REFUSALS as exc:
            # Work a branch claims counts only once its seals prove it: otherwise one forged
            # header declaring a tiny target would make the node revert its chain for nothing.
            self.refuse(block, peer, exc)
            self.side_blocks.discard(block.hash)
            return True
        node.feed(ev.BlockReceived(node.now_ms(), block, peer))
        ours = self._main_headers(fork_point.height + 1, node.head.height)
        if node.engine.fork_choice([ours, [side.header for side in branch]]) == 1:
            await self._reorg(fork_point, branch, peer)
        return True

    def _within_bounds(self, fork_point: BlockHeader, tip: Block | None, source: str) -> bool:
        """No reorg deeper than the engine's `max_reorg_depth`, and none that reverts a final
        block, except under finality by depth: there "final" is a confidence, not a proof, and
        a partition that outlived the depth leaves two branches each side holds final; the
        node follows the heavier one (as Bitcoin does) and says loudly what it reverted,
        rather than stay split from the network for good."""
        node = self.node
        depth = node.head.height - fork_point.height
        probabilistic = node.engine.finality is Finality.DEPTH
        if (fork_point.height < node.finalized_height and not probabilistic) or depth > node.engine.max_reorg_depth:
            log.warning("refused a reorg to %s from %s: it would revert final blocks or go deeper than %d",
                        tip.height if tip is not None else fork_point.height, source[:12], node.engine.max_reorg_depth)
            return False
        return True

    def _check_branch_headers(self, fork_point: BlockHeader, branch: list[Block]) -> None:
        """Structure and seal of every side block after the fork point, each against its own
        branch's ancestors; state is checked only if the branch wins (by `_reorg`)."""
        node = self.node
        needed = max(1, node.engine.ancestors_needed)
        ancestors = self._main_headers(max(0, fork_point.height - needed + 1), fork_point.height - 1) + [fork_point]
        for side in branch:
            node.validate_header(side, tuple(ancestors[-needed:]))
            ancestors.append(side.header)

    def _main_headers(self, first: int, last: int) -> list[BlockHeader]:
        store = self.node.store
        return [store.block_header(height) for height in range(first, last + 1)]

    async def _reorg(self, fork_point: BlockHeader, branch: list[Block], peer: str | None) -> None:
        """Replace our blocks after `fork_point` with `branch`: every branch block is checked
        against the state it would produce first, then the store swaps the branches in one
        database transaction, then memory follows. An invalid branch changes nothing."""
        node = self.node
        old_head, final_before = node.head, node.finalized_height
        ours = await node.blocking(self._main_blocks_with_undo, fork_point.height)
        accounts = Overlay(node.state.accounts)
        for _, undo in ours:
            accounts.revert(undo)
        window = node.recent.maxlen or 1
        recent = deque(await node.blocking(self._main_headers, max(0, fork_point.height - window + 1), fork_point.height),
                       maxlen=window)
        run = _Run(self, fork_point, accounts, recent)
        for block in branch:
            if not run.add(block, b"", peer):
                return
        checked = run.checked
        started = time.perf_counter()
        reverted_with_undo = await node.blocking(node.store.reorganize, fork_point.height, checked)
        elapsed = time.perf_counter() - started
        reverted = [block for block, _ in reverted_with_undo]
        with node.lock:
            for _, undo in reverted_with_undo:
                node.state.revert(undo)
            node.head = fork_point
        node.finality.reverted_above(fork_point.height)
        node.load_recent()
        for block, effects, _, _ in checked:
            node.committed(block, effects, elapsed / len(checked))
            self.side_blocks.discard(block.hash)
        # Under finality by depth a shorter heavier branch lowers the finalized height: say the truth.
        node.finalized_height = node.engine.finalized_height(node.head.height, node.head.hash)
        if not checked:  # back to an ancestor: the engine and the peers hear of the new head all the same
            node.head_changed(ev.BlockCommitted(node.now_ms(), node.head, tuple(node.recent)))
            if node.network is not None:
                node.network.update_status(node.head.height, node.head.hash, node.finalized_height)
        for abandoned in reverted:
            self.side_blocks.add(abandoned)
        in_new_branch = {tx.id for block, _, _, _ in checked for tx in block.transactions}
        returning = [tx for block in reversed(reverted) for tx in block.transactions if tx.id not in in_new_branch]
        with node.lock:
            node.pool.readmit(returning, node.now_ms())
        if returning:
            node.signal_txs()  # the returned transactions wait for a block like any others
        log.warning("reorg: %d blocks replaced from height %d (head %d -> %d)", len(reverted), fork_point.height + 1,
                    old_head.height, node.head.height)
        reverted_final = max(0, final_before - fork_point.height)
        if reverted_final:
            log.warning("reorg reverted %d blocks that were final by depth (heights %d-%d): a partition outlived "
                        "the finality depth, and the heavier branch wins", reverted_final, fork_point.height + 1,
                        final_before)
        reorg = {
            "fork_height": fork_point.height, "depth": len(reverted), "old_head": old_head.hash.hex(),
            "new_head": node.head.hash.hex(), "height": node.head.height,
            "returned_to_mempool": len(returning), "reverted_final": reverted_final, "at": node.now_ms(),
        }
        self.reorgs = self.reorgs[-(MAX_REORGS_SHOWN - 1):] + [reorg]
        node.metrics.reorgs.inc()
        node.publish("reorg", reorg)

    def _main_blocks_with_undo(self, fork_height: int) -> list[tuple[Block, dict]]:
        """Our blocks above `fork_height` with their undo records, newest first (blocking)."""
        store = self.node.store
        found = []
        for height in range(self.node.head.height, fork_height, -1):
            block, undo = store.block(height), store.undo_record(height)
            assert block is not None and undo is not None, f"main-chain block {height} vanished"
            found.append((block, undo))
        return found


class _Run:
    """Blocks that extend `tip` one after another, each checked against the state the ones
    before it leave (an Overlay, in memory).  Sync runs on our head and `flush` writes them
    in one database transaction, which more than halves the cost of a block while catching
    up; an invalid block ends the run, the ones before it still commit.  A reorg runs a
    branch from its fork point and hands `checked` to the store's reorganize."""

    def __init__(self, importer: BlockImporter, tip: BlockHeader, accounts: Overlay, recent: deque[BlockHeader]):
        self.importer = importer
        self.tip = tip
        self.checked: list[tuple[Block, BlockEffects, bytes, list[EvidenceRecord]]] = []
        self.accounts = accounts
        self.recent = recent
        self.verified: Container[bytes] = frozenset()  # ids whose signatures were checked ahead
        self.headers_checked: Container[bytes] = frozenset()  # blocks whose header passed ahead, on this run's chain

    @classmethod
    def on_head(cls, importer: BlockImporter) -> _Run:
        node = importer.node
        return cls(importer, node.head, Overlay(node.state.accounts), deque(node.recent, maxlen=node.recent.maxlen))

    def add(self, block: Block, certificate: bytes, peer: str | None) -> bool:
        importer, node = self.importer, self.importer.node
        try:
            effects = node.validate(block, tuple(self.recent), self.accounts, self.verified,
                                    header_checked=block.hash in self.headers_checked)
        except BLOCK_REFUSALS as exc:
            importer.refuse(block, peer, exc)
            importer.side_blocks.discard(block.hash)
            return False
        self.accounts.commit(effects)
        self.checked.append((block, effects, certificate, node.engine.block_evidence(block.header)))
        self.tip = block.header
        self.recent.append(block.header)
        return True

    async def flush(self) -> None:
        if not self.checked:
            return
        importer, node, checked = self.importer, self.importer.node, self.checked
        self.checked = []
        started = time.perf_counter()
        await node.blocking(node.store.commit_blocks, checked)
        elapsed = (time.perf_counter() - started) / len(checked)
        for block, effects, _, _ in checked:
            node.committed(block, effects, elapsed, announce=False)
            importer.side_blocks.discard(block.hash)
        if not node.engine.import_waits_for_certificate:
            await importer._adopt_orphans(announce=False)
        fresh = _Run.on_head(importer)
        self.tip, self.accounts, self.recent = fresh.tip, fresh.accounts, fresh.recent


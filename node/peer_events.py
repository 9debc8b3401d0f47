"""What peers send a node (the network's PeerHandler): connections, gossip, blocks and sync.

Each message goes where it belongs: transaction gossip to node/gossip.py, pushed blocks
and sync answers to the importer by way of the engine loop's queue (so imports and engine
steps never interleave), block requests to node/sync.py, engine messages to the engine as
events.  Node mixes this in, so the runtime module holds only the engine loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from consensus import engine as ev
from ledger.block import Block, BlockHeader
from ledger.codec import DecodeError
from ledger.genesis import Genesis
from node.gossip import TxGossip
from node.importer import BlockImporter, Import
from node.p2p import messages as wire
from node.p2p.network import Network, PeerInfo
from node.sync import BlockSync

log = logging.getLogger("ledger.node")


class PeerEvents:
    genesis: Genesis
    network: Network | None
    gossip: TxGossip | None
    sync: BlockSync
    importer: BlockImporter
    head: BlockHeader
    finalized_height: int
    now_ms: Callable[[], int]
    _stopping: bool

    def on_peer_connected(self, peer: PeerInfo) -> None:
        log.info("peer %s connected (%s, height %d)", peer.id[:12], peer.address or "inbound", peer.head_height)
        self.feed(ev.PeerConnected(self.now_ms(), peer.id))
        self.sync.on_peer_status(peer)

    def on_peer_disconnected(self, peer_id: str) -> None:
        log.info("peer %s disconnected", peer_id[:12])
        self.feed(ev.PeerDisconnected(self.now_ms(), peer_id))
        self.sync.peer_gone(peer_id)
        if self.gossip is not None:
            self.gossip.peer_gone(peer_id)

    def on_peer_message(self, peer_id: str, message: object) -> None:
        if self._stopping:
            return
        gossip = self.gossip
        assert gossip is not None and self.network is not None
        if isinstance(message, wire.TxAnnounce):
            gossip.on_announce(peer_id, message.ids)
        elif isinstance(message, wire.TxRequest):
            gossip.on_request(peer_id, message.ids)
        elif isinstance(message, wire.TxBatch):
            asyncio.get_running_loop().create_task(gossip.on_batch(peer_id, message.transactions))
        elif isinstance(message, wire.NewBlock):
            try:
                if self.importer.have_block(Block.decode_header(message.block)):
                    return  # pushed by several peers: the header says we have it, skip the body
                block = Block.decode(message.block, self.genesis.max_block_transactions)
            except DecodeError as exc:
                self.network.penalize(peer_id, 50, f"undecodable block: {exc}")
                return
            self.feed(Import([block], peer_id, relay=True))
        elif isinstance(message, wire.GetBlocks):
            asyncio.get_running_loop().create_task(self.sync.serve(peer_id, message))
        elif isinstance(message, wire.Blocks):
            asked = self.sync.awaits(peer_id)
            blocks = self.sync.decode_response(peer_id, message)
            if blocks is not None:
                # Only an answer this node asked for is checked ahead: a peer that sends blocks
                # unasked gets no work done for them before their import.
                verdicts = self._check_early(blocks) if asked else None
                self.feed(Import(blocks, peer_id, relay=False, verdicts=verdicts))
        elif isinstance(message, wire.Status):
            for peer in self.network.peers():
                if peer.id == peer_id:
                    self.sync.on_peer_status(peer)
        elif isinstance(message, wire.EngineMessage):
            self.feed(ev.PeerMessage(self.now_ms(), peer_id, message.payload))

    def _check_early(self, blocks: list[Block]) -> asyncio.Future[frozenset[bytes]] | None:
        try:
            return self.importer.check_early(blocks)
        except Exception:  # noqa: BLE001 - the import checks everything itself; sync must go on
            log.exception("checking a sync answer ahead failed")
            return None

    async def _import(self, item: Import) -> None:
        assert self.network is not None
        head_before = self.head.hash
        try:
            await self.importer.import_blocks(item)
        finally:
            if not item.relay:
                # While syncing, peers hear our new head once a batch, not once a block; and
                # sync asks for more even when the batch failed to commit.
                self.network.update_status(self.head.height, self.head.hash, self.finalized_height)
                self.sync.after_import(head_before)

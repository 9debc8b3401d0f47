"""The reads the API makes of a node (api.service.NodeService), over the runtime's state.

Called from the API's worker threads: what the event loop mutates (the mempool, the
account state) is read under the runtime's `lock`; the store has its own connections.
Node mixes this in, so the runtime module holds only the engine loop.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from api.service import AccountRecord, BlockRecord, MempoolRecord, NodeInfo, TxRecord, TxStatusName
from api.schemas import engine_status_json
from consensus.engine import Engine
from ledger.block import BlockHeader
from ledger.engine_status import EngineStatus
from ledger.evidence import EvidenceRecord
from ledger.genesis import Genesis
from ledger.mempool import Mempool
from ledger.state import State
from ledger.store import ChainStore
from node import __version__
from node.config import NodeConfig
from node.importer import BlockImporter
from node.metrics import NodeMetrics
from node.p2p.network import Network
from node.sync import BlockSync


class ChainReads:
    genesis: Genesis
    engine: Engine
    store: ChainStore
    state: State
    pool: Mempool
    head: BlockHeader
    finalized_height: int
    lock: threading.Lock
    network: Network | None
    metrics: NodeMetrics
    sync: BlockSync
    importer: BlockImporter
    node_id: str
    node_public_key: bytes
    fault_log: deque[dict]
    config: NodeConfig
    failure: str | None
    head_moved_ms: int
    work_since_ms: int | None
    now_ms: Callable[[], int]

    def node_info(self) -> NodeInfo:
        head = self.head
        peers = self.network.peers() if self.network is not None else []
        return NodeInfo(
            chain_id=self.genesis.chain_id,
            genesis_hash=self.genesis.hash,
            engine=self.engine.name,
            height=head.height,
            head_hash=head.hash,
            head_timestamp=head.timestamp,
            finalized_height=self.finalized_height,
            version=__version__,
            address_prefix=self.genesis.address_prefix,
            denomination=self.genesis.denomination.name,
            decimals=self.genesis.denomination.decimals,
            node_id=self.node_id,
            node_key=self.node_public_key.hex(),
            mempool_size=len(self.pool),
            syncing=self.sync.syncing,
            sync_progress=round(self.sync.progress(), 4),
            peers=len(peers),
            extra={
                "engine": engine_status_json(self.consensus_status(), self.genesis.address_prefix),
                "tx_per_second": round(self.metrics.tx_rate(), 1),
                "reorgs": self.importer.reorgs,
                "faults": list(self.fault_log),
                "peers": [
                    {"node_id": p.id, "address": p.address, "direction": "inbound" if p.inbound else "outbound",
                     "height": p.head_height, "score": p.score}
                    for p in peers
                ],
            },
        )

    def health(self) -> str | None:
        """Why the node is not doing its job, or None: it stopped itself, or its head has stood
        still for `stall_seconds` while transactions were ready for a block or a peer was ahead."""
        if self.failure is not None:
            return self.failure
        now, limit = self.now_ms(), self.config.stall_seconds
        still = (now - self.head_moved_ms) / 1000
        if still < limit:
            return None
        with self.lock:
            ready = self.pool.ready_count()
        waited = (now - (self.work_since_ms or now)) / 1000
        if ready and waited >= limit:
            return f"no new block for {still:.0f} s while {ready} transactions have waited {waited:.0f} s"
        if self.sync.syncing:
            return f"head stuck at height {self.head.height} for {still:.0f} s while peers are at {self.sync.best_height}"
        return None

    def consensus_status(self) -> EngineStatus:
        with self.lock:  # the event loop hands the engine events under the same lock
            return self.engine.status()

    def _status_of(self, height: int) -> tuple[TxStatusName, int]:
        head_height = self.head.height
        confirmations = max(0, head_height - height + 1)
        return ("final" if height <= self.finalized_height else "included"), confirmations

    def transaction(self, tx_id: bytes) -> TxRecord | None:
        with self.lock:
            pending = self.pool.get(tx_id)
        if pending is not None:
            return TxRecord(pending, "pending")
        stored = self.store.transaction(tx_id)
        if stored is None:
            return None
        status, confirmations = self._status_of(stored.height)
        return TxRecord(
            stored.tx, status, stored.height, stored.block_hash, stored.index, confirmations, stored.timestamp
        )

    def block(self, ref: int | bytes, with_transactions: bool = True) -> BlockRecord | None:
        if isinstance(ref, int):
            header = self.store.block_header(ref)
        else:
            header = self.store.block_header_by_hash(ref)
        if header is None:
            return None
        transactions = None
        if with_transactions:
            block = self.store.block(header.height)
            if block is None or block.hash != header.hash:
                return None  # reverted between the two reads
            transactions = block.transactions
        status, confirmations = self._status_of(header.height)
        certificate = self.store.certificate(header.height)
        with self.lock:
            evidence = tuple(self.engine.block_evidence(header))
            signers = tuple(self.engine.certificate_signers(certificate))
        parent = self.store.block_header(header.height - 1) if header.height else None
        labels = tuple(self.engine.block_labels(header, parent))
        return BlockRecord(
            header, transactions, status, confirmations, certificate, self.store.block_size(header.height) or 0,
            evidence, signers, labels,
        )

    def recorded_evidence(
        self, validator: bytes | None, before: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int, EvidenceRecord]]:
        return self.store.evidence(validator, before, limit)

    def blocks(self, before_height: int | None, limit: int) -> list[BlockRecord]:
        records = []
        for header, size in self.store.headers_with_sizes(before_height, limit):
            status, confirmations = self._status_of(header.height)
            records.append(BlockRecord(header, None, status, confirmations, size=size))
        return records

    def account(self, address: bytes) -> AccountRecord:
        with self.lock:
            balance, nonce, stake = self.state.get(address)
            pending_nonce = max(nonce, self.pool.pending_nonce(address))
            pending_count = self.pool.pending_count(address)
        if stake is None:
            return AccountRecord(address, balance, nonce, pending_nonce, pending_count)
        return AccountRecord(address, balance, nonce, pending_nonce, pending_count,
                             stake.bonded, stake.unbonding, stake.release_epoch, stake.slashed)

    def account_transactions(self, address: bytes, before: tuple[int, int] | None, limit: int) -> list[TxRecord]:
        records = []
        for stored in self.store.account_transactions(address, before, limit):
            status, confirmations = self._status_of(stored.height)
            records.append(
                TxRecord(stored.tx, status, stored.height, stored.block_hash, stored.index, confirmations, stored.timestamp)
            )
        return records

    def mempool(self, limit: int) -> MempoolRecord:
        with self.lock:
            return MempoolRecord(len(self.pool), self.pool.capacity, self.pool.senders(), self.pool.snapshot(limit))

    def metrics_text(self) -> bytes:
        return self.metrics.text()


"""The node runtime: performs what the engine decides, and serves the API's NodeService.

One asyncio task feeds the engine its events, one at a time, and performs the
actions it returns in order.  A block's rows are written in a worker thread, so the
event loop keeps admitting transactions while the database works; the in-memory
state and the mempool move only after the block is durable.  The mempool and the
state are touched by the event loop; API reads from worker threads take `_lock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from api.service import (
    Accepted,
    AccountRecord,
    BlockRecord,
    Event,
    MempoolRecord,
    NodeInfo,
    Rejection,
    SubmitResult,
    TxRecord,
    TxStatusName,
)
from api.schemas import engine_status_json
from consensus import engine as ev
from consensus.registry import create_engine
from ledger.address import address_of, decode_address
from ledger.block import Block, BlockHeader, InvalidBlock, build_header
from ledger.codec import DecodeError
from ledger.crypto import PrivateKey
from ledger.engine_status import EngineStatus
from ledger.genesis import Genesis
from ledger.evidence import EvidenceRecord
from ledger.mempool import Mempool, MempoolRejection
from ledger.merkle import EMPTY_ROOT
from ledger.state import Account, BlockEffects, Overlay, State, StateError, apply_transactions
from ledger.store import ChainStore
from ledger.transaction import InvalidTransaction, Transaction
from node import __version__
from node.config import NodeConfig
from node.forks import SideBlocks
from node.gossip import TxGossip
from node.metrics import NodeMetrics
from node.mining import ProcessMiner
from node.p2p import messages as wire
from node.p2p.network import Network, PeerInfo
from node.sync import BlockSync

log = logging.getLogger("ledger.node")

ENGINE_STATE_KEY = "engine_state"
SUBSCRIBER_QUEUE = 1024
MAX_FUTURE_MS = 15_000  # a block stamped further ahead of our clock is refused
REANNOUNCE_EVERY_TICKS = 10  # housekeeping ticks (1 s each) between re-announcements of pending transactions
MAX_REANNOUNCE = 4_096


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class _Import:
    """Blocks from a peer, imported by the engine task in order with everything else."""

    blocks: list[Block]
    peer: str
    relay: bool  # a pushed new block: pass it on to the other peers once it is our head


@dataclass
class _Built:
    """The effects computed when a block was built, reused when that same block commits.
    Keyed by the whole unsealed header: under BFT another proposer's block at the same height
    can carry the same transactions and differ only in who gets the fees."""

    unsealed: bytes
    effects: BlockEffects


class Node:
    """One node: store + state + mempool + engine, behind the api.service.NodeService protocol."""

    def __init__(
        self, config: NodeConfig, genesis: Genesis, node_key: PrivateKey, network: Network | None = None,
        *, clock: Callable[[], int] | None = None, blocking: Callable[..., Awaitable] | None = None,
        store: ChainStore | None = None, miner: ProcessMiner | None = None,
    ):
        self.config = config
        self.genesis = genesis
        self.node_key = node_key
        self.node_id = address_of(node_key.public_key).hex()
        self.metrics = NodeMetrics()
        # The simulator hands in virtual time, a shared in-memory store and inline "threads".
        self.now_ms: Callable[[], int] = clock or wall_clock_ms
        self._blocking: Callable[..., Awaitable] = blocking or asyncio.to_thread
        self.store = store if store is not None else ChainStore(config.db_url)
        miner_address = decode_address(config.miner_address, genesis.address_prefix) if config.miner_address else None
        self.engine = create_engine(genesis, node_key, mine=config.mine, miner_address=miner_address)
        # The recent main-chain headers, ending with the head: what the engine needs to check
        # the next block (PoW retargets over a window) and what Started/BlockCommitted carry.
        self._recent: deque[BlockHeader] = deque(maxlen=max(1, self.engine.ancestors_needed))
        self.miner = miner
        self._lock = threading.Lock()
        self._events: asyncio.Queue[ev.Event | _Import | None] = asyncio.Queue()
        self.network = network
        self.gossip = TxGossip(network, self._admit, self._pending_tx, self.now_ms) if network is not None else None
        if network is not None and self.gossip is not None:
            gossip = self.gossip
            self.metrics.watch_peer_traffic(lambda: getattr(network, "sent", {}), lambda: getattr(network, "received", {}),
                                            lambda: gossip.announced)
        self.sync = BlockSync(self)
        self.side_blocks = SideBlocks()
        # Engines whose blocks are final only with a commit certificate (BFT): a block from a
        # peer is imported only once the next block's header (its `extra`) proves it.
        self.certified = hasattr(self.engine, "verify_commit")
        self.reorgs: list[dict] = []
        self.evidence: list[bytes] = []  # encoded evidence the engine reported, newest last  # the most recent reorgs, newest last (GET /v1/node shows them)
        self.max_reorg_depth = int(genesis.engine_params.get("max_reorg_depth", 100))
        self._txs_signalled = False
        self._built: _Built | None = None
        self._executed: tuple[bytes, bytes, BlockEffects] | None = None  # (block, its parent, effects) of the last ExecuteBlock
        self._stopping = False
        self._engine_task: asyncio.Task | None = None
        self._housekeeping_task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._final_waiters: dict[bytes, list[asyncio.Future]] = {}
        self._waits_ended = False  # stopping: wait=final requests answer at once
        self._unfinal: deque[tuple[int, list[bytes]]] = deque()  # (height, tx ids) of included, not yet final blocks
        self.state: State
        self.pool: Mempool
        self.head: BlockHeader
        self.finalized_height = 0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Bring the database to the current schema and load the chain (blocking)."""
        self.store.upgrade()
        self.store.initialize(self.genesis)
        head = self.store.head()
        assert head is not None, "an initialized store has a genesis block"
        self.head = head
        self._load_recent()
        self.state = State(self.store.load_accounts())
        self.finalized_height = self.engine.finalized_height(head.height)
        self.pool = Mempool(
            self.genesis.chain_id,
            self.state.get,
            capacity=self.config.mempool_capacity,
            per_sender_limit=self.config.mempool_per_sender,
        )
        self._update_gauges()

    async def start(self) -> None:
        await self._blocking(self.open)
        self._engine_task = asyncio.create_task(self._run_engine(), name="engine")
        self._housekeeping_task = asyncio.create_task(self._housekeeping(), name="housekeeping")
        self._feed(ev.Started(
            self.now_ms(), self.head, self.store.get_meta(ENGINE_STATE_KEY), tuple(self._recent),
            self.store.block(self.head.height), self.store.certificate(self.head.height),
        ))
        if self.network is not None:
            self.network.update_status(self.head.height, self.head.hash, self.finalized_height)
            await self.network.start(self)
        log.info("node %s started at height %d (%s engine)", self.node_id[:12], self.head.height, self.engine.name)

    async def stop(self) -> None:
        """Finish the block in flight (its database transaction commits or rolls back whole), then close."""
        self._stopping = True
        if self.network is not None:
            await self.network.stop()
        if self.miner is not None:
            self.miner.close()
        if self.gossip is not None:
            await self.gossip.stop()
        if self._timer is not None:
            self._timer.cancel()
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
        if self._engine_task is not None:
            self._events.put_nowait(None)
            await self._engine_task
        for waiters in self._final_waiters.values():
            for future in waiters:
                if not future.done():
                    future.cancel()
        await self._blocking(self.store.close)
        log.info("node stopped at height %d", self.head.height)

    # ------------------------------------------------------------------ engine loop
    def _feed(self, event: ev.Event | _Import) -> None:
        self._events.put_nowait(event)

    async def _run_engine(self) -> None:
        while True:
            event = await self._events.get()
            if event is None:
                return
            if isinstance(event, _Import):
                try:
                    await self._import(event)
                except Exception:
                    log.exception("importing blocks from %s failed", event.peer[:12])
                continue
            if isinstance(event, ev.TxsAvailable):
                self._txs_signalled = False
            try:
                actions = self.engine.handle(event)
                for action in actions:
                    await self._perform(action)
            except Exception:  # an engine or store bug must not silently stop block production
                log.exception("engine step failed on %s", type(event).__name__)

    async def _perform(self, action: ev.Action) -> None:
        if isinstance(action, ev.BuildBlock):
            if not self._stopping:
                self._feed(ev.BlockBuilt(self.now_ms(), self._build_block(action)))
        elif isinstance(action, ev.Commit):
            if action.block.header.parent != self.head.hash:
                # Sealed on a head that has since moved (a peer's block won): the engine
                # still gets its BlockCommitted, repeating the current head.
                log.info("dropped our block %d: the head moved while it was sealed", action.block.height)
                self._feed(ev.BlockCommitted(self.now_ms(), self.head, tuple(self._recent)))
                return
            push = self.network is not None and not self.certified
            await self._commit(action.block, action.certificate, announce=not push)
            if push:
                # A BFT block travels as a proposal; others import it with its certificate.
                # The block goes before our new Status: a peer that heard the Status first
                # would also ask for the block by sync, and get it twice.
                self.network.broadcast(wire.NewBlock(action.block.encode()))
                self.network.update_status(self.head.height, self.head.hash, self.finalized_height)
        elif isinstance(action, ev.Broadcast):
            if self.network is not None:
                self.network.broadcast(wire.EngineMessage(action.message))
        elif isinstance(action, ev.Send):
            if self.network is not None:
                self.network.send(action.peer, wire.EngineMessage(action.message))
        elif isinstance(action, ev.Mine):
            if self.miner is None:
                self.miner = ProcessMiner(on_hashes=self.metrics.mined)
            self.miner.start(action.header, action.target, lambda header: self._feed(ev.Mined(self.now_ms(), header)))
        elif isinstance(action, ev.StopMining):
            if self.miner is not None:
                self.miner.stop()
        elif isinstance(action, ev.ExecuteBlock):
            self._feed(self._execute(action.block))
        elif isinstance(action, ev.ReportEvidence):
            self.evidence = self.evidence[-99:] + [action.evidence]
            log.warning("evidence of validator misbehaviour: %s", action.evidence.hex()[:64])
        elif isinstance(action, ev.SetTimer):
            self._set_timer(action.at)
        elif isinstance(action, ev.Persist):
            await self._blocking(self.store.set_meta, ENGINE_STATE_KEY, action.state)
        else:
            raise NotImplementedError(f"the runtime cannot perform {type(action).__name__} yet")

    def _set_timer(self, at_ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (at_ms - self.now_ms()) / 1000)
        # The engine boundary promises a Tick at or after the deadline; the wall clock and the
        # loop's monotonic clock can disagree by a millisecond.
        self._timer = loop.call_later(delay, lambda: self._feed(ev.Tick(max(self.now_ms(), at_ms))))

    def _build_block(self, request: ev.BuildBlock) -> Block:
        if request.parent != self.head.hash:
            # The engine asked before it saw the newest BlockCommitted (still queued). Answer
            # with an empty block on the parent it named: it recognises it as stale and
            # builds again on the head it is about to learn of.
            return Block(BlockHeader(self.genesis.chain_id, request.height, request.parent, request.timestamp,
                                     EMPTY_ROOT, 0, request.proposer, request.extra))
        with self._lock:
            transactions = self.pool.select(self.genesis.max_block_transactions)
        while True:
            try:
                effects = self.state.apply(transactions, request.proposer, self.genesis.block_reward)
                break
            except StateError as exc:
                # The mempool only offers transactions that apply; if one does not, drop it and
                # build without it rather than stall the chain.
                bad = transactions[exc.index] if exc.index is not None else None
                log.error("mempool offered a transaction that does not apply (%s); dropping it", exc)
                if bad is None:
                    raise
                with self._lock:
                    self.pool.remove_committed([bad])
                transactions = transactions[: exc.index]
        header = build_header(self.genesis.chain_id, self.head, request.timestamp, transactions, request.proposer, request.extra)
        self._built = _Built(header.unsealed_bytes(), effects)
        return Block(header, tuple(transactions))

    async def _commit(
        self, block: Block, certificate: bytes, effects: BlockEffects | None = None, announce: bool = True
    ) -> None:
        header = block.header
        built, self._built = self._built, None
        executed, self._executed = self._executed, None
        if effects is None:
            if built is not None and built.unsealed == header.unsealed_bytes():
                effects = built.effects
            elif executed is not None and executed[:2] == (block.hash, self.head.hash):
                effects = executed[2]
            else:
                effects = self.state.apply(block.transactions, header.proposer, self.genesis.block_reward)
        started = time.perf_counter()
        evidence = self.engine.block_evidence(header)
        await self._blocking(self.store.commit_block, block, effects, certificate, evidence)
        self._committed(block, effects, time.perf_counter() - started, announce)

    def _committed(self, block: Block, effects: BlockEffects, elapsed: float, announce: bool = True) -> None:
        """The in-memory half of a commit, once the block is durable."""
        header = block.header
        with self._lock:
            self.state.commit(effects)
            self.head = header
            self.pool.remove_committed(block.transactions)
        self.metrics.block_committed(len(block.transactions), elapsed)
        self._advance_finality([tx.id for tx in block.transactions])
        self._update_gauges()
        self._publish("block", self._block_event(block))
        if announce and self.network is not None:
            self.network.update_status(header.height, header.hash, self.finalized_height)
        self._recent.append(header)
        self._feed(ev.BlockCommitted(self.now_ms(), header, tuple(self._recent)))
        ready = self.pool.ready_count()
        if ready and not self._stopping:
            # Always after BlockCommitted, even if a TxsAvailable is already queued: that one
            # reaches the engine while it is still committing and is ignored.
            self._txs_signalled = True
            self._feed(ev.TxsAvailable(self.now_ms(), ready))

    def _advance_finality(self, tx_ids: list[bytes]) -> None:
        self._unfinal.append((self.head.height, tx_ids))
        self.finalized_height = self.engine.finalized_height(self.head.height)
        while self._unfinal and self._unfinal[0][0] <= self.finalized_height:
            _, ids = self._unfinal.popleft()
            if self._final_waiters:
                for tx_id in ids:
                    for future in self._final_waiters.pop(tx_id, ()):
                        if not future.done():
                            future.set_result("final")

    def _signal_txs(self) -> None:
        if not self._txs_signalled and not self._stopping:
            self._txs_signalled = True
            self._feed(ev.TxsAvailable(self.now_ms(), self.pool.ready_count()))

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1)
            with self._lock:
                expired = self.pool.expire(self.now_ms())
            if expired:
                log.info("expired %d transactions from the mempool", len(expired))
            if self.network is not None:
                self.sync.check_timeout()
                ticks += 1
                if ticks % REANNOUNCE_EVERY_TICKS == 0 and len(self.pool):
                    with self._lock:
                        pending = [tx.id for tx in self.pool.snapshot(MAX_REANNOUNCE)]
                    self.gossip.reannounce(pending)
            self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.height.set(self.head.height)
        self.metrics.finalized_height.set(self.finalized_height)
        self.metrics.mempool_size.set(len(self.pool))

    # ------------------------------------------------------------------ events stream
    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._subscribers.discard(queue)

    def close_streams(self) -> None:
        """End every events stream, so the HTTP server's graceful shutdown need not wait for them."""
        for queue in list(self._subscribers):
            while True:
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()  # make room: the end matters more than a stale event
        self._subscribers.clear()

    def end_waits(self) -> None:
        """Answer every wait=final request now with the status it has, and later ones at
        once: the node is stopping, and the HTTP server's graceful shutdown must not sit
        out their timeouts (it would, then fail them with a 500)."""
        self._waits_ended = True
        for waiters in self._final_waiters.values():
            for future in waiters:
                if not future.done():
                    future.cancel()

    def _publish(self, kind: str, data: dict) -> None:
        if not self._subscribers:
            return
        event = Event(kind, data)
        for queue in list(self._subscribers):
            # A slow reader loses events rather than holding the node's memory: transaction
            # events first (they stop at half the queue), block events only when the queue is full.
            if kind == "tx" and queue.qsize() >= SUBSCRIBER_QUEUE // 2:
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def _block_event(self, block: Block) -> dict:
        header = block.header
        return {
            "height": header.height,
            "hash": header.hash.hex(),
            "parent": header.parent.hex(),
            "timestamp": header.timestamp,
            "tx_count": header.tx_count,
            "proposer": self.genesis.address(header.proposer),
            "final": header.height <= self.finalized_height,
            "transactions": [tx.id.hex() for tx in block.transactions[:100]],
        }

    # ------------------------------------------------------------------ NodeService: writes
    async def submit(self, transactions: list[Transaction]) -> list[SubmitResult]:
        return await self._admit(transactions, None)

    def _pending_tx(self, tx_id: bytes) -> Transaction | None:
        with self._lock:
            return self.pool.get(tx_id)

    async def _admit(self, transactions: list[Transaction], origin: str | None) -> list[SubmitResult]:
        if self._stopping:
            return [Rejection("shutting_down", "the node is shutting down")] * len(transactions)
        # Signatures are checked here on the event loop (~40 us each): in a worker thread every
        # libsecp256k1 call drops and re-takes the GIL against the loop, which measured slower.
        checks = self._check_stateless(transactions)
        results: list[SubmitResult] = []
        now = self.now_ms()
        admitted: list[Transaction] = []
        with self._lock:
            for tx, problem in zip(transactions, checks):
                if problem is not None:
                    results.append(Rejection(problem.reason, str(problem), problem.field))
                    continue
                try:
                    added = self.pool.add(tx, now, verified=True)
                except MempoolRejection as exc:
                    results.append(Rejection(exc.reason, exc.message, exc.field))
                    continue
                results.append(Accepted(tx.id, duplicate=not added))
                if added:
                    admitted.append(tx)
        used = [i for i, r in enumerate(results) if isinstance(r, Rejection) and r.reason == "nonce_too_low"]
        if used:
            # Submitting is idempotent (docs/api.md): a transaction already on the chain, sent
            # again by a client whose answer was lost, is a known duplicate, not a nonce error.
            stored = await self._blocking(self._stored_ids, [transactions[i].id for i in used])
            for i in used:
                if transactions[i].id in stored:
                    results[i] = Accepted(transactions[i].id, duplicate=True)
        rejected = [r for r in results if isinstance(r, Rejection)]
        for rejection in rejected:
            self.metrics.rejected.labels(rejection.reason).inc()
        if admitted:
            self.metrics.admitted.inc(len(admitted))
            self.metrics.mempool_size.set(len(self.pool))
            self._signal_txs()
            if self.gossip is not None:
                self.gossip.admitted(admitted, origin)
            if self._subscribers:
                for tx in admitted[:100]:
                    self._publish("tx", self._tx_event(tx))
        return results

    def _stored_ids(self, tx_ids: list[bytes]) -> set[bytes]:
        return {tx_id for tx_id in tx_ids if self.store.transaction(tx_id) is not None}

    def _check_stateless(self, transactions: list[Transaction]) -> list[InvalidTransaction | None]:
        chain_id = self.genesis.chain_id
        out: list[InvalidTransaction | None] = []
        for tx in transactions:
            try:
                tx.check_stateless(chain_id)
                out.append(None)
            except InvalidTransaction as exc:
                out.append(exc)
        return out

    def _tx_event(self, tx: Transaction) -> dict:
        return {
            "id": tx.id.hex(),
            "sender": self.genesis.address(tx.sender_address),
            "recipient": self.genesis.address(tx.recipient),
            "amount": tx.amount,
            "fee": tx.fee,
            "nonce": tx.nonce,
            "status": "pending",
        }

    async def wait_final(self, tx_ids: list[bytes], timeout: float) -> dict[bytes, TxStatusName]:
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, asyncio.Future] = {}
        for tx_id in tx_ids:
            record = await self._blocking(self.transaction, tx_id) if tx_id not in self.pool else None
            if record is not None and record.status == "final":
                continue
            future = loop.create_future()
            self._final_waiters.setdefault(tx_id, []).append(future)
            waiting[tx_id] = future
        if waiting and not self._waits_ended:
            await asyncio.wait(waiting.values(), timeout=timeout)
        for tx_id, future in waiting.items():
            if not future.done():
                future.cancel()
                waiters = self._final_waiters.get(tx_id)
                if waiters is not None:
                    if future in waiters:
                        waiters.remove(future)
                    if not waiters:
                        del self._final_waiters[tx_id]
        statuses: dict[bytes, TxStatusName] = {}
        for tx_id in tx_ids:
            future = waiting.get(tx_id)
            if future is None or (future.done() and not future.cancelled()):
                statuses[tx_id] = "final"
            else:
                record = await self._blocking(self.transaction, tx_id)
                statuses[tx_id] = record.status if record is not None else "unknown"
        return statuses

    # ------------------------------------------------------------------ peers (PeerHandler)
    def on_peer_connected(self, peer: PeerInfo) -> None:
        log.info("peer %s connected (%s, height %d)", peer.id[:12], peer.address or "inbound", peer.head_height)
        self._feed(ev.PeerConnected(self.now_ms(), peer.id))
        self.sync.on_peer_status(peer)

    def on_peer_disconnected(self, peer_id: str) -> None:
        log.info("peer %s disconnected", peer_id[:12])
        self._feed(ev.PeerDisconnected(self.now_ms(), peer_id))
        self.sync.peer_gone(peer_id)

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
                if self._have_block(Block.decode_header(message.block)):
                    return  # pushed by several peers: the header says we have it, skip the body
                block = Block.decode(message.block, self.genesis.max_block_transactions)
            except DecodeError as exc:
                self.network.penalize(peer_id, 50, f"undecodable block: {exc}")
                return
            self._feed(_Import([block], peer_id, relay=True))
        elif isinstance(message, wire.GetBlocks):
            asyncio.get_running_loop().create_task(self.sync.serve(peer_id, message))
        elif isinstance(message, wire.Blocks):
            blocks = self.sync.decode_response(peer_id, message)
            if blocks is not None:
                self._feed(_Import(blocks, peer_id, relay=False))
        elif isinstance(message, wire.Status):
            for peer in self.network.peers():
                if peer.id == peer_id:
                    self.sync.on_peer_status(peer)
        elif isinstance(message, wire.EngineMessage):
            self._feed(ev.PeerMessage(self.now_ms(), peer_id, message.payload))

    def locator(self) -> list[bytes]:
        """Our block hashes at heights head, head-1, head-2, head-4, ... and genesis."""
        heights = []
        step, height = 1, self.head.height
        while height > 0:
            heights.append(height)
            if len(heights) >= 10:
                step *= 2
            height -= step
        heights.append(0)
        hashes = []
        for h in heights[:64]:
            header = self.head if h == self.head.height else self.store.block_header(h)
            if header is not None:
                hashes.append(header.hash)
        return hashes

    async def _import(self, item: _Import) -> None:
        assert self.network is not None
        try:
            await self._import_blocks(item)
        finally:
            if not item.relay:
                # While syncing, peers hear our new head once a batch, not once a block; and
                # sync asks for more even when the batch failed to commit.
                self.network.update_status(self.head.height, self.head.hash, self.finalized_height)
                self.sync.after_import()

    async def _import_blocks(self, item: _Import) -> None:
        assert self.network is not None
        run = _Run.on_head(self)  # sync: consecutive blocks on our head, committed together
        for position, block in enumerate(item.blocks):
            header = block.header
            certificate = b""
            if self.certified and header.height > run.tip.height:
                if item.relay or position + 1 >= len(item.blocks):
                    break  # its certificate comes with the next block
                certificate = self.engine.parent_certificate(item.blocks[position + 1].header)
                try:
                    self.engine.verify_commit(header, certificate)
                except ValueError as exc:
                    self._refuse(block, item.peer, exc)
                    break
            if not item.relay and header.parent == run.tip.hash:
                if not run.add(block, certificate, item.peer):
                    break
                continue
            await run.flush()
            if header.parent != self.head.hash:
                if header.hash in self.side_blocks or self._main_header(header.hash) is not None:
                    continue  # known
                if not await self._consider_fork(block, item.peer):
                    break
                continue
            if not await self._extend(block, certificate, item.peer, announce=item.relay):
                break
            if item.relay:
                self.network.broadcast(wire.NewBlock(block.encode()), exclude=self._peers_past(block.header, item.peer))
            if not self.certified:
                await self._adopt_orphans(announce=item.relay)
        await run.flush()

    def _execute(self, block: Block) -> ev.BlockExecuted:
        """Check a proposed block on our head without committing it (ABCI's ProcessProposal)."""
        try:
            if block.header.parent != self.head.hash:
                raise InvalidBlock("bad_parent", "the proposal does not extend our head")
            effects = self._validate(block, self.head)
        except (InvalidBlock, ev.InvalidSeal, StateError, InvalidTransaction) as exc:
            return ev.BlockExecuted(self.now_ms(), block.hash, False, getattr(exc, "reason", str(exc)))
        # Kept for the Commit that mostly follows, so the block is not applied twice.
        self._executed = (block.hash, self.head.hash, effects)
        return ev.BlockExecuted(self.now_ms(), block.hash, True)

    async def _extend(self, block: Block, certificate: bytes, peer: str | None, announce: bool) -> bool:
        """Validate a block on our head and commit it; False (and the sender penalized) if invalid."""
        try:
            effects = self._validate(block, self.head)
        except (InvalidBlock, ev.InvalidSeal, StateError, InvalidTransaction) as exc:
            self._refuse(block, peer, exc)
            self.side_blocks.discard(block.hash)
            return False
        await self._commit(block, certificate, effects, announce=announce)
        self.side_blocks.discard(block.hash)
        return True

    async def _adopt_orphans(self, announce: bool) -> None:
        """Blocks that arrived before their parent wait as side blocks; once the parent is our
        head they apply (the simulator found them skipped as known when sync sent them again)."""
        while True:
            children = self.side_blocks.children(self.head.hash)
            if not children:
                return
            if not await self._extend(children[0], b"", None, announce):
                continue  # that one was invalid and is gone; a sibling may still apply

    def _refuse(self, block: Block, peer: str | None, exc: Exception) -> None:
        reason = getattr(exc, "reason", type(exc).__name__)
        log.warning("refused block %d from %s: %s (%s)", block.height, (peer or "an earlier peer")[:12], exc, reason)
        if self.network is not None and peer is not None:
            self.network.penalize(peer, 50, f"invalid block: {exc}")

    def _have_block(self, header: BlockHeader) -> bool:
        block_hash = header.hash
        if block_hash == self.head.hash or block_hash in self.side_blocks:
            return True
        return header.height < self.head.height and self.store.block_header_by_hash(block_hash) is not None

    def _peers_past(self, header: BlockHeader, sender: str) -> frozenset[str]:
        """Peers a relayed block would be no news to: its sender, and the peers whose last
        Status shows it as their head.  (Not those merely higher: under proof of work a
        longer branch can be the lighter one, and its peers need our blocks.)"""
        assert self.network is not None
        return frozenset([sender] + [peer.id for peer in self.network.peers() if peer.head_hash == header.hash])

    def _main_header(self, block_hash: bytes) -> BlockHeader | None:
        if block_hash == self.head.hash:
            return self.head
        return self.store.block_header_by_hash(block_hash)

    async def _consider_fork(self, block: Block, peer: str) -> bool:
        """A block that does not extend our head: keep it, and reorg if its branch now
        outweighs ours. False when its ancestry is missing (we ask the peer for it)."""
        self.side_blocks.add(block)
        found = self.side_blocks.branch(block, self._main_header)
        if found is None:
            self.sync.on_peer_status(PeerInfo(peer, "", False, block.height, block.hash))
            return False
        fork_point, branch = found
        if fork_point.height < self.finalized_height or self.head.height - fork_point.height > self.max_reorg_depth:
            log.warning("refused a reorg to %d from %s: it would revert final blocks or go deeper than %d",
                        block.height, peer[:12], self.max_reorg_depth)
            self.side_blocks.discard(block.hash)
            return True
        try:
            self._check_branch_seals(fork_point, branch)
        except (InvalidBlock, ev.InvalidSeal) as exc:
            # Work a branch claims counts only once its seals prove it: otherwise one forged
            # header declaring a tiny target would make the node revert its chain for nothing.
            self._refuse(block, peer, exc)
            self.side_blocks.discard(block.hash)
            return True
        ours = sum(self.engine.block_work(h) for h in self._main_headers_after(fork_point.height))
        theirs = sum(self.engine.block_work(b.header) for b in branch)
        if theirs > ours:
            await self._reorg(fork_point, branch, peer)
        return True

    def _check_branch_seals(self, fork_point: BlockHeader, branch: list[Block]) -> None:
        """Structure and seal of every side block after the fork point, each against its own
        branch's ancestors; state is checked only if the branch wins (by `_reorg`)."""
        needed = max(1, self.engine.ancestors_needed)
        first = max(0, fork_point.height - needed + 1)
        ancestors = [self.store.block_header(h) for h in range(first, fork_point.height)] + [fork_point]
        for side in branch:
            side.check_structure(self.genesis.chain_id, self.genesis.max_block_transactions)
            if side.header.timestamp > self.now_ms() + MAX_FUTURE_MS:
                raise InvalidBlock("future_timestamp", "block timestamp is too far in the future")
            self.engine.verify_header(side.header, tuple(ancestors[-needed:]), self.now_ms())
            ancestors.append(side.header)

    def _main_headers_after(self, height: int) -> list[BlockHeader]:
        return [self.store.block_header(h) for h in range(height + 1, self.head.height + 1)]

    async def _reorg(self, fork_point: BlockHeader, branch: list[Block], peer: str) -> None:
        """Replace our blocks after `fork_point` with `branch`: every branch block is checked
        against the state it would produce first, then the store swaps the branches in one
        database transaction, then memory follows. An invalid branch changes nothing."""
        old_head = self.head
        ours = await self._blocking(self._main_blocks_with_undo, fork_point.height)
        accounts = Overlay(self.state.accounts)
        for _, undo in ours:
            accounts.revert(undo)
        window = self._recent.maxlen or 1
        recent = deque(await self._blocking(self._main_headers, max(0, fork_point.height - window + 1), fork_point.height),
                       maxlen=window)
        run = _Run(self, fork_point, accounts, recent)
        for block in branch:
            if not run.add(block, b"", peer):
                return
        checked = run.checked
        started = time.perf_counter()
        reverted_with_undo = await self._blocking(self.store.reorganize, fork_point.height, checked)
        elapsed = time.perf_counter() - started
        reverted = [block for block, _ in reverted_with_undo]
        with self._lock:
            for _, undo in reverted_with_undo:
                self.state.revert(undo)
            self.head = fork_point
        while self._unfinal and self._unfinal[-1][0] > fork_point.height:
            self._unfinal.pop()
        self._load_recent()
        applied = [block for block, _, _, _ in checked]
        for block, effects, _, _ in checked:
            self._committed(block, effects, elapsed / len(checked))
            self.side_blocks.discard(block.hash)
        for abandoned in reverted:
            self.side_blocks.add(abandoned)
        in_new_branch = {tx.id for block in applied for tx in block.transactions}
        returning = [tx for block in reversed(reverted) for tx in block.transactions if tx.id not in in_new_branch]
        with self._lock:
            self.pool.readmit(returning, self.now_ms())
        log.warning("reorg: %d blocks replaced from height %d (head %d -> %d)", len(reverted), fork_point.height + 1,
                    old_head.height, self.head.height)
        reorg = {
            "fork_height": fork_point.height, "depth": len(reverted), "old_head": old_head.hash.hex(),
            "new_head": self.head.hash.hex(), "height": self.head.height,
            "returned_to_mempool": len(returning), "at": self.now_ms(),
        }
        self.reorgs = self.reorgs[-9:] + [reorg]
        self.metrics.reorgs.inc()
        self._publish("reorg", reorg)

    def _main_blocks_with_undo(self, fork_height: int) -> list[tuple[Block, dict]]:
        """Our blocks above `fork_height` with their undo records, newest first (blocking)."""
        found = []
        for height in range(self.head.height, fork_height, -1):
            block, undo = self.store.block(height), self.store.undo_record(height)
            assert block is not None and undo is not None, f"main-chain block {height} vanished"
            found.append((block, undo))
        return found

    def _main_headers(self, first: int, last: int) -> list[BlockHeader]:
        return [self.store.block_header(h) for h in range(first, last + 1)]

    def _load_recent(self) -> None:
        first = max(0, self.head.height - (self._recent.maxlen or 1) + 1)
        self._recent.clear()
        self._recent.extend(self.store.block_header(h) for h in range(first, self.head.height))
        self._recent.append(self.head)

    def _validate(
        self, block: Block, parent: BlockHeader, recent: tuple[BlockHeader, ...] | None = None,
        accounts: Mapping[bytes, Account] | Overlay | None = None,
    ) -> BlockEffects:
        """Every check a block from a peer must pass before it can commit; its effects.
        `recent` (ending with `parent`) and `accounts` default to our head's."""
        header = block.header
        block.check_structure(self.genesis.chain_id, self.genesis.max_block_transactions)
        if header.height != parent.height + 1 or header.parent != parent.hash:
            raise InvalidBlock("bad_parent", "block does not extend its parent")
        if header.timestamp > self.now_ms() + MAX_FUTURE_MS:
            raise InvalidBlock("future_timestamp", "block timestamp is too far in the future")
        self.engine.verify_header(header, recent if recent is not None else tuple(self._recent), self.now_ms())
        chain_id = self.genesis.chain_id
        with self._lock:
            unverified = [tx for tx in block.transactions if tx.id not in self.pool]
        for tx in unverified:  # what the mempool admitted was verified already
            tx.check_stateless(chain_id)
        return apply_transactions(
            accounts if accounts is not None else self.state.accounts, block.transactions, header.proposer,
            self.genesis.block_reward,
        )

    # ------------------------------------------------------------------ NodeService: reads
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
            mempool_size=len(self.pool),
            syncing=self.sync.syncing,
            sync_progress=round(self.sync.progress(), 4),
            peers=len(peers),
            extra={
                "engine": engine_status_json(self.engine.status(), self.genesis.address_prefix),
                "tx_per_second": round(self.metrics.tx_rate(), 1),
                "reorgs": self.reorgs,
                "peers": [
                    {"node_id": p.id, "address": p.address, "direction": "inbound" if p.inbound else "outbound",
                     "height": p.head_height, "score": p.score}
                    for p in peers
                ],
            },
        )

    def consensus_status(self) -> EngineStatus:
        return self.engine.status()

    def _status_of(self, height: int) -> tuple[TxStatusName, int]:
        head_height = self.head.height
        confirmations = max(0, head_height - height + 1)
        return ("final" if height <= self.finalized_height else "included"), confirmations

    def transaction(self, tx_id: bytes) -> TxRecord | None:
        with self._lock:
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
        return BlockRecord(
            header, transactions, status, confirmations, certificate, self.store.block_size(header.height) or 0,
            tuple(self.engine.block_evidence(header)), tuple(self.engine.certificate_signers(certificate)),
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
        with self._lock:
            balance, nonce = self.state.get(address)
            pending_nonce = max(nonce, self.pool.pending_nonce(address))
            pending_count = self.pool.pending_count(address)
        return AccountRecord(address, balance, nonce, pending_nonce, pending_count)

    def account_transactions(self, address: bytes, before: tuple[int, int] | None, limit: int) -> list[TxRecord]:
        records = []
        for stored in self.store.account_transactions(address, before, limit):
            status, confirmations = self._status_of(stored.height)
            records.append(
                TxRecord(stored.tx, status, stored.height, stored.block_hash, stored.index, confirmations, stored.timestamp)
            )
        return records

    def mempool(self, limit: int) -> MempoolRecord:
        with self._lock:
            return MempoolRecord(len(self.pool), self.pool.capacity, self.pool.senders(), self.pool.snapshot(limit))

    def metrics_text(self) -> bytes:
        return self.metrics.text()


class _Run:
    """Blocks that extend `tip` one after another, each checked against the state the ones
    before it leave (an Overlay, in memory).  Sync runs on our head and `flush` writes them
    in one database transaction, which more than halves the cost of a block while catching
    up; an invalid block ends the run, the ones before it still commit.  A reorg runs a
    branch from its fork point and hands `checked` to the store's reorganize."""

    def __init__(self, node: Node, tip: BlockHeader, accounts: Overlay, recent: deque[BlockHeader]):
        self.node = node
        self.tip = tip
        self.checked: list[tuple[Block, BlockEffects, bytes, list[EvidenceRecord]]] = []
        self.accounts = accounts
        self.recent = recent

    @classmethod
    def on_head(cls, node: Node) -> _Run:
        return cls(node, node.head, Overlay(node.state.accounts), deque(node._recent, maxlen=node._recent.maxlen))

    def add(self, block: Block, certificate: bytes, peer: str) -> bool:
        node = self.node
        try:
            effects = node._validate(block, self.tip, tuple(self.recent), self.accounts)
        except (InvalidBlock, ev.InvalidSeal, StateError, InvalidTransaction) as exc:
            node._refuse(block, peer, exc)
            node.side_blocks.discard(block.hash)
            return False
        self.accounts.commit(effects)
        self.checked.append((block, effects, certificate, node.engine.block_evidence(block.header)))
        self.tip = block.header
        self.recent.append(block.header)
        return True

    async def flush(self) -> None:
        if not self.checked:
            return
        node, checked = self.node, self.checked
        self.checked = []
        started = time.perf_counter()
        await node._blocking(node.store.commit_blocks, checked)
        elapsed = (time.perf_counter() - started) / len(checked)
        for block, effects, _, _ in checked:
            node._committed(block, effects, elapsed, announce=False)
            node.side_blocks.discard(block.hash)
        if not node.certified:
            await node._adopt_orphans(announce=False)
        fresh = _Run.on_head(node)
        self.tip, self.accounts, self.recent = fresh.tip, fresh.accounts, fresh.recent

"""The node runtime: the loop that performs what the engine decides.

One asyncio task feeds the engine its events, one at a time, and performs the actions it
returns in order.  A large block's rows are written in a worker thread, so the event loop
keeps admitting transactions while the database works (a small write is done on the loop:
the trip to the thread would cost more); the in-memory state and the mempool move only
after the block is durable.  The mempool and the state are touched by the
event loop; API reads from worker threads take `lock`.

The parts around the loop: transactions come in through node/admission.py and peers'
messages through node/peer_events.py; blocks from peers go through the importer
(node/importer.py), the API reads through node/reads.py, live events leave through
node/events.py and `wait=final` requests wait in node/finality.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, replace
from typing import Any

from api.service import Event
from consensus import engine as ev
from consensus.registry import create_engine
from ledger.address import address_of, decode_address
from ledger.block import Block, BlockHeader, InvalidBlock, build_header
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.mempool import Mempool
from ledger.merkle import EMPTY_ROOT
from ledger.state import Account, BlockEffects, State, StateError
from ledger.store import KEPT_BLOCK_TRANSACTIONS, ChainStore
from ledger.validate import BLOCK_REFUSALS, BlockRules, apply_block, validate_block, validate_header
import migrations
from node.admin import MAX_FAULT_RECORDS, ClusterControl, LinkFaultControl
from node.admission import Admission
from node.read_index import ReadBarrier
from node.config import NodeConfig
from node.dev import DevControls, InLoop
from node.engine_timer import EngineTimer
from node.events import EventHub
from node.finality import FinalityWaiters
from node.gossip import TxGossip
from node.importer import BlockImporter, Import
from node.metrics import NodeMetrics
from node.mining import ProcessMiner
from node.p2p import messages as wire
from node.p2p.network import Network
from node.peer_events import PeerEvents
from node.reads import ChainReads
from node.signatures import InlineChecks, SignatureChecks, SignaturePool, workers_for
from node.sync import BlockSync

log = logging.getLogger("ledger.node")

ENGINE_STATE_KEY = "engine_state"
REANNOUNCE_EVERY_TICKS = 10  # housekeeping ticks (1 s each) between re-announcements of pending transactions
MAX_REANNOUNCE = 4_096
# A block the store fails to write is tried again after these pauses (a database restarting,
# a full disk being cleared); then the node stops rather than run on a head it never stored.
COMMIT_RETRY_SECONDS = (0.1, 0.5, 2.0)
# Store writes at most this large are done on the loop instead of the store thread (Node._write).
INLINE_WRITE_TRANSACTIONS = 16
# ...on SQLite's connection kept for small blocks, never a pooled one the loop could wait for.
assert INLINE_WRITE_TRANSACTIONS <= KEPT_BLOCK_TRANSACTIONS
INLINE_WRITE_BYTES = 64 * 1024


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


_WAKE = object()  # queued beside a head event so an idle engine task looks at it


def _runner(pool: ThreadPoolExecutor | None) -> Callable[..., Awaitable]:
    """`await run(f, *args)` calls f(*args) on one of `pool`'s threads."""
    assert pool is not None

    def run(function: Callable, *args, **kwargs) -> Awaitable:
        return asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args, **kwargs))

    return run


class NodeFailed(RuntimeError):
    """The node cannot go on (a block it cannot store): it stops, and says why."""


@dataclass
class _Built:
    """The effects computed when a block was built, reused when that same block commits.
    Keyed by the whole unsealed header: under BFT another proposer's block at the same height
    can carry the same transactions and differ only in who gets the fees."""

    unsealed: bytes
    effects: BlockEffects


class Node(Admission, PeerEvents, ChainReads, LinkFaultControl, ClusterControl, ReadBarrier):
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
        self.node_public_key = node_key.public_key
        self.metrics = NodeMetrics()
        # The simulator hands in virtual time, a shared in-memory store and inline "threads".
        self.now_ms: Callable[[], int] = clock or wall_clock_ms
        # The node's own store work (commits, engine state) has a thread of its own, and the
        # reads that answer peers two others: a peer can keep its pool busy, never delay a commit.
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="store") if blocking is None else None
        self._serve_pool = ThreadPoolExecutor(2, thread_name_prefix="serve-peers") if blocking is None else None
        self.blocking: Callable[..., Awaitable] = blocking or _runner(self._store_pool)
        self.serving: Callable[..., Awaitable] = blocking or _runner(self._serve_pool)
        self.reading: Callable[..., Awaitable] = blocking or asyncio.to_thread  # lookups clients and peers cause
        self.store = store if store is not None else ChainStore(config.db_url)
        miner_address = decode_address(config.miner_address, genesis.address_prefix) if config.miner_address else None
        self.engine = create_engine(genesis, node_key, mine=config.mine, miner_address=miner_address,
                                    block_time_ms=config.block_time * 1000)
        self.dev = DevControls(self)
        self.rules = BlockRules.of(genesis, self.engine)
        self.staking = self.rules.staking
        # Worker processes check the signatures of a sync answer and of large submitted or
        # gossiped batches beside the loop; the simulator's nodes (inline "threads") check
        # them as they go.
        workers = workers_for(config.signature_workers) if blocking is None else 0
        self.signatures: SignatureChecks = (
            SignaturePool(workers, genesis.chain_id, self.staking) if workers else InlineChecks()
        )
        # The recent main-chain headers, ending with the head: what the engine needs to check
        # the next block (PoW retargets over a window) and what Started/BlockCommitted carry.
        self.recent: deque[BlockHeader] = deque(maxlen=max(1, self.engine.ancestors_needed))
        self.miner = miner
        self.lock = threading.Lock()
        self._events: asyncio.Queue[ev.Event | Import | InLoop | object | None] = asyncio.Queue()
        self._head_events: deque[ev.BlockCommitted] = deque()
        self.network = network
        self.gossip = TxGossip(network, self._admit, self._pending_tx, self.now_ms) if network is not None else None
        if network is not None and self.gossip is not None:
            gossip = self.gossip
            self.metrics.watch_peer_traffic(lambda: getattr(network, "sent", {}), lambda: getattr(network, "received", {}),
                                            lambda: gossip.announced, lambda: getattr(network, "bytes_sent", 0))
        self.sync = BlockSync(
            network, self.store, lambda: self.head, lag=1 if self.engine.import_waits_for_certificate else 0,
            now_ms=self.now_ms, serving=self.serving, max_block_transactions=genesis.max_block_transactions,
            grace_ms=self.engine.sync_grace_ms,
        )
        self.importer = BlockImporter(self)
        self.hub = EventHub()
        self.finality = FinalityWaiters()
        self._init_reads()
        self.evidence: list[bytes] = []  # encoded evidence the engine reported, newest last
        self.fault_log: deque[dict] = deque(maxlen=MAX_FAULT_RECORDS)
        self.failure: str | None = None  # why the node stopped itself, if it did
        self.on_failure: Callable[[str], None] | None = None  # the server's "stop now"
        self._txs_signalled = False
        self._built: _Built | None = None
        self._executed: tuple[bytes, bytes, BlockEffects] | None = None  # (block, its parent, effects) of the last ExecuteBlock
        self._stopping = False
        self._engine_task: asyncio.Task | None = None
        self._housekeeping_task: asyncio.Task | None = None
        self.engine_timer = EngineTimer(self.now_ms, lambda at_ms: self.feed(ev.Tick(at_ms)))
        self.state: State
        self.pool: Mempool
        self._head: BlockHeader
        self.head_moved_ms = self.now_ms()  # when the head last changed, for /healthz
        self.work_since_ms: int | None = None  # since when transactions have waited for a block
        self.finalized_height = 0

    @property
    def head(self) -> BlockHeader:
        return self._head

    @head.setter
    def head(self, header: BlockHeader) -> None:
        self._head = header
        self.head_moved_ms = self.now_ms()

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Bring the database to the current schema and load the chain (blocking)."""
        migrations.upgrade(self.store)
        self.store.initialize(self.genesis)
        head = self.store.head()
        assert head is not None, "an initialized store has a genesis block"
        self.head = head
        self.load_recent()
        self.state = State(self.store.load_accounts())
        self.finalized_height = self.engine.finalized_height(head.height, head.hash)
        self.pool = Mempool(
            self.genesis.chain_id,
            self.state.get,
            capacity=self.config.mempool_capacity,
            per_sender_limit=self.config.mempool_per_sender,
            staking=self.rules.staking,
        )
        self._update_gauges()

    async def start(self) -> None:
        await self.blocking(self.open)
        # Started is handled before anything else runs: an engine that derives finality from its
        # own state (proof of stake) knows the finalized height only from then on.
        await self.step(ev.Started(
            self.now_ms(), self.head, self.store.get_meta(ENGINE_STATE_KEY), tuple(self.recent),
            self.store.block(self.head.height), self.store.certificate(self.head.height),
        ))
        self._engine_task = asyncio.create_task(self._run_engine(), name="engine")
        self._housekeeping_task = asyncio.create_task(self._housekeeping(), name="housekeeping")
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
        await self.signatures.close()
        if self.gossip is not None:
            await self.gossip.stop()
        self.engine_timer.cancel()
        if self._housekeeping_task is not None:
            self._housekeeping_task.cancel()
        if self._engine_task is not None:
            self._events.put_nowait(None)
            await self._engine_task
        self.finality.cancel_all()
        if self._serve_pool is not None:  # reads for peers end before the store closes under them
            await asyncio.to_thread(self._serve_pool.shutdown, wait=True, cancel_futures=True)
        await self.blocking(self.store.close)
        if self._store_pool is not None:
            self._store_pool.shutdown(wait=False)
        log.info("node stopped at height %d", self.head.height)

    # ------------------------------------------------------------------ engine loop
    def feed(self, event: ev.Event | Import | InLoop) -> None:
        self._events.put_nowait(event)

    def head_changed(self, event: ev.BlockCommitted) -> None:
        """The engine hears of a new head before anything queued meanwhile: a sync answer queued
        behind it must be checked against the validator set this block decided, not the old one.
        The engine task looks here before its queue; the wake-up only matters when it was idle."""
        self._head_events.append(event)
        self._events.put_nowait(_WAKE)
        self.release_reads()

    async def _run_engine(self) -> None:
        while True:
            if self._head_events:
                # A block was just committed: the clients waiting for it are answered first,
                # then the engine reacts (for Raft, signing its followers' commit notes).
                await asyncio.sleep(0)
                event = self._head_events.popleft()
                if event.txs_ready is not None:
                    with self.lock:  # as for TxsAvailable: what is ready now, not at the commit
                        event = replace(event, txs_ready=self.pool.ready_count())
            else:
                event = await self._events.get()
            if event is _WAKE:
                continue
            if event is None:
                return
            if isinstance(event, Import):
                try:
                    await self._import(event)
                except Exception:
                    log.exception("importing blocks from %s failed", event.peer[:12])
                continue
            if isinstance(event, InLoop):
                await event.run()
                continue
            if isinstance(event, ev.TxsAvailable):
                self._txs_signalled = False
                with self.lock:
                    ready = self.pool.ready_count()
                if not ready:
                    continue  # a block took them while the signal waited: a stale one would start an empty block
                event = ev.TxsAvailable(event.now, ready)
            try:
                await self.step(event)
            except Exception:  # an engine or store bug must not silently stop block production
                log.exception("engine step failed on %s", type(event).__name__)

    async def step(self, event: ev.Event) -> None:
        """One engine step: the event in, its actions performed in order (inside the loop only)."""
        with self.lock:  # API threads read the engine's status between events, never during one
            actions = self.engine.handle(event)
        if isinstance(event, (ev.Started, ev.BlockCommitted)):
            self._refresh_finality()
        for action in actions:
            await self._perform(action)

    def _refresh_finality(self) -> None:
        """The engine has taken in the head: ask again which height is final (an engine whose
        finality follows its own state, proof of stake, knows it only now)."""
        finalized = self.engine.finalized_height(self.head.height, self.head.hash)
        if finalized == self.finalized_height:
            return
        before = self.finalized_height
        self.finalized_height = finalized
        self.finality.finalized(finalized)
        self._announce_finality(before)
        if self.network is not None:
            self.network.update_status(self.head.height, self.head.hash, finalized)

    async def _perform(self, action: ev.Action) -> None:
        if isinstance(action, ev.BuildBlock):
            if not self._stopping:
                self.feed(ev.BlockBuilt(self.now_ms(), self._build_block(action)))
        elif isinstance(action, ev.Commit):
            if action.block.header.parent != self.head.hash:
                # Sealed on a head that has since moved (a peer's block won): the engine
                # still gets its BlockCommitted, repeating the current head.
                log.info("dropped our block %d: the head moved while it was sealed", action.block.height)
                self.head_changed(ev.BlockCommitted(self.now_ms(), self.head, tuple(self.recent)))
                return
            push = self.network is not None and self.engine.pushes_own_blocks
            await self.commit(action.block, action.certificate, announce=not push)
            if push:
                # (Otherwise the block travels in the engine's messages, a BFT proposal, and
                # others import it with its certificate.)  The block goes before our new
                # Status: a peer that heard the Status first would also ask for the block by
                # sync, and get it twice.
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
            self.miner.start(action.header, action.target, lambda header: self.feed(ev.Mined(self.now_ms(), header)))
        elif isinstance(action, ev.StopMining):
            if self.miner is not None:
                self.miner.stop()
        elif isinstance(action, ev.ExecuteBlock):
            self.feed(self._execute(action.block))
        elif isinstance(action, ev.ReportEvidence):
            self.evidence = self.evidence[-99:] + [action.evidence]
            log.warning("evidence of validator misbehaviour: %s", action.evidence.hex()[:64])
        elif isinstance(action, ev.SetTimer):
            self.engine_timer.set(action.at)
        elif isinstance(action, ev.Persist):
            # Durable (fsync) before any later action's message leaves: the double-sign guard.
            await self._write(len(action.state) <= INLINE_WRITE_BYTES, self.store.set_meta, ENGINE_STATE_KEY,
                              action.state, durable=True)
        elif isinstance(action, ev.SetHead):
            await self.importer.set_head(action.block_hash)
        elif isinstance(action, (ev.ReadIndexReady, ev.ReadIndexFailed)):
            self.read_answered(action)
        else:
            raise NotImplementedError(f"the runtime cannot perform {type(action).__name__}")

    def _build_block(self, request: ev.BuildBlock) -> Block:
        if request.parent != self.head.hash:
            # The engine asked before it saw the newest BlockCommitted (still queued). Answer
            # with an empty block on the parent it named: it recognises it as stale and
            # builds again on the head it is about to learn of.
            return Block(BlockHeader(self.genesis.chain_id, request.height, request.parent, request.timestamp,
                                     EMPTY_ROOT, 0, request.proposer, request.extra))
        with self.lock:
            transactions = self.pool.select(self.genesis.max_block_transactions)
        while True:
            try:
                effects = apply_block(self.state.accounts, transactions, request.proposer, request.extra, self.rules)
                break
            except StateError as exc:
                # The mempool only offers transactions that apply; if one does not, drop it and
                # build without it rather than stall the chain.
                bad = transactions[exc.index] if exc.index is not None else None
                log.error("mempool offered a transaction that does not apply (%s); dropping it", exc)
                if bad is None:
                    raise
                with self.lock:
                    self.pool.remove_committed([bad])
                transactions = transactions[: exc.index]
        header = build_header(self.genesis.chain_id, self.head, request.timestamp, transactions, request.proposer, request.extra)
        self._built = _Built(header.unsealed_bytes(), effects)
        return Block(header, tuple(transactions))

    async def commit(
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
                effects = apply_block(self.state.accounts, block.transactions, header.proposer, header.extra, self.rules)
        started = time.perf_counter()
        evidence = self.engine.block_evidence(header)
        await self._store_block(block, effects, certificate, evidence)
        self.committed(block, effects, time.perf_counter() - started, announce)

    async def _store_block(self, block: Block, effects: BlockEffects, certificate: bytes, evidence: list) -> None:
        """Write a block the engine committed, trying again after a failure.  A block that cannot
        be stored stops the node: the engine believes it committed, and a node that went on
        would serve a head it never wrote (and a BFT engine would sit "decided" for good)."""
        for attempt, pause in enumerate((*COMMIT_RETRY_SECONDS, None)):
            try:
                if attempt and await self.blocking(self._stored_head_is, block.hash):
                    return  # the last try committed and only its answer was lost (a dropped connection)
                # A retry goes to the thread: the database may be slow to come back.
                await self._write(not attempt and len(block.transactions) <= INLINE_WRITE_TRANSACTIONS,
                                  self.store.commit_block, block, effects, certificate, evidence)
                return
            except Exception as exc:
                if pause is None or self._stopping:
                    self.fail(f"cannot store block {block.height} {block.hash.hex()[:16]} "
                              f"after {attempt + 1} attempts: {type(exc).__name__}: {exc}")
                    raise NodeFailed(self.failure) from exc
                log.warning("storing block %d failed (%s); trying again in %.1f s", block.height, exc, pause)
                await asyncio.sleep(pause)

    async def _write(self, small: bool, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store write the engine waits for.  A small one (an engine state, a block of a few
        transfers) is done here on the loop: handing it to the store thread and back costs
        about as much as the write itself (two thread wake-ups and the GIL passed to and fro),
        and that is on the path of every Raft or BFT round.  A large one goes to the store
        thread, so the loop admits transactions while it is written; so does any write the
        store cannot start at once (a network database, or its connections all in use), so
        the loop never waits on one."""
        if small and self.store.writes_at_once():
            return function(*args, **kwargs)
        return await self.blocking(function, *args, **kwargs)

    def _stored_head_is(self, block_hash: bytes) -> bool:
        head = self.store.head()
        return head is not None and head.hash == block_hash

    def fail(self, reason: str) -> None:
        """Stop the node with `reason` (the server exits non-zero and prints it)."""
        if self.failure is not None:
            return
        self.failure = reason
        log.critical("the node stops: %s", reason)
        self._stopping = True
        if self.on_failure is not None:
            self.on_failure(reason)

    def committed(self, block: Block, effects: BlockEffects, elapsed: float, announce: bool = True) -> None:
        """The in-memory half of a commit, once the block is durable."""
        header = block.header
        with self.lock:
            self.state.commit(effects)
            self.head = header
            self.pool.remove_committed(block.transactions)
            ready = self.pool.ready_count()
        self.metrics.block_committed(len(block.transactions), elapsed)
        self._advance_finality([tx.id for tx in block.transactions])
        self._update_gauges()
        self.publish("block", self._block_event(block))
        if announce and self.network is not None:
            self.network.update_status(header.height, header.hash, self.finalized_height)
        self.recent.append(header)
        self.head_changed(ev.BlockCommitted(self.now_ms(), header, tuple(self.recent), effects.validator_updates, ready))
        if not ready:
            self.work_since_ms = None
        if ready and not self._stopping:
            # Always after BlockCommitted, even if a TxsAvailable is already queued: that one
            # reaches the engine while it is still committing and is ignored.
            self._txs_signalled = True
            self.feed(ev.TxsAvailable(self.now_ms(), ready))

    def _advance_finality(self, tx_ids: list[bytes]) -> None:
        before = self.finalized_height
        self.finalized_height = self.engine.finalized_height(self.head.height, self.head.hash)
        self.finality.committed(self.head.height, tx_ids, self.finalized_height)
        self._announce_finality(before)

    def _announce_finality(self, before: int) -> None:
        """A `finalized` event when blocks the events stream announced as not final became
        final (proof of work by depth, proof of stake at a checkpoint); not when the only new
        final block is the head just added, whose own event says so."""
        finalized = self.finalized_height
        if finalized <= before or (finalized == self.head.height and before == finalized - 1):
            return
        header = next((h for h in self.recent if h.height == finalized), None) or self.store.block_header(finalized)
        self.publish("finalized", {"height": finalized, "hash": header.hash.hex() if header is not None else None})

    def signal_txs(self) -> None:
        """Tell the engine transactions are ready, once until it builds (it ignores repeats anyway)."""
        if self.work_since_ms is None:
            self.work_since_ms = self.now_ms()
        if not self._txs_signalled and not self._stopping:
            self._txs_signalled = True
            self.feed(ev.TxsAvailable(self.now_ms(), self.pool.ready_count()))

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1)
            with self.lock:
                expired = self.pool.expire(self.now_ms())
                if not self.pool.ready_count():
                    self.work_since_ms = None  # nothing waits: the next transaction starts a new wait
            if expired:
                log.info("expired %d transactions from the mempool", len(expired))
            if self.network is not None:
                self.sync.check_timeout()
                self.gossip.expire_requests()
                ticks += 1
                if ticks % REANNOUNCE_EVERY_TICKS == 0 and len(self.pool):
                    with self.lock:
                        pending = [tx.id for tx in self.pool.snapshot(MAX_REANNOUNCE)]
                    self.gossip.reannounce(pending)
            self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.height.set(self.head.height)
        self.metrics.finalized_height.set(self.finalized_height)
        self.metrics.mempool_size.set(len(self.pool))

    # ------------------------------------------------------------------ events stream
    def subscribe(self) -> asyncio.Queue[Event | None]:
        return self.hub.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self.hub.unsubscribe(queue)

    def close_streams(self) -> None:
        self.hub.close()

    def end_waits(self) -> None:
        self.finality.end()

    def publish(self, kind: str, data: dict) -> None:
        self.hub.publish(kind, data)

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

    def _execute(self, block: Block) -> ev.BlockExecuted:
        """Check a proposed block on our head without committing it (ABCI's ProcessProposal)."""
        try:
            if block.header.parent != self.head.hash:
                raise InvalidBlock("bad_parent", "the proposal does not extend our head")
            effects = self.validate(block, tuple(self.recent), self.state.accounts)
        except BLOCK_REFUSALS as exc:
            return ev.BlockExecuted(self.now_ms(), block.hash, False, getattr(exc, "reason", str(exc)))
        # Kept for the Commit that mostly follows, so the block is not applied twice.
        self._executed = (block.hash, self.head.hash, effects)
        return ev.BlockExecuted(self.now_ms(), block.hash, True)

    # ------------------------------------------------------------------ the block-validity rule
    def validate_header(self, block: Block, recent: tuple[BlockHeader, ...]) -> None:
        """Structure and header of a block on `recent[-1]`, without its state (a side branch)."""
        validate_header(block, recent, self.rules, self.engine.verify_header, self.now_ms())

    def validate(
        self, block: Block, recent: tuple[BlockHeader, ...], accounts: Mapping[bytes, Account],
        verified: Container[bytes] = (), header_checked: bool = False,
    ) -> BlockEffects:
        """Every check a block must pass before it can commit on `recent[-1]`, and its effects on
        `accounts`; transactions the mempool holds had their signatures checked at admission,
        those in `verified` by the signature workers.  `header_checked`: the engine's header rule
        passed on these same `recent` headers within this import (the engine's state has not
        moved since), so its seal is not checked twice."""
        checked = _EitherOf(verified, self.pool) if verified else self.pool
        verify_header = _checked_already if header_checked else self.engine.verify_header
        return validate_block(block, recent, accounts, self.rules, verify_header, self.now_ms(), checked)

    def load_recent(self) -> None:
        first = max(0, self.head.height - (self.recent.maxlen or 1) + 1)
        self.recent.clear()
        self.recent.extend(self.store.block_header(h) for h in range(first, self.head.height))
        self.recent.append(self.head)


def _checked_already(header: BlockHeader, recent: tuple[BlockHeader, ...], now_ms: int | None) -> None:
    """The engine's header rule, for a header that passed it already on the same inputs."""


class _EitherOf:
    """Ids in either of two containers."""

    def __init__(self, first: Container[bytes], second: Container[bytes]):
        self.first, self.second = first, second

    def __contains__(self, item: object) -> bool:
        return item in self.first or item in self.second

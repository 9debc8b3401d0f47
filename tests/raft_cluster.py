"""A scripted Raft cluster for engine tests: real RaftEngines, a router that delivers their
messages at once unless a node is down or a link is cut, and no timers: a test decides who
times out by ticking it (after moving the clock past everyone's leases)."""

from __future__ import annotations

from collections import deque

from bft_helpers import key
from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    Broadcast,
    BuildBlock,
    Commit,
    Event,
    PeerMessage,
    Persist,
    ReadIndexFailed,
    ReadIndexReady,
    Send,
    SetTimer,
    Started,
    Tick,
    TxsAvailable,
)
from consensus.raft.engine import RaftEngine
from ledger.address import address_of
from ledger.block import Block, build_header
from ledger.genesis import Genesis

ELECTION_MS = 100
HEARTBEAT_MS = 20


def raft_genesis(members: int, **params) -> tuple[Genesis, list]:
    keys = [key(f"raft-member-{i}") for i in range(members)]
    settings = {"members": [k.public_key.hex() for k in keys], "election_timeout_ms": ELECTION_MS,
                "heartbeat_ms": HEARTBEAT_MS}
    settings.update(params)
    genesis = Genesis(chain_id="raft-test", address_prefix="dev", timestamp=1_700_000_000_000, engine="raft",
                      engine_params=settings, allocations={})
    return genesis, keys


class Cluster:
    def __init__(self, members: int = 5, spares: int = 0):
        """`members` nodes named by the genesis, and `spares` more that run the engine without
        being members (they follow by sync until the membership names them)."""
        self.genesis, self.keys = raft_genesis(members)
        self.keys += [key(f"raft-member-{i}") for i in range(members, members + spares)]
        members += spares
        self.now = self.genesis.timestamp + 1
        root = self.genesis.block()
        self.chains: list[list[Block]] = [[root] for _ in range(members)]
        self.persisted: list[bytes | None] = [None] * members
        self.engines: list[RaftEngine | None] = [None] * members
        self.cut: set[tuple[int, int]] = set()
        self.pending: deque[tuple[int, Event]] = deque()
        self.actions: list[list[Action]] = [[] for _ in range(members)]  # every action each returned
        self.rewrite = None  # (src, dst, message bytes) -> message bytes or None (dropped)
        self.reads: list[list] = [[] for _ in range(members)]  # ReadIndex answers each node gave
        # The transactions the next block built holds (the engine reads none of them); as a
        # node's mempool does, it drops those of a block any node commits.
        self.mempool: list = []
        # Whether a BlockCommitted says how many transactions still wait, as the runtime's
        # does after its own Commit (the mempool above: every node shares it).
        self.report_ready = False
        for node in range(members):
            self.start(node)
        self.run()

    # ------------------------------------------------------------------ control
    def start(self, node: int) -> None:
        self.engines[node] = RaftEngine(self.genesis, self.keys[node])
        chain = self.chains[node]
        self.feed(node, Started(self.now, chain[-1].header, self.persisted[node],
                                tuple(block.header for block in chain[-64:])))

    def crash(self, node: int) -> None:
        self.engines[node] = None
        self.pending = deque(item for item in self.pending if item[0] != node)

    def isolate(self, node: int, *, keep: tuple[int, ...] = ()) -> None:
        for other in range(len(self.engines)):
            if other != node and other not in keep:
                self.cut |= {(node, other), (other, node)}

    def heal(self) -> None:
        self.cut.clear()

    def sync(self, node: int, source: int) -> None:
        """`node` imports the blocks `source` committed beyond its head, as block sync does."""
        chain = self.chains[node]
        for block in self.chains[source][len(chain):]:
            chain.append(block)
            self.feed(node, BlockCommitted(self.now, block.header))
        self.run()

    def advance(self, ms: int) -> None:
        self.now += ms

    def tick(self, node: int, after_ms: int = 0) -> None:
        self.now += after_ms
        self.feed(node, Tick(self.now))
        self.run()

    def elect(self, node: int) -> None:
        """Let every lease lapse, then time `node` out; it must win."""
        self.tick(node, after_ms=3 * ELECTION_MS)
        assert self.engines[node].role == "leader", (node, self.engines[node].role, self.engines[node].term)

    def heartbeat(self, node: int) -> None:
        self.tick(node, after_ms=HEARTBEAT_MS)

    def submit(self, node: int) -> None:
        """The leader's mempool has transactions: it builds (with what `mempool` holds, none unless a test says)."""
        self.feed(node, TxsAvailable(self.now, 1))
        self.run()

    # ------------------------------------------------------------------ the runtime
    def run(self) -> None:
        while self.pending:
            node, event = self.pending.popleft()
            if self.engines[node] is not None:
                self.feed(node, event)

    def feed(self, node: int, event: Event) -> list[Action]:
        engine = self.engines[node]
        assert engine is not None
        actions = engine.handle(event)
        self.actions[node].extend(actions)
        for action in actions:
            self._perform(node, action)
        return actions

    def _perform(self, node: int, action: Action) -> None:
        if isinstance(action, Send):
            self._deliver(node, int(action.peer[1:]), action.message)
        elif isinstance(action, Broadcast):
            for other in range(len(self.engines)):
                if other != node:
                    self._deliver(node, other, action.message)
        elif isinstance(action, Persist):
            self.persisted[node] = action.state
        elif isinstance(action, Commit):
            chain = self.chains[node]
            assert action.block.header.parent == chain[-1].hash, "a commit must extend the head"
            chain.append(action.block)
            self.mempool = [tx for tx in self.mempool if tx not in action.block.transactions]
            ready = len(self.mempool) if self.report_ready else None
            self.pending.append((node, BlockCommitted(self.now, action.block.header, txs_ready=ready)))
        elif isinstance(action, BuildBlock):
            # With the transactions `mempool` holds (none unless a test put some: an empty block).
            parent = self.chains[node][-1].header
            transactions = list(self.mempool)
            header = build_header(self.genesis.chain_id, parent, action.timestamp, transactions, action.proposer,
                                  action.extra)
            self.pending.append((node, BlockBuilt(self.now, Block(header, tuple(transactions)))))
        elif isinstance(action, (ReadIndexReady, ReadIndexFailed)):
            self.reads[node].append(action)
        elif not isinstance(action, SetTimer):
            raise AssertionError(f"unexpected action {action}")

    def _deliver(self, source: int, destination: int, message: bytes) -> None:
        if self.engines[destination] is None or (source, destination) in self.cut:
            return
        if self.rewrite is not None:
            message = self.rewrite(source, destination, message)
            if message is None:
                return
        self.pending.append((destination, PeerMessage(self.now, f"n{source}", message)))

    # ------------------------------------------------------------------ reading
    @property
    def members(self) -> tuple[bytes, ...]:
        """Every member's public key (node i signs with keys[i])."""
        return tuple(k.public_key for k in self.keys)

    def address(self, node: int) -> bytes:
        return address_of(self.keys[node].public_key)

    def committed(self, node: int) -> list[bytes]:
        return [block.hash for block in self.chains[node]]

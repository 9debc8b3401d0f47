"""A tiny deterministic runtime for the engine conformance suite (tests/test_engine_conformance.py).

`Network` performs every action of the engines of one case the way the node runtime
would, in virtual time: BuildBlock -> BlockBuilt (a block on the named parent holding a
few signed transfers), ExecuteBlock -> BlockExecuted(valid), Commit -> BlockCommitted,
SetTimer -> Tick, Mine -> Mined (an in-process nonce search), Broadcast/Send -> a
PeerMessage for the other engines, Persist -> kept as the node's durable engine state.
It knows no engine: whatever it must know of one comes from the case's `Setup`.

Nothing here reads a clock or an unseeded random source and nothing iterates a set, so
a run is a pure function of its `Setup`: the transcript (every event with the actions it
returned, encoded canonically) must come out the same in every run and every process.

A case (one per engine in the registry) is a factory returning a `Setup`: a genesis, the
node keys, how far the run must commit, where it crashes and restarts nodes, and how to
read what a node signed out of an action.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from itertools import takewhile

from bft_helpers import KEYS as BFT_KEYS
from bft_helpers import key, sent_messages
from consensus import mining
from consensus.bft_messages import Proposal, SignedProposal, Vote, encode_message
from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BlockExecuted,
    Broadcast,
    BuildBlock,
    Commit,
    Engine,
    Event,
    ExecuteBlock,
    Mine,
    Mined,
    PeerMessage,
    Persist,
    ReportEvidence,
    Send,
    SetTimer,
    Started,
    StopMining,
    Tick,
    TxsAvailable,
)
from consensus.pos import messages as pos_messages
from consensus.raft import messages as raft_messages
from consensus.registry import create_engine
from ledger.address import address_of
from ledger.block import Block, BlockHeader, build_header
from ledger.crypto import PrivateKey
from ledger.codec import Writer
from ledger.genesis import Genesis, GenesisStake
from ledger.transaction import Transaction, new_transfer

T0 = 1_700_000_000_000
TXS_PER_BLOCK = 3  # what the simulated mempool always has ready
LATENCY_MS = 10  # peer messages
ANSWER_MS = 1  # BuildBlock, ExecuteBlock and Commit answers
RESTART_MS = 50  # a crashed node is down this long
MAX_BLOCK_TRANSACTIONS = 100

SENDER = key("conformance-sender")
RECIPIENT = address_of(key("conformance-recipient").public_key)

SignedItems = Callable[["Network", int, Action], list[tuple[tuple, bytes]]]


@dataclass(frozen=True)
class Setup:
    """One engine's case: everything the generic runtime and the checks need to know."""

    genesis: Genesis
    signers: tuple[PrivateKey | None, ...]  # one node per entry, its node key
    target_height: int  # a run ends once every node has committed this far
    # What a node signed in an action it returned: ((height, round, kind), signed bytes)
    # pairs.  Two different signed bytes under one key are a double sign.
    signed_items: SignedItems
    # Restarts: (node, n) crashes `node` right after the runtime made its n-th Persist or
    # Commit durable (the rest of that action list never happens) and starts a fresh engine
    # from the store.
    restarts: tuple[tuple[int, int], ...] = ()
    # Messages a Byzantine peer sends a node that just restarted, after the messages of its
    # height it had received are delivered again (say, a second proposal for its round).
    conflicting: Callable[[Network, int], list[bytes]] | None = None
    mining_ms: int = 0  # virtual time a Mine takes to answer
    limit_ms: int = 60_000  # virtual time a run may take


# ----------------------------------------------------------------------------- transcripts


def canonical(value: object) -> object:
    """A JSON-able, order-independent encoding of events and actions: dataclass fields by
    name (cached fields, named with a leading underscore, left out), bytes in hex."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        encoded = {"type": type(value).__name__}
        for item in dataclasses.fields(value):
            if not item.name.startswith("_"):
                encoded[item.name] = canonical(getattr(value, item.name))
        return encoded
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, Enum):
        return canonical(value.value)
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"no canonical encoding for {type(value).__name__}")


def digest(transcript: list) -> str:
    return hashlib.sha256(json.dumps(transcript, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- the runtime


@dataclass(frozen=True)
class _Restart:
    """Not an engine event: the queue's reminder to bring a crashed node back."""

    crash: int  # its index in Network.crashes


@dataclass
class Crash:
    node: int
    at: int
    persisted: bytes | None  # what the fresh engine is started from
    dropped: list[Action]  # actions returned but never performed
    # The dropped actions before the next Persist: the runtime may have sent these before
    # the crash (a Persist is durable before any later message leaves, and no more), so
    # what they carry counts as signed; what comes after the next Persist cannot have left.
    maybe_sent: list[Action]
    conflicting: int = 0  # messages a Byzantine peer sent it once it was back


@dataclass
class Network:
    setup: Setup
    # Wraps every engine.handle call (the no-clock check patches clocks inside it).
    around_engine: Callable[[], AbstractContextManager] = nullcontext
    # Called after the runtime made a Commit durable, before its BlockCommitted is queued.
    on_commit: Callable[[Network, int, Block], None] | None = None
    now: int = 0
    engines: list[Engine] = field(default_factory=list)
    blocks: list[list[Block]] = field(default_factory=list)  # each node's chain, genesis first
    certificates: list[bytes] = field(default_factory=list)  # stored beside each node's head
    persisted: list[bytes | None] = field(default_factory=list)
    transcript: list = field(default_factory=list)
    signed: dict[tuple, list[bytes]] = field(default_factory=dict)  # (node, key) -> distinct signed bytes
    broadcasts: list[tuple[int, bytes]] = field(default_factory=list)
    evidence: list[tuple[int, bytes]] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    _queue: list = field(default_factory=list)
    _seq: int = 0
    _incarnation: list[int] = field(default_factory=list)  # a crash loses the answers owed to the old one
    _mining_job: list[int] = field(default_factory=list)
    _durable: list[int] = field(default_factory=list)
    _down: list[int] = field(default_factory=list)
    _received: list[list[tuple[str, bytes]]] = field(default_factory=list)  # peer messages of the last two heights
    _received_before_head: list[int] = field(default_factory=list)
    _headers: dict[bytes, BlockHeader] = field(default_factory=dict)
    _txs: dict[int, tuple[Transaction, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        genesis = self.setup.genesis
        count = len(self.setup.signers)
        self.now = genesis.timestamp + 1000
        root = genesis.block()
        self._headers[root.hash] = root.header
        self.blocks = [[root] for _ in range(count)]
        self.certificates = [b""] * count
        self.persisted = [None] * count
        self._incarnation = [0] * count
        self._mining_job = [0] * count
        self._durable = [0] * count
        self._received = [[] for _ in range(count)]
        self._received_before_head = [0] * count
        self.engines = [self._new_engine(node) for node in range(count)]
        for node in range(count):
            self._start(node)

    # ------------------------------------------------------------------ running
    def run(self, require: bool = True) -> Network:
        """Process events in time order until every node reached the target height.  A run
        that gets stuck fails, unless `require` is off: then it just stops (for checks that
        must look at what happened before they look at progress)."""
        deadline = self.now + self.setup.limit_ms
        while min(self.heights()) < self.setup.target_height:
            if not self._queue or self._queue[0][0] > deadline:
                assert not require, f"stuck at heights {self.heights()} after {self.now - self.setup.genesis.timestamp} ms"
                break
            at, _, node, incarnation, job, event = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            if isinstance(event, _Restart):
                self._restart(node, self.crashes[event.crash])
                continue
            if node in self._down and isinstance(event, PeerMessage):
                self._received[node].append((event.peer, event.message))  # its peers repeat it later
                continue
            if incarnation != self._incarnation[node] and not isinstance(event, PeerMessage):
                continue  # an answer owed to an engine that crashed since
            if isinstance(event, Mined) and job != self._mining_job[node]:
                continue  # StopMining came first
            self.feed(node, event)
        return self

    def heights(self) -> list[int]:
        return [chain[-1].height for chain in self.blocks]

    def head(self, node: int) -> BlockHeader:
        return self.blocks[node][-1].header

    def ancestors(self, node: int, height: int) -> tuple[BlockHeader, ...]:
        """The headers `verify_header` of a block at `height` is given, ending with its parent."""
        chain = self.blocks[node][:height]
        return tuple(block.header for block in chain[-self.engines[node].ancestors_needed:])

    def push(self, at: int, node: int, event: Event, job: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, node, self._incarnation[node], job, event))

    def feed(self, node: int, event: Event) -> list[Action]:
        if isinstance(event, Tick):
            self._sync(node)
        with self.around_engine():
            actions = self.engines[node].handle(event)
        self.transcript.append([node, canonical(event), canonical(actions)])
        if isinstance(event, PeerMessage):
            self._received[node].append((event.peer, event.message))
        elif isinstance(event, BlockCommitted):
            # Keep the messages of the height before too: some came while it was deciding it
            # (a proposal for the next height, say).
            self._received[node] = self._received[node][self._received_before_head[node]:]
            self._received_before_head[node] = len(self._received[node])
        for index, action in enumerate(actions):
            self._perform(node, action)
            if isinstance(action, (Persist, Commit)):
                self._durable[node] += 1
                if (node, self._durable[node]) in self.setup.restarts:
                    dropped = actions[index + 1:]
                    maybe_sent = list(takewhile(lambda later: not isinstance(later, Persist), dropped))
                    self._note_signed(node, actions[:index + 1] + maybe_sent)
                    self._crash(node, dropped, maybe_sent)
                    return actions
        self._note_signed(node, actions)
        return actions

    def _note_signed(self, node: int, actions: list[Action]) -> None:
        """Record what the node signed in actions that may have left it."""
        for action in actions:
            for item_key, signed in self.setup.signed_items(self, node, action):
                values = self.signed.setdefault((node, item_key), [])
                if signed not in values:
                    values.append(signed)

    # ------------------------------------------------------------------ actions
    def _perform(self, node: int, action: Action) -> None:
        now = self.now
        if isinstance(action, Broadcast):
            self.broadcasts.append((node, action.message))
            for other in range(len(self.engines)):
                if other != node:
                    self.push(now + LATENCY_MS, other, PeerMessage(now + LATENCY_MS, peer(node), action.message))
        elif isinstance(action, Send):
            other = int(action.peer.removeprefix("node"))
            self.push(now + LATENCY_MS, other, PeerMessage(now + LATENCY_MS, peer(node), action.message))
        elif isinstance(action, BuildBlock):
            parent = self._headers[action.parent]
            assert action.height == parent.height + 1, "BuildBlock names a height that does not follow its parent"
            transactions = self._transactions(action.height)
            header = build_header(self.setup.genesis.chain_id, parent, action.timestamp, list(transactions),
                                  action.proposer, action.extra)
            self.push(now + ANSWER_MS, node, BlockBuilt(now + ANSWER_MS, Block(header, transactions)))
        elif isinstance(action, ExecuteBlock):
            self.push(now + ANSWER_MS, node, BlockExecuted(now + ANSWER_MS, action.block.hash, True))
        elif isinstance(action, Commit):
            self._commit(node, action)
        elif isinstance(action, SetTimer):
            self.push(max(action.at, now), node, Tick(max(action.at, now)))
        elif isinstance(action, Mine):
            sealed = _mine(action.header, action.target)
            at = now + self.setup.mining_ms
            self.push(at, node, Mined(at, sealed), job=self._mining_job[node])
        elif isinstance(action, StopMining):
            self._mining_job[node] += 1
        elif isinstance(action, Persist):
            self.persisted[node] = action.state
        elif isinstance(action, ReportEvidence):
            self.evidence.append((node, action.evidence))
        else:
            raise AssertionError(f"the conformance runtime does not perform {type(action).__name__} yet")

    def _commit(self, node: int, action: Commit) -> None:
        block, head = action.block, self.head(node)
        now = self.now
        if block.header.parent != head.hash:
            # The head moved meanwhile: the runtime answers with the head it has.
            assert len(self.blocks[node]) > block.height and self.blocks[node][block.height].hash == block.hash, (
                f"node {node} was asked to commit block {block.height} off its chain"
            )
            self.push(now + ANSWER_MS, node, BlockCommitted(now + ANSWER_MS, head))
            return
        self._headers[block.hash] = block.header
        self.blocks[node].append(block)
        self.certificates[node] = action.certificate
        if self.on_commit is not None:
            self.on_commit(self, node, block)
        self.push(now + ANSWER_MS, node, BlockCommitted(now + ANSWER_MS, block.header))
        self.push(now + ANSWER_MS, node, TxsAvailable(now + ANSWER_MS, TXS_PER_BLOCK))

    def _transactions(self, height: int) -> tuple[Transaction, ...]:
        """The same few signed transfers for every block built at `height`."""
        if height not in self._txs:
            chain_id = self.setup.genesis.chain_id
            base = (height - 1) * TXS_PER_BLOCK
            self._txs[height] = tuple(
                new_transfer(SENDER, chain_id, base + i, RECIPIENT, 1 + i, fee=1) for i in range(TXS_PER_BLOCK)
            )
        return self._txs[height]

    # ------------------------------------------------------------------ start and restart
    def _new_engine(self, node: int) -> Engine:
        return create_engine(self.setup.genesis, self.setup.signers[node])

    def _start(self, node: int) -> None:
        """Started as the runtime sends it: the stored head, its recent headers, block and
        certificate, and the last Persist."""
        head = self.head(node)
        recent = self.ancestors(node, head.height + 1)
        self.feed(node, Started(self.now, head, self.persisted[node], recent, self.blocks[node][-1],
                                self.certificates[node]))
        self.push(self.now, node, TxsAvailable(self.now, TXS_PER_BLOCK))

    def _crash(self, node: int, dropped: list[Action], maybe_sent: list[Action]) -> None:
        """The node is down for RESTART_MS: what it had asked for is lost, and so are the
        messages that arrive meanwhile (its peers repeat them once it is back)."""
        self.crashes.append(Crash(node, self.now, self.persisted[node], list(dropped), maybe_sent))
        self._incarnation[node] += 1
        self._down.append(node)
        self.push(self.now + RESTART_MS, node, _Restart(len(self.crashes) - 1))

    def _sync(self, node: int) -> None:
        """The runtime's block sync, for a node two or more heights behind (say, after it was
        down): import the blocks of the longest chain but its head, each proven by the header
        that follows it (BFT: its commit certificate), checked with `verify_header`."""
        source = max(range(len(self.blocks)), key=lambda other: (len(self.blocks[other]), -other))
        chain, engine = self.blocks[source], self.engines[node]
        imported = False
        # An engine whose blocks are final only with the next one's certificate imports one behind.
        behind = 1 if engine.import_waits_for_certificate else 0
        while len(self.blocks[node]) < len(chain) - behind:
            height = len(self.blocks[node])
            block = chain[height]
            engine.verify_header(block.header, self.ancestors(node, height), self.now)
            self.blocks[node].append(block)
            self.certificates[node] = engine.parent_certificate(chain[height + 1].header) if behind else b""
            self.push(self.now, node, BlockCommitted(self.now, block.header))
            imported = True
        if imported:
            self.push(self.now, node, TxsAvailable(self.now, TXS_PER_BLOCK))

    def _restart(self, node: int, crash: Crash) -> None:
        self._down.remove(node)
        received, self._received[node] = self._received[node], []
        self._received_before_head[node] = 0
        self.engines[node] = self._new_engine(node)
        self._start(node)
        # The peers repeat what they sent of this height (a restarted node asks for it)...
        for sender, message in received:
            self.push(self.now + ANSWER_MS, node, PeerMessage(self.now + ANSWER_MS, sender, message))
        # ... and a Byzantine one tries to make it sign something else.
        if self.setup.conflicting is not None:
            for message in self.setup.conflicting(self, node):
                crash.conflicting += 1
                self.push(self.now + 2 * ANSWER_MS, node, PeerMessage(self.now + 2 * ANSWER_MS, "byzantine", message))


@lru_cache(maxsize=256)
def _mine(header: BlockHeader, target: int) -> BlockHeader:
    """The first nonce from 0 that meets the target: a pure function, so runs of one case
    share the search."""
    sealed = mining.mine(header, target)
    assert sealed is not None
    return sealed


def peer(node: int) -> str:
    return f"node{node}"


def transcript_digest(factory: Callable[[], Setup]) -> str:
    """The digest of a scripted run of a case (what the other-process replay prints)."""
    return digest(Network(factory()).run().transcript)


# ----------------------------------------------------------------------------- the cases


def _genesis(chain_id: str, engine: str, params: dict) -> Genesis:
    return Genesis(chain_id=chain_id, address_prefix="dev", timestamp=T0, engine=engine, engine_params=params,
                   allocations={address_of(SENDER.public_key): 10**12},
                   max_block_transactions=MAX_BLOCK_TRANSACTIONS)


def _committed_blocks(network: Network, node: int, action: Action) -> list[tuple[tuple, bytes]]:
    """Solo and proof of work sign (or seal) nothing but the blocks they commit."""
    if isinstance(action, Commit):
        return [((action.block.height, "block"), action.block.hash)]
    return []


SOLO_AUTHORITY = key("conformance-solo-authority")


def solo_case() -> Setup:
    genesis = _genesis("conformance-solo", "solo", {"authority": SOLO_AUTHORITY.public_key.hex(),
                                                    "block_interval_ms": 500})
    return Setup(genesis, (SOLO_AUTHORITY,), target_height=6, signed_items=_committed_blocks,
                 restarts=((0, 2), (0, 4)))


POW_MINER = key("conformance-pow-miner")


def pow_case() -> Setup:
    # About one hash in 65536 meets the target: a nonce is found in a few hundredths of a
    # second, and a block whose nonce is changed fails (but for that chance, fixed per run).
    params = {"target_block_ms": 1000, "initial_target": "1f00ffff", "retarget_window": 5, "finality_depth": 2}
    return Setup(_genesis("conformance-pow", "pow", params), (POW_MINER,), target_height=6,
                 signed_items=_committed_blocks, restarts=((0, 2), (0, 4)), mining_ms=1000)


def _bft_signed(network: Network, node: int, action: Action) -> list[tuple[tuple, bytes]]:
    """The votes and proposals a validator signed itself, by (height, round, kind), as the
    payload its signature covers (other validators' votes it forwards do not count)."""
    if not isinstance(action, (Broadcast, Send)):
        return []
    chain_id = network.setup.genesis.chain_id
    own = address_of(network.setup.signers[node].public_key)
    items = []
    for message in sent_messages([action]):
        if isinstance(message, Vote) and message.validator == own:
            items.append(((message.height, message.round, message.kind.name), message.payload(chain_id)))
        elif isinstance(message, Proposal) and message.signed.proposer == own:
            items.append(((message.height, message.round, "PROPOSAL"), message.signed.payload(chain_id)))
    return items


def _bft_conflicting(network: Network, node: int) -> list[bytes]:
    """For every proposal of the heights the restarted validator is deciding, a second one
    by the same proposer for the same round: another block on the same parent."""
    height = network.head(node).height + 1
    keys = {address_of(k.public_key): k for k in network.setup.signers}
    chain_id = network.setup.genesis.chain_id
    forged = []
    for sender, message in network.broadcasts:
        [decoded] = sent_messages([Broadcast(message)])
        if not isinstance(decoded, Proposal) or decoded.height != height or sender == node:
            continue
        original = decoded.block.header
        header = dataclasses.replace(original, timestamp=original.timestamp + 1, seal=b"")
        signer = keys[decoded.signed.proposer]
        block = Block(header.with_seal(signer.sign_digest(header.sealing_digest())), decoded.block.transactions)
        signed = SignedProposal.sign(signer, chain_id, height, decoded.round, decoded.pol_round, block.hash)
        forged.append(encode_message(Proposal(signed, block, decoded.pol_votes)))
    return forged


def bft_case() -> Setup:
    params = {
        "validators": [{"public_key": k.public_key.hex(), "power": 1} for k in BFT_KEYS],
        "timeout_propose_ms": 1000, "timeout_prevote_ms": 500, "timeout_precommit_ms": 500,
        "timeout_delta_ms": 100, "gossip_interval_ms": 700,
    }
    # Each crash falls right after a Persist, before what it guards happens: validator 2
    # before its prevote of (1, 0) (then it gets that proposal again and a second one), the
    # proposer of (2, 0) before its proposal (back 50 ms later, it is handed another block
    # for that round), 2 again before its precommit of (2, 1), 0 between deciding height 3
    # and its Commit, 3 before its prevote of (3, 0).  (Counts of Persists and Commits per
    # node, found by probing: they shift if the engine's actions change, so the test checks
    # that the scenario still has a crash between a Persist and a signed message.)
    return Setup(_genesis("conformance-bft", "bft", params), tuple(BFT_KEYS), target_height=5,
                 signed_items=_bft_signed, restarts=((2, 1), (1, 5), (2, 8), (0, 10), (3, 11)),
                 conflicting=_bft_conflicting)



POS_KEYS = tuple(key(f"conformance-pos-validator-{i}") for i in range(4))


def _pos_signed(network: Network, node: int, action: Action) -> list[tuple[tuple, bytes]]:
    """What a proof-of-stake validator signed itself: its blocks by slot, and its FFG votes by
    target epoch as the (source, target) pair (attestations of one epoch may differ in slot and
    head: only a different vote for the same target is a double sign)."""
    params = network.setup.genesis.engine_params
    if isinstance(action, Commit):
        slot = (action.block.header.timestamp - network.setup.genesis.timestamp) // params["slot_ms"]
        return [((slot, "block"), action.block.hash)]
    if isinstance(action, Broadcast):
        message = pos_messages.decode_message(action.message)
        if isinstance(message, pos_messages.Attestation) and message.validator == node:
            writer = Writer()
            message.source.write(writer)
            message.target.write(writer)
            return [((message.target.epoch, "vote"), writer.bytes())]
    return []


def pos_case() -> Setup:
    params = {"slot_ms": 1000, "slots_per_epoch": 4}
    genesis = dataclasses.replace(
        _genesis("conformance-pos", "pos", params),
        stakes=tuple(GenesisStake(address_of(k.public_key), k.public_key, 32 * 10**9) for k in POS_KEYS),
    )
    # Crashes right after a Persist: validator 1 after saving its first vote (before the
    # attestation leaves), 2 after saving the guard of a proposal (before its Commit), 0 and 3
    # later in the run.  (Counts of Persists and Commits per node, found by probing.)
    return Setup(genesis, POS_KEYS, target_height=12, signed_items=_pos_signed,
                 restarts=((1, 1), (2, 3), (0, 6), (3, 8)))


RAFT_KEYS = tuple(key(f"conformance-raft-member-{i}") for i in range(3))


def _raft_signed(network: Network, node: int, action: Action) -> list[tuple[tuple, bytes]]:
    """What a Raft member commits to: its vote of a term (whom it granted it to), the entry it
    appended at a height in a term it led, and the block it committed at a height."""
    if isinstance(action, Commit):
        return [((action.block.height, "commit"), action.block.hash)]
    if isinstance(action, (Send, Broadcast)):
        params = network.setup.genesis.engine_params
        members = tuple(bytes.fromhex(m) for m in params["members"])
        message = raft_messages.decode_message(action.message, members, network.setup.genesis.chain_id,
                                               MAX_BLOCK_TRANSACTIONS)
        if isinstance(message, raft_messages.VoteResponse) and message.granted and not message.pre_vote:
            return [((message.term, "vote"), action.peer.encode())]
        if isinstance(message, raft_messages.AppendEntries):
            return [((message.term, block.height, "entry"), block.hash) for block in message.entries]
    return []


def raft_case() -> Setup:
    params = {"members": [k.public_key.hex() for k in RAFT_KEYS], "election_timeout_ms": 300, "heartbeat_ms": 50}
    # Crashes right after a Persist or Commit: member 0 after its first durable state, 1 and 2
    # later, one of them the leader in most runs.  (Counts found by probing.)
    return Setup(_genesis("conformance-raft", "raft", params), RAFT_KEYS, target_height=8,
                 signed_items=_raft_signed, restarts=((0, 2), (1, 4), (2, 6)))

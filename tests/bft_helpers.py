"""Shared fixtures of the BFT tests: four validators with deterministic keys, block and
message builders, and a tiny in-memory cluster that performs the engines' actions the
way the runtime would (build, execute, commit, timers, broadcast) in virtual time."""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

from consensus.bft import BftEngine, BftParams
from consensus.bft_evidence import BlockExtra
from consensus.bft_messages import (
    Certificate,
    Proposal,
    SignedProposal,
    Vote,
    VoteType,
    decode_message,
    encode_message,
    verify_certificate,
)
from consensus.engine import (
    BlockBuilt,
    BlockCommitted,
    BlockExecuted,
    Broadcast,
    BuildBlock,
    Commit,
    ExecuteBlock,
    PeerMessage,
    Persist,
    ReportEvidence,
    Send,
    SetTimer,
    Started,
    Tick,
)
from consensus.validators import ValidatorSet, validator_set_of
from ledger.address import address_of
from ledger.block import ZERO_HASH, Block, BlockHeader, build_header
from ledger.crypto import PrivateKey
from ledger.merkle import EMPTY_ROOT

CHAIN = "bft-test"
T0 = 1_700_000_000_000
MAX_TX = 100


def key(label: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(label.encode()).digest())


_KEYS = [key(f"bft-validator-{i}") for i in range(4)]
VALIDATORS: ValidatorSet = validator_set_of([(k.public_key, 1) for k in _KEYS])
_BY_ADDRESS = {address_of(k.public_key): k for k in _KEYS}
# KEYS[i] is the key of VALIDATORS.validators[i] (address order).
KEYS = [_BY_ADDRESS[v.address] for v in VALIDATORS]
ADDRESSES = [v.address for v in VALIDATORS]
OUTSIDER = key("not-a-validator")

GENESIS = BlockHeader(CHAIN, 0, ZERO_HASH, T0, EMPTY_ROOT, 0, bytes(20), extra=b"genesis hash")

FAST = BftParams(
    timeout_propose_ms=1000, timeout_prevote_ms=500, timeout_precommit_ms=500, timeout_delta_ms=100,
    create_empty_blocks=True, gossip_interval_ms=700,
)


def index_of(address: bytes) -> int:
    return ADDRESSES.index(address)


def proposer_index(height: int, round: int, validators: ValidatorSet = VALIDATORS) -> int:
    return [v.address for v in validators].index(validators.proposer(height, round).address)


def others(*excluded: int) -> list[int]:
    return [i for i in range(4) if i not in excluded]


def make_engine(index: int | None, params: BftParams = FAST, validators: ValidatorSet = VALIDATORS,
                signer: PrivateKey | None = None) -> BftEngine:
    if signer is None and index is not None:
        signer = KEYS[index]
    return BftEngine(CHAIN, validators, params, signer, MAX_TX)


def make_block(proposer: int, parent: BlockHeader = GENESIS, extra: bytes = b"", timestamp: int | None = None,
               signer: PrivateKey | None = None) -> Block:
    header = build_header(CHAIN, parent, timestamp if timestamp is not None else parent.timestamp + 1, [],
                          ADDRESSES[proposer], extra)
    sealer = signer if signer is not None else KEYS[proposer]
    return Block(header.with_seal(sealer.sign_digest(header.sealing_digest())), ())


def proposal_bytes(proposer: int, height: int, round: int, block: Block, pol_round: int = -1,
                   pol_votes: tuple[Vote, ...] = (), signer: PrivateKey | None = None) -> bytes:
    signed = SignedProposal.sign(signer or KEYS[proposer], CHAIN, height, round, pol_round, block.hash)
    return encode_message(Proposal(signed, block, pol_votes))


def vote(validator: int, kind: VoteType, height: int, round: int, block_hash: bytes | None,
         chain: str = CHAIN) -> Vote:
    return Vote.sign(KEYS[validator], chain, kind, height, round, block_hash)


def vote_bytes(validator: int, kind: VoteType, height: int, round: int, block_hash: bytes | None) -> bytes:
    return encode_message(vote(validator, kind, height, round, block_hash))


def certificate_for(block: Block, round: int = 0, signers: list[int] | None = None) -> Certificate:
    signers = signers if signers is not None else [0, 1, 2]
    return Certificate.from_votes([vote(i, VoteType.PRECOMMIT, block.height, round, block.hash) for i in signers])


def peer(index: int) -> str:
    return f"node{index}"


def sent_messages(actions) -> list:
    """Consensus messages the actions broadcast or send, decoded."""
    return [decode_message(a.message, MAX_TX) for a in actions if isinstance(a, (Broadcast, Send))]


def sent_votes(actions, kind: VoteType | None = None) -> list[Vote]:
    return [m for m in sent_messages(actions) if isinstance(m, Vote) and (kind is None or m.kind == kind)]


def sent_proposals(actions) -> list[Proposal]:
    return [m for m in sent_messages(actions) if isinstance(m, Proposal)]


def of_type(actions, cls) -> list:
    return [a for a in actions if isinstance(a, cls)]


def answer_executions(engine: BftEngine, actions, now: int, valid: bool = True) -> list:
    """Answer every ExecuteBlock in `actions` (and those the answers cause) with `valid`."""
    pending = list(of_type(actions, ExecuteBlock))
    out = []
    while pending:
        request = pending.pop(0)
        more = engine.handle(BlockExecuted(now, request.block.hash, valid, "" if valid else "test says no"))
        out.extend(more)
        pending.extend(of_type(more, ExecuteBlock))
    return out


# ----------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """Engines wired together: broadcasts reach every other engine after `latency_ms`;
    requests are answered as the runtime would.  `silent` nodes send nothing, `invalid`
    block hashes execute as invalid, `drop(i, j, message)` may drop a delivery."""

    engines: list[BftEngine]
    latency_ms: int = 5
    silent: set[int] = field(default_factory=set)
    invalid: set[bytes] = field(default_factory=set)
    drop: object = None
    sync: bool = False  # on each Tick, import the blocks peers have, as the runtime's block sync
    down: set[int] = field(default_factory=set)  # crashed nodes: they get and send nothing
    now: int = T0
    queue: list = field(default_factory=list)
    seq: int = 0
    heads: list[BlockHeader] = field(default_factory=list)
    committed: list[dict[int, tuple[Block, Certificate]]] = field(default_factory=list)
    persisted: list[bytes | None] = field(default_factory=list)
    evidence: list[list[bytes]] = field(default_factory=list)
    log: list[tuple[int, str, list]] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.engines)
        self.heads = [GENESIS] * count
        self.committed = [{} for _ in range(count)]
        self.persisted = [None] * count
        self.evidence = [[] for _ in range(count)]

    def push(self, at: int, index: int, event) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, index, event))

    def start(self) -> None:
        for index in range(len(self.engines)):
            self.push(self.now, index, Started(self.now, self.heads[index], self.persisted[index]))

    def crash(self, index: int) -> None:
        self.down.add(index)

    def restart(self, index: int, engine: BftEngine) -> None:
        """A new incarnation with what survived: the chain head and the last Persist."""
        self.down.discard(index)
        self.engines[index] = engine
        self.push(self.now, index, Started(self.now, self.heads[index], self.persisted[index]))

    def feed(self, index: int, event) -> list:
        if index in self.down:
            return []
        if self.sync and isinstance(event, Tick):
            self.sync_from_peers(index)
        actions = self.engines[index].handle(event)
        self.log.append((index, type(event).__name__, actions))
        self.perform(index, actions)
        return actions

    def perform(self, index: int, actions) -> None:
        now = self.now
        for action in actions:
            if isinstance(action, Broadcast):
                if index in self.silent:
                    continue
                for other in range(len(self.engines)):
                    if other != index and other not in self.down and not (
                        self.drop and self.drop(index, other, action.message)
                    ):
                        self.push(now + self.latency_ms, other, PeerMessage(now + self.latency_ms, peer(index), action.message))
            elif isinstance(action, Send):
                target = int(action.peer.removeprefix("node"))
                if index not in self.silent:
                    self.push(now + self.latency_ms, target, PeerMessage(now + self.latency_ms, peer(index), action.message))
            elif isinstance(action, BuildBlock):
                # On the parent named, as the runtime does when its head moved meanwhile (the
                # engine then drops the answer: it has learnt of the new head by then).
                parent = GENESIS if action.height == 1 else self.committed[index][action.height - 1][0].header
                assert action.parent == parent.hash
                header = build_header(CHAIN, parent, action.timestamp, [], action.proposer, action.extra)
                self.push(now + 1, index, BlockBuilt(now + 1, Block(header, ())))
            elif isinstance(action, ExecuteBlock):
                block_hash = action.block.hash
                valid = block_hash not in self.invalid
                self.push(now + 1, index, BlockExecuted(now + 1, block_hash, valid, "" if valid else "invalid"))
            elif isinstance(action, Commit):
                block = action.block
                if block.header.parent != self.heads[index].hash:
                    # Sync imported this height meanwhile; the runtime answers with its head.
                    assert self.committed[index][block.height][0].hash == block.hash, "two blocks final at one height"
                    self.push(now + 1, index, BlockCommitted(now + 1, self.heads[index]))
                    continue
                certificate = verify_certificate(action.certificate, block.header, self.engines[index].validators)
                self.committed[index][block.height] = (block, certificate)
                self.heads[index] = block.header
                self.push(now + 1, index, BlockCommitted(now + 1, block.header))
            elif isinstance(action, SetTimer):
                self.push(max(action.at, now), index, Tick(max(action.at, now)))
            elif isinstance(action, Persist):
                self.persisted[index] = action.state
            elif isinstance(action, ReportEvidence):
                self.evidence[index].append(action.evidence)

    def sync_from_peers(self, index: int) -> None:
        """What the runtime's block sync must do for BFT: import a peer's blocks, each once
        a certificate proves it final - the next header's extra, or for the peer's newest
        block the certificate its store keeps beside it."""
        source = max(range(len(self.engines)), key=lambda j: self.heads[j].height)
        engine = self.engines[index]
        while self.heads[source].height > self.heads[index].height:
            height = self.heads[index].height + 1
            block, stored = self.committed[source][height]
            engine.verify_header(block.header, (self.heads[index],))
            if height + 1 in self.committed[source]:
                following = self.committed[source][height + 1][0].header
                engine.verify_header(following, (block.header,))  # its extra certifies `block`
                certificate = BlockExtra.decode(following.extra).certificate
            else:
                certificate = engine.verify_commit(block.header, stored.encode())
            self.committed[index][height] = (block, certificate)
            self.heads[index] = block.header
            self.push(self.now, index, BlockCommitted(self.now, block.header))

    def run(self, until, limit_ms: int = 60_000) -> None:
        """Process events in time order until `until(self)` holds (or fail at the limit)."""
        deadline = self.now + limit_ms
        while not until(self):
            assert self.queue, "nothing left to happen"
            at, _, index, event = heapq.heappop(self.queue)
            assert at <= deadline, f"not done within {limit_ms} ms of virtual time"
            self.now = max(self.now, at)
            self.feed(index, event)

    def heights(self) -> list[int]:
        return [head.height for head in self.heads]

    def all_at_least(self, height: int, nodes: list[int] | None = None):
        nodes = nodes if nodes is not None else list(range(len(self.engines)))
        return lambda cluster: all(cluster.heads[i].height >= height for i in nodes)

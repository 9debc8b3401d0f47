"""Byzantine validators for the simulator: production nodes whose consensus messages lie.

A Byzantine validator is an ordinary `node.runtime.Node` with the BFT engine, unchanged;
only its `SimNetwork` is a `ByzantineNetwork`, which rewrites the engine's outgoing
messages (`EngineMessage` payloads) before they reach the wire.  Everything it sends is
signed with the validator's own key through the real message classes, so honest nodes
see exactly what a malicious validator with that key could send them:

- `equivocate`: as proposer, its real proposal goes to one side of a split of the
  validators and a second, different, valid block (a prefix of the transactions, or
  another timestamp) signed for the same height and round goes to the other side; as
  voter, each prevote and precommit is signed for two values, one a side.  When the
  round's proposer equivocated too, every Byzantine voter backs the block each side got
  (the coordinated attack that would fork a chain with more than f of them).  With
  `WITNESS_CHANCE` one honest peer gets both messages, as relaying would bring them on a
  real network, so honest nodes can catch the equivocation.
- `invalid`: as proposer, it replaces its block with an invalid one (a transaction with a
  bad signature, a wrong transaction root, a transfer that spends more than its sender
  has, or a replayed committed transaction), validly sealed and signed; as voter, it
  prevotes and precommits any invalid block proposed in the round.
- `silent`: nothing of consensus leaves the node (no proposal, vote, status or decision);
  transaction gossip and block sync still run.
- `mix`: for each height and round each Byzantine validator draws one of the three (half
  of the time all of them draw the same one: a coordinated round).

The Byzantine validators of a run share one `Adversary`: the splits, the equivocated
pairs and the invalid blocks are known to all of them.  Every choice comes from the
run's seeded `random.Random` and plans are kept per (height, round), so the engine's
repeats of a message are rewritten the same way and a seed replays the same trace.

The node's own engine stays honest inside: it believes it sent what it meant to send.
The harness checks its invariants on the honest nodes only.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from consensus.bft_messages import (
    Decision,
    Proposal,
    SignedProposal,
    Status,
    Vote,
    decode_message,
    encode_message,
)
from ledger.address import address_of
from ledger.block import Block
from ledger.codec import MAX_AMOUNT, DecodeError
from ledger.crypto import PrivateKey
from ledger.merkle import merkle_root
from ledger.state import EMPTY_ACCOUNT, Account
from ledger.transaction import Transaction, new_transfer
from node.p2p.messages import EngineMessage
from node.sim.network import SimHub, SimNetwork

KINDS = ("equivocate", "invalid", "silent")
MODES = KINDS + ("mix",)
INVALID_VARIANTS = ("bad_signature", "bad_tx_root", "overspend", "replay")
WITNESS_CHANCE = 0.3  # of a plan: one honest peer also gets the other side's message
COORDINATED_CHANCE = 0.5  # mix: of a round: every Byzantine validator draws the same kind
REPLAY_LOOKBACK = 20  # blocks searched for a committed transaction to replay


@dataclass
class _Plan:
    """What one validator sends for one message of (height, round): a payload per side,
    or one payload for everybody (`sides` None); None drops it."""

    payloads: tuple[bytes, ...]
    sides: dict[str, int] | None = None
    witness: str | None = None

    def route(self, peers: Iterable[str]) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        for peer in peers:
            if self.sides is None:
                out.extend((peer, payload) for payload in self.payloads)
                continue
            side = self.sides.get(peer, 0)
            out.append((peer, self.payloads[side]))
            if peer == self.witness:
                out.append((peer, self.payloads[1 - side]))
        return out


@dataclass
class Adversary:
    """The Byzantine validators of one run, and what they agreed on."""

    mode: str
    rng: random.Random
    chain_id: str
    node_ids: list[str]  # every node's id, sorted
    byzantine: list[str]  # node ids of the Byzantine validators, sorted
    label: Callable[[str], str] = lambda node_id: node_id[:8]
    trace: Callable[[str], None] = lambda text: None
    kinds: tuple[str, ...] = KINDS  # what `mix` draws from (proof of stake has its own: node/sim/pos_byzantine.py)
    stats: Counter = field(default_factory=Counter)  # what was done, by kind
    # Proof of stake: each Byzantine validator's slashable offences (node/sim/pos_byzantine.py).
    offences: dict[str, list] = field(default_factory=dict)
    invalid_blocks: dict[bytes, str] = field(default_factory=dict)  # block hash -> how it is invalid
    pairs: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict)  # equivocated proposals by side
    invalid_at: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (height, round) -> invalid block
    _kinds: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)
    _sides: dict[tuple[int, int], dict[str, int]] = field(default_factory=dict)
    plans: dict[tuple, _Plan | None] = field(default_factory=dict)  # per message kind, sender, height, round

    def __post_init__(self) -> None:
        if self.mode not in self.kinds + ("mix",):
            raise ValueError(f"byzantine kind: one of {', '.join(self.kinds + ('mix',))}")

    @property
    def honest(self) -> list[str]:
        return [node_id for node_id in self.node_ids if node_id not in self.byzantine]

    def kind(self, node_id: str, height: int, round: int) -> str:
        if self.mode != "mix":
            return self.mode
        drawn = self._kinds.get((height, round))
        if drawn is None:
            if self.rng.random() < COORDINATED_CHANCE:
                common = self.rng.choice(self.kinds)
                drawn = {member: common for member in self.byzantine}
            else:
                drawn = {member: self.rng.choice(self.kinds) for member in self.byzantine}
            self._kinds[(height, round)] = drawn
        return drawn[node_id]

    def sides(self, height: int, round: int) -> dict[str, int]:
        """One split of the nodes per (height, round), shared by proposer and voters: the
        honest ones cut in two non-empty sides when there are two, the Byzantine ones anywhere."""
        split = self._sides.get((height, round))
        if split is None:
            honest = self.honest
            self.rng.shuffle(honest)
            cut = self.rng.randint(1, len(honest) - 1) if len(honest) > 1 else len(honest)
            split = {node_id: 0 for node_id in honest[:cut]}
            split.update({node_id: 1 for node_id in honest[cut:]})
            split.update({node_id: self.rng.randrange(2) for node_id in self.byzantine})
            self._sides[(height, round)] = split
        return split

    def witness(self) -> str | None:
        honest = self.honest
        if honest and self.rng.random() < WITNESS_CHANCE:
            return self.rng.choice(honest)
        return None

    def describe_sides(self, split: dict[str, int], witness: str | None) -> str:
        groups = [",".join(self.label(n) for n in self.node_ids if split.get(n) == side) for side in (0, 1)]
        return " | ".join(groups) + (f" (witness {self.label(witness)})" if witness else "")


class ByzantineValidator:
    """One Byzantine validator: its key, and the rewriting of what its engine sends.
    `node` is the running incarnation (the harness sets it): its engine, head, state and
    store are read to build plausible lies."""

    def __init__(self, adversary: Adversary, node_id: str, key: PrivateKey, max_block_transactions: int):
        self.adversary = adversary
        self.node_id = node_id
        self.key = key
        self.address = address_of(key.public_key)
        self.max_block_transactions = max_block_transactions
        self.node = None  # node.runtime.Node

    @property
    def label(self) -> str:
        return self.adversary.label(self.node_id)

    # ------------------------------------------------------------------ the send path
    def route(self, message: object, peers: list[str]) -> list[tuple[str, object]] | None:
        """What to send instead of `message` to each of `peers`, or None to send it as it is."""
        if not isinstance(message, EngineMessage):
            return None
        return [(peer, EngineMessage(payload)) for peer, payload in self.rewrite(message.payload, peers)]

    def rewrite(self, payload: bytes, peers: list[str]) -> list[tuple[str, bytes]]:
        """(peer, payload) pairs to send instead of `payload` to each of `peers`."""
        try:
            message = decode_message(payload, self.max_block_transactions)
        except DecodeError:
            return [(peer, payload) for peer in peers]  # not ours to judge: the wire check catches it
        if isinstance(message, (Status, Decision)):
            # Unsigned catch-up help: only a wholly silent validator withholds it.
            if self.adversary.mode == "silent":
                self.adversary.stats["withheld"] += 1
                return []
            return [(peer, payload) for peer in peers]
        if isinstance(message, Proposal):
            if message.signed.proposer != self.address:
                return [(peer, payload) for peer in peers]
            plan = self._proposal_plan(message, payload)
        else:
            if message.validator != self.address:
                return [(peer, payload) for peer in peers]
            plan = self._vote_plan(message, payload)
        return plan.route(peers) if plan is not None else []

    # ------------------------------------------------------------------ proposals
    def _proposal_plan(self, proposal: Proposal, payload: bytes) -> _Plan | None:
        adversary = self.adversary
        height, round = proposal.height, proposal.round
        key = ("proposal", self.node_id, height, round)
        if key in adversary.plans:
            return adversary.plans[key]
        kind = adversary.kind(self.node_id, height, round)
        plan: _Plan | None
        if kind == "silent":
            plan = None
            adversary.stats["silent proposals"] += 1
            adversary.trace(f"byzantine {self.label} withholds its proposal {height}/{round}")
        elif kind == "invalid":
            block, variant = self.invalid_block(proposal.block, adversary.rng.choice(INVALID_VARIANTS))
            adversary.invalid_blocks[block.hash] = variant
            adversary.invalid_at[(height, round)] = block.hash
            plan = _Plan((self._proposal_payload(proposal, block),))
            adversary.stats["invalid proposals"] += 1
            adversary.trace(f"byzantine {self.label} proposes invalid block {block.hash.hex()[:12]} "
                            f"({variant}) at {height}/{round}")
        else:
            other = self._other_block(proposal.block)
            split = adversary.sides(height, round)
            witness = adversary.witness()
            real_side = adversary.rng.randrange(2)
            payloads = [b"", b""]
            payloads[real_side] = payload
            payloads[1 - real_side] = self._proposal_payload(proposal, other)
            hashes = [proposal.block_hash, proposal.block_hash]
            hashes[1 - real_side] = other.hash
            adversary.pairs[(height, round)] = (hashes[0], hashes[1])
            plan = _Plan(tuple(payloads), split, witness)
            adversary.stats["equivocating proposals"] += 1
            adversary.trace(f"byzantine {self.label} proposes {hashes[0].hex()[:12]} / {hashes[1].hex()[:12]} "
                            f"at {height}/{round} to {adversary.describe_sides(split, witness)}")
        adversary.plans[key] = plan
        return plan

    def _proposal_payload(self, real: Proposal, block: Block) -> bytes:
        signed = SignedProposal.sign(self.key, self.adversary.chain_id, real.height, real.round, -1, block.hash)
        return encode_message(Proposal(signed, block, ()))

    def _seal(self, block: Block, transactions: list[Transaction] | None = None, **changes) -> Block:
        if transactions is not None:
            changes.update(tx_root=merkle_root([tx.id for tx in transactions]), tx_count=len(transactions))
        header = replace(block.header, seal=b"", **changes)
        sealed = header.with_seal(self.key.sign_digest(header.sealing_digest()))
        return Block(sealed, tuple(transactions) if transactions is not None else block.transactions)

    def _other_block(self, block: Block) -> Block:
        """A second valid block for the same height: fewer of the transactions (any prefix of
        a valid sequence applies), or, with none, another timestamp."""
        rng = self.adversary.rng
        if block.transactions:
            return self._seal(block, list(block.transactions[: rng.randrange(len(block.transactions))]))
        return self._seal(block, timestamp=block.header.timestamp + rng.randint(1, 50))

    def invalid_block(self, block: Block, variant: str) -> tuple[Block, str]:
        """`block` made invalid as `variant` says (one of INVALID_VARIANTS), sealed again; and
        the variant it became (a replay with nothing committed to replay overspends)."""
        rng = self.adversary.rng
        transactions = list(block.transactions)
        if variant == "replay":
            replayed = self._committed_transaction()
            if replayed is None:
                variant = "overspend"  # nothing committed yet to replay
            else:
                return self._seal(block, transactions + [replayed]), variant
        if variant == "bad_tx_root":
            return self._seal(block, tx_root=bytes(rng.getrandbits(8) for _ in range(32))), variant
        if variant == "bad_signature":
            if not transactions:
                transactions = [self._own_transfer(1)]
            index = rng.randrange(len(transactions))
            tx = transactions[index]
            signature = bytearray(tx.signature)
            signature[rng.randrange(32)] ^= 1 << rng.randrange(8)  # r only: s stays low
            transactions[index] = replace(tx, signature=bytes(signature))
            return self._seal(block, transactions), variant
        if variant != "overspend":
            raise ValueError(f"unknown invalid block variant {variant!r}")
        balance = self._own_account()[0]
        overspent = self._own_transfer(min(balance + 1 + rng.randrange(1000), MAX_AMOUNT))
        return self._seal(block, transactions + [overspent]), variant

    def _own_account(self) -> Account:
        node = self.node
        return node.state.get(self.address) if node is not None else EMPTY_ACCOUNT

    def _own_transfer(self, amount: int) -> Transaction:
        _, nonce, _ = self._own_account()
        recipient = bytes(self.adversary.rng.getrandbits(8) for _ in range(20))
        return new_transfer(self.key, self.adversary.chain_id, nonce, recipient, amount, 0)

    def _committed_transaction(self) -> Transaction | None:
        node = self.node
        if node is None:
            return None
        head = node.head.height
        for height in range(head, max(0, head - REPLAY_LOOKBACK), -1):
            block = node.store.block(height)
            if block is not None and block.transactions:
                return block.transactions[self.adversary.rng.randrange(len(block.transactions))]
        return None

    # ------------------------------------------------------------------ votes
    def _vote_plan(self, vote: Vote, payload: bytes) -> _Plan | None:
        adversary = self.adversary
        height, round = vote.height, vote.round
        key = ("vote", self.node_id, int(vote.kind), height, round)
        if key in adversary.plans:
            return adversary.plans[key]
        kind = adversary.kind(self.node_id, height, round)
        name = vote.kind.name.lower()
        plan: _Plan | None
        if kind == "silent":
            plan = None
            adversary.stats["silent votes"] += 1
            adversary.trace(f"byzantine {self.label} withholds its {name} {height}/{round}")
        elif kind == "invalid":
            target = adversary.invalid_at.get((height, round)) or self._invalid_proposal(round)
            if target is None or target == vote.block_hash:
                plan = _Plan((payload,))
            else:
                plan = _Plan((self._vote_payload(vote, target),))
                adversary.stats["votes for invalid blocks"] += 1
                adversary.trace(f"byzantine {self.label} {name}s invalid block {target.hex()[:12]} at {height}/{round}")
        else:
            split = adversary.sides(height, round)
            witness = adversary.witness()
            values = adversary.pairs.get((height, round)) or self._two_values(vote, round)
            payloads = tuple(payload if value == vote.block_hash else self._vote_payload(vote, value) for value in values)
            plan = _Plan(payloads, split, witness)
            adversary.stats["equivocating votes"] += 1
            shown = " / ".join(value.hex()[:12] if value is not None else "nil" for value in values)
            adversary.trace(f"byzantine {self.label} {name}s {shown} at {height}/{round} to "
                            f"{adversary.describe_sides(split, witness)}")
        adversary.plans[key] = plan
        return plan

    def _two_values(self, vote: Vote, round: int) -> tuple[bytes | None, bytes | None]:
        """The real value on one side, another on the other: nil for a block, and for nil the
        round's proposal (or a block nobody has)."""
        rng = self.adversary.rng
        real = vote.block_hash
        if real is not None:
            other = None
        else:
            proposal = self._engine_proposal(round)
            other = proposal.block_hash if proposal is not None else bytes(rng.getrandbits(8) for _ in range(32))
        return (real, other) if rng.randrange(2) == 0 else (other, real)

    def _vote_payload(self, real: Vote, value: bytes | None) -> bytes:
        return encode_message(Vote.sign(self.key, self.adversary.chain_id, real.kind, real.height, real.round, value))

    def _engine_proposal(self, round: int) -> Proposal | None:
        engine = getattr(self.node, "engine", None)
        proposals = getattr(engine, "proposals", None)
        return proposals.get(round) if proposals is not None else None

    def _invalid_proposal(self, round: int) -> bytes | None:
        """The round's proposal, if this node's (honest) engine found it invalid."""
        proposal = self._engine_proposal(round)
        if proposal is None:
            return None
        validity = getattr(self.node.engine, "validity", {})
        return proposal.block_hash if validity.get(proposal.block_hash) is False else None


class ByzantineNetwork(SimNetwork):
    """A Byzantine validator's network: what its node sends goes through its lies first
    (`validator.route`: a `ByzantineValidator` here, a `PosByzantineValidator` under proof of stake)."""

    def __init__(self, hub: SimHub, node_id: str, validator):
        super().__init__(hub, node_id)
        self.validator = validator

    def send(self, peer_id: str, message: object) -> None:
        self._route(message, [peer_id])

    def broadcast(self, message: object, exclude: frozenset[str] = frozenset()) -> None:
        self._route(message, [peer_id for peer_id in self._peer_ids() if peer_id not in exclude])

    def _route(self, message: object, peers: list[str]) -> None:
        routed = self.validator.route(message, peers)
        for peer, sent in routed if routed is not None else ((peer, message) for peer in peers):
            self.hub._transmit(self, peer, sent)

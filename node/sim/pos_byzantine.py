"""Byzantine proof-of-stake validators for the simulator: production nodes whose blocks and
attestations lie.

As under BFT (`node.sim.byzantine`), a Byzantine validator is an ordinary `node.runtime.Node`
with the proof-of-stake engine, unchanged and honest inside; its `ByzantineNetwork` hands
what the node sends to a `PosByzantineValidator`, which rewrites it before it reaches the
wire.  Every lie is signed with the validator's own key through the real message classes,
so honest nodes see exactly what a malicious validator could send them.  The kinds are
Gasper's three slashable offences and silence:

- `equivocate`: as proposer, its real block goes to one side of a split of the nodes and a
  second valid block for the same slot (a prefix of the transactions, or one attestation
  fewer), sealed by it, to the other side.
- `double_vote`: its attestation goes to one side, and to the other a second one for the
  same target epoch that names another target root.
- `surround_vote`: instead of its attestation it sends one whose source is the genesis
  checkpoint, so its span surrounds a vote it sent in an earlier epoch (once it has sent one
  with a later source).
- `silent`: none of its blocks or attestations leave the node (block sync still answers).
- `mix`: each slot each Byzantine validator draws one of the four (half of the time all of
  them draw the same one).

An offence counts as committed when every message of it reached an honest node over an
open link: `Adversary.offenders` names who committed one, and the harness demands that each
of them ends up slashed on the honest nodes' chain and that no honest validator ever is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from consensus.pos import beacon
from consensus.pos.beacon import Chain
from consensus.pos.messages import (
    Attestation,
    AttesterSlashing,
    Checkpoint,
    PosExtra,
    ProposerSlashing,
    decode_message,
    encode_message,
    slashable_votes,
)
from ledger.address import address_of
from ledger.block import Block
from ledger.codec import DecodeError
from ledger.crypto import PrivateKey
from ledger.merkle import merkle_root
from ledger.staking import stake_changes_of
from node.p2p.messages import EngineMessage, NewBlock
from node.sim.byzantine import Adversary, _Plan

KINDS = ("equivocate", "double_vote", "surround_vote", "silent")
MODES = KINDS + ("mix",)
OFFENCES = {"equivocate": "proposer_equivocation", "double_vote": "double_vote", "surround_vote": "surround_vote"}


@dataclass
class Offence:
    """One slashable thing a Byzantine validator did: which of its messages reached an honest node."""

    kind: str
    slot: int
    delivered: list[bool]

    @property
    def committed(self) -> bool:
        return all(self.delivered)


@dataclass
class _Routed:
    plan: _Plan | None
    offence: Offence | None = None
    # For a plan with sides: which payload index is which offence part (the rest: not one).
    parts: dict[int, int] = field(default_factory=dict)


def new_adversary(mode: str, rng, chain_id: str, node_ids: list[str], byzantine: list[str], label, trace) -> Adversary:
    return Adversary(mode, rng, chain_id, node_ids=node_ids, byzantine=byzantine, label=label, trace=trace,
                     kinds=KINDS, offences={node_id: [] for node_id in byzantine})


def offenders(adversary: Adversary) -> list[str]:
    """Node ids of the Byzantine validators that committed at least one slashable offence."""
    return [node_id for node_id, done in sorted(adversary.offences.items()) if any(o.committed for o in done)]


class PosByzantineValidator:
    """One Byzantine proof-of-stake validator.  `node` is its running incarnation (the harness
    sets it), whose engine's states give the parent state a second block is built on."""

    def __init__(self, adversary: Adversary, node_id: str, key: PrivateKey, index: int, hub,
                 max_block_transactions: int):
        self.adversary = adversary
        self.node_id = node_id
        self.key = key
        self.owner = address_of(key.public_key)
        self.index = index  # its place in the registry (genesis order)
        self.hub = hub
        self.max_block_transactions = max_block_transactions
        self.node = None  # node.runtime.Node
        self.routes: dict[tuple, _Routed] = {}
        self.delivered_votes: dict[tuple[Checkpoint, Checkpoint], bool] = {}  # its real FFG votes sent

    @property
    def chain(self) -> Chain:
        return self.node.engine.chain

    @property
    def label(self) -> str:
        return self.adversary.label(self.node_id)

    def route(self, message: object, peers: list[str]) -> list[tuple[str, object]] | None:
        if isinstance(message, EngineMessage):
            routed = self._attestation_route(message.payload)
            wrap = EngineMessage
        elif isinstance(message, NewBlock):
            routed = self._block_route(message.block)
            wrap = NewBlock
        else:
            return None
        if routed is None:
            return None
        if routed.plan is None:
            return []
        out = routed.plan.route(peers)
        self._note_delivery(routed, out)
        return [(peer, wrap(payload)) for peer, payload in out]

    def _note_delivery(self, routed: _Routed, out: list[tuple[str, bytes]]) -> None:
        reached = [payload for peer, payload in out
                   if peer not in self.adversary.byzantine and self.hub.link_open(self.node_id, peer)]
        if not reached:
            return
        payloads = routed.plan.payloads
        for index, part in routed.parts.items():
            if payloads[index] in reached and routed.offence is not None:
                routed.offence.delivered[part] = True

    def _kind(self, slot: int) -> str:
        return self.adversary.kind(self.node_id, slot, 0)

    def _offence(self, kind: str, slot: int, parts: int) -> Offence:
        offence = Offence(OFFENCES[kind], slot, [False] * parts)
        self.adversary.offences[self.node_id].append(offence)
        self.adversary.stats[offence.kind.replace("_", " ") + "s"] += 1
        return offence

    # ------------------------------------------------------------------ attestations
    def _attestation_route(self, payload: bytes) -> _Routed | None:
        try:
            att = decode_message(payload)
        except DecodeError:
            return None
        if not isinstance(att, Attestation) or att.validator != self.index:
            if self.adversary.mode == "silent":
                self.adversary.stats["withheld"] += 1
                return _Routed(None)  # wholly silent: not even evidence or relays
            return None
        key = ("attestation", att.slot, att.signature)
        routed = self.routes.get(key)
        if routed is None:
            routed = self.routes[key] = self._attestation_plan(att, payload)
        return routed

    def _attestation_plan(self, att: Attestation, payload: bytes) -> _Routed:
        adversary = self.adversary
        kind = self._kind(att.slot)
        if kind == "silent":
            adversary.stats["withheld attestations"] += 1
            return _Routed(None)
        if kind == "double_vote":
            other_root = att.head if att.head != att.target.root else bytes(adversary.rng.getrandbits(8) for _ in range(32))
            other = self._signed(replace(att, target=Checkpoint(att.target.epoch, other_root)))
            split, witness = adversary.sides(att.slot, 0), adversary.witness()
            real_side = adversary.rng.randrange(2)
            payloads = [b"", b""]
            payloads[real_side], payloads[1 - real_side] = payload, encode_message(other)
            adversary.trace(f"byzantine {self.label} double-votes target epoch {att.target.epoch} "
                            f"({att.target.root.hex()[:12]} / {other_root.hex()[:12]}) at slot {att.slot} to "
                            f"{adversary.describe_sides(split, witness)}")
            self._real_vote(att, delivered=False)
            offence = self._offence(kind, att.slot, 2)
            return _Routed(_Plan(tuple(payloads), split, witness), offence, {0: 0, 1: 1})
        if kind == "surround_vote":
            surrounded = next((vote for vote, delivered in self.delivered_votes.items()
                               if delivered and vote[0].epoch > 0 and vote[1].epoch < att.target.epoch), None)
            if surrounded is not None:
                genesis = Checkpoint(0, self.chain_genesis_hash())
                other = self._signed(replace(att, source=genesis))
                adversary.trace(f"byzantine {self.label} votes {genesis.epoch}->{att.target.epoch} at slot {att.slot}, "
                                f"surrounding its {surrounded[0].epoch}->{surrounded[1].epoch}")
                offence = self._offence(kind, att.slot, 1)
                return _Routed(_Plan((encode_message(other),)), offence, {0: 0})
            adversary.stats["surround votes not yet possible"] += 1
        routed = _Routed(_Plan((payload,)))
        self._real_vote(att, delivered=True)
        return routed

    def _real_vote(self, att: Attestation, delivered: bool) -> None:
        # Counted as delivered on sending to everybody; a vote sent to one side only is no
        # basis for a surround (it may have reached nobody honest).
        self.delivered_votes.setdefault(att.vote, delivered)

    def _signed(self, att: Attestation) -> Attestation:
        return replace(att, signature=b"").signed(self.key, self.chain.chain_id)

    def chain_genesis_hash(self) -> bytes:
        return self.node.engine.genesis_header.hash

    # ------------------------------------------------------------------ blocks
    def _block_route(self, encoded: bytes) -> _Routed | None:
        try:
            block = Block.decode(encoded, self.max_block_transactions)
        except DecodeError:
            return None
        if block.header.proposer != self.owner:
            if self.adversary.mode == "silent":
                return _Routed(None)
            return None  # relaying another's block: as any node does
        slot = self.chain.slot_of(block.header.timestamp)
        if slot is None:
            return None
        key = ("block", block.hash)
        routed = self.routes.get(key)
        if routed is None:
            routed = self.routes[key] = self._block_plan(block, slot, encoded)
        return routed

    def _block_plan(self, block: Block, slot: int, encoded: bytes) -> _Routed:
        adversary = self.adversary
        kind = self._kind(slot)
        if kind == "silent":
            adversary.stats["withheld blocks"] += 1
            adversary.trace(f"byzantine {self.label} withholds its block for slot {slot}")
            return _Routed(None)
        if kind != "equivocate":
            return _Routed(_Plan((encoded,)))
        other = self._other_block(block, slot)
        if other is None:
            adversary.stats["equivocations not possible"] += 1
            return _Routed(_Plan((encoded,)))
        split, witness = adversary.sides(slot, 0), adversary.witness()
        real_side = adversary.rng.randrange(2)
        payloads = [b"", b""]
        payloads[real_side], payloads[1 - real_side] = encoded, other.encode()
        adversary.trace(f"byzantine {self.label} proposes {block.hash.hex()[:12]} and {other.hash.hex()[:12]} "
                        f"for slot {slot} to {adversary.describe_sides(split, witness)}")
        offence = self._offence(kind, slot, 2)
        return _Routed(_Plan(tuple(payloads), split, witness), offence, {0: 0, 1: 1})

    def _other_block(self, block: Block, slot: int) -> Block | None:
        """A second valid block for the slot: a prefix of the transactions (any prefix of a
        valid sequence applies), or with none, one attestation fewer; None when it has neither
        or the parent's state is not at hand."""
        engine = self.node.engine if self.node is not None else None
        parent = engine._states.get(block.header.parent) if engine is not None else None
        if parent is None:
            return None
        extra = PosExtra.decode(block.header.extra)
        transactions = list(block.transactions)
        if transactions:
            transactions = transactions[: self.adversary.rng.randrange(len(transactions))]
            extra = replace(extra, stake_changes=stake_changes_of(transactions))
        elif extra.attestations:
            extra = replace(extra, attestations=extra.attestations[:-1])
        else:
            return None
        prepared = beacon.prepare(parent, slot, self.chain)
        _, ops = beacon.apply_body(prepared, slot, extra, self.owner, self.chain)
        extra = replace(extra, ops=tuple(ops))
        header = replace(block.header, tx_root=merkle_root([tx.id for tx in transactions]), tx_count=len(transactions),
                         extra=extra.encode(), seal=b"")
        header = replace(header, seal=beacon.sign_block(self.key, header, slot, self.chain.chain_id))
        beacon.apply_block(parent, header, self.chain)  # an invalid second block would be no equivocation
        return Block(header, tuple(transactions))


def evidence_problem(data: bytes, public_key: bytes, chain_id: str) -> str | None:
    """Why proof-of-stake evidence `data` does not prove that the holder of `public_key`
    signed a slashable pair, or None."""
    try:
        item = decode_message(data)
    except DecodeError as exc:
        return f"undecodable: {exc}"
    if isinstance(item, ProposerSlashing):
        first, second = item.first, item.second
        if first.slot != second.slot or first.digest == second.digest:
            return "not two different blocks for one slot"
        if not (first.valid_for(public_key, chain_id) and second.valid_for(public_key, chain_id)):
            return "a block signature is not the accused's"
        return None
    if isinstance(item, AttesterSlashing):
        if slashable_votes(item.first, item.second) is None:
            return "the two attestations are not slashable"
        if not (item.first.signature_valid(public_key, chain_id) and item.second.signature_valid(public_key, chain_id)):
            return "an attestation signature is not the accused's"
        return None
    return "not a slashing"

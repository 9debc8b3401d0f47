"""What the simulation checks on the nodes it runs (node/sim/harness.py), mixed into
`Simulation`: after every loop step, on each node whose head or finality moved, that its
head descends from genesis through blocks its store holds, no final block is ever undone,
total supply follows genesis, no two nodes finalize different blocks at a height (and a
transaction is final at one height), certificates prove what they certify, and evidence
names only Byzantine validators; at the end, that every node stored what it committed,
the honest nodes agree on every account, and every submitted transfer is final.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import TYPE_CHECKING

from consensus.bft_evidence import Evidence, InvalidEvidence, verify_evidence
from ledger.address import address_of
from ledger.block import Block
from ledger.crypto import PrivateKey
from ledger.engine_status import Finality
from ledger.genesis import Genesis
from ledger.staking import money_moved
from ledger.transaction import Transaction
from node.runtime import Node
from node.sim import pos_byzantine
from node.sim.byzantine import Adversary
from node.sim.network import SimHub
from node.sim.raft_checks import RaftChecks

if TYPE_CHECKING:
    from node.sim.config import SimConfig, Trace
    from node.sim.harness import Slot


class InvariantChecks:
    """Mixed into Simulation: the invariants, over the state it keeps."""

    config: SimConfig
    genesis: Genesis
    slots: list[Slot]
    senders: tuple[PrivateKey, ...]
    hub: SimHub
    trace: Trace
    adversary: Adversary | None
    raft: RaftChecks | None
    outstanding: OrderedDict[bytes, tuple[Transaction, float]]
    submitted: int
    submit_results: Counter
    final_blocks: dict[int, tuple[bytes, str]]
    final_txs: dict[bytes, int]
    evidence_against: Counter
    reorgs: int
    reorg_depths: list[int]

    def _fail(self, reason: str) -> None: ...

    def _honest(self) -> list[Slot]: ...

    def _follow_head(self, slot: Slot, node: Node) -> None:
        """Read the blocks that moved the node's head from its store (one query a block)."""
        store = slot.store
        head = node.head
        chain = slot.chain
        new_blocks: list[Block] = []
        if head.height < len(chain) and chain[head.height] == head.hash:
            common = head.height  # blocks were undone back to one we had seen
        else:
            height = head.height
            while True:
                block = store.block(height)
                if block is None:
                    self._fail(f"{slot.label}'s store has no block {height} below its head {head.height}")
                new_blocks.append(block)
                if height - 1 < len(chain) and block.header.parent == chain[height - 1]:
                    common = height - 1
                    break
                if height == 1:
                    self._fail(f"{slot.label}'s chain does not descend from genesis")
                height -= 1
            new_blocks.reverse()
            if new_blocks[-1].hash != head.hash:
                self._fail(f"{slot.label}'s head {head.height} {head.hash.hex()[:12]} is not the block its store holds")
        if common < len(chain) - 1:
            if common < slot.final_height:
                self._fail(f"{slot.label} reverted final block {slot.final_height} "
                           f"{chain[slot.final_height].hex()[:12]} (back to {common})")
            self.reorgs += 1
            self.reorg_depths.append(len(chain) - 1 - common)
            self.trace(f"{slot.label} reorg: {len(chain) - 1 - common} blocks undone from {len(chain) - 1}")
            for height in range(common + 1, len(chain)):
                slot.block_txs.pop(height, None)
            del chain[common + 1 :]
            del slot.moved[common + 1 :]
        for block in new_blocks:
            if self.adversary is not None and block.hash in self.adversary.invalid_blocks:
                self._fail(f"{slot.label} committed invalid block {block.height} {block.hash.hex()[:12]} "
                           f"({self.adversary.invalid_blocks[block.hash]}) from a Byzantine proposer")
            chain.append(block.hash)
            issued, burnt = money_moved(node.engine.stake_ops(block.header.extra))
            so_far = slot.moved[-1]
            slot.moved.append((so_far[0] + issued, so_far[1] + burnt))
            slot.block_txs[block.height] = tuple(tx.id for tx in block.transactions)
            self.trace(f"{slot.label} commit {block.height} {block.hash.hex()[:12]} txs={len(block.transactions)}")
        slot.seen_head = head.hash
        if slot.certified_height > len(chain) - 1:
            slot.certified_height = len(chain) - 1  # cannot happen under BFT (no reorgs), but stay exact
        if node.engine.finality is Finality.CERTIFICATE:
            self._check_certificates(slot, node)
        supply = node.state.total_supply()
        assert len(slot.moved) == len(chain)
        expected = self.genesis.expected_supply(head.height, *slot.moved[-1])
        if supply != expected:
            self._fail(f"{slot.label}'s total supply is {supply} at height {head.height}, genesis says {expected}")

    def _follow_evidence(self, slot: Slot, node: Node) -> None:
        """Evidence an honest engine holds must be valid and name a Byzantine validator: an
        honest one never signs two things at one height, round and step.  The engine's status
        is read when it may have changed: the node reported evidence, or its head moved (a
        block can bring evidence another validator caught)."""
        marker = (len(node.evidence), node.evidence[-1] if node.evidence else None, node.head.hash)
        if marker == slot.evidence_seen:
            return
        slot.evidence_seen = marker
        for record in node.engine.status().evidence:
            key = (record.validator, record.height, record.round, record.kind)
            if key in slot.evidence_keys:
                continue
            slot.evidence_keys.add(key)
            if self.config.consensus == "pos":
                self._check_pos_evidence(slot, record)
            else:
                self._check_evidence(slot, node, Evidence.decode(record.data))

    def _check_evidence(self, slot: Slot, node: Node, evidence: Evidence) -> None:
        try:
            verify_evidence(evidence, node.engine.validators, self.genesis.chain_id)
        except InvalidEvidence as exc:
            self._fail(f"{slot.label} holds invalid evidence against {self.hub.label(evidence.validator.hex())}: {exc}")
        accused = self.hub.label(evidence.validator.hex())
        byzantine = self.adversary.byzantine if self.adversary is not None else []
        self.trace(f"{slot.label} evidence against {accused}: {evidence.kind.name.lower()} "
                   f"{evidence.height}/{evidence.round}")
        if evidence.validator.hex() not in byzantine:
            self._fail(f"{slot.label} holds evidence against honest validator {accused} "
                       f"({evidence.kind.name.lower()} at {evidence.height}/{evidence.round})")
        self.evidence_against[accused] += 1

    def _check_pos_evidence(self, slot: Slot, record) -> None:
        """Proof-of-stake evidence an honest node holds names a Byzantine validator, and is two
        messages that validator signed (an honest one never signs a slashable pair)."""
        accused_id = record.validator.hex()
        accused = self.hub.label(accused_id)
        self.trace(f"{slot.label} evidence against {accused}: {record.kind} at slot {record.height}")
        if accused_id not in self.adversary.byzantine:
            self._fail(f"{slot.label} holds evidence against honest validator {accused} ({record.kind} at slot "
                       f"{record.height})")
        key = next(s.key for s in self.slots if s.node_id == accused_id)
        problem = pos_byzantine.evidence_problem(record.data, key.public_key, self.genesis.chain_id)
        if problem:
            self._fail(f"{slot.label} holds evidence against {accused} that proves nothing: {problem}")
        self.evidence_against[accused] += 1

    def _unslashed_offenders(self, slot: Slot) -> list[str]:
        """Byzantine validators that committed a slashable offence but are not slashed on this
        node's head (proof of stake)."""
        if self.adversary is None or self.config.consensus != "pos":
            return []
        slashed = {v.address.hex() for v in slot.node.engine.status().validators if v.jailed}
        return [self.hub.label(node_id) for node_id in pos_byzantine.offenders(self.adversary) if node_id not in slashed]

    def _check_certificates(self, slot: Slot, node: Node, head_too: bool = False) -> None:
        """Every block the node committed stores a commit certificate that proves it.  A block
        imported from a peer gets its certificate from the next block's header, so the head may
        have none yet (unless `head_too`): it is checked once the next block arrives."""
        head_height = len(slot.chain) - 1
        for height in range(slot.certified_height + 1, head_height + 1):
            certificate = slot.store.certificate(height)
            if not certificate and height == head_height and not head_too:
                return
            header = slot.store.block_header(height)
            if header is None or header.hash != slot.chain[height]:
                self._fail(f"{slot.label}'s store has no header for committed block {height}")
            try:
                node.engine.verify_commit(header, certificate)
            except ValueError as exc:
                self._fail(f"{slot.label}'s block {height} {header.hash.hex()[:12]} has no valid commit "
                           f"certificate: {exc}")
            slot.certified_height = height

    def _follow_finality(self, slot: Slot, node: Node) -> None:
        finalized = node.finalized_height
        if finalized < slot.final_height:
            self._fail(f"{slot.label}'s finalized height went back from {slot.final_height} to {finalized}")
        if finalized > len(slot.chain) - 1:
            self._fail(f"{slot.label} says height {finalized} is final, but its head is {len(slot.chain) - 1}")
        for height in range(slot.final_height + 1, finalized + 1):
            block_hash = slot.chain[height]
            earlier = self.final_blocks.get(height)
            if earlier is None:
                self.final_blocks[height] = (block_hash, slot.label)
            elif earlier[0] != block_hash:
                self._fail(f"two nodes finalized different blocks at height {height}: {earlier[1]} has "
                           f"{earlier[0].hex()[:12]}, {slot.label} has {block_hash.hex()[:12]}")
            for tx_id in slot.block_txs.get(height, ()):
                first = self.final_txs.setdefault(tx_id, height)
                if first != height:
                    self._fail(f"transaction {tx_id.hex()[:12]} final at height {first} and at {height} ({slot.label})")
                self.outstanding.pop(tx_id, None)
        slot.final_height = finalized
        self.trace(f"{slot.label} final {finalized}")

    def _check_stored_chain(self, slot: Slot) -> None:
        """The node's store still holds every block it committed (a crash loses none) and every
        transaction final on it, at the height where it became final."""
        store = slot.store
        stored = [header.hash for header in reversed(store.headers(len(slot.chain), len(slot.chain)))]
        if stored != slot.chain:
            lost = next((h for h, (a, b) in enumerate(zip(stored, slot.chain)) if a != b), min(len(stored), len(slot.chain)))
            self._fail(f"{slot.label}'s store lost committed blocks from height {lost} "
                       f"(holds {len(stored) - 1}, had committed {len(slot.chain) - 1})")
        heights: dict[bytes, int] = {}
        for key in self.senders:  # every workload transfer is sent by one of them
            for record in store.account_transactions(address_of(key.public_key), None, 1 << 30):
                heights[record.tx.id] = record.height
        for tx_id, height in self.final_txs.items():
            if height <= slot.final_height and heights.get(tx_id) != height:
                where = "missing" if tx_id not in heights else f"at height {heights[tx_id]}"
                self._fail(f"final transaction {tx_id.hex()[:12]} (height {height}) is {where} on {slot.label}")

    def _not_converged(self) -> str | None:
        """None once every node runs, the honest ones on one head, with every transfer final; else what is missing."""
        down = [slot.label for slot in self.slots if not slot.running]  # all booted, so all can stop
        if down:
            return f"not running: {', '.join(down)}"
        honest = self._honest()  # what a Byzantine node holds is no concern of liveness
        unslashed = self._unslashed_offenders(honest[0])
        if unslashed:
            return f"offenders not slashed on {honest[0].label}'s head: {', '.join(unslashed)}"
        heads = {slot.node.head.hash for slot in honest}
        if len(heads) > 1:
            return "heads differ: " + ", ".join(self._describe(slot) for slot in honest)
        if self.outstanding:
            tx, _ = next(iter(self.outstanding.values()))
            return (f"{len(self.outstanding)} transfers not final (first: {tx.id.hex()[:12]}, "
                    f"nonce {tx.nonce}); submissions: {dict(sorted(self.submit_results.items()))}")
        return None

    def _describe(self, slot: Slot) -> str:
        node = slot.node
        assert node is not None
        info = node.node_info()
        status = node.consensus_status()
        # Round-based engines (BFT): where consensus is, which tells a stall in one round from
        # a height left behind.
        position = (f", consensus {status.height}/{status.round}/{status.step}"
                    if status.round is not None and status.step is not None else "")
        return (f"{slot.label} at {info.height}/{info.head_hash.hex()[:8]} ({info.peers} peers"
                f"{', syncing' if info.syncing else ''}, mempool {info.mempool_size}{position})")

    def _check_end_state(self) -> None:
        honest = self._honest()
        reference = honest[0]
        for slot in honest:
            self._check_stored_chain(slot)
            if slot.node.engine.finality is Finality.CERTIFICATE:
                # Every node validates: each stored its own certificate for the common head.
                self._check_certificates(slot, slot.node, head_too=True)
            if slot.node.state.accounts != reference.node.state.accounts:
                self._fail(f"{slot.label}'s accounts differ from {reference.label}'s on the same head")
            if self.config.consensus == "pos":
                byzantine = self.adversary.byzantine if self.adversary is not None else []
                wronged = [self.hub.label(v.address.hex()) for v in slot.node.engine.status().validators
                           if v.jailed and v.address.hex() not in byzantine]
                if wronged:
                    self._fail(f"honest validators slashed on {slot.label}'s chain: {', '.join(wronged)}")
                unslashed = self._unslashed_offenders(slot)
                if unslashed:
                    self._fail(f"offenders not slashed on {slot.label}'s chain: {', '.join(unslashed)}")
        if self.raft is not None:
            self.raft.at_end({slot.label: slot.node.engine for slot in honest})
        missing = self.submitted - len(self.final_txs)
        if missing:
            self._fail(f"{missing} of {self.submitted} submitted transfers are not final")

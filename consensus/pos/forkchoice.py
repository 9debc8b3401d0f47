"""The block tree and LMD-GHOST (Gasper's HLMD-GHOST, without the proposer boost).

The tree holds every block known since the finalized checkpoint with the consensus state
after it.  Each validator's latest message (the head of its newest attestation) weighs for
that block and all its ancestors; from the justified checkpoint the fork choice walks down,
at each fork taking the child with the most weight behind it, ties to the greater hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.block import BlockHeader

from consensus.pos.beacon import BeaconState
from consensus.pos.messages import Checkpoint


@dataclass
class Node:
    header: BlockHeader
    state: BeaconState
    children: list[bytes] = field(default_factory=list)


class BlockTree:
    def __init__(self, anchor: BlockHeader, state: BeaconState):
        self.nodes: dict[bytes, Node] = {anchor.hash: Node(anchor, state)}
        self.anchor = anchor.hash
        self.justified = state.justified
        self.finalized = state.finalized
        self.latest: dict[int, tuple[int, bytes]] = {}  # validator -> (slot, head root) of its newest vote

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self.nodes

    def state(self, block_hash: bytes) -> BeaconState | None:
        node = self.nodes.get(block_hash)
        return None if node is None else node.state

    def header(self, block_hash: bytes) -> BlockHeader | None:
        node = self.nodes.get(block_hash)
        return None if node is None else node.header

    def add(self, header: BlockHeader, state: BeaconState) -> bool:
        """Add a block whose parent is in the tree; False if it is not (or known already)."""
        block_hash = header.hash
        parent = self.nodes.get(header.parent)
        if block_hash in self.nodes or parent is None:
            return False
        self.nodes[block_hash] = Node(header, state)
        parent.children.append(block_hash)
        # The store's checkpoints are the best any known block's state reached.
        if state.justified.epoch > self.justified.epoch and state.justified.root in self.nodes:
            self.justified = state.justified
        if state.finalized.epoch > self.finalized.epoch and state.finalized.root in self.nodes:
            self.finalized = state.finalized
            self.prune()
        return True

    def vote(self, validator: int, slot: int, root: bytes) -> bool:
        """A validator's attestation: it replaces an older one (LMD: latest message driven)."""
        previous = self.latest.get(validator)
        if previous is not None and previous[0] >= slot:
            return False
        self.latest[validator] = (slot, root)
        return True

    def is_ancestor(self, ancestor: bytes, block_hash: bytes) -> bool:
        node = self.nodes.get(block_hash)
        target = self.nodes.get(ancestor)
        if node is None or target is None:
            return False
        while node.header.height > target.header.height:
            node = self.nodes.get(node.header.parent)
            if node is None:
                return False
        return node.header.hash == ancestor

    def head(self) -> bytes:
        """LMD-GHOST from the justified checkpoint."""
        start = self.justified.root if self.justified.root in self.nodes else self.anchor
        weights = self._weights(start)
        current = start
        while True:
            children = self.nodes[current].children
            if not children:
                return current
            current = max(children, key=lambda child: (weights.get(child, 0), child))

    def _weights(self, start: bytes) -> dict[bytes, int]:
        """Stake behind each block below `start`: the justified state's epoch weights of the
        validators whose latest vote is that block or a descendant."""
        stake = self.nodes[start].state.epoch_stake
        floor = self.nodes[start].header.height
        weights: dict[bytes, int] = {}
        for validator, (_, root) in self.latest.items():
            weight = stake[validator] if validator < len(stake) else 0
            if not weight:
                continue
            node = self.nodes.get(root)
            while node is not None and node.header.height > floor:
                block_hash = node.header.hash
                weights[block_hash] = weights.get(block_hash, 0) + weight
                node = self.nodes.get(node.header.parent)
        return weights

    def prune(self) -> None:
        """Forget what the finalized checkpoint excludes: blocks not descending from it."""
        root = self.finalized.root
        if root not in self.nodes or root == self.anchor:
            return
        keep: dict[bytes, Node] = {}
        stack = [root]
        while stack:
            block_hash = stack.pop()
            node = self.nodes[block_hash]
            keep[block_hash] = node
            stack.extend(node.children)
        self.nodes = keep
        self.anchor = root
        if self.justified.root not in self.nodes:
            self.justified = Checkpoint(self.finalized.epoch, root)

    def ancestor_at_or_below(self, block_hash: bytes, height: int) -> bytes | None:
        node = self.nodes.get(block_hash)
        while node is not None and node.header.height > height:
            node = self.nodes.get(node.header.parent)
        return None if node is None else node.header.hash

"""Blocks off the main chain: kept until their branch outweighs ours (a reorg) or falls too far behind.

The main chain lives in the store; side blocks live here, in memory and bounded, keyed
by hash.  `branch` walks a side block back to the main chain and returns the fork
point and the blocks after it, oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ledger.block import Block, BlockHeader


class SideBlocks:
    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: Block) -> None:
        self._blocks[block.hash] = block
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def discard(self, block_hash: bytes) -> None:
        self._blocks.pop(block_hash, None)

    def prune(self, below_height: int) -> None:
        for block_hash in [h for h, b in self._blocks.items() if b.height < below_height]:
            del self._blocks[block_hash]

    def branch(
        self, tip: Block, main_header: Callable[[bytes], BlockHeader | None]
    ) -> tuple[BlockHeader, list[Block]] | None:
        """(fork point on the main chain, side blocks after it oldest first), or None when a
        parent is missing (the caller fetches it from the peer)."""
        blocks = [tip]
        while True:
            parent_hash = blocks[-1].header.parent
            fork_point = main_header(parent_hash)
            if fork_point is not None:
                blocks.reverse()
                return fork_point, blocks
            parent = self._blocks.get(parent_hash)
            if parent is None:
                return None
            blocks.append(parent)

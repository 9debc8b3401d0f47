"""Blocks off the main chain: kept until their branch outweighs ours (a reorg) or falls too far behind.

The main chain lives in the store; side blocks live here, in memory and bounded, keyed
by hash.  The bound is both a count and a byte budget: a block off the main chain may be
an orphan nobody has checked yet (its parent is unknown), and a peer could otherwise
park thousands of multi-megabyte blocks here.  The oldest go first.  `branch` walks a side block back to the main chain and returns the fork
point and the blocks after it, oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ledger.block import Block, BlockHeader


class SideBlocks:
    def __init__(self, capacity: int = 4096, max_bytes: int = 64 * 1024 * 1024):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0  # encoded size of the blocks held
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()
        self._sizes: dict[bytes, int] = {}
        self._children: dict[bytes, set[bytes]] = {}  # parent hash -> hashes of the side blocks on it

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def add(self, block: Block) -> None:
        if block.hash in self._blocks:
            return
        size = len(block.encode())
        self._blocks[block.hash] = block
        self._sizes[block.hash] = size
        self._children.setdefault(block.header.parent, set()).add(block.hash)
        self.bytes += size
        while len(self._blocks) > self.capacity or (self.bytes > self.max_bytes and len(self._blocks) > 1):
            self.discard(next(iter(self._blocks)))

    def discard(self, block_hash: bytes) -> None:
        block = self._blocks.pop(block_hash, None)
        if block is not None:
            self.bytes -= self._sizes.pop(block_hash)
            siblings = self._children.get(block.header.parent)
            if siblings is not None:
                siblings.discard(block_hash)
                if not siblings:
                    del self._children[block.header.parent]

    def get(self, block_hash: bytes) -> Block | None:
        return self._blocks.get(block_hash)

    def children(self, parent_hash: bytes) -> list[Block]:
        """Side blocks whose parent is `parent_hash`, oldest first (orphans that can now apply)."""
        hashes = self._children.get(parent_hash, ())
        return [block for block_hash, block in self._blocks.items() if block_hash in hashes] if hashes else []

    def prune(self, below_height: int) -> None:
        for block_hash in [h for h, b in self._blocks.items() if b.height < below_height]:
            self.discard(block_hash)

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

"""Raft's log, which is the chain.

Index i of the log is height i.  Entries up to the node's head are committed: they are the
blocks its store holds, and only their hashes and terms (for the last `WINDOW`) and whole
blocks (for the last `KEEP_BLOCKS`, to send to a follower a little behind) are kept here.
Entries after the head are not committed yet: whole blocks the engine holds and persists
(`Persist` before it answers for them), which a leader of a later term may overwrite.  A
committed entry is never removed; a follower further behind than the kept blocks catches up
through the runtime's block sync, which serves only what stores hold, so only what is
committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ledger import crypto
from ledger.block import Block, BlockHeader
from ledger.codec import DecodeError, Reader, Writer

from consensus.raft.membership import term_of_extra

SAVED_VERSION = 2  # 1: the vote was an index into the genesis members
MAX_SAVED_ENTRIES = 1024
WINDOW = 1024  # committed (hash, term) pairs kept
KEEP_BLOCKS = 64  # committed blocks kept whole


def term_of(header: BlockHeader) -> int:
    if header.height == 0:
        return 0
    try:
        return term_of_extra(header.extra)
    except DecodeError:
        return 0  # never a checked Raft block: verify_seal refuses those


class RaftLog:
    def __init__(self, head: BlockHeader, recent: Iterable[BlockHeader] = ()):
        self.head = head  # the last committed entry: the store's head
        self._committed: dict[int, tuple[bytes, int]] = {}  # height -> (hash, term)
        self._blocks: dict[int, Block] = {}  # committed blocks kept whole
        for header in recent:
            if header.height > head.height - WINDOW:
                self._committed[header.height] = (header.hash, term_of(header))
        self._committed[head.height] = (head.hash, term_of(head))
        self.entries: list[Block] = []  # uncommitted: heights head + 1, head + 2, ...

    # ------------------------------------------------------------------ reading
    @property
    def last_index(self) -> int:
        return self.head.height + len(self.entries)

    @property
    def last_term(self) -> int:
        return term_of(self.entries[-1].header) if self.entries else term_of(self.head)

    @property
    def last_hash(self) -> bytes:
        return self.entries[-1].hash if self.entries else self.head.hash

    def last_header(self) -> BlockHeader:
        return self.entries[-1].header if self.entries else self.head

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when it is beyond the log or too old to know."""
        if index > self.head.height:
            offset = index - self.head.height - 1
            return term_of(self.entries[offset].header) if offset < len(self.entries) else None
        known = self._committed.get(index)
        return known[1] if known is not None else None

    def hash_at(self, index: int) -> bytes | None:
        if index > self.head.height:
            offset = index - self.head.height - 1
            return self.entries[offset].hash if offset < len(self.entries) else None
        known = self._committed.get(index)
        return known[0] if known is not None else None

    def block_at(self, index: int) -> Block | None:
        if index > self.head.height:
            offset = index - self.head.height - 1
            return self.entries[offset] if offset < len(self.entries) else None
        return self._blocks.get(index)

    def up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log is at least as up to date as this one (section 5.4.1)."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    # ------------------------------------------------------------------ changing
    def append(self, block: Block) -> None:
        assert block.header.height == self.last_index + 1 and block.header.parent == self.last_hash, \
            "an entry must extend the last one (log matching)"
        self.entries.append(block)

    def truncate_from(self, index: int) -> None:
        """Remove the entries from `index` on; only uncommitted ones may go."""
        assert index > self.head.height, "a committed entry is never removed"
        del self.entries[index - self.head.height - 1:]

    def committed(self, header: BlockHeader, recent: Sequence[BlockHeader] = ()) -> None:
        """The store's head moved to `header` (a block this engine asked to commit, or one
        the runtime imported): entries up to it are committed now."""
        for item in recent:
            if item.height not in self._committed and item.height > header.height - WINDOW:
                self._committed[item.height] = (item.hash, term_of(item))
        before = self.head.height
        moved = header.height - before
        if 0 < moved <= len(self.entries) and self.entries[moved - 1].hash == header.hash:
            for block in self.entries[:moved]:
                self._blocks[block.header.height] = block
            del self.entries[:moved]
        else:
            # The runtime imported past our entries, or other blocks than ours: what we held
            # beyond the head is not on the committed chain, or no longer needed.
            self.entries = []
        self.head = header
        self._committed[header.height] = (header.hash, term_of(header))
        # Every height kept was above the old head less the window (recent headers end at the
        # head): only those the head's move pushed out go, not a scan of all 1,024 a block.
        for height in range(max(0, before - WINDOW + 1), header.height - WINDOW + 1):
            self._committed.pop(height, None)
        for height in range(max(0, before - KEEP_BLOCKS + 1), header.height - KEEP_BLOCKS + 1):
            self._blocks.pop(height, None)


def encode_saved(term: int, voted_for: bytes | None, entries: list[Block]) -> bytes:
    """What a node persists before it answers: its term, its vote and its uncommitted entries."""
    writer = Writer().u8(SAVED_VERSION).u64(term).var_bytes(voted_for or b"").u32(len(entries))
    for block in entries:
        writer.var_bytes(block.encode())
    return writer.bytes()


def decode_saved(data: bytes, max_block_transactions: int,
                  genesis_members: tuple[bytes, ...]) -> tuple[int, bytes | None, list[Block]]:
    reader = Reader(data)
    version = reader.u8("saved.version")
    if version not in (1, SAVED_VERSION):
        raise DecodeError("saved.version", "unknown Raft saved state")
    term = reader.u64("saved.term")
    if version == 1:
        index = reader.u32("saved.voted_for")
        if index > len(genesis_members):
            raise DecodeError("saved.voted_for", "names no genesis member")
        voted = genesis_members[index - 1] if index else None
    else:
        voted = reader.var_bytes("saved.voted_for", crypto.PUBLIC_KEY_SIZE) or None
        if voted is not None and len(voted) != crypto.PUBLIC_KEY_SIZE:
            raise DecodeError("saved.voted_for", "a public key or nothing")
    count = reader.u32("saved.entries")
    if count > MAX_SAVED_ENTRIES:
        raise DecodeError("saved.entries", f"{count} entries is more than {MAX_SAVED_ENTRIES}")
    entries = [Block.decode(reader.var_bytes("saved.entry", 1 << 26), max_block_transactions) for _ in range(count)]
    reader.finish()
    return term, voted, entries

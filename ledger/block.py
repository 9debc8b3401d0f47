"""Block headers and blocks: fields, encoding, hash and structural checks.

The header's `extra` carries engine data covered by the seal (a PoW target, a
commit certificate for the parent under BFT); `seal` carries what proves the
block (a proposer signature, a PoW nonce) and is the only field outside the
signed/sealed part.  The block hash covers the whole header, seal included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger import crypto
from ledger.address import ADDRESS_SIZE
from ledger.codec import DecodeError, Reader, Writer
from ledger.merkle import merkle_root
from ledger.transaction import MAX_CHAIN_ID, MAX_TX_SIZE, Transaction

BLOCK_VERSION = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)
MAX_EXTRA = 64 * 1024
MAX_SEAL = 1024
MAX_HEADER_SIZE = 4 + 4 + MAX_CHAIN_ID + 8 + 32 + 8 + 32 + 4 + 20 + 4 + MAX_EXTRA + 4 + MAX_SEAL


class InvalidBlock(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class InvalidSeal(ValueError):
    """A header its engine does not accept (seal, proposer, certificate, target).  Raised by
    the engines' pure checks; it lives here so the block-validity rule (ledger/validate.py)
    can name it without importing an engine."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: str
    height: int
    parent: bytes
    timestamp: int  # milliseconds since the Unix epoch
    tx_root: bytes
    tx_count: int
    proposer: bytes  # account id that receives the fees (and any reward)
    extra: bytes = b""
    seal: bytes = b""
    version: int = BLOCK_VERSION
    # Not an init field, so dataclasses.replace() never carries a stale hash into a variant.
    _hash: bytes = field(default=b"", init=False, compare=False, repr=False)

    def unsealed_bytes(self) -> bytes:
        return (
            Writer()
            .u32(self.version)
            .text(self.chain_id)
            .u64(self.height)
            .fixed(self.parent, HASH_SIZE)
            .u64(self.timestamp)
            .fixed(self.tx_root, HASH_SIZE)
            .u32(self.tx_count)
            .fixed(self.proposer, ADDRESS_SIZE)
            .var_bytes(self.extra)
            .bytes()
        )

    def encode(self) -> bytes:
        return self.unsealed_bytes() + Writer().var_bytes(self.seal).bytes()

    @property
    def hash(self) -> bytes:
        if not self._hash:
            object.__setattr__(self, "_hash", crypto.sha256(self.encode()))
        return self._hash

    def sealing_digest(self) -> bytes:
        return crypto.signing_digest(crypto.DOMAIN_BLOCK, self.unsealed_bytes())

    def with_seal(self, seal: bytes) -> BlockHeader:
        return BlockHeader(
            self.chain_id, self.height, self.parent, self.timestamp, self.tx_root, self.tx_count,
            self.proposer, self.extra, seal, self.version,
        )

    @classmethod
    def read(cls, reader: Reader) -> BlockHeader:
        version = reader.u32("header.version")
        if version != BLOCK_VERSION:
            raise DecodeError("header.version", f"unknown block version {version}")
        return cls(
            version=version,
            chain_id=reader.text("header.chain_id", MAX_CHAIN_ID),
            height=reader.amount("header.height"),
            parent=reader.fixed(HASH_SIZE, "header.parent"),
            timestamp=reader.amount("header.timestamp"),
            tx_root=reader.fixed(HASH_SIZE, "header.tx_root"),
            tx_count=reader.u32("header.tx_count"),
            proposer=reader.fixed(ADDRESS_SIZE, "header.proposer"),
            extra=reader.var_bytes("header.extra", MAX_EXTRA),
            seal=reader.var_bytes("header.seal", MAX_SEAL),
        )

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        reader = Reader(data)
        header = cls.read(reader)
        reader.finish()
        return header


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...] = ()

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def encode(self) -> bytes:
        writer = Writer().var_bytes(self.header.encode())
        for tx in self.transactions:
            writer.var_bytes(tx.encode())
        return writer.bytes()

    @staticmethod
    def _read_header(reader: Reader, data: bytes) -> BlockHeader:
        header_size = reader.u32("header")
        if header_size > MAX_HEADER_SIZE:
            raise DecodeError("header", "header too large")
        header_end = reader.pos + header_size
        if header_end > reader.end:
            # Without this the header reader would run past the data and fail inside struct.
            raise DecodeError("header", "truncated")
        header_reader = Reader(data, reader.pos, header_end)
        header = BlockHeader.read(header_reader)
        header_reader.finish()
        reader.pos = header_end
        return header

    @classmethod
    def decode_header(cls, data: bytes) -> BlockHeader:
        """Only the header of an encoded block (to tell a known block without its body)."""
        return cls._read_header(Reader(data), data)

    @classmethod
    def decode(cls, data: bytes, max_transactions: int) -> Block:
        reader = Reader(data)
        header = cls._read_header(reader, data)
        if header.tx_count > max_transactions:
            raise DecodeError("header.tx_count", f"{header.tx_count} exceeds the block limit {max_transactions}")
        transactions = []
        for index in range(header.tx_count):
            size = reader.u32(f"transactions[{index}]")
            if size > MAX_TX_SIZE:
                raise DecodeError(f"transactions[{index}]", "transaction too large")
            end = reader.pos + size
            if end > reader.end:
                raise DecodeError(f"transactions[{index}]", "truncated")
            tx_reader = Reader(data, reader.pos, end)
            transactions.append(Transaction.read(tx_reader))
            tx_reader.finish()
            reader.pos = end
        reader.finish()
        return cls(header, tuple(transactions))

    def check_structure(self, chain_id: str, max_transactions: int) -> None:
        """Stateless checks that need no parent: chain, counts, Merkle root, duplicates."""
        header = self.header
        if header.chain_id != chain_id:
            raise InvalidBlock("wrong_chain", f"block is for chain '{header.chain_id}'")
        if header.tx_count != len(self.transactions):
            raise InvalidBlock("bad_tx_count", "header tx_count does not match the transactions")
        if len(self.transactions) > max_transactions:
            raise InvalidBlock("too_many_transactions", "block exceeds the transaction limit")
        ids = [tx.id for tx in self.transactions]
        if len(set(ids)) != len(ids):
            raise InvalidBlock("duplicate_transaction", "block holds a transaction twice")
        if merkle_root(ids) != header.tx_root:
            raise InvalidBlock("bad_merkle_root", "transaction root does not match the transactions")


def build_header(
    chain_id: str, parent: BlockHeader, timestamp: int, transactions: list[Transaction], proposer: bytes,
    extra: bytes = b"",
) -> BlockHeader:
    return BlockHeader(
        chain_id=chain_id,
        height=parent.height + 1,
        parent=parent.hash,
        timestamp=timestamp,
        tx_root=merkle_root([tx.id for tx in transactions]),
        tx_count=len(transactions),
        proposer=proposer,
        extra=extra,
    )

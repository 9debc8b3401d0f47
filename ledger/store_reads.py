"""The chain store's reads: blocks, headers, transactions, accounts and evidence, as stored.

ChainStore mixes this in; ledger/store.py keeps the connections, the schema checks and
the writes.  Every read runs in a transaction of its own (`_reading`), so a block's header
and its transactions come from one snapshot, and every object is decoded from the raw
canonical bytes stored beside the indexed columns.  Arguments from outside (heights,
hashes, addresses, cursors, limits) are checked here and refused with ValueError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.address import ADDRESS_SIZE
from ledger.block import HASH_SIZE, Block, BlockHeader
from ledger.codec import Writer
from ledger.evidence import EvidenceRecord
from ledger.schema import ACCOUNT_COLUMNS, accounts_table, blocks_table, evidence_table, transactions_table, undo_table
from ledger.staking import Stake
from ledger.state import Account, decode_undo
from ledger.transaction import Transaction


@dataclass(frozen=True, slots=True)
class StoredTx:
    tx: Transaction
    height: int
    index: int
    block_hash: bytes
    timestamp: int  # of the including block, ms


class StoreReads:
    _reading: Callable[[], contextlib.AbstractContextManager[Connection]]

    # --- reading the chain -----------------------------------------------------------------

    def head(self) -> BlockHeader | None:
        with self._reading() as conn:
            raw = conn.execute(
                sa.select(blocks_table.c.header).order_by(blocks_table.c.height.desc()).limit(1)
            ).scalar_one_or_none()
        return None if raw is None else BlockHeader.decode(bytes(raw))

    def block_header(self, height: int) -> BlockHeader | None:
        return self._header_where(blocks_table.c.height == _int(height, "height"))

    def block_header_by_hash(self, block_hash: bytes) -> BlockHeader | None:
        return self._header_where(blocks_table.c.hash == _hash(block_hash))

    def _header_where(self, condition) -> BlockHeader | None:
        with self._reading() as conn:
            raw = conn.execute(sa.select(blocks_table.c.header).where(condition)).scalar_one_or_none()
        return None if raw is None else BlockHeader.decode(bytes(raw))

    def block(self, height: int) -> Block | None:
        return self._block_where(blocks_table.c.height == _int(height, "height"))

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        return self._block_where(blocks_table.c.hash == _hash(block_hash))

    def _block_where(self, condition) -> Block | None:
        with self._reading() as conn:
            row = conn.execute(sa.select(blocks_table.c.height, blocks_table.c.header).where(condition)).first()
            if row is None:
                return None
            return Block(BlockHeader.decode(bytes(row.header)), self._block_transactions(conn, row.height))

    @staticmethod
    def _block_transactions(conn: Connection, height: int) -> tuple[Transaction, ...]:
        raws = conn.execute(
            sa.select(transactions_table.c.raw)
            .where(transactions_table.c.height == height)
            .order_by(transactions_table.c.idx)
        ).scalars()
        return tuple(Transaction.decode(bytes(raw)) for raw in raws)

    def encoded_blocks(self, first_height: int, count: int, max_bytes: int) -> list[bytes]:
        """Blocks first_height, first_height+1, ... in their canonical encoding (Block.encode),
        up to `count` blocks or `max_bytes` (at least one block): two queries, for serving sync."""
        first = _int(first_height, "first_height")
        last = first + _limit(count) - 1
        with self._reading() as conn:
            headers = conn.execute(
                sa.select(blocks_table.c.height, blocks_table.c.header)
                .where(blocks_table.c.height.between(first, last))
                .order_by(blocks_table.c.height)
            ).all()
            tx_rows = conn.execute(
                sa.select(transactions_table.c.height, transactions_table.c.raw)
                .where(transactions_table.c.height.between(first, last))
                .order_by(transactions_table.c.height, transactions_table.c.idx)
            ).all()
        by_height: dict[int, list[bytes]] = {}
        for height, raw in tx_rows:
            by_height.setdefault(height, []).append(bytes(raw))
        encoded: list[bytes] = []
        size = 0
        for height, header in headers:
            writer = Writer().var_bytes(bytes(header))
            for raw in by_height.get(height, ()):
                writer.var_bytes(raw)
            block = writer.bytes()
            size += len(block)
            if encoded and size > max_bytes:
                break
            encoded.append(block)
        return encoded

    def certificate(self, height: int) -> bytes:
        """The commit certificate stored with a block; b"" when none (or no such block)."""
        with self._reading() as conn:
            value = conn.execute(
                sa.select(blocks_table.c.certificate).where(blocks_table.c.height == _int(height, "height"))
            ).scalar_one_or_none()
        return b"" if value is None else bytes(value)

    def evidence(
        self, validator: bytes | None = None, before: tuple[int, int] | None = None, limit: int = 100,
    ) -> list[tuple[int, int, EvidenceRecord]]:
        """Recorded evidence, newest first, each with the height of the block recording it
        and its position there: all of it, or one validator's; strictly before the
        (height, position) cursor `before` when given (a block records up to 16)."""
        table = evidence_table
        query = sa.select(table).order_by(table.c.height.desc(), table.c.idx.desc()).limit(_limit(limit))
        if validator is not None:
            query = query.where(table.c.validator == bytes(validator))
        if before is not None:
            cursor = sa.tuple_(
                sa.literal(_int(before[0], "before height"), sa.BigInteger), sa.literal(_int(before[1], "before index"), sa.BigInteger)
            )
            query = query.where(sa.tuple_(table.c.height, table.c.idx) < cursor)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [
            (row.height, row.idx, EvidenceRecord(bytes(row.validator), row.offence_height, row.round, row.kind, bytes(row.data)))
            for row in rows
        ]

    def block_size(self, height: int) -> int | None:
        """Bytes of the block's canonical encoding (Block.encode)."""
        with self._reading() as conn:
            return conn.execute(
                sa.select(blocks_table.c.size).where(blocks_table.c.height == _int(height, "height"))
            ).scalar_one_or_none()

    def headers(self, before_height: int | None, limit: int) -> list[BlockHeader]:
        """Headers newest first, strictly below `before_height` (from the head when None)."""
        return [header for header, _ in self.headers_with_sizes(before_height, limit)]

    def headers_with_sizes(self, before_height: int | None, limit: int) -> list[tuple[BlockHeader, int]]:
        """As `headers`, each with its block's size in bytes, in one query."""
        query = (
            sa.select(blocks_table.c.header, blocks_table.c.size)
            .order_by(blocks_table.c.height.desc())
            .limit(_limit(limit))
        )
        if before_height is not None:
            query = query.where(blocks_table.c.height < _int(before_height, "before_height"))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [(BlockHeader.decode(bytes(row.header)), row.size) for row in rows]

    # --- transactions and accounts ---------------------------------------------------------

    def transaction(self, tx_id: bytes) -> StoredTx | None:
        tx = transactions_table
        query = (
            sa.select(tx.c.raw, tx.c.height, tx.c.idx, blocks_table.c.hash, blocks_table.c.timestamp)
            .join(blocks_table, blocks_table.c.height == tx.c.height)
            .where(tx.c.id == _hash(tx_id, "tx_id"))
        )
        with self._reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else _stored_tx(row)

    def account_transactions(
        self, address: bytes, before: tuple[int, int] | None, limit: int
    ) -> list[StoredTx]:
        """Transactions sent or received by `address`, newest first by (height, index),
        strictly before the cursor `before` = (height, index)."""
        address = _bytes(address, ADDRESS_SIZE, "address")
        limit = _limit(limit)
        if limit == 0:
            return []
        cursor = None
        if before is not None:
            if not isinstance(before, tuple) or len(before) != 2:
                raise ValueError("before: a (height, index) pair")
            cursor = (_int(before[0], "before height"), _int(before[1], "before index"))
        query = account_transactions_query(address, cursor, limit)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [_stored_tx(row) for row in rows]

    def account(self, address: bytes) -> Account | None:
        address = _bytes(address, ADDRESS_SIZE, "address")
        with self._reading() as conn:
            row = conn.execute(
                sa.select(*_ACCOUNT_VALUE_COLUMNS).where(accounts_table.c.address == address)
            ).first()
        return None if row is None else _account_of(*row)

    def load_accounts(self) -> dict[bytes, Account]:
        with self._reading() as conn:
            rows = conn.execute(sa.select(accounts_table.c.address, *_ACCOUNT_VALUE_COLUMNS))
            return {bytes(address): _account_of(*values) for address, *values in rows}

    def undo_record(self, height: int) -> dict[bytes, Account | None] | None:
        """The account values a main-chain block replaced (None: no such block)."""
        with self._reading() as conn:
            data = conn.execute(
                sa.select(undo_table.c.data).where(undo_table.c.height == _int(height, "height"))
            ).scalar_one_or_none()
        return None if data is None else decode_undo(bytes(data))


# --- helpers ---------------------------------------------------------------------------------


def account_transactions_query(address: bytes, before: tuple[int, int] | None, limit: int) -> sa.Select:
    """The history page of `address` (see ChainStore.account_transactions); public so a
    test can check its plan uses the (sender, ...) and (recipient, ...) indexes."""
    tx = transactions_table

    # One query per index, each ordered and limited on its own, so each walks its
    # index backwards and stops after `limit` rows; an OR over both columns could
    # use neither index.
    def side(column):
        query = sa.select(tx.c.id, tx.c.height, tx.c.idx).where(column == address)
        if before is not None:
            # Typed as BIGINT, so PostgreSQL does not cast a large cursor to INTEGER.
            cursor = sa.tuple_(sa.literal(before[0], sa.BigInteger), sa.literal(before[1], sa.BigInteger))
            query = query.where(sa.tuple_(tx.c.height, tx.c.idx) < cursor)
        return sa.select(query.order_by(tx.c.height.desc(), tx.c.idx.desc()).limit(limit).subquery())

    # UNION, not UNION ALL: a transfer to oneself is found by both sides.
    both = sa.union(side(tx.c.sender), side(tx.c.recipient)).subquery()
    page = sa.select(both.c.id).order_by(both.c.height.desc(), both.c.idx.desc()).limit(limit).subquery()
    return (
        sa.select(tx.c.raw, tx.c.height, tx.c.idx, blocks_table.c.hash, blocks_table.c.timestamp)
        .join(page, page.c.id == tx.c.id)
        .join(blocks_table, blocks_table.c.height == tx.c.height)
        .order_by(tx.c.height.desc(), tx.c.idx.desc())
    )


_ACCOUNT_VALUE_COLUMNS = tuple(accounts_table.c[name] for name in ACCOUNT_COLUMNS[1:])


def _account_of(balance: int, nonce: int, bonded: int, unbonding: int, release_epoch: int, slashed: int) -> Account:
    if bonded or unbonding or release_epoch or slashed:
        return (balance, nonce, Stake(bonded, unbonding, release_epoch, slashed))
    return (balance, nonce, None)


def _stored_tx(row) -> StoredTx:
    return StoredTx(
        tx=Transaction.decode(bytes(row.raw)),
        height=row.height,
        index=row.idx,
        block_hash=bytes(row.hash),
        timestamp=row.timestamp,
    )


def _int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{name}: a non-negative integer below 2^63")
    return value


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError("limit: a non-negative integer")
    return limit


def _bytes(value: bytes, size: int, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != size:
        raise ValueError(f"{name}: {size} bytes")
    return bytes(value)


def _hash(value: bytes, name: str = "hash") -> bytes:
    return _bytes(value, HASH_SIZE, name)

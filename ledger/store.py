"""The chain store: blocks, transactions, accounts and undo records in SQL.

A repository behind a narrow interface, written with SQLAlchemy 2 Core.  SQLite
(WAL mode) is the embedded default, PostgreSQL is one URL away.  Alembic owns the
schema (`migrations/`, which runs the upgrade: this module sits below it and does
not import it); ledger/schema.py declares the tables the code expects.

Committing a block is one database transaction (block, transactions, account
changes, undo record and head) or nothing, so a node killed at any instant
restarts into a consistent chain.  Raw canonical encodings are stored beside the
indexed columns, and every object read back is decoded from them, so what leaves
the store is byte for byte what went in.  The reads are in ledger/store_reads.py
(mixed into ChainStore); this module keeps the connections, schema checks and writes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import QueuePool, StaticPool

from ledger.address import address_of
from ledger.block import Block, BlockHeader
from ledger.evidence import EvidenceRecord
from ledger.genesis import Genesis
from ledger.sqlite_writer import KeptConnection
from ledger.state import Account, BlockEffects, decode_undo, encode_undo
from ledger.store_reads import StoredTx, StoreReads, account_transactions_query
from ledger.schema import (
    ACCOUNT_COLUMNS,
    accounts_table,
    BLOCK_COLUMNS,
    blocks_table,
    evidence_table,
    meta_table,
    metadata,
    SCHEMA_REVISION,
    transactions_table,
    TX_COLUMNS,
    undo_table,
)

EVIDENCE_COLUMNS = ("height", "idx", "validator", "offence_height", "round", "kind", "data")
# A block of at most this many transactions is written, on a SQLite file, on the connection
# kept for small writes (Raft and BFT write one a round): the pool's ceremony costs it more
# than SQLite's own work.  A larger one goes through the pool, whose connections' caches
# hold the index pages it touches; the kept connection with a cache as large would add its
# 16 MiB to the node's memory.
KEPT_BLOCK_TRANSACTIONS = 64

_NO_STAKE_COLUMNS = (0, 0, 0, 0)

META_GENESIS_HASH = "genesis_hash"
META_HEAD = "head"
RESERVED_META_KEYS = frozenset({META_GENESIS_HASH, META_HEAD})
MAX_META_KEY = 64


# --- errors ----------------------------------------------------------------------------------


class ChainStoreError(Exception):
    """A store operation refused; nothing was changed."""


class GenesisMismatch(ChainStoreError):
    pass


class NotInitialized(ChainStoreError):
    pass


class SchemaOutOfDate(ChainStoreError):
    pass


class NotNextBlock(ChainStoreError):
    """A block that does not extend the stored head."""


class StoreConflict(ChainStoreError):
    """The database refused the write (a duplicate transaction id, a duplicate block)."""


# --- the store -------------------------------------------------------------------------------


def _is_memory_sqlite(url: sa.URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def parse_url(url: str | sa.URL) -> sa.URL:
    """A database URL the store supports; a plain postgresql:// means the psycopg driver."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ChainStoreError(f"not a database URL: {url!r} (use sqlite:///path.db or postgresql+psycopg://...)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ChainStoreError(f"unsupported database '{backend}': use sqlite:///path.db or postgresql+psycopg://...")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | sa.URL) -> sa.Engine:
    """An engine configured for the chain store (shared by the store and the Alembic CLI)."""
    url = parse_url(url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # Repeatable read gives a reader one snapshot across its statements (a block's
    # header and its transactions), which read committed would not.
    return sa.create_engine(url, isolation_level="REPEATABLE READ", pool_pre_ping=True)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    if _is_memory_sqlite(url):
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        # The pool hands a connection to one thread at a time, so a connection
        # may move between threads across checkouts.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin,
        # so reads get one snapshot and DDL is transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # 16 MiB a connection (each has its own): the index pages of a busy chain stay hot,
        # and a pool of them does not hold a large part of the node's memory.
        cursor.execute("PRAGMA cache_size=-16384")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        # A writer takes the write lock up front: a deferred transaction that reads
        # and then writes could fail on upgrade with SQLITE_BUSY, past any timeout.
        writing = connection.get_execution_options().get("ledger_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")

    return engine


class ChainStore(StoreReads):
    def __init__(self, url: str):
        parsed = parse_url(url)
        self.url = parsed
        self.backend = parsed.get_backend_name()
        # One writer at a time inside the process; SQLite would otherwise make the
        # second writer wait on its busy timeout, PostgreSQL on a row lock.
        self._write_lock = threading.Lock()
        # Only the shared in-memory connection needs readers serialized too.
        self._use_lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        self._engine = make_engine(parsed)
        # A SQLite file writes small blocks, and durable meta, on a connection kept for them
        # (ledger/sqlite_writer.py); the pool serves reads and the other writes.
        self._kept: KeptConnection | None = None
        if self.backend == "sqlite" and not _is_memory_sqlite(parsed):
            self._kept = KeptConnection(parsed, self._engine.dialect)
        if self.backend == "sqlite":
            self._insert = sqlite.insert
            if _is_memory_sqlite(parsed):
                # One shared connection: every use, read or write, takes turns.
                self._use_lock = threading.RLock()
        else:
            self._insert = postgresql.insert
        account_insert = self._insert(accounts_table)
        account_upsert = account_insert.on_conflict_do_update(
            index_elements=[accounts_table.c.address],
            set_={column: account_insert.excluded[column] for column in ACCOUNT_COLUMNS[1:]},
        )
        meta_insert = self._insert(meta_table)
        meta_upsert = meta_insert.on_conflict_do_update(
            index_elements=[meta_table.c.key], set_={"value": meta_insert.excluded.value}
        )
        # Every statement of a block commit goes to the driver as compiled SQL with plain
        # tuples: SQLAlchemy's statement handling and per-value bind processing otherwise
        # cost more than SQLite's own work on a block of a few transfers.
        self._insert_transactions_sql = self._positional_sql(transactions_table.insert(), TX_COLUMNS)
        self._upsert_accounts_sql = self._positional_sql(account_upsert, ACCOUNT_COLUMNS)
        self._insert_block_sql = self._positional_sql(blocks_table.insert(), BLOCK_COLUMNS)
        self._insert_undo_sql = self._positional_sql(undo_table.insert(), ("height", "data"))
        self._insert_evidence_sql = self._positional_sql(evidence_table.insert(), EVIDENCE_COLUMNS)
        self._upsert_meta_sql = self._positional_sql(meta_upsert, ("key", "value"))
        self._head_sql = str(
            sa.select(blocks_table.c.height, blocks_table.c.hash).order_by(blocks_table.c.height.desc()).limit(1)
            .compile(dialect=self._engine.dialect, compile_kwargs={"literal_binds": True})
        )

    def _positional_sql(self, statement, columns: tuple[str, ...]) -> str:
        dialect = self._engine.dialect
        if not dialect.positional:
            dialect = type(dialect)(paramstyle="format")
        compiled = statement.compile(dialect=dialect)
        if tuple(compiled.positiontup) != columns:
            raise AssertionError(f"compiled parameters {compiled.positiontup} are not in the order {columns}")
        return compiled.string

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._use_lock, self._engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._write_lock, self._use_lock, self._engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _durable_writing(self) -> Iterator[Connection]:
        """A write that is on disk when its commit returns, power cut included: PostgreSQL
        (a file SQLite database commits these on the connection kept for small writes,
        _kept, at FULL; an in-memory one has no disk).

        Block commits do not pay for this: a block lost after a power cut is fetched
        again from peers, while a lost signing record can make a validator sign twice."""
        with self._write_lock, self._use_lock, self._engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            with conn.begin():
                if self.backend != "sqlite":
                    # On by default, but a server or role may turn it off, and then a
                    # commit returns before its WAL record is flushed.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
                yield conn

    @contextlib.contextmanager
    def _block_writing(self, transactions: int) -> Iterator[Any]:
        """A driver cursor in a write transaction for a block's rows: for a small block on a
        SQLite file the connection kept for small writes, else a pooled connection's."""
        if self._kept is not None and transactions <= KEPT_BLOCK_TRANSACTIONS:
            with self._write_lock, self._kept.transaction("NORMAL") as cursor:
                yield cursor
            return
        with self._writing() as conn, _driver_cursor(conn) as cursor:
            yield cursor

    # --- schema ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def schema_connection(self) -> Iterator[Connection]:
        """A connection for changing the schema (migrations.upgrade).

        It holds the writer lock and begins no transaction, so the migration tool runs
        its own; what it leaves uncommitted is rolled back on leaving.  For an in-memory
        SQLite database it is the only connection there is, which is why a migration
        must use it rather than open one of its own."""
        with self._write_lock, self._use_lock, self._engine.connect() as conn:
            conn.execution_options(ledger_write=True)
            yield conn

    def schema_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._reading() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _check_schema(self) -> None:
        current = self.schema_revision()
        if current != SCHEMA_REVISION:
            raise SchemaOutOfDate(
                f"database schema is at revision {current or 'none'}, this node needs {SCHEMA_REVISION}: "
                "run `ledger db upgrade` (migrations.upgrade)"
            )

    # --- genesis ---------------------------------------------------------------------------

    def initialize(self, genesis: Genesis) -> None:
        """Store the genesis block and allocations in an empty database; check them otherwise."""
        self._check_schema()
        with self._writing() as conn:
            stored = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == META_GENESIS_HASH)
            ).scalar_one_or_none()
            if stored is not None:
                if bytes(stored) != genesis.hash:
                    raise GenesisMismatch(
                        f"the database holds the chain of genesis hash {bytes(stored).hex()}, "
                        f"but the configured genesis hash is {genesis.hash.hex()}: "
                        "use another data directory or the matching genesis file"
                    )
                return
            if conn.execute(sa.select(sa.func.count()).select_from(blocks_table)).scalar_one():
                raise GenesisMismatch("the database holds blocks but no genesis hash: it is not a chain store of this node")
            self._insert_genesis(conn, genesis)

    def _insert_genesis(self, conn: Connection, genesis: Genesis) -> None:
        block = genesis.block()
        conn.exec_driver_sql(self._insert_block_sql, self._block_row(block, [], b""))
        accounts = genesis.initial_accounts()
        if accounts:
            conn.exec_driver_sql(self._upsert_accounts_sql, _account_rows(accounts.items()))
        self._put_meta(conn, META_GENESIS_HASH, genesis.hash)
        self._put_meta(conn, META_HEAD, block.hash)

    def load_chain(
        self, genesis: Genesis, blocks: Iterable[tuple[Block, BlockEffects, bytes, Sequence[EvidenceRecord]]],
    ) -> int:
        """Write a whole chain into an empty database in ONE transaction and return its height.
        `blocks` may check each block as it yields it and raise at any point (a state file found
        corrupt at its last line): then nothing stays written, not even the genesis."""
        self._check_schema()
        height = 0
        with self._writing() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(blocks_table)).scalar_one():
                raise StoreConflict("the database holds a chain already")
            self._insert_genesis(conn, genesis)
            for block, effects, certificate, evidence in blocks:
                with _driver_cursor(conn) as cursor:
                    self._commit_prepared(cursor, [(block, self._prepare(block, effects, evidence), certificate)])
                height = block.header.height
        return height

    # --- writing blocks --------------------------------------------------------------------

    def commit_block(
        self, block: Block, effects: BlockEffects, certificate: bytes = b"", evidence: Sequence[EvidenceRecord] = (),
    ) -> None:
        """Write a block extending the head, with its state changes and the evidence it
        records, in one transaction."""
        header = block.header
        if header.tx_count != len(block.transactions):
            raise ChainStoreError(
                f"block {header.height} declares {header.tx_count} transactions but carries {len(block.transactions)}"
            )
        prepared = self._prepare(block, effects, evidence)
        try:
            with self._block_writing(len(block.transactions)) as cursor:
                self._commit_prepared(cursor, [(block, prepared, certificate)])
        except sa.exc.IntegrityError as exc:
            raise StoreConflict(
                f"block {header.height} conflicts with stored data (a transaction or block already stored): {exc.orig}"
            ) from None

    def reorganize(
        self, fork_height: int, blocks: list[tuple[Block, BlockEffects, bytes, Sequence[EvidenceRecord]]]
    ) -> list[tuple[Block, dict[bytes, Account | None]]]:
        """Revert the main chain down to `fork_height` and commit `blocks` (with their effects,
        certificates and evidence) on top, in ONE database transaction: a crash leaves the old
        chain or the new one, never a mix. Returns the reverted blocks and their undo maps,
        newest first."""
        return self._write_blocks(fork_height, blocks)

    def commit_blocks(self, blocks: list[tuple[Block, BlockEffects, bytes, Sequence[EvidenceRecord]]]) -> None:
        """Write consecutive blocks extending the head (a sync batch) in ONE transaction: one
        durable write instead of one a block, and all of them or none."""
        self._write_blocks(None, blocks)

    def _write_blocks(
        self, fork_height: int | None, blocks: list[tuple[Block, BlockEffects, bytes, Sequence[EvidenceRecord]]]
    ) -> list[tuple[Block, dict[bytes, Account | None]]]:
        prepared = [
            (block, self._prepare(block, effects, evidence), certificate) for block, effects, certificate, evidence in blocks
        ]
        try:
            with self._writing() as conn:
                reverted = []
                while fork_height is not None and self._head_row(conn)[0] > fork_height:
                    reverted.append(self._revert_head(conn))
                with _driver_cursor(conn) as cursor:
                    self._commit_prepared(cursor, prepared)
        except sa.exc.IntegrityError as exc:
            raise StoreConflict(f"the blocks conflict with stored data: {exc.orig}") from None
        return reverted

    def _head_row(self, conn: Connection) -> tuple[int, bytes]:
        with _driver_cursor(conn) as cursor:
            return self._head_of(cursor)

    def _head_of(self, cursor: Any) -> tuple[int, bytes]:
        head = cursor.execute(self._head_sql).fetchone()
        if head is None:
            raise NotInitialized("the store holds no genesis block: call initialize first")
        return head[0], bytes(head[1])

    @staticmethod
    def _prepare(block: Block, effects: BlockEffects, evidence: Sequence[EvidenceRecord] = ()) -> tuple:
        """Everything derivable, computed before the transaction opens to keep it short."""
        raws = [tx.encode() for tx in block.transactions]
        height = block.header.height
        tx_rows = [  # in TX_COLUMNS order
            (tx.id, height, index, address_of(tx.sender), tx.recipient, tx.nonce, tx.amount, tx.fee, raw)
            for index, (tx, raw) in enumerate(zip(block.transactions, raws))
        ]
        account_rows = _account_rows(effects.changes.items())
        evidence_rows = [  # in EVIDENCE_COLUMNS order
            (height, index, item.validator, item.height, item.round, item.kind, item.data)
            for index, item in enumerate(evidence)
        ]
        return raws, tx_rows, account_rows, encode_undo(effects.undo), evidence_rows

    def _commit_prepared(self, cursor: Any, items: Sequence[tuple[Block, tuple, bytes]]) -> None:
        """Blocks that extend the head one after another, each with its prepared rows and
        certificate: every statement runs once for all of them (a sync answer's 500 blocks
        cost what one block's statements cost, plus their rows).  The statements go to the
        driver's cursor of a write transaction: SQLAlchemy's statement handling costs ~40 us
        a statement, more than SQLite's work for a block of a few transfers (Raft and BFT
        write one a round)."""
        head_height, head_hash = self._head_of(cursor)
        block_rows: list[tuple] = []
        tx_rows: list[tuple] = []
        account_rows: dict[bytes, tuple] = {}  # an account changed by several blocks ends as the last left it
        undo_rows: list[tuple[int, bytes]] = []
        evidence_rows: list[tuple] = []
        for block, (raws, txs, accounts, undo_data, evidence), certificate in items:
            header = block.header
            if header.height != head_height + 1:
                raise NotNextBlock(f"block height {header.height} does not follow the head height {head_height}")
            if header.parent != head_hash:
                raise NotNextBlock(f"block {header.height} has parent {header.parent.hex()}, the head is {head_hash.hex()}")
            block_rows.append(self._block_row(block, raws, certificate))
            tx_rows.extend(txs)
            for row in accounts:
                account_rows[row[0]] = row
            undo_rows.append((header.height, undo_data))
            evidence_rows.extend(evidence)
            head_height, head_hash = header.height, block.hash
        if not block_rows:
            return
        cursor.executemany(self._insert_block_sql, block_rows)
        if self.backend == "postgresql":
            _copy_rows(cursor, tx_rows, list(account_rows.values()))
        else:
            if tx_rows:
                cursor.executemany(self._insert_transactions_sql, tx_rows)
            if account_rows:
                cursor.executemany(self._upsert_accounts_sql, list(account_rows.values()))
        cursor.executemany(self._insert_undo_sql, undo_rows)
        if evidence_rows:
            cursor.executemany(self._insert_evidence_sql, evidence_rows)
        cursor.execute(self._upsert_meta_sql, (META_HEAD, head_hash))

    @staticmethod
    def _block_row(block: Block, raws: list[bytes], certificate: bytes) -> tuple:
        """A block's row in BLOCK_COLUMNS order."""
        header = block.header
        header_bytes = header.encode()
        # Block.encode() is the header and each transaction, each behind a u32 length.
        size = 4 + len(header_bytes) + sum(4 + len(raw) for raw in raws)
        return (header.height, block.hash, header.parent, header.timestamp, header.proposer, header.tx_count, size,
                header_bytes, bytes(certificate))

    def revert_head(self) -> tuple[Block, dict[bytes, Account | None]]:
        """Undo the head block (for a reorg); returns it and the account values restored."""
        with self._writing() as conn:
            return self._revert_head(conn)

    def _revert_head(self, conn: Connection) -> tuple[Block, dict[bytes, Account | None]]:
        row = conn.execute(
            sa.select(blocks_table.c.height, blocks_table.c.header).order_by(blocks_table.c.height.desc()).limit(1)
        ).first()
        if row is None:
            raise NotInitialized("the store holds no blocks")
        height = row.height
        if height == 0:
            raise ChainStoreError("the genesis block cannot be reverted")
        header = BlockHeader.decode(bytes(row.header))
        block = Block(header, self._block_transactions(conn, height))
        undo = decode_undo(bytes(conn.execute(sa.select(undo_table.c.data).where(undo_table.c.height == height)).scalar_one()))
        restored = _account_rows((address, before) for address, before in undo.items() if before is not None)
        created = [{"gone": address} for address, before in undo.items() if before is None]
        if restored:
            conn.exec_driver_sql(self._upsert_accounts_sql, restored)
        if created:
            conn.execute(accounts_table.delete().where(accounts_table.c.address == sa.bindparam("gone")), created)
        conn.execute(transactions_table.delete().where(transactions_table.c.height == height))
        conn.execute(undo_table.delete().where(undo_table.c.height == height))
        conn.execute(evidence_table.delete().where(evidence_table.c.height == height))
        conn.execute(blocks_table.delete().where(blocks_table.c.height == height))
        self._put_meta(conn, META_HEAD, header.parent)
        return block, undo

    # --- metadata --------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        key = _meta_key(key)
        with self._reading() as conn:
            value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == key)).scalar_one_or_none()
        return None if value is None else bytes(value)

    def set_meta(self, key: str, value: bytes, *, durable: bool = False) -> None:
        """Node metadata (engine state); the chain's own keys are refused.

        Any write survives a killed process.  durable=True also survives a power cut
        once this returns: SQLite syncs its WAL at this commit (on a file, the connection
        kept for small writes, at synchronous=FULL), PostgreSQL waits for its WAL flush
        (synchronous_commit on).
        For what must never be forgotten, such as what a validator last signed."""
        key = _meta_key(key)
        if key in RESERVED_META_KEYS:
            raise ValueError(f"meta key '{key}' is maintained by the store itself")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError("meta value must be bytes")
        if durable and self._kept is not None:
            with self._write_lock, self._kept.transaction("FULL") as cursor:
                cursor.execute(self._upsert_meta_sql, (key, bytes(value)))
            return
        with self._durable_writing() if durable else self._writing() as conn:
            self._put_meta(conn, key, bytes(value))

    def writes_at_once(self) -> bool:
        """Whether a small block's commit (at most KEPT_BLOCK_TRANSACTIONS) or a durable meta
        write begun now would start without waiting: on SQLite (no network round trip that
        could stall), with no write under way and a connection for it idle (a file keeps
        one for these writes alone)."""
        if self.backend != "sqlite" or self._write_lock.locked():
            return False
        if self._kept is not None:
            return True
        pool = self._engine.pool
        return not isinstance(pool, QueuePool) or pool.checkedin() > 0

    def _put_meta(self, conn: Connection, key: str, value: bytes) -> None:
        with _driver_cursor(conn) as cursor:
            cursor.execute(self._upsert_meta_sql, (key, value))

    def close(self) -> None:
        try:
            with self._write_lock:
                if self._kept is not None:
                    self._kept.close()
        finally:
            self._engine.dispose()

    def __enter__(self) -> ChainStore:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------------


_COPY_TRANSACTIONS = f"COPY transactions ({', '.join(TX_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_TX_COPY_TYPES = ("bytea", "int8", "int4", "bytea", "bytea", "int8", "int8", "int8", "bytea")  # TX_COLUMNS order
# Account changes go to a temporary table by COPY, then into accounts in one upsert.
_ACCOUNT_CHANGES = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS account_changes (LIKE accounts INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
_COPY_ACCOUNTS = f"COPY account_changes ({', '.join(ACCOUNT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_ACCOUNT_COPY_TYPES = ("bytea",) + ("int8",) * (len(ACCOUNT_COLUMNS) - 1)
_UPSERT_ACCOUNT_CHANGES = (
    f"INSERT INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) SELECT {', '.join(ACCOUNT_COLUMNS)} FROM account_changes "
    f"ON CONFLICT (address) DO UPDATE SET "
    + ", ".join(f"{column} = EXCLUDED.{column}" for column in ACCOUNT_COLUMNS[1:]))


@contextlib.contextmanager
def _driver_cursor(conn: Connection) -> Iterator[Any]:
    """A cursor of the driver's connection under `conn`, inside its transaction.  Its errors
    come out as SQLAlchemy's, as from `conn.exec_driver_sql`, and a lost connection is not
    handed back to the pool."""
    driver = conn.connection.dbapi_connection
    dialect = conn.dialect
    cursor = None
    try:
        cursor = driver.cursor()
        yield cursor
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, driver, cursor)
        if lost:
            if cursor is not None:
                with contextlib.suppress(dialect.loaded_dbapi.Error):
                    cursor.close()  # now: once the connection is closed, closing it raises
                cursor = None
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                         dialect=dialect) from exc
    finally:
        if cursor is not None:
            cursor.close()


def _copy_rows(cursor, tx_rows: list[tuple], account_rows: list[tuple]) -> None:
    """PostgreSQL: a block's transactions and account changes by binary COPY, on a cursor
    in the block's own transaction.  executemany spent ~10 us of Python a row in the store
    thread, holding the GIL against the event loop; COPY's rows cost a sixth of that."""
    if tx_rows:
        with cursor.copy(_COPY_TRANSACTIONS) as copy:
            copy.set_types(_TX_COPY_TYPES)
            for row in tx_rows:
                copy.write_row(row)
    if account_rows:
        cursor.execute(_ACCOUNT_CHANGES)
        with cursor.copy(_COPY_ACCOUNTS) as copy:
            copy.set_types(_ACCOUNT_COPY_TYPES)
            for row in account_rows:
                copy.write_row(row)
        cursor.execute(_UPSERT_ACCOUNT_CHANGES)
        cursor.execute("TRUNCATE account_changes")  # a block of a multi-block write adds its own


def _account_rows(accounts: Iterable[tuple[bytes, Account]]) -> list[tuple]:
    """Rows in ACCOUNT_COLUMNS order; an account without stake has 0 in the stake columns."""
    return [
        (address, balance, nonce, *(_NO_STAKE_COLUMNS if stake is None else stake))
        for address, (balance, nonce, stake) in accounts
    ]


def _meta_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_META_KEY:
        raise ValueError(f"meta key: a string of 1 to {MAX_META_KEY} characters")
    return key


__all__ = [
    "ChainStore", "ChainStoreError", "GenesisMismatch", "NotInitialized", "NotNextBlock", "SchemaOutOfDate",
    "SCHEMA_REVISION", "StoreConflict", "StoredTx", "account_transactions_query", "make_engine", "parse_url", "metadata",
]

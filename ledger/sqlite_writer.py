"""A SQLite file's connection kept open for the small writes of every round.

The chain store writes two things on every Raft or BFT round, both small: the engine's
state (durable: synced at FULL before the node answers) and the committed block, of a
few transfers (at NORMAL: a block lost to a power cut is fetched again from peers).
Through SQLAlchemy's pool each such write paid for a checkout, a `begin` event and the
transaction's bookkeeping, more than SQLite's own work for a block of a few transfers;
on a connection kept for them it pays for `BEGIN IMMEDIATE` and `COMMIT`, and a `PRAGMA
synchronous` when the level changes (a few microseconds on the driver).  Both writes share
the one connection: in WAL mode a connection drops its page cache whenever another has
committed since its last transaction, so two connections taking turns would each start
every write cold.

The store's write lock is held around every use: one writer at a time in the process.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")


class KeptConnection:
    """A driver connection opened on first use, and opened again after a failure of the
    database (whose state it may have left unknown).  Each transaction names the
    synchronous level it commits at.  Its page cache is SQLite's default (2 MiB): the
    writes it is kept for touch few pages."""

    def __init__(self, url: sa.URL, dialect: sa.Dialect):
        self._url = url
        self._dialect = dialect
        self._synchronous: str | None = None  # the level the open connection is at
        self.connection: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        args, kwargs = self._dialect.create_connect_args(self._url)
        driver = sqlite3.connect(*args, **{**kwargs, "isolation_level": None, "check_same_thread": False})
        try:
            driver.execute("PRAGMA busy_timeout=30000")
            # As the pool's connections open it (ledger/store.py): a level of NORMAL is safe
            # against a killed process only in WAL mode, so this connection does not count
            # on another having set it first (a no-op once the file is in WAL mode).
            driver.execute("PRAGMA journal_mode=WAL")
        except BaseException:
            driver.close()
            raise
        return driver

    @contextlib.contextmanager
    def transaction(self, synchronous: str) -> Iterator[sqlite3.Cursor]:
        """A cursor inside a write transaction, committed at `synchronous` (NORMAL or FULL)
        when the block ends.  An error of the database comes out as SQLAlchemy's (as the
        pooled connections' do) and closes the connection; any other exception rolls the
        transaction back and keeps it."""
        assert synchronous in SYNCHRONOUS_LEVELS, synchronous
        driver = None
        try:
            driver = self.connection or self._open()
            self.connection = driver
            if synchronous != self._synchronous:
                driver.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            driver.execute("BEGIN IMMEDIATE")
            cursor = driver.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            driver.execute("COMMIT")
        except sqlite3.Error as exc:
            self._discard(driver)
            raise sa.exc.DBAPIError.instance(None, None, exc, sqlite3.Error, dialect=self._dialect) from exc
        except BaseException:
            if driver is not None and driver.in_transaction:
                try:
                    driver.execute("ROLLBACK")
                except sqlite3.Error:
                    self._discard(driver)
            raise

    def _discard(self, driver: Any) -> None:
        """Closing rolls back whatever the failure left open; the next write connects anew."""
        self.connection = None
        self._synchronous = None
        if driver is not None:
            with contextlib.suppress(sqlite3.Error):
                driver.close()

    def close(self) -> None:
        """Close the connection; a later write opens a new one."""
        driver, self.connection = self.connection, None
        self._synchronous = None
        if driver is not None:
            driver.close()

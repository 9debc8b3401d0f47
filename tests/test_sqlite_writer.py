"""The SQLite connection kept for the small writes of every round (ledger/sqlite_writer.py)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading

import pytest
import sqlalchemy as sa

from ledger.sqlite_writer import KeptConnection

SYNCHRONOUS = {1: "NORMAL", 2: "FULL"}


@pytest.fixture
def database(tmp_path):
    url = sa.make_url(f"sqlite:///{tmp_path / 'kept.db'}")
    with contextlib.closing(sqlite3.connect(url.database)) as setup:
        setup.execute("PRAGMA journal_mode=WAL")  # as the store's pool leaves it
        setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        setup.commit()
    return url


def rows(url) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(url.database)) as reader:
        return reader.execute("SELECT k, v FROM t ORDER BY k").fetchall()


@pytest.fixture
def kept(database):
    connection = KeptConnection(database, sa.create_engine(database).dialect)
    yield connection
    connection.close()


def insert(kept: KeptConnection, *values: tuple, level: str = "NORMAL") -> str:
    """Insert `values` in one transaction at `level`; the level in force inside it."""
    with kept.transaction(level) as cursor:
        cursor.executemany("INSERT INTO t VALUES (?, ?)", values)
        return SYNCHRONOUS[cursor.execute("PRAGMA synchronous").fetchone()[0]]


def test_each_write_commits_at_the_level_it_names_and_the_level_is_set_only_when_it_changes(database, kept):
    levels = ["FULL", "NORMAL", "NORMAL", "FULL", "FULL", "NORMAL"]
    statements: list[str] = []
    insert(kept, (0, "opens the connection"), level="NORMAL")
    kept.connection.set_trace_callback(statements.append)
    in_force = [insert(kept, (index + 1, level), level=level) for index, level in enumerate(levels)]
    assert in_force == levels
    assert [s for s in statements if s.startswith("PRAGMA synchronous=")] == [
        "PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL"]
    assert len(rows(database)) == 1 + len(levels)
    kept.close()  # a write after closing opens a new connection, at the level it asks for
    assert insert(kept, (100, "reopened"), level="NORMAL") == "NORMAL"


def test_a_file_in_rollback_journal_mode_is_put_in_wal_mode(tmp_path):
    """NORMAL is safe against a killed process only in WAL mode: the kept connection does
    not count on the pool's having set it."""
    url = sa.make_url(f"sqlite:///{tmp_path / 'journal.db'}")
    with contextlib.closing(sqlite3.connect(url.database)) as setup:
        setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        assert setup.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    kept = KeptConnection(url, sa.create_engine(url).dialect)
    try:
        insert(kept, (1, "a"))
    finally:
        kept.close()
    with contextlib.closing(sqlite3.connect(url.database)) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert rows(url) == [(1, "a")]


def test_an_exception_of_the_caller_rolls_back_and_keeps_the_connection(database, kept):
    insert(kept, (1, "a"))
    connection = kept.connection
    with pytest.raises(ValueError, match="refused"):
        with kept.transaction("NORMAL") as cursor:
            cursor.execute("INSERT INTO t VALUES (2, 'b')")
            raise ValueError("refused by the caller")
    assert rows(database) == [(1, "a")]
    assert kept.connection is connection and not connection.in_transaction
    insert(kept, (3, "c"))
    assert rows(database) == [(1, "a"), (3, "c")]


def test_a_database_error_comes_out_as_sqlalchemys_and_the_next_write_connects_anew(database, kept):
    insert(kept, (1, "a"), level="NORMAL")
    connection = kept.connection
    with pytest.raises(sa.exc.IntegrityError):
        insert(kept, (2, "b"), (1, "again"), level="NORMAL")
    assert rows(database) == [(1, "a")]
    assert kept.connection is None
    # The new connection is set to the level asked for, not left at SQLite's default (FULL).
    assert insert(kept, (2, "b"), level="NORMAL") == "NORMAL"
    assert kept.connection is not connection
    assert rows(database) == [(1, "a"), (2, "b")]


def test_a_write_waits_for_another_connections_write_rather_than_failing(database, kept):
    """BEGIN IMMEDIATE with a busy timeout: a second writer queues behind the first."""
    other = sqlite3.connect(database.database, isolation_level=None, timeout=5)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1, 'other')")
        done = threading.Event()

        def write():
            insert(kept, (2, "kept"))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.2)
        other.execute("COMMIT")
        writer.join(10)
        assert done.is_set() and rows(database) == [(1, "other"), (2, "kept")]
    finally:
        other.close()

"""Shared fixtures.  Keep them small and generic; add yours below.

`store_url` runs a test on SQLite (a file in tmp_path) and on PostgreSQL (a database
created for that test on 127.0.0.1:5432 and dropped after it).  Without a reachable
PostgreSQL the postgres cases skip, unless LEDGER_TEST_POSTGRES is set: then they
fail, so a CI job that promises PostgreSQL cannot pass silently without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
POSTGRES_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"

_postgres_unreachable: str | None = None  # remembered so each test does not wait on it again


def _admin_connection():
    import psycopg

    global _postgres_unreachable
    if _postgres_unreachable is None:
        try:
            return psycopg.connect(POSTGRES_CONNINFO, autocommit=True)
        except psycopg.OperationalError as exc:
            _postgres_unreachable = str(exc).strip()
    message = f"PostgreSQL at 127.0.0.1:5432 is unreachable: {_postgres_unreachable}"
    if os.environ.get("LEDGER_TEST_POSTGRES"):
        pytest.fail(f"{message} (LEDGER_TEST_POSTGRES is set, so PostgreSQL tests must run)", pytrace=False)
    pytest.skip(message)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database for one test; its SQLAlchemy URL."""
    name = f"ledger_test_{uuid.uuid4().hex[:16]}"
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL_TEMPLATE.format(database=name)
    finally:
        # FORCE ends connections a failed test may have left open.
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    """A database URL for a chain store: an empty SQLite file, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'chain.db'}"
    else:
        with postgres_database() as url:
            yield url

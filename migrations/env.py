"""Alembic environment of the chain store.

Two ways in:
- migrations.upgrade(store) hands over the store's own connection in
  `config.attributes["connection"]` (so an in-memory SQLite database, which lives
  only on that connection, can be migrated);
- the `alembic` command line from the repository root (alembic.ini), on the URL
  given by `-x url=...` or the ini file's sqlalchemy.url.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from ledger.schema import metadata
from ledger.store import make_engine

config = context.config
if config.config_file_name and "connection" not in config.attributes:
    # Only the command line configures logging; a node keeps its own.
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # The store's SQLite engine issues BEGIN itself, so SQLite DDL is
        # transactional there too: a failed migration leaves nothing half done.
        transactional_ddl=True,
    )


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            connection.execution_options(ledger_write=True)
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

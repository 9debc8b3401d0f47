"""Alembic environment and versions of the chain store schema (ledger/schema.py), and
the upgrade a node runs on start.

The upgrade lives here, not in ledger/store.py, because env.py imports the store:
the store is the ground floor and knows only the revision it expects
(ledger.schema.SCHEMA_REVISION), not the scripts that produce it.  A package, so the
script directory ships with an installed node and is found through this module's
location.
"""

from __future__ import annotations

from pathlib import Path

from ledger.store import ChainStore


def migrations_dir() -> Path:
    """The Alembic script directory, wherever this package is installed."""
    return Path(__file__).resolve().parent


def alembic_config():
    """An Alembic configuration for the scripts of this package (no ini file needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(store: ChainStore) -> None:
    """Bring the store's schema to the newest migration (alembic upgrade head)."""
    from alembic import command

    config = alembic_config()
    with store.schema_connection() as conn:
        # env.py migrates this connection instead of opening its own.
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        if conn.in_transaction():
            conn.commit()


__all__ = ["alembic_config", "head_revision", "migrations_dir", "upgrade"]

"""Stake columns on accounts (ledger.staking.Stake), 0 for every existing account.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Added before proof of stake uses them, so that change needs no migration of its own.
Written out here, not imported from ledger/schema.py, so this revision keeps adding
the same columns after the code moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STAKE_COLUMNS = ("bonded", "unbonding", "release_epoch", "slashed")


def upgrade() -> None:
    # The server default fills the rows already there; SQLite adds such a column in place.
    with op.batch_alter_table("accounts") as batch:
        for name in STAKE_COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    # Revision 0002 has no place for stake: dropping the columns of an account that holds
    # some would destroy value (and undo records that carry stake would no longer decode).
    held = " OR ".join(f"{name} <> 0" for name in STAKE_COLUMNS)
    staked = op.get_bind().execute(sa.text(f"SELECT count(*) FROM accounts WHERE {held}")).scalar_one()
    if staked:
        raise RuntimeError(f"cannot downgrade below 0003: {staked} accounts hold stake, which 0002 cannot store")
    with op.batch_alter_table("accounts") as batch:
        for name in reversed(STAKE_COLUMNS):
            batch.drop_column(name)

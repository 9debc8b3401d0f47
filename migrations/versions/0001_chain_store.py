"""Chain store: blocks, transactions, accounts, undo records, node metadata.

Revision ID: 0001
Revises:
Create Date: 2025-11-27

The schema is written out here, not imported from ledger/schema.py, so this
revision keeps creating the same tables after the code moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blocks",
        sa.Column("height", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("parent", sa.LargeBinary, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("proposer", sa.LargeBinary, nullable=False),
        sa.Column("tx_count", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("header", sa.LargeBinary, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_blocks_hash", "blocks", ["hash"], unique=True)

    op.create_table(
        "transactions",
        sa.Column("id", sa.LargeBinary, primary_key=True),
        sa.Column("height", sa.BigInteger, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("sender", sa.LargeBinary, nullable=False),
        sa.Column("recipient", sa.LargeBinary, nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("fee", sa.BigInteger, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_transactions_height_idx", "transactions", ["height", "idx"], unique=True)
    op.create_index("ix_transactions_sender", "transactions", ["sender", "height", "idx"])
    op.create_index("ix_transactions_recipient", "transactions", ["recipient", "height", "idx"])

    op.create_table(
        "accounts",
        sa.Column("address", sa.LargeBinary, primary_key=True),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("nonce", sa.BigInteger, nullable=False),
    )

    op.create_table(
        "undo",
        sa.Column("height", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )

    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("undo")
    op.drop_table("accounts")
    op.drop_index("ix_transactions_recipient", table_name="transactions")
    op.drop_index("ix_transactions_sender", table_name="transactions")
    op.drop_index("ix_transactions_height_idx", table_name="transactions")
    op.drop_table("transactions")
    op.drop_index("ix_blocks_hash", table_name="blocks")
    op.drop_table("blocks")

"""Evidence of validator misbehaviour recorded by blocks (BFT: conflicting signed votes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Written out here, not imported from ledger/schema.py, so this revision keeps creating
the same table after the code moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence",
        sa.Column("height", sa.BigInteger, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("validator", sa.LargeBinary, nullable=False),
        sa.Column("offence_height", sa.BigInteger, nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("height", "idx", name="pk_evidence"),
    )
    op.create_index("ix_evidence_validator", "evidence", ["validator", "height"])


def downgrade() -> None:
    op.drop_index("ix_evidence_validator", table_name="evidence")
    op.drop_table("evidence")

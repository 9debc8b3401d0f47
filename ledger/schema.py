"""The chain store's schema: the tables the code expects and the migration that makes them.

Alembic owns the schema (`migrations/`); `metadata` and `SCHEMA_REVISION` here are what the
code expects, and tests/test_migrations.py checks that the migrations produce exactly these
tables and end at that revision.  ledger/store.py reads and writes them.
"""

from __future__ import annotations

import sqlalchemy as sa

# Names of constraints and indexes are spelled out so the migration and this
# declaration agree on every backend.

metadata = sa.MetaData()

blocks_table = sa.Table(
    "blocks",
    metadata,
    sa.Column("height", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
    sa.Column("parent", sa.LargeBinary, nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("proposer", sa.LargeBinary, nullable=False),
    sa.Column("tx_count", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),  # bytes of the block's canonical encoding
    sa.Column("header", sa.LargeBinary, nullable=False),  # canonical header encoding
    sa.Column("certificate", sa.LargeBinary, nullable=False),
    sa.Index("ix_blocks_hash", "hash", unique=True),
)

transactions_table = sa.Table(
    "transactions",
    metadata,
    sa.Column("id", sa.LargeBinary, primary_key=True),
    sa.Column("height", sa.BigInteger, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("sender", sa.LargeBinary, nullable=False),  # 20-byte address, not the public key
    sa.Column("recipient", sa.LargeBinary, nullable=False),
    sa.Column("nonce", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),  # canonical signed encoding
    sa.Index("ix_transactions_height_idx", "height", "idx", unique=True),
    sa.Index("ix_transactions_sender", "sender", "height", "idx"),
    sa.Index("ix_transactions_recipient", "recipient", "height", "idx"),
)

accounts_table = sa.Table(
    "accounts",
    metadata,
    sa.Column("address", sa.LargeBinary, primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("nonce", sa.BigInteger, nullable=False),
    # ledger.staking.Stake, all 0 for an account without stake (migration 0003)
    sa.Column("bonded", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("unbonding", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("release_epoch", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("slashed", sa.BigInteger, nullable=False, server_default="0"),
)

undo_table = sa.Table(
    "undo",
    metadata,
    sa.Column("height", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # ledger.state.encode_undo
)

evidence_table = sa.Table(
    "evidence",
    metadata,
    sa.Column("height", sa.BigInteger, nullable=False),  # of the block that records it
    sa.Column("idx", sa.Integer, nullable=False),  # its position in that block
    sa.Column("validator", sa.LargeBinary, nullable=False),
    sa.Column("offence_height", sa.BigInteger, nullable=False),
    sa.Column("round", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # the engine's encoding of the proof
    sa.PrimaryKeyConstraint("height", "idx", name="pk_evidence"),
    sa.Index("ix_evidence_validator", "validator", "height"),
)

meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

TX_COLUMNS = ("id", "height", "idx", "sender", "recipient", "nonce", "amount", "fee", "raw")
BLOCK_COLUMNS = ("height", "hash", "parent", "timestamp", "proposer", "tx_count", "size", "header", "certificate")
ACCOUNT_COLUMNS = ("address", "balance", "nonce", "bonded", "unbonding", "release_epoch", "slashed")

# The newest migration, the one `metadata` describes; a new revision in
# migrations/versions changes both (tests/test_migrations.py holds them together).
SCHEMA_REVISION = "0003"

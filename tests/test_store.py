"""The chain store, on SQLite and on PostgreSQL (the `store_url` fixture of conftest.py).

Blocks are real: signed transfers between dev keys, headers built on their parent,
effects computed by the in-memory State, which the store must then agree with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.address import address_of
from ledger.block import Block, build_header
from ledger.codec import MAX_AMOUNT
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.staking import Stake
from ledger.state import BlockEffects, State
from ledger.store import (
    ChainStore,
    ChainStoreError,
    GenesisMismatch,
    NotInitialized,
    KEPT_BLOCK_TRANSACTIONS,
    NotNextBlock,
    SchemaOutOfDate,
    StoreConflict,
    account_transactions_query,
    make_engine,
    parse_url,
)
from ledger.transaction import new_transfer
import migrations

KEYS = dev_keys(4)
ADDRESSES = [address_of(key.public_key) for key in KEYS]
PROPOSER = ADDRESSES[0]
# A block reward, so blocks also change an account that sent nothing.
GENESIS = dataclasses.replace(dev_genesis(PROPOSER, accounts=4), block_reward=7)


def fresh_address(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()[:20]


class Chain:
    """Builds valid blocks on the in-memory State, as a node would before committing."""

    def __init__(self, genesis=GENESIS):
        self.genesis = genesis
        self.state = State.from_allocations(genesis.allocations)
        self.head = genesis.block().header
        self.blocks: list[Block] = []

    def next_block(self, transfers, proposer: bytes = PROPOSER, parent=None) -> tuple[Block, BlockEffects]:
        """transfers: (sender key index, recipient address, amount, fee)."""
        nonces: dict[int, int] = {}
        transactions = []
        for sender, recipient, amount, fee in transfers:
            nonce = nonces.get(sender, self.state.get(ADDRESSES[sender])[1])
            nonces[sender] = nonce + 1
            transactions.append(new_transfer(KEYS[sender], self.genesis.chain_id, nonce, recipient, amount, fee))
        parent = parent or self.head
        header = build_header(self.genesis.chain_id, parent, parent.timestamp + 1000, transactions, proposer)
        block = Block(header, tuple(transactions))
        return block, self.state.apply(block.transactions, proposer, self.genesis.block_reward)

    def accept(self, block: Block, effects: BlockEffects) -> None:
        self.state.commit(effects)
        self.head = block.header
        self.blocks.append(block)

    def revert(self, undo) -> None:
        self.state.revert(undo)
        self.blocks.pop()
        self.head = self.blocks[-1].header if self.blocks else self.genesis.block().header

    def commit(self, store: ChainStore, transfers, certificate: bytes = b"") -> tuple[Block, BlockEffects]:
        block, effects = self.next_block(transfers)
        store.commit_block(block, effects, certificate)
        self.accept(block, effects)
        return block, effects


@pytest.fixture
def store(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    store.initialize(GENESIS)
    yield store
    store.close()


def snapshot(store: ChainStore) -> dict:
    """Everything a failed write must leave untouched."""
    head = store.head()
    return {
        "head": head,
        "meta_head": store.get_meta("head"),
        "accounts": store.load_accounts(),
        "headers": store.headers(None, 1000),
        "blocks": [store.block(h).encode() for h in range(head.height + 1)],
    }


# --- genesis -------------------------------------------------------------------------------------


def test_initialize_stores_genesis_and_reopening_finds_it(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    migrations.upgrade(store)  # already at head: nothing to do
    store.initialize(GENESIS)
    genesis_block = GENESIS.block()
    assert store.head() == genesis_block.header
    assert store.block(0).encode() == genesis_block.encode()
    assert store.block_by_hash(genesis_block.hash).encode() == genesis_block.encode()
    assert store.get_meta("genesis_hash") == GENESIS.hash
    assert store.get_meta("head") == genesis_block.hash
    assert store.load_accounts() == State.from_allocations(GENESIS.allocations).accounts
    store.close()

    reopened = ChainStore(store_url)
    reopened.initialize(GENESIS)  # same genesis: a no-op
    assert reopened.head() == genesis_block.header
    assert reopened.load_accounts() == State.from_allocations(GENESIS.allocations).accounts
    reopened.close()


def test_a_different_genesis_is_refused_naming_both_hashes(store):
    other = dataclasses.replace(GENESIS, chain_id="another-chain")
    before = snapshot(store)
    with pytest.raises(GenesisMismatch) as raised:
        store.initialize(other)
    assert GENESIS.hash.hex() in str(raised.value)
    assert other.hash.hex() in str(raised.value)
    assert snapshot(store) == before


def test_initialize_before_upgrade_is_refused(store_url):
    store = ChainStore(store_url)
    try:
        with pytest.raises(SchemaOutOfDate, match="upgrade"):
            store.initialize(GENESIS)
    finally:
        store.close()


def test_commit_before_initialize_is_refused(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    block, effects = Chain().next_block([(1, ADDRESSES[2], 10, 1)])
    try:
        with pytest.raises(NotInitialized):
            store.commit_block(block, effects)
        assert store.head() is None
        assert store.load_accounts() == {}
    finally:
        store.close()


# --- committing and reading back -----------------------------------------------------------------


def test_committed_blocks_read_back_exactly(store):
    chain = Chain()
    stranger = fresh_address("stranger")
    first, _ = chain.commit(store, [(1, ADDRESSES[2], 100, 3), (1, stranger, 50, 2), (2, ADDRESSES[1], 7, 0)], b"cert-1")
    empty, _ = chain.commit(store, [])
    third, _ = chain.commit(store, [(3, ADDRESSES[3], 5, 1), (2, stranger, 1, 1)], b"cert-3")

    assert store.head() == third.header
    assert store.get_meta("head") == third.hash
    for block in (first, empty, third):
        assert store.block(block.height).encode() == block.encode()
        assert store.block_by_hash(block.hash).encode() == block.encode()
        assert store.block_header(block.height) == block.header
        assert store.block_header_by_hash(block.hash) == block.header
        assert store.block_size(block.height) == len(block.encode())
    assert store.certificate(1) == b"cert-1"
    assert store.certificate(2) == b""
    assert store.certificate(3) == b"cert-3"
    assert store.block(4) is None and store.block_header(4) is None and store.block_size(4) is None
    assert store.block_by_hash(bytes(32)) is None and store.block_header_by_hash(bytes(32)) is None

    assert [h.height for h in store.headers(None, 2)] == [3, 2]
    assert [h.height for h in store.headers(2, 10)] == [1, 0]
    assert store.headers(0, 10) == []

    for block in (first, third):
        for index, tx in enumerate(block.transactions):
            stored = store.transaction(tx.id)
            assert stored.tx.encode() == tx.encode()
            assert (stored.height, stored.index) == (block.height, index)
            assert stored.block_hash == block.hash
            assert stored.timestamp == block.header.timestamp
    assert store.transaction(bytes(32)) is None

    assert store.load_accounts() == chain.state.accounts
    assert store.account(stranger) == chain.state.get(stranger) == (51, 0, None)
    assert store.account(PROPOSER) == chain.state.get(PROPOSER)
    assert store.account(fresh_address("nobody")) is None


def test_account_history_pages_newest_first_through_cursors(store):
    chain = Chain()
    me = ADDRESSES[1]
    for round_ in range(4):
        chain.commit(store, [
            (1, ADDRESSES[2], 10 + round_, 1),  # sent
            (2, me, 3, 0),  # received
            (3, ADDRESSES[2], 1, 0),  # someone else's
            (1, me, 2, 0),  # to oneself: listed once
        ])
    expected = [
        (block.height, index)
        for block in chain.blocks
        for index, tx in enumerate(block.transactions)
        if address_of(tx.sender) == me or tx.recipient == me
    ]
    expected.sort(reverse=True)
    assert len(expected) == 12

    pages, cursor = [], None
    while True:
        page = store.account_transactions(me, cursor, 5)
        if not page:
            break
        assert len(page) <= 5
        pages.append(page)
        cursor = (page[-1].height, page[-1].index)
    assert [len(page) for page in pages] == [5, 5, 2]
    listed = [(stored.height, stored.index) for page in pages for stored in page]
    assert listed == expected
    first = pages[0][0]
    assert first.tx.encode() == chain.blocks[first.height - 1].transactions[first.index].encode()
    assert first.block_hash == chain.blocks[first.height - 1].hash
    assert store.account_transactions(me, None, 0) == []
    assert store.account_transactions(fresh_address("nobody"), None, 10) == []


def test_account_history_walks_the_sender_and_recipient_indexes(store, store_url):
    compiled_engine = make_engine(store_url)
    query = account_transactions_query(ADDRESSES[1], (10, 2), 20)
    compiled = query.compile(dialect=compiled_engine.dialect)
    try:
        with compiled_engine.connect() as conn:
            if compiled_engine.dialect.name == "sqlite":
                params = tuple(compiled.params[name] for name in compiled.positiontup)
                plan = " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params))
                assert "SCAN transactions" not in plan  # no full scan of the table anywhere
            else:
                # An empty table makes any plan cheap; forbid sequential scans to see the index path.
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " | ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params))
                assert "Seq Scan on transactions" not in plan
    finally:
        compiled_engine.dispose()
    assert "ix_transactions_sender" in plan
    assert "ix_transactions_recipient" in plan


# --- refusals and atomicity ----------------------------------------------------------------------


def test_a_block_not_extending_the_head_is_refused(store):
    chain = Chain()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    before = snapshot(store)

    skipping, effects = chain.next_block([(2, ADDRESSES[3], 1, 0)])
    skipping = Block(dataclasses.replace(skipping.header, height=3), skipping.transactions)
    with pytest.raises(NotNextBlock, match="height 3"):
        store.commit_block(skipping, effects)

    sibling, effects = chain.next_block([(2, ADDRESSES[3], 1, 0)], parent=GENESIS.block().header)
    sibling = Block(dataclasses.replace(sibling.header, height=2), sibling.transactions)
    with pytest.raises(NotNextBlock, match="parent"):
        store.commit_block(sibling, effects)

    assert snapshot(store) == before
    assert store.transaction(skipping.transactions[0].id) is None


def test_a_block_whose_header_miscounts_its_transactions_is_refused(store):
    block, effects = Chain().next_block([(1, ADDRESSES[2], 10, 1)])
    wrong = Block(dataclasses.replace(block.header, tx_count=2), block.transactions)
    before = snapshot(store)
    with pytest.raises(ChainStoreError, match="declares 2"):
        store.commit_block(wrong, effects)
    assert snapshot(store) == before


def test_commit_is_all_or_nothing_when_it_fails_midway(store):
    chain = Chain()
    stored_block, _ = chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    before = snapshot(store)

    # Block 2 writes its block row and a first, new transaction before its second
    # transaction collides with one already stored in block 1.
    fresh, effects = chain.next_block([(2, ADDRESSES[3], 4, 1)])
    replayed = (fresh.transactions[0], stored_block.transactions[0])
    header = build_header(GENESIS.chain_id, chain.head, chain.head.timestamp + 1000, list(replayed), PROPOSER)
    with pytest.raises(StoreConflict):
        store.commit_block(Block(header, replayed), effects)

    assert snapshot(store) == before
    assert store.transaction(fresh.transactions[0].id) is None
    assert store.block_header_by_hash(header.hash) is None
    # The store is still usable, and block 1's undo record was not disturbed.
    chain.commit(store, [(2, ADDRESSES[3], 4, 1)])
    assert store.load_accounts() == chain.state.accounts
    store.revert_head()
    assert snapshot(store) == before


def test_a_database_error_in_a_block_write_comes_out_as_sqlalchemys(store):
    """Block and meta writes run on the driver's own cursor; its errors must still be the
    SQLAlchemy errors callers catch (the CLI's clear messages, the commit retry), and the
    write must change nothing."""
    chain = Chain()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    before = snapshot(store)
    block, effects = chain.next_block([(2, ADDRESSES[3], 4, 1)])
    with store._writing() as conn:  # a column the insert names is gone, as after a bad migration
        conn.exec_driver_sql("ALTER TABLE undo RENAME COLUMN data TO data_gone")
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            store.commit_block(block, effects)
        assert not isinstance(raised.value, sa.exc.IntegrityError)
    finally:
        with store._writing() as conn:
            conn.exec_driver_sql("ALTER TABLE undo RENAME COLUMN data_gone TO data")
    assert snapshot(store) == before
    store.commit_block(block, effects)  # the connection went back to the pool usable
    assert store.head().hash == block.hash


def test_only_a_sqlite_store_with_no_write_under_way_writes_at_once(store, store_url):
    """The runtime writes small blocks on its event loop only when nothing could make it
    wait: never over a network, never behind another write."""
    assert store.writes_at_once() == store_url.startswith("sqlite")
    with store._write_lock:
        assert not store.writes_at_once()
    assert store.writes_at_once() == store_url.startswith("sqlite")


def test_revert_head_restores_the_exact_prior_accounts(store):
    chain = Chain()
    newcomer = fresh_address("newcomer")
    genesis_accounts = store.load_accounts()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)], b"cert")
    after_first = store.load_accounts()
    second, second_effects = chain.commit(store, [(2, newcomer, 30, 2), (1, ADDRESSES[3], 5, 0)])
    assert newcomer in store.load_accounts()

    reverted, undo = store.revert_head()
    assert reverted.encode() == second.encode()
    assert undo == second_effects.undo
    assert undo[newcomer] is None
    assert store.load_accounts() == after_first  # the account the block created is gone again
    assert store.head() == chain.blocks[0].header
    assert store.get_meta("head") == chain.blocks[0].hash
    assert all(store.transaction(tx.id) is None for tx in second.transactions)
    assert store.block(2) is None and store.block_by_hash(second.hash) is None

    chain.state.revert(undo)
    assert chain.state.accounts == after_first

    store.revert_head()
    assert store.load_accounts() == genesis_accounts
    assert store.head() == GENESIS.block().header
    with pytest.raises(ChainStoreError, match="genesis"):
        store.revert_head()

    # A different block 1 now extends genesis.
    other = Chain()
    other.commit(store, [(3, newcomer, 8, 0)])
    assert store.load_accounts() == other.state.accounts


def test_accounts_with_stake_round_trip_through_rows_undo_records_and_reverts(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    store.initialize(GENESIS)
    chain = Chain()
    staker = ADDRESSES[1]
    # No transaction sets stake yet: place it in the state as proof of stake will, and let
    # a block carry the account to the store.  Large values check the BIGINT columns.
    stake = Stake(bonded=MAX_AMOUNT, unbonding=1, release_epoch=2**40, slashed=3)
    balance, nonce, _ = chain.state.get(staker)
    chain.state.accounts[staker] = (balance, nonce, stake)
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    assert store.account(staker) == chain.state.get(staker) == (balance - 11, nonce + 1, stake)
    assert store.undo_record(1)[staker] == (balance, nonce, stake)
    assert store.load_accounts() == chain.state.accounts
    store.close()

    reopened = ChainStore(store_url)
    try:
        assert reopened.load_accounts() == chain.state.accounts
        reopened.revert_head()
        assert reopened.account(staker) == (balance, nonce, stake)
        assert reopened.account(ADDRESSES[2]) == State.from_allocations(GENESIS.allocations).get(ADDRESSES[2])
    finally:
        reopened.close()


def test_a_fresh_store_on_the_same_database_sees_the_same_chain(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    store.initialize(GENESIS)
    chain = Chain()
    for round_ in range(3):
        chain.commit(store, [(1, ADDRESSES[2], 10 + round_, 1), (2, fresh_address(f"r{round_}"), 3, 0)])
    store.set_meta("engine", b"state-7")
    store.close()

    reopened = ChainStore(store_url)
    try:
        migrations.upgrade(reopened)
        reopened.initialize(GENESIS)
        assert reopened.head() == chain.head
        assert reopened.load_accounts() == chain.state.accounts
        assert reopened.get_meta("engine") == b"state-7"
        next_block, _ = chain.commit(reopened, [(3, ADDRESSES[1], 1, 0)])
        assert reopened.head() == next_block.header
    finally:
        reopened.close()


RECIPIENTS = ADDRESSES + [fresh_address(f"fresh {i}") for i in range(3)]
transfer_strategy = st.tuples(
    st.integers(1, 3), st.sampled_from(RECIPIENTS), st.integers(1, 1000), st.integers(0, 5)
)
step_strategy = st.one_of(st.just("revert"), st.lists(transfer_strategy, max_size=4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_strategy, min_size=1, max_size=8))
def test_any_sequence_of_commits_and_reverts_keeps_the_store_equal_to_the_state(steps):
    store = ChainStore("sqlite://")
    try:
        migrations.upgrade(store)
        store.initialize(GENESIS)
        chain = Chain()
        for step in steps:
            if step == "revert":
                if not chain.blocks:
                    with pytest.raises(ChainStoreError):
                        store.revert_head()
                    continue
                reverted, undo = store.revert_head()
                assert reverted.encode() == chain.blocks[-1].encode()
                chain.revert(undo)
            else:
                chain.commit(store, step)
            assert store.head() == chain.head
            assert store.load_accounts() == chain.state.accounts
            assert chain.state.total_supply() == GENESIS.expected_supply(chain.head.height)
    finally:
        store.close()


# --- metadata and bad input ----------------------------------------------------------------------


def test_meta_values_round_trip_and_the_store_keys_are_protected(store):
    assert store.get_meta("engine") is None
    store.set_meta("engine", b"\x00\x01")
    store.set_meta("engine", b"\x02")
    assert store.get_meta("engine") == b"\x02"
    with pytest.raises(ValueError, match="maintained by the store"):
        store.set_meta("head", bytes(32))
    with pytest.raises(ValueError, match="meta key"):
        store.set_meta("", b"x")
    with pytest.raises(ValueError, match="meta key"):
        store.set_meta("k" * 65, b"x")
    with pytest.raises(TypeError):
        store.set_meta("engine", "text")
    assert store.get_meta("head") == GENESIS.block().hash
    assert store.get_meta("engine") == b"\x02"


# What a commit waits for: SQLite's `PRAGMA synchronous`, PostgreSQL's synchronous_commit.
LAX = {"sqlite": "normal", "postgresql": "off"}
DURABLE = {"sqlite": "full", "postgresql": "on"}
SQLITE_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}


class WriteCommits:
    """The sync level each write transaction of one store commits with, read on the
    driver's connection at the commit; `fail_next` makes the next write fail there,
    after its statements and before the database commits them."""

    def __init__(self, store: ChainStore):
        self.url = store.url
        self.backend = store.backend
        self.seen: list[tuple[int, str]] = []  # (driver connection, level)
        self.fail_next = False

    def levels(self) -> list[str]:
        return [level for _, level in self.seen]

    def connections(self) -> set[int]:
        return {connection for connection, _ in self.seen}

    def _on_commit(self, conn) -> None:
        if conn.engine.url != self.url or not conn.get_execution_options().get("ledger_write"):
            return
        driver = conn.connection.dbapi_connection
        if self.backend == "sqlite":
            level = SQLITE_SYNCHRONOUS[driver.execute("PRAGMA synchronous").fetchone()[0]]
        else:
            level = driver.execute("SHOW synchronous_commit").fetchone()[0]
        self.seen.append((id(driver), level))
        if self.fail_next:
            self.fail_next = False
            raise OSError("no space left on device")

    def __enter__(self) -> WriteCommits:
        sa.event.listen(sa.Engine, "commit", self._on_commit)
        return self

    def __exit__(self, *_exc) -> None:
        sa.event.remove(sa.Engine, "commit", self._on_commit)


@pytest.fixture
def lax_store(store_url):
    """A store whose ordinary commits do not wait for the disk to sync: SQLite at NORMAL,
    PostgreSQL in a session with synchronous_commit off (as a server may be set up)."""
    if store_url.startswith("postgresql"):
        store_url += "?options=-c%20synchronous_commit%3Doff"
    store = ChainStore(store_url)
    migrations.upgrade(store)
    store.initialize(GENESIS)
    yield store
    store.close()


def test_a_durable_meta_write_alone_commits_with_a_full_sync(lax_store):
    lax, durable = LAX[lax_store.backend], DURABLE[lax_store.backend]
    chain = Chain()
    with WriteCommits(lax_store) as commits:
        lax_store.set_meta("engine", b"a")
        lax_store.set_meta("engine", b"b", durable=True)
        chain.commit(lax_store, [(1, ADDRESSES[2], 10, 1)])
        lax_store.set_meta("engine", b"c")
    if lax_store.backend == "sqlite":
        # A file database writes durable meta and small blocks on a connection kept for
        # them (the pooled ones, at NORMAL, wrote the other two), each at its own level.
        assert commits.levels() == [lax, lax]
        statements: list[str] = []
        lax_store._kept.connection.set_trace_callback(statements.append)
        lax_store.set_meta("engine", b"d", durable=True)
        chain.commit(lax_store, [(1, ADDRESSES[2], 10, 1)])
        chain.commit(lax_store, [(1, ADDRESSES[2], 10, 1)])
        lax_store.set_meta("engine", b"e", durable=True)
        assert [s for s in statements if s.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT"))] == [
            "PRAGMA synchronous=FULL", "BEGIN IMMEDIATE", "COMMIT",
            "PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE", "COMMIT",
            "PRAGMA synchronous=FULL", "BEGIN IMMEDIATE", "COMMIT"]
        assert lax_store.get_meta("engine") == b"e"
    else:
        assert commits.levels() == [lax, durable, lax, lax]
        # One connection throughout: the durable write put it back to the lax level.
        assert len(commits.connections()) == 1
        assert lax_store.get_meta("engine") == b"c"


def test_a_small_block_on_a_sqlite_file_commits_on_its_kept_connection_a_large_one_through_the_pool(lax_store):
    if lax_store.backend != "sqlite":
        pytest.skip("PostgreSQL writes every block through the pool")
    chain = Chain()
    with WriteCommits(lax_store) as commits:
        chain.commit(lax_store, [(1, ADDRESSES[2], 1, 0)] * KEPT_BLOCK_TRANSACTIONS)
        assert commits.levels() == []
        kept = lax_store._kept.connection
        assert kept is not None
        chain.commit(lax_store, [(1, ADDRESSES[2], 1, 0)] * (KEPT_BLOCK_TRANSACTIONS + 1))
        assert commits.levels() == ["normal"]
    assert lax_store._kept.connection is kept
    assert lax_store.head().hash == chain.head.hash
    assert [lax_store.block(height).header.tx_count for height in (1, 2)] == [KEPT_BLOCK_TRANSACTIONS,
                                                                            KEPT_BLOCK_TRANSACTIONS + 1]


def test_a_durable_meta_value_round_trips_and_outlives_the_store(store_url):
    store = ChainStore(store_url)
    migrations.upgrade(store)
    store.initialize(GENESIS)
    store.set_meta("engine", b"\x00signed h=7 r=0", durable=True)
    assert store.get_meta("engine") == b"\x00signed h=7 r=0"
    store.close()
    reopened = ChainStore(store_url)
    try:
        assert reopened.get_meta("engine") == b"\x00signed h=7 r=0"
        with pytest.raises(ValueError, match="maintained by the store"):
            reopened.set_meta("head", bytes(32), durable=True)
    finally:
        reopened.close()


def test_a_durable_meta_write_on_in_memory_sqlite():
    with ChainStore("sqlite://") as store:
        migrations.upgrade(store)
        store.set_meta("engine", b"x", durable=True)
        assert store.get_meta("engine") == b"x"


def test_a_failed_durable_write_keeps_the_previous_value_and_restores_the_lax_level(lax_store):
    if lax_store.backend == "sqlite":
        pytest.skip("A SQLite file writes durably on the connection kept for small writes: the next test")
    lax, durable = LAX[lax_store.backend], DURABLE[lax_store.backend]
    lax_store.set_meta("engine", b"old", durable=True)
    with WriteCommits(lax_store) as commits:
        commits.fail_next = True
        with pytest.raises(OSError, match="no space"):
            lax_store.set_meta("engine", b"new", durable=True)
        assert lax_store.get_meta("engine") == b"old"
        lax_store.set_meta("other", b"x")
    assert commits.levels() == [durable, lax]
    assert len(commits.connections()) == 1


def test_a_failed_durable_sqlite_write_keeps_the_previous_value_and_the_next_one_lands(tmp_path):
    store = ChainStore(f"sqlite:///{tmp_path / 'chain.db'}")
    try:
        migrations.upgrade(store)
        store.set_meta("engine", b"old", durable=True)
        synced = store._kept.connection
        # The disk is full for that connection: no page beyond those the file has.
        synced.execute(f"PRAGMA max_page_count={synced.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sa.exc.OperationalError, match="full"):
            store.set_meta("engine", bytes(1 << 20), durable=True)
        assert store.get_meta("engine") == b"old"
        store.set_meta("engine", b"new", durable=True)  # on a new connection
        assert store._kept.connection is not synced and store.get_meta("engine") == b"new"
    finally:
        store.close()
    with ChainStore(f"sqlite:///{tmp_path / 'chain.db'}") as reopened:
        assert reopened.get_meta("engine") == b"new"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.block(-1),
        lambda s: s.block_header(True),
        lambda s: s.block_by_hash(b"short"),
        lambda s: s.block_header_by_hash("00" * 32),
        lambda s: s.transaction(b"\x00" * 31),
        lambda s: s.headers(None, -1),
        lambda s: s.headers(-5, 10),
        lambda s: s.account(b"\x00" * 21),
        lambda s: s.account_transactions(b"\x00" * 20, (1,), 10),
        lambda s: s.account_transactions(b"\x00" * 20, (1, -1), 10),
        lambda s: s.account_transactions(b"\x00" * 20, None, -1),
        lambda s: s.certificate(2**63),
    ],
)
def test_bad_arguments_get_a_clear_error(store, call):
    with pytest.raises(ValueError):
        call(store)


def test_an_unsupported_or_malformed_database_url_is_refused():
    with pytest.raises(ChainStoreError, match="unsupported database"):
        ChainStore("mysql://localhost/chain")
    with pytest.raises(ChainStoreError, match="not a database URL"):
        ChainStore("chain.db")


def test_a_plain_postgresql_url_means_the_psycopg_driver():
    assert parse_url("postgresql://postgres@127.0.0.1/chain").drivername == "postgresql+psycopg"
    assert parse_url("sqlite:///chain.db").drivername == "sqlite"


# --- concurrency and the in-memory store ---------------------------------------------------------


def read_while_committing(store: ChainStore, blocks: int = 8) -> None:
    """Readers on other threads must always see whole blocks while the writer commits."""
    chain = Chain()
    stop = threading.Event()
    failures: list[BaseException] = []
    reads = [0]

    def reader():
        try:
            while not stop.is_set():
                head = store.head()
                block = store.block(head.height)
                # The block may be newer than `head`, never torn or missing.
                assert block is not None and block.height >= head.height
                assert len(block.transactions) == block.header.tx_count
                store.account_transactions(ADDRESSES[1], None, 5)
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(blocks):
            chain.commit(store, [(1, ADDRESSES[2], 1, 0), (2, ADDRESSES[1], 1, 0)] * 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]
    assert reads[0] > 0
    assert store.head() == chain.head
    assert store.load_accounts() == chain.state.accounts


def test_readers_on_other_threads_see_whole_blocks(store):
    read_while_committing(store)


def test_in_memory_sqlite_store_works_across_threads():
    store = ChainStore("sqlite://")
    try:
        migrations.upgrade(store)
        store.initialize(GENESIS)
        read_while_committing(store)
        assert store.schema_revision() is not None
    finally:
        store.close()


def test_a_missing_parent_directory_is_created(tmp_path):
    path = tmp_path / "deep" / "er" / "chain.db"
    store = ChainStore(f"sqlite:///{path}")
    try:
        migrations.upgrade(store)
        store.initialize(GENESIS)
        assert path.exists()
        plain = sa.create_engine(f"sqlite:///{path}")
        with plain.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        plain.dispose()
    finally:
        store.close()


def test_reorganize_swaps_branches_in_one_transaction_or_not_at_all(store):
    ours = Chain()
    ours.commit(store, [(1, ADDRESSES[2], 10, 1)])
    ours.commit(store, [(2, ADDRESSES[3], 20, 1)])
    fork = ours.blocks[0].header

    # Their branch forks after block 1 and is two blocks long.
    theirs = Chain()
    theirs.accept(*theirs.next_block([(1, ADDRESSES[2], 10, 1)]))
    branch = []
    for transfer in ([(3, ADDRESSES[1], 7, 2)], [(2, fresh_address("theirs"), 9, 0)]):
        block, effects = theirs.next_block(transfer, proposer=fresh_address("their miner"))
        theirs.accept(block, effects)
        branch.append((block, effects, b"", ()))

    # A branch whose second block collides with a stored transaction fails whole: our chain stays.
    before = snapshot(store)
    collide_txs = (branch[1][0].transactions[0], ours.blocks[0].transactions[0])
    bad_header = build_header(GENESIS.chain_id, branch[0][0].header, branch[0][0].header.timestamp + 1000,
                              list(collide_txs), PROPOSER)
    with pytest.raises(StoreConflict):
        store.reorganize(fork.height, [branch[0], (Block(bad_header, collide_txs), branch[1][1], b"", ())])
    assert snapshot(store) == before

    reverted = store.reorganize(fork.height, branch)
    assert [block.encode() for block, _ in reverted] == [ours.blocks[1].encode()]
    assert store.head() == branch[-1][0].header
    assert store.load_accounts() == theirs.state.accounts
    assert store.transaction(ours.blocks[1].transactions[0].id) is None
    assert store.undo_record(3) == branch[1][1].undo and store.undo_record(9) is None


def test_evidence_is_stored_with_its_block_listed_by_validator_and_reverted_with_it(store):
    from ledger.evidence import EvidenceRecord

    chain = Chain()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    records = [EvidenceRecord(ADDRESSES[3], 1, 0, "duplicate_vote", b"proof-a"),
               EvidenceRecord(ADDRESSES[0], 1, 2, "duplicate_proposal", b"proof-b")]
    block, effects = chain.next_block([])
    store.commit_block(block, effects, b"", records)
    chain.accept(block, effects)
    assert store.evidence() == [(2, 1, records[1]), (2, 0, records[0])]
    assert store.evidence(ADDRESSES[3]) == [(2, 0, records[0])]
    assert store.evidence(before=(2, 0)) == []
    # Pages end inside a block and go on from there: the cursor is (height, position).
    assert store.evidence(limit=1) == [(2, 1, records[1])]
    assert store.evidence(before=(2, 1), limit=1) == [(2, 0, records[0])]
    store.revert_head()
    assert store.evidence() == []


def test_commit_blocks_writes_a_run_of_blocks_in_one_transaction_or_none(store):
    chain = Chain()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    first, first_effects = chain.next_block([(2, ADDRESSES[3], 20, 1)])
    chain.accept(first, first_effects)
    second, second_effects = chain.next_block([(3, ADDRESSES[1], 7, 2)])
    # The second block repeats a stored transaction: the database refuses, the first is not kept.
    colliding = (second.transactions[0], chain.blocks[0].transactions[0])
    bad_header = build_header(GENESIS.chain_id, first.header, first.header.timestamp + 1000, list(colliding), PROPOSER)
    before = snapshot(store)
    with pytest.raises(StoreConflict):
        store.commit_blocks([(first, first_effects, b"", ()), (Block(bad_header, colliding), second_effects, b"", ())])
    assert snapshot(store) == before
    store.commit_blocks([(first, first_effects, b"", ()), (second, second_effects, b"cert", ())])
    chain.accept(second, second_effects)
    assert store.head() == second.header
    assert store.load_accounts() == chain.state.accounts
    assert store.certificate(second.height) == b"cert"


def test_commit_blocks_leaves_an_account_changed_by_several_blocks_as_the_last_one_left_it(store):
    """A run's account changes go in one statement: the last block's value of an account wins,
    and each block keeps its own undo record."""
    chain = Chain()
    chain.commit(store, [(1, ADDRESSES[2], 10, 1)])
    run = []
    for nonce in range(3):  # the same sender and recipient in each block
        block, effects = chain.next_block([(1, ADDRESSES[2], 5 + nonce, 1)])
        chain.accept(block, effects)
        run.append((block, effects, b"", ()))
    store.commit_blocks(run)
    assert store.head() == run[-1][0].header
    assert store.load_accounts() == chain.state.accounts
    reverted, _ = store.revert_head()
    assert reverted.header == run[-1][0].header
    assert store.head() == run[-2][0].header

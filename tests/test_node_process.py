"""Real `ledger node` processes: crash safety, graceful shutdown, restarts and the banner.

The crash test is the issue's: a node that is committing blocks under a steady stream of
transfers is killed with SIGKILL at a random moment, several times over, and after each
restart the chain it serves must be consistent, every transaction it had reported final
must still be final in the same block, and the balances must equal a replay of the chain
from genesis.  It runs on SQLite and on PostgreSQL (a database created for the test and
dropped after it).  After each kill the store the dead node left is read directly (the
SQLite file, or the PostgreSQL database through SQL, by the same queries): consistent,
and holding exactly the supply the rules allow at its height.  The random seed is
printed; CRASH_TEST_SEED=<seed> replays a run's choices (the kill instants still depend
on the machine's timing).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy.engine import make_url

from api.client import ApiError, LedgerClient, NodeUnreachable
from api.schemas import BlockOut, transaction_from_json
from consensus.registry import create_engine
from ledger.address import address_of, decode_address
from ledger.block import Block, BlockHeader
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.hdkeys import DEV_MNEMONIC, dev_keys
from ledger.staking import Stake
from ledger.state import State
from ledger.transaction import new_transfer
from tests.nodeproc import NodeProcess, NodeProcesses, wait_for

pytestmark = pytest.mark.integration

DEV_KEYS = dev_keys(10)
CRASH_ROUNDS = 4


@pytest.fixture
def nodes(tmp_path):
    with NodeProcesses(tmp_path) as group:
        yield group


# --- a steady stream of transfers --------------------------------------------------------------


@dataclass
class Problems:
    """What went wrong in the load threads; the test asserts it stays empty."""

    items: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str) -> None:
        with self.lock:
            self.items.append(text)


class TransferLoad:
    """Signed transfers from several dev keys in batches, one thread per group of senders,
    each batch submitted with wait=final so a thread keeps one batch in flight.

    Remembers every transaction the node reported final and, for the last final one of each
    batch, the block the node said holds it (asked right after the answer)."""

    def __init__(self, url: str, genesis: Genesis, senders: list[PrivateKey], recipients: list[bytes],
                 rng: random.Random, threads: int = 3, per_sender: int = 50):
        self.url = url
        self.genesis = genesis
        self.senders = senders
        self.recipients = recipients
        self.rng = rng
        self.thread_count = threads
        self.per_sender = per_sender
        self.nonces: dict[bytes, int] = {}
        self.final: set[str] = set()
        self.final_blocks: dict[str, tuple[int, str]] = {}
        self.submitted = 0
        self.problems = Problems()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def sync_nonces(self, client: LedgerClient) -> None:
        """Next nonces from the chain: what was pending when the node died is gone."""
        for key in self.senders:
            self.nonces[key.public_key] = client.account(self.genesis.address(address_of(key.public_key))).nonce

    def start(self) -> None:
        self._stop.clear()
        groups = [self.senders[i::self.thread_count] for i in range(self.thread_count)]
        self._threads = [
            threading.Thread(target=self._run, args=(group, random.Random(self.rng.random())), daemon=True)
            for group in groups if group
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)
            assert not thread.is_alive(), "a load thread did not stop"

    @property
    def final_count(self) -> int:
        with self._lock:
            return len(self.final)

    def _batch(self, group: list[PrivateKey], rng: random.Random) -> list:
        batch = []
        for key in group:
            nonce = self.nonces[key.public_key]
            for offset in range(self.per_sender):
                batch.append(new_transfer(key, self.genesis.chain_id, nonce + offset, rng.choice(self.recipients),
                                          rng.randint(1, 10_000), rng.randint(0, 7)))
        return batch

    def _run(self, group: list[PrivateKey], rng: random.Random) -> None:
        with LedgerClient(self.url, timeout=10) as client:
            while not self._stop.is_set():
                batch = self._batch(group, rng)
                try:
                    answer = client.submit_batch(batch, wait_final=True, timeout=10)
                except NodeUnreachable:
                    return  # killed under us: the point of the test
                except ApiError as exc:
                    self.problems.add(f"batch refused as a whole: {exc}")
                    return
                finals = []
                for tx, result in zip(batch, answer.results):
                    if not result.accepted:
                        self.problems.add(f"transfer {tx.id.hex()} (nonce {tx.nonce}) refused: {result.problem}")
                        return
                    if result.status == "final":
                        finals.append(result.id)
                with self._lock:
                    self.final.update(finals)
                    self.submitted += len(batch)
                for key in group:
                    self.nonces[key.public_key] += self.per_sender
                if finals:
                    try:
                        record = client.transaction(finals[-1])
                    except NodeUnreachable:
                        return
                    if record.status != "final":
                        self.problems.add(f"{finals[-1]} was reported final, then {record.status}")
                        return
                    with self._lock:
                        self.final_blocks[finals[-1]] = (record.block_height, record.block_hash)


# --- the chain as the API shows it, checked and replayed -------------------------------------


class ChainReplica:
    """Every block the node serves, checked link by link and replayed from genesis."""

    def __init__(self, genesis: Genesis):
        self.genesis = genesis
        self.engine = create_engine(genesis, None)
        self.headers: list[BlockHeader] = [genesis.block().header]
        self.state = State.from_allocations(genesis.allocations)
        self.tx_block: dict[str, tuple[int, str]] = {}

    @property
    def height(self) -> int:
        return len(self.headers) - 1

    def catch_up(self, client: LedgerClient) -> None:
        head = client.node_info().height
        assert head >= self.height, f"the chain shrank from {self.height} to {head}"
        listed = self._listed_hashes(client)
        assert sorted(listed) == list(range(head + 1)), "block heights are not contiguous from genesis"
        for header in self.headers:
            assert listed[header.height] == header.hash.hex(), f"block {header.height} changed after a restart"
        for height in range(self.height + 1, head + 1):
            self._add(client.block(height))
            assert listed[height] == self.headers[-1].hash.hex()

    @staticmethod
    def _listed_hashes(client: LedgerClient) -> dict[int, str]:
        listed: dict[int, str] = {}
        before = None
        while True:
            page = client.blocks(before=before, limit=100)
            for header in page.blocks:
                assert header.height not in listed, f"block {header.height} listed twice"
                listed[header.height] = header.hash
            if page.next is None:
                return listed
            before = page.next

    def _add(self, out: BlockOut) -> None:
        genesis = self.genesis
        parent = self.headers[-1]
        header = BlockHeader(
            chain_id=out.chain_id, height=out.height, parent=bytes.fromhex(out.parent), timestamp=out.timestamp,
            tx_root=bytes.fromhex(out.tx_root), tx_count=out.tx_count,
            proposer=decode_address(out.proposer, genesis.address_prefix), extra=bytes.fromhex(out.extra),
            seal=bytes.fromhex(out.seal), version=out.version,
        )
        assert header.hash.hex() == out.hash, f"block {out.height}: its fields do not hash to its hash"
        assert header.height == parent.height + 1
        assert header.parent == parent.hash, f"block {out.height} does not link to block {parent.height}"
        assert out.status == "final"
        assert out.transactions is not None
        transactions = tuple(transaction_from_json(tx, genesis.address_prefix) for tx in out.transactions)
        assert len(transactions) == out.tx_count, f"block {out.height}: tx_count {out.tx_count}, {len(transactions)} held"
        Block(header, transactions).check_structure(genesis.chain_id, genesis.max_block_transactions)  # Merkle root
        self.engine.verify_seal(header, parent)
        effects = self.state.apply(transactions, header.proposer, genesis.block_reward)
        self.state.commit(effects)
        self.headers.append(header)
        for tx in transactions:
            assert tx.id.hex() not in self.tx_block, f"transaction {tx.id.hex()} is in two blocks"
            self.tx_block[tx.id.hex()] = (header.height, out.hash)

    def check_accounts(self, client: LedgerClient) -> None:
        """The node's balances and nonces are the replay's, and no value appeared or vanished."""
        genesis = self.genesis
        expected_supply = genesis.expected_supply(self.height)
        assert self.state.total_supply() == expected_supply
        served_total = 0
        for address, (balance, nonce, _) in sorted(self.state.accounts.items()):
            account = client.account(genesis.address(address))
            assert (account.balance, account.nonce) == (balance, nonce), f"account {genesis.address(address)}"
            served_total += account.balance
        assert served_total == expected_supply


@contextmanager
def stored_chain(db_url: str) -> Iterator:
    """A read-only DB-API connection to a node's store, one snapshot for all its reads.
    SQLite and psycopg connections both answer `execute(sql).fetchone()/fetchall()`, so
    `check_store` runs the same SQL on either.  SQLite's pages are checked here too."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        db = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, isolation_level=None)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            db.execute("BEGIN")
            yield db
        finally:
            db.close()
    else:
        import psycopg

        with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True) as db:
            # A killed node's server sessions outlive it for a moment, and one may still
            # run the COMMIT the node sent before it died: read once they are all gone.
            wait_for(lambda: db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone() == (0,),
                timeout=10, message="the dead node's database sessions to end")
            db.autocommit = False
            db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            db.read_only = True
            yield db


def check_store(db_url: str, genesis: Genesis, replica: ChainReplica | None = None) -> int:
    """The store of a node that is not running (stopped, or just killed): the head is the
    top block, heights are contiguous, undo records and transaction rows agree with the
    blocks, and the accounts hold exactly the supply the rules allow at that height
    (balances plus stake, against `Genesis.expected_supply`).  With `replica`, the store
    is exactly the replayed chain: same top block, transactions and accounts.  Returns
    the stored height."""
    with stored_chain(db_url) as db:
        (head,) = db.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
        top_height, top_hash = db.execute("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        assert bytes(head) == bytes(top_hash), f"the head is not the top block {top_height}"
        assert db.execute("SELECT count(*), min(height) FROM blocks").fetchone() == (top_height + 1, 0)
        assert db.execute("SELECT count(*), min(height), max(height) FROM undo").fetchone() == (
            (top_height, 1, top_height) if top_height else (0, None, None))
        mismatched = db.execute(
            "SELECT b.height FROM blocks b LEFT JOIN transactions t ON t.height = b.height "
            "GROUP BY b.height, b.tx_count HAVING count(t.id) != b.tx_count"
        ).fetchall()
        assert mismatched == [], f"blocks whose transaction rows do not match tx_count: {mismatched[:5]}"
        (stored_supply,) = db.execute("SELECT coalesce(sum(balance + bonded + unbonding), 0) FROM accounts").fetchone()
        assert int(stored_supply) == genesis.expected_supply(top_height), (
            f"at height {top_height} the accounts hold {stored_supply}, the rules allow {genesis.expected_supply(top_height)}")
        if replica is not None:
            assert (top_height, bytes(top_hash)) == (replica.height, replica.headers[-1].hash)
            assert db.execute("SELECT count(*) FROM transactions").fetchone() == (len(replica.tx_block),)
            accounts = {bytes(address): rest for address, *rest in db.execute(
                "SELECT address, balance, nonce, bonded, unbonding, release_epoch, slashed FROM accounts").fetchall()}
            replayed = {address: [balance, nonce, *(stake or Stake())]
                        for address, (balance, nonce, stake) in replica.state.accounts.items()}
            assert accounts == replayed, "the stored accounts are not the replay's"
    return top_height


def start_load(node: NodeProcess, rng: random.Random, senders: int = 6) -> tuple[Genesis, TransferLoad]:
    genesis = Genesis.load(node.data_dir / "genesis.json")
    strangers = [rng.randbytes(20) for _ in range(2)]  # accounts the chain has never seen
    recipients = [address_of(key.public_key) for key in DEV_KEYS] + strangers
    load = TransferLoad(node.url, genesis, DEV_KEYS[:senders], recipients, rng)
    return genesis, load


# --- crash safety -----------------------------------------------------------------------------


def test_sigkill_while_committing_keeps_a_consistent_chain_and_every_final_transaction(nodes, store_url):
    """On SQLite and on PostgreSQL (`store_url`: a file, or a database made for the test)."""
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.randrange(2**32))
    print(f"crash test seed {seed} on {make_url(store_url).get_backend_name()}")
    rng = random.Random(seed)
    node = nodes.start("crash", "--db", store_url)
    genesis, load = start_load(node, rng)
    with LedgerClient(node.url) as client:
        info = client.node_info()
    assert (info.chain_id, info.genesis_hash, info.engine) == (genesis.chain_id, genesis.hash.hex(), "solo")
    replica = ChainReplica(genesis)

    for round_number in range(1, CRASH_ROUNDS + 1):
        with LedgerClient(node.url) as client:
            load.sync_nonces(client)
        final_before = load.final_count
        load.start()
        # Blocks are committing once transfers come back final; pull the plug a random
        # while later, with batches in flight and the engine building or writing blocks.
        wait_for(lambda: load.final_count >= final_before + 200 or load.problems.items, timeout=20,
                 message=f"transfers to become final in round {round_number}")
        time.sleep(rng.uniform(0.05, 0.6))
        node.kill()
        load.stop()
        assert load.problems.items == []
        assert load.final_count > final_before, "nothing became final: the round proved nothing"
        # What the dead node left: consistent, and value neither created nor destroyed.
        stored_height = check_store(store_url, genesis)

        node.start()
        with LedgerClient(node.url) as client:
            replica.catch_up(client)
            assert replica.height == stored_height, f"stored height {stored_height}, served {replica.height} after the restart"
            replica.check_accounts(client)
            lost = load.final - replica.tx_block.keys()
            assert not lost, f"round {round_number}: {len(lost)} transactions reported final are gone, e.g. {sorted(lost)[:3]}"
            for tx_id, block in load.final_blocks.items():
                assert replica.tx_block[tx_id] == block, f"{tx_id} moved from block {block} to {replica.tx_block[tx_id]}"
            for tx_id in rng.sample(sorted(load.final), min(30, len(load.final))):
                record = client.transaction(tx_id)
                assert record.status == "final"
                assert (record.block_height, record.block_hash) == replica.tx_block[tx_id]
        print(f"round {round_number}: height {replica.height}, {load.final_count} final of {load.submitted} submitted")

    assert node.stop(signal.SIGTERM) == 0
    check_store(store_url, genesis, replica)


# --- graceful shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_under_load_exits_zero_promptly_and_cleanly(nodes, stop_signal):
    rng = random.Random(int(stop_signal))
    node = nodes.start("graceful")
    genesis, load = start_load(node, rng)
    with LedgerClient(node.url) as client:
        load.sync_nonces(client)
    load.start()
    wait_for(lambda: load.final_count >= 100 or load.problems.items, timeout=20, message="transfers to become final")
    started = time.monotonic()
    code = node.stop(stop_signal, timeout=15)  # one signal: a second one would force the exit
    elapsed = time.monotonic() - started
    load.stop()
    assert load.problems.items == [], node.stderr[-3000:]
    assert code == 0, node.stderr[-2000:]
    assert elapsed < 4.0, f"exit took {elapsed:.1f} s with requests in flight"
    assert "Traceback" not in node.stderr
    assert "node stopped at height" in node.stderr

    node.start()
    replica = ChainReplica(genesis)
    with LedgerClient(node.url) as client:
        replica.catch_up(client)
        replica.check_accounts(client)
    assert not load.final - replica.tx_block.keys()
    assert node.stop() == 0
    check_store(f"sqlite:///{node.data_dir / 'chain.db'}", genesis, replica)


def test_open_events_stream_and_waiting_request_do_not_delay_the_exit(nodes):
    """Long-lived requests end when the node stops: an events stream is closed, and a
    wait=final request for a transaction that cannot become final (its nonce leaves a
    gap) is answered with its status, instead of holding the exit for the server's
    graceful-shutdown timeout and then failing with a 500."""
    node = nodes.start("events")
    connected = threading.Event()
    ended = threading.Event()
    events: list[str] = []

    def listen() -> None:
        try:
            with httpx.stream("GET", f"{node.url}/v1/events", timeout=httpx.Timeout(5, read=30)) as response:
                connected.set()
                for line in response.iter_lines():
                    events.append(line)
        except httpx.HTTPError:
            pass
        finally:
            ended.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10), "the events stream did not open"
    # One transfer, so the stream is known to be live when the signal comes.
    key = DEV_KEYS[0]
    genesis = Genesis.load(node.data_dir / "genesis.json")
    with LedgerClient(node.url) as client:
        answer = client.submit(new_transfer(key, genesis.chain_id, 0, address_of(DEV_KEYS[1].public_key), 5), wait_final=True, timeout=10)
    assert answer.status == "final"
    wait_for(lambda: any(line.startswith("event: block") for line in events), timeout=5, message="a block event")

    gapped = new_transfer(key, genesis.chain_id, 5, address_of(DEV_KEYS[1].public_key), 5)
    waited: dict[str, object] = {}

    def wait_for_final() -> None:
        with LedgerClient(node.url) as client:
            try:
                waited["answer"] = client.submit(gapped, wait_final=True, timeout=30)
            except (ApiError, NodeUnreachable) as exc:
                waited["answer"] = exc

    waiter = threading.Thread(target=wait_for_final, daemon=True)
    waiter.start()
    with LedgerClient(node.url) as client:
        wait_for(lambda: client.mempool().size == 1, timeout=5, message="the gapped transfer to be pending")

    started = time.monotonic()
    assert node.stop(signal.SIGTERM, timeout=10) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"the node took {elapsed:.1f} s to exit with long-lived requests open"
    assert ended.wait(5), "the events stream was not closed"
    listener.join(5)
    waiter.join(5)
    answer = waited.get("answer")
    assert getattr(answer, "status", None) == "pending" and getattr(answer, "timed_out", False), answer
    # The stream ended as a complete response, not one the server had to call unfinished.
    assert "without completing response" not in node.stderr, node.stderr[-2000:]


# --- restarts and the banner ------------------------------------------------------------------


def banner_private_keys(stdout: str) -> dict[int, str]:
    """`(i) <64 hex>` lines of the banner's private keys section."""
    section = stdout.split("Private keys", 1)
    assert len(section) == 2, f"no private keys section in the banner:\n{stdout}"
    keys = {}
    for line in section[1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("(") and parts[0].endswith(")"):
            keys[int(parts[0][1:-1])] = parts[1]
    return keys


def test_restart_keeps_the_chain_and_the_node_key_and_prints_the_dev_accounts(nodes):
    node = nodes.start("restart [dev]")  # brackets: the banner must print paths, not read them as markup
    genesis = Genesis.load(node.data_dir / "genesis.json")
    node_key = (node.data_dir / "node_key").read_text()
    assert (node.data_dir / "node_key").stat().st_mode & 0o777 == 0o600
    with LedgerClient(node.url) as client:
        first = client.node_info()
        recipient = address_of(DEV_KEYS[9].public_key)
        transfers = [new_transfer(DEV_KEYS[2], genesis.chain_id, nonce, recipient, 1000 + nonce, 3) for nonce in range(5)]
        batch = client.submit_batch(transfers, wait_final=True, timeout=10)
        assert [result.status for result in batch.results] == ["final"] * 5
        before = client.node_info()
        head_before = client.latest_block()
        balance_before = client.account(genesis.address(recipient)).balance
    assert before.height >= 1

    expected_keys = {i: key.secret.hex() for i, key in enumerate(DEV_KEYS)}
    assert banner_private_keys(node.stdout) == expected_keys
    assert "(new dev chain)" in node.stdout
    for key in DEV_KEYS:
        assert genesis.address(address_of(key.public_key)) in node.stdout
    assert node.url in node.stdout
    assert str(node.data_dir) in node.stdout
    assert f'mnemonic "{DEV_MNEMONIC}"' in node.stdout  # on one line, whatever the terminal width

    assert node.stop() == 0
    node.start()
    assert (node.data_dir / "node_key").read_text() == node_key
    with LedgerClient(node.url) as client:
        after = client.node_info()
        assert (after.node_id, after.genesis_hash, after.chain_id) == (first.node_id, first.genesis_hash, first.chain_id)
        assert (after.height, after.head_hash) == (before.height, before.head_hash)
        assert client.latest_block().transactions == head_before.transactions
        assert client.account(genesis.address(recipient)).balance == balance_before
        for tx in transfers:
            assert client.transaction(tx.id.hex()).status == "final"
        assert client.account(genesis.address(address_of(DEV_KEYS[2].public_key))).nonce == 5
    assert "(new dev chain)" not in node.stdout
    assert banner_private_keys(node.stdout) == expected_keys
    assert node.stop() == 0

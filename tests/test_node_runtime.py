"""The node runtime in-process: submitted transfers become final blocks, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

from api.service import Accepted, Rejection
from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.config import NodeConfig
from node.runtime import Node

KEYS = dev_keys(3)
NODE_KEY = PrivateKey(bytes(31) + b"\x07")
GENESIS = dev_genesis(NODE_KEY.public_key)
CHAIN = GENESIS.chain_id
BOB = address_of(PrivateKey(bytes(31) + b"\x09").public_key)


def make_node(tmp_path, store_url: str) -> Node:
    return Node(NodeConfig(data_dir=tmp_path, db=store_url), GENESIS, NODE_KEY)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))


def test_transfers_become_final_and_survive_a_restart(tmp_path, store_url):
    async def scenario():
        node = make_node(tmp_path, store_url)
        await node.start()
        txs = [new_transfer(KEYS[0], CHAIN, nonce, BOB, 100, fee=3) for nonce in range(50)]
        results = await node.submit(txs)
        assert all(isinstance(r, Accepted) and not r.duplicate for r in results)
        statuses = await node.wait_final([tx.id for tx in txs], timeout=30)
        assert set(statuses.values()) == {"final"}
        record = node.transaction(txs[-1].id)
        assert record.status == "final" and record.block_height >= 1
        assert node.account(BOB).balance == 50 * 100
        sender = node.account(address_of(KEYS[0].public_key))
        assert sender.nonce == 50 and sender.balance == GENESIS.allocations[address_of(KEYS[0].public_key)] - 50 * 103
        # Fees went to the authority; nothing was created or destroyed.
        assert node.state.get(address_of(NODE_KEY.public_key))[0] == 50 * 3
        assert node.state.total_supply() == GENESIS.expected_supply(node.head.height)
        head = node.head
        await node.stop()
        return head

    head = run(scenario())

    async def reopen():
        node = make_node(tmp_path, store_url)
        await node.start()
        try:
            assert node.head == head
            assert node.account(BOB).balance == 5000
            block = node.block(head.height)
            assert block is not None and block.status == "final"
        finally:
            await node.stop()

    run(reopen())


def test_rejections_change_nothing(tmp_path):
    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            before = node.account(address_of(KEYS[1].public_key))
            huge = GENESIS.allocations[address_of(KEYS[1].public_key)] + 1
            bad = [
                new_transfer(KEYS[1], "other-chain", 0, BOB, 1),
                new_transfer(KEYS[1], CHAIN, 5_000_000, BOB, 1),
                new_transfer(KEYS[1], CHAIN, 0, BOB, huge),
            ]
            results = await node.submit(bad)
            assert [r.reason for r in results] == ["wrong_chain", "nonce_too_far", "insufficient_balance"]
            assert all(isinstance(r, Rejection) for r in results)
            assert node.account(address_of(KEYS[1].public_key)) == before
            assert node.mempool(10).size == 0 and node.head.height == 0
        finally:
            await node.stop()

    run(scenario())


def test_blocks_fill_up_to_the_genesis_limit_and_stay_ordered(tmp_path):
    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            txs = [new_transfer(KEYS[i % 3], CHAIN, i // 3, BOB, 1) for i in range(300)]
            results = await node.submit(txs)
            assert all(isinstance(r, Accepted) for r in results)
            await node.wait_final([tx.id for tx in txs], timeout=30)
            heights = [node.transaction(tx.id).block_height for tx in txs]
            for k in range(3):
                mine = heights[k::3]
                assert mine == sorted(mine)  # a sender's nonces never land out of order
            listed = node.blocks(None, 100)
            assert [b.header.height for b in listed] == list(range(node.head.height, -1, -1))
            assert sum(b.header.tx_count for b in listed) == 300
        finally:
            await node.stop()

    run(scenario())


def commits_heard(node: Node) -> list:
    """Every BlockCommitted the node's engine takes from now on, in order."""
    from consensus import engine as ev

    heard = []
    handle = node.engine.handle
    node.engine.handle = lambda event: (heard.append(event) if isinstance(event, ev.BlockCommitted) else None,
                                        handle(event))[1]
    return heard


def test_the_engine_hears_at_each_commit_how_many_transactions_still_wait(tmp_path):
    """A BlockCommitted from the runtime's own commit counts what the mempool holds once the
    block's transactions are gone, so an engine can build the next block on it at once."""

    async def scenario():
        genesis = dataclasses.replace(GENESIS, max_block_transactions=64)
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}"), genesis, NODE_KEY)
        heard = commits_heard(node)
        await node.start()
        try:
            txs = [new_transfer(KEYS[i % 3], CHAIN, i // 3, BOB, 1) for i in range(300)]
            assert all(isinstance(r, Accepted) for r in await node.submit(txs))
            await node.wait_final([tx.id for tx in txs], timeout=30)
        finally:
            await node.stop()
        return heard

    heard = [event for event in run(scenario()) if event.header.height > 0]
    assert len(heard) >= 5  # the genesis limit splits them
    left = 300
    for event in heard:
        left -= event.header.tx_count
        assert event.txs_ready == left
    assert left == 0


def test_the_count_a_commit_carries_is_taken_again_when_the_engine_takes_it(tmp_path):
    """Transactions may leave the mempool between a commit and the engine's turn (expiry, or a
    bad one dropped): the engine hears what is ready when it takes the event, as with
    TxsAvailable, so a count gone stale starts no empty block."""
    from consensus import engine as ev

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        heard = commits_heard(node)
        await node.start()
        try:
            node.head_changed(ev.BlockCommitted(node.now_ms(), node.head, tuple(node.recent), (), 5))
            node.head_changed(ev.BlockCommitted(node.now_ms(), node.head, tuple(node.recent)))
            for _ in range(100):
                if len(heard) == 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            await node.stop()
        return heard

    assert [event.txs_ready for event in run(scenario())] == [0, None]  # nothing waits; None stays None


def test_a_small_block_is_written_on_the_loop_and_a_large_one_on_the_store_thread(tmp_path, monkeypatch):
    """Handing a write of a few transfers to the store thread and back costs about as much as
    the write; a large block goes there so the loop admits transactions meanwhile."""
    monkeypatch.setattr("node.runtime.INLINE_WRITE_TRANSACTIONS", 5)

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            real_commit, writers = node.store.commit_block, []

            def commit_block(block, *args):
                writers.append((len(block.transactions), threading.current_thread() is threading.main_thread()))
                return real_commit(block, *args)

            node.store.commit_block = commit_block
            small = [new_transfer(KEYS[0], CHAIN, nonce, BOB, 1) for nonce in range(3)]
            await node.submit(small)
            await node.wait_final([tx.id for tx in small], timeout=10)
            large = [new_transfer(KEYS[1], CHAIN, nonce, BOB, 1) for nonce in range(40)]
            await node.submit(large)
            await node.wait_final([tx.id for tx in large], timeout=10)
            assert writers and all(on_loop == (count <= 5) for count, on_loop in writers), writers
            assert any(on_loop for _, on_loop in writers) and not all(on_loop for _, on_loop in writers)
            assert node.account(BOB).balance == 43
        finally:
            await node.stop()

    run(scenario())


def test_a_block_the_store_fails_to_write_once_is_written_on_a_retry(tmp_path, monkeypatch):
    monkeypatch.setattr("node.runtime.COMMIT_RETRY_SECONDS", (0.01, 0.01))

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            real_commit, failures = node.store.commit_block, []

            def flaky(*args):
                if not failures:
                    failures.append(args[0].height)
                    raise OSError("disk I/O error")
                return real_commit(*args)

            node.store.commit_block = flaky
            tx = new_transfer(KEYS[0], CHAIN, 0, BOB, 100)
            await node.submit([tx])
            assert (await node.wait_final([tx.id], timeout=10)) == {tx.id: "final"}
            assert failures == [1] and node.failure is None
            assert node.store.head().height == node.head.height == 1
        finally:
            await node.stop()

    run(scenario())


def test_a_commit_whose_answer_was_lost_is_not_written_twice(tmp_path, monkeypatch):
    """The database committed, then the connection dropped before it said so: the retry
    finds the block stored and goes on instead of failing on a height already taken."""
    monkeypatch.setattr("node.runtime.COMMIT_RETRY_SECONDS", (0.01, 0.01))

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            real_commit, calls = node.store.commit_block, []

            def commits_then_loses_the_answer(*args):
                calls.append(args[0].height)
                real_commit(*args)
                if len(calls) == 1:
                    raise OSError("server closed the connection unexpectedly")

            node.store.commit_block = commits_then_loses_the_answer
            tx = new_transfer(KEYS[0], CHAIN, 0, BOB, 100)
            await node.submit([tx])
            assert (await node.wait_final([tx.id], timeout=10)) == {tx.id: "final"}
            assert calls == [1] and node.failure is None
            assert node.store.head().height == node.head.height == 1
        finally:
            await node.stop()

    run(scenario())


def test_a_block_the_store_cannot_write_stops_the_node_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr("node.runtime.COMMIT_RETRY_SECONDS", (0.01, 0.01))

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        stopped = asyncio.Event()
        node.on_failure = lambda reason: stopped.set()
        await node.start()
        attempts = []

        def broken(*args):
            attempts.append(args[0].height)
            raise OSError("disk I/O error")

        node.store.commit_block = broken
        tx = new_transfer(KEYS[0], CHAIN, 0, BOB, 100)
        await node.submit([tx])
        await asyncio.wait_for(stopped.wait(), timeout=10)
        assert attempts == [1, 1, 1]  # the first try and one a pause
        assert "cannot store block 1" in node.failure and "disk I/O error" in node.failure
        assert node.health() == node.failure  # /healthz says why until the process is gone
        # Nothing moved in memory: the head, the state and the mempool are the stored ones.
        assert node.head.height == 0 and node.transaction(tx.id).status == "pending"
        assert (await node.submit([new_transfer(KEYS[1], CHAIN, 0, BOB, 1)]))[0].reason == "shutting_down"
        await node.stop()

    run(scenario())


def test_set_head_switches_back_to_an_ancestor_within_the_engine_bounds(tmp_path, monkeypatch):
    """The engine decides the head (SetHead): the runtime rewinds to the block it names, its
    transactions go back to the mempool, and a final block is never given up."""
    from consensus import engine as ev

    async def scenario():
        node = make_node(tmp_path, f"sqlite:///{tmp_path / 'chain.db'}")
        await node.start()
        try:
            for nonce in range(3):
                tx = new_transfer(KEYS[0], CHAIN, nonce, BOB, 100)
                await node.submit([tx])
                assert (await node.wait_final([tx.id], timeout=10)) == {tx.id: "final"}
            assert node.head.height == 3
            first = node.store.block_header(1)
            # Solo blocks are final at commit: the engine cannot take them back.
            await node.importer.set_head(first.hash)
            assert node.head.height == 3 and node.importer.reorgs == []
            # An engine whose blocks are not final yet may (proof of stake's fork choice).
            monkeypatch.setattr(node.engine, "finalized_height", lambda head_height, head_hash=None: 0)
            node.finalized_height = 0
            undone = [tx.id for height in (2, 3) for tx in node.store.block(height).transactions]
            await node._perform(ev.SetHead(first.hash))
            reorg = node.importer.reorgs[-1]
            assert (reorg["fork_height"], reorg["depth"], reorg["returned_to_mempool"]) == (1, 2, 2)
            assert reorg["old_head"] != first.hash.hex() and reorg["new_head"] == first.hash.hex()
            assert all(node.transaction(tx_id) is not None for tx_id in undone)
            await node.importer.set_head(b"\x11" * 32)  # a block it does not hold: nothing moves
            assert len(node.importer.reorgs) == 1
            # The returned transactions wait for a block like any others: the engine hears of them.
            monkeypatch.undo()
            assert (await node.wait_final(undone, timeout=10)) == {tx_id: "final" for tx_id in undone}
            assert node.head.height >= 2
        finally:
            await node.stop()

    run(scenario())


def test_health_reports_a_head_that_stands_still_while_transactions_are_ready(tmp_path):
    """A solo follower cut off from its producer admits transfers that never go into a block:
    after `stall_seconds` /healthz's reason says so; a node with nothing to do stays healthy."""
    now = [GENESIS.timestamp + 1_000]
    follower_key = PrivateKey(bytes(31) + b"\x08")
    config = NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}", stall_seconds=30)

    async def scenario():
        node = Node(config, GENESIS, follower_key, clock=lambda: now[0])
        await node.start()
        try:
            assert node.health() is None
            now[0] += 60_000
            assert node.health() is None, "an idle node with nothing to do is healthy however long it idles"
            results = await node.submit([new_transfer(KEYS[0], CHAIN, n, BOB, 1) for n in range(3)])
            assert all(isinstance(r, Accepted) for r in results)
            now[0] += 29_000
            assert node.health() is None, "transactions that just arrived have not waited yet"
            now[0] += 1_000
            assert node.health() == "no new block for 90 s while 3 transactions have waited 30 s"
            node.head_moved_ms = now[0] - 10_000  # as if a block had come in 10 s ago
            assert node.health() is None
            now[0] += 20_000
            assert node.health() == "no new block for 30 s while 3 transactions have waited 50 s"
        finally:
            await node.stop()

    run(scenario())


def test_a_signal_of_transactions_a_block_took_meanwhile_starts_no_empty_block(tmp_path):
    """TxsAvailable waits in the engine's queue; if a block took those transactions first, the
    engine must not hear a stale "transactions are ready" and seal an empty block."""
    from consensus import engine as ev
    from node.testnet import TESTNET_CHAIN_ID, make_genesis

    # One BFT validator: round 0 of a height waits for transactions, and a signal ends the wait.
    genesis = make_genesis("bft", NODE_KEY, validators=[NODE_KEY])
    node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}"), genesis, NODE_KEY)

    async def scenario():
        await node.start()
        try:
            [result] = await node.submit([new_transfer(KEYS[0], TESTNET_CHAIN_ID, 0, BOB, 100, fee=3)])
            assert isinstance(result, Accepted)
            for _ in range(200):
                if node.head.height == 1 and not len(node.pool):
                    break
                await asyncio.sleep(0.01)
            assert node.head.height == 1
            node.feed(ev.TxsAvailable(node.now_ms(), 1))  # the stale signal: nothing is ready now
            await asyncio.sleep(0.3)
            return node.head.height
        finally:
            await node.stop()

    assert asyncio.run(scenario()) == 1, "no empty block for a signal whose transactions are gone"

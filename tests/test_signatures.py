"""Signature checks in worker processes, for a sync answer and for a submitted batch: the
verdicts, the fallbacks, and that a verdict can only save work (a bad signature is refused,
with its reason, with or without the pool)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from dataclasses import replace

from api.service import Accepted, Rejection

from ledger.hdkeys import dev_keys
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from ledger.transaction import new_transfer
from node.config import NodeConfig
from node.runtime import Node
from node.signatures import (
    ADMIT_AHEAD, CHUNK, InlineChecks, SignatureChecks, SignaturePool, check_raw, decode_request, encode_request, serve,
    workers_for,
)
from tests.nodeproc import ROOT, child_env

KEY = dev_keys(1)[0]
CHAIN = "signatures-test"


async def verified(checks: SignatureChecks, transactions) -> frozenset[bytes]:
    """One batch of `transactions`, as the importer runs one: the ids found good."""
    batch = checks.begin(len(transactions))
    if batch is None:
        return frozenset()
    batch.add(transactions)
    return await batch.finish()


def transfers(count: int, chain: str = CHAIN):
    return [new_transfer(KEY, chain, nonce, b"\x02" * 20, 1) for nonce in range(count)]


def with_bad_signature(tx):
    signature = bytearray(tx.signature)
    signature[5] ^= 0x01
    return replace(tx, signature=bytes(signature))


def test_check_raw_gives_one_verdict_per_transaction():
    good, other_chain = transfers(2), transfers(1, "another-chain")
    bad = with_bad_signature(good[1])
    raws = [good[0].encode(), bad.encode(), other_chain[0].encode(), b"\x00not a transaction"]
    assert check_raw(CHAIN, False, raws) == bytes([1, 0, 0, 0])
    assert check_raw(CHAIN, False, []) == b""


async def started(pool: SignaturePool) -> None:
    """Until the pool's workers answer (an interpreter each)."""
    for _ in range(400):
        if pool._live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the signature workers did not start")


def test_a_worker_answers_each_request_in_order_and_ends_with_its_input():
    good = transfers(3)
    bad = with_bad_signature(good[2])
    requests = [[good[0].encode(), bad.encode()], [], [b"junk", good[1].encode(), good[2].encode()]]
    assert [decode_request(encode_request(raws)[4:]) for raws in requests] == requests
    answers = io.BytesIO()
    serve(CHAIN, False, os.getppid(), io.BytesIO(b"".join(encode_request(raws) for raws in requests)), answers)
    assert answers.getvalue() == b"".join(len(v).to_bytes(4, "big") + v for v in (b"\x01\x00", b"", b"\x00\x01\x01"))


def test_the_pool_size_follows_the_cores_unless_set():
    assert workers_for(0) == 0 and workers_for(3) == 3
    assert workers_for(-1) == max(0, len(os.sched_getaffinity(0)) - 1)


def test_inline_checks_verify_nothing_ahead():
    assert asyncio.run(verified(InlineChecks(), transfers(3))) == frozenset()


def test_the_pool_returns_exactly_the_good_ones_and_starts_no_work_for_a_small_answer():
    txs = transfers(3 * CHUNK)
    bad_positions = {0, CHUNK + 7, 3 * CHUNK - 1}  # in a worker's chunk and in the loop's share
    txs = [with_bad_signature(tx) if i in bad_positions else tx for i, tx in enumerate(txs)]
    pool = SignaturePool(1, CHAIN, False)

    async def scenario():
        assert await verified(pool, txs[:CHUNK]) == frozenset(), "too few to be worth a hop"
        assert await verified(pool, txs) == frozenset(), "the first answer does not wait for the workers"
        await started(pool)
        return await verified(pool, txs)

    async def closing():
        try:
            return await scenario()
        finally:
            await pool.close()

    found = asyncio.run(closing())
    assert found == {tx.id for i, tx in enumerate(txs) if i not in bad_positions}


def test_a_worker_that_exits_leaves_the_checks_to_the_block_check():
    pool = SignaturePool(1, CHAIN, False)
    txs = transfers(3 * CHUNK)

    async def scenario():
        await verified(pool, txs)
        await started(pool)
        [worker] = pool._live
        worker.process.kill()
        await asyncio.sleep(0.2)
        after_the_loss = await verified(pool, txs)
        await verified(pool, txs)  # new workers start
        await started(pool)
        assert pool._live[0] is not worker
        try:
            return after_the_loss, await verified(pool, txs)
        finally:
            await pool.close()

    after_the_loss, restarted = asyncio.run(scenario())
    # Nothing is vouched for that was not checked; the block check verifies the rest itself.
    assert after_the_loss < {tx.id for tx in txs}
    assert restarted == {tx.id for tx in txs}


def test_a_worker_whose_node_died_before_it_started_exits_at_once():
    """The race a spawned worker has: its parent can die while its interpreter starts, before
    it asks for the parent-death signal."""
    code = "from node.lifetime import die_with_parent; die_with_parent(1); print('still here')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1 and "still here" not in done.stdout



class _Recorder:
    """A signature pool that records what it is asked to check."""

    def __init__(self):
        self.asked: list[bytes] = []
        self.loop_shares: list[bool] = []

    ahead = True

    def begin(self, expected: int, fewest: int = 0, *, loop_share: bool = True):
        self.loop_shares.append(loop_share)
        return self

    def add(self, transactions):
        self.asked.extend(tx.id for tx in transactions)

    async def finish(self):
        return frozenset(self.asked)


def test_only_the_transactions_of_blocks_whose_header_passed_go_to_the_pool():
    """A peer cannot make the node check signatures behind a header it could not seal: headers
    are checked first, in order, and the pool sees only what follows from the ones that pass."""
    from collections import deque
    from types import SimpleNamespace

    from ledger.block import Block, InvalidBlock, build_header
    from ledger.genesis import dev_genesis
    from node.importer import BlockImporter

    genesis = dev_genesis(KEY.public_key)
    parent = genesis.block().header
    txs = transfers(6)
    good = Block(build_header(CHAIN, parent, parent.timestamp + 1, txs[:2], b"\x01" * 20), tuple(txs[:2]))
    forged = Block(build_header(CHAIN, good.header, parent.timestamp + 2, txs[2:4], b"\x02" * 20), tuple(txs[2:4]))
    after = Block(build_header(CHAIN, forged.header, parent.timestamp + 3, txs[4:], b"\x01" * 20), tuple(txs[4:]))

    def validate_header(block, recent):
        assert block.header.parent == recent[-1].hash, "checked on its own parent"
        if block.header.proposer != b"\x01" * 20:
            raise InvalidBlock("bad_seal", "not the authority's")

    recorder = _Recorder()
    node = SimpleNamespace(pool=set(), recent=deque([parent], maxlen=4), signatures=recorder,
                           validate_header=validate_header)
    headers, good_ids = asyncio.run(BlockImporter(node)._check_ahead([good, forged, after]))
    assert headers == {good.hash}
    assert recorder.asked == [tx.id for tx in txs[:2]] and good_ids == set(recorder.asked)


def test_sync_answers_go_to_the_workers_as_they_arrive_each_on_the_chain_the_one_before_ends():
    """While one answer is written, the workers check the next (the loop takes no share, so
    the store thread does not wait for it); each answer's headers are checked on the chain
    the answer before it ends, and only blocks whose header passed go to the workers."""
    from collections import deque
    from types import SimpleNamespace

    from ledger.block import Block, InvalidBlock, build_header
    from ledger.genesis import dev_genesis
    from node.importer import BlockImporter
    from node.signatures import InlineChecks

    genesis = dev_genesis(KEY.public_key)
    txs = transfers(8)
    chain = [genesis.block()]
    for index, proposer in enumerate((1, 1, 1, 2)):  # the fourth is not the authority's
        parent = chain[-1].header
        body = tuple(txs[2 * index: 2 * index + 2])
        chain.append(Block(build_header(CHAIN, parent, parent.timestamp + 1, list(body), bytes([proposer]) * 20), body))
    checked_on = []

    def validate_header(block, recent):
        assert block.header.parent == recent[-1].hash, "checked on its own parent"
        checked_on.append(block.height)
        if block.header.proposer != b"\x01" * 20:
            raise InvalidBlock("bad_seal", "not the authority's")

    recorder = _Recorder()
    node = SimpleNamespace(pool=set(), recent=deque([chain[0].header], maxlen=4), signatures=recorder,
                           validate_header=validate_header)
    importer = BlockImporter(node)

    async def scenario():
        first = importer.check_early(chain[1:3])
        second = importer.check_early(chain[3:5])  # the first is not imported yet
        unrelated = importer.check_early(chain[2:3])  # follows neither the head nor the last answer
        return await first, await second, unrelated

    first, second, unrelated = asyncio.run(scenario())
    assert checked_on == [1, 2, 3, 4]
    assert recorder.loop_shares == [False, False]
    assert recorder.asked == [tx.id for tx in txs[:6]], "the forged block's transactions are not checked"
    assert first == second == set(recorder.asked) and unrelated is None
    node.signatures = InlineChecks()
    assert importer.check_early(chain[1:3]) is None and checked_on == [1, 2, 3, 4]

    # Under BFT an answer's last block waits for the next one's certificate, so the next
    # answer starts at it again: that one follows on too.
    node.signatures, importer = recorder, BlockImporter(node)
    checked_on.clear()

    async def overlapping():
        first, again = importer.check_early(chain[1:4]), importer.check_early(chain[3:4])
        assert first is not None and again is not None, "both checked ahead"
        return await first, await again

    asyncio.run(overlapping())
    assert checked_on == [1, 2, 3, 3]


def test_a_closed_pool_starts_no_workers_and_a_stop_during_checks_is_not_an_error():
    pool = SignaturePool(1, CHAIN, False)
    txs = transfers(3 * CHUNK)

    async def scenario():
        await verified(pool, txs)  # starts the workers
        await started(pool)
        processes = [worker.process for worker in pool._live]
        pool.workers = 10_000  # the loop's own share rounds to nothing: every chunk waits on the one worker
        checking = asyncio.ensure_future(verified(pool, transfers(20 * CHUNK)))
        await asyncio.sleep(0)  # the jobs are out
        await pool.close()  # the node stops meanwhile
        during = await checking
        after = await verified(pool, txs)
        return during, after, [await process.wait() for process in processes]

    during, after, exits = asyncio.run(scenario())
    assert len(during) < 20 * CHUNK, "the chunks the closed pool dropped are left to the block check"
    assert after == frozenset()
    assert pool._live == [] and pool.begin(10 * CHUNK) is None
    assert all(code is not None for code in exits), "the workers are gone"


def test_a_submitted_batch_is_checked_by_the_workers_and_a_bad_signature_keeps_its_reason(tmp_path):
    """Admission hands a large batch's front to the workers and checks the tail on the loop;
    a bad signature in either share is refused as `bad_signature`, the rest admitted."""
    node_key = PrivateKey(bytes(31) + b"\x07")
    genesis = dev_genesis(node_key.public_key)
    sender = dev_keys(1)[0]
    count = 2 * ADMIT_AHEAD
    bad_positions = {1, count - 2}  # the workers' front and the loop's tail
    txs = [new_transfer(sender, genesis.chain_id, nonce, b"\x02" * 20, 1) for nonce in range(count)]
    txs = [with_bad_signature(tx) if i in bad_positions else tx for i, tx in enumerate(txs)]
    asked: list[int] = []

    async def scenario():
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}", signature_workers=1),
                    genesis, node_key)
        await node.start()
        try:
            assert isinstance(node.signatures, SignaturePool)
            node.signatures.begin(count, ADMIT_AHEAD)  # starts the workers
            await started(node.signatures)
            [worker] = node.signatures._live
            real_check = worker.check
            worker.check = lambda raws: (asked.append(len(raws)), real_check(raws))[1]
            return await node.submit(txs)
        finally:
            await node.stop()

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert asked == [count // 2], "the workers checked the front half"
    assert [i for i, r in enumerate(results) if isinstance(r, Rejection)] == sorted(bad_positions)
    assert all(results[i].reason == "bad_signature" for i in bad_positions)
    assert all(isinstance(r, Accepted) for i, r in enumerate(results) if i not in bad_positions)


def test_a_small_batch_is_checked_on_the_loop(tmp_path):
    node_key = PrivateKey(bytes(31) + b"\x07")
    genesis = dev_genesis(node_key.public_key)
    txs = [new_transfer(dev_keys(1)[0], genesis.chain_id, nonce, b"\x02" * 20, 1) for nonce in range(ADMIT_AHEAD - 1)]

    async def scenario():
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}", signature_workers=1),
                    genesis, node_key)
        await node.start()
        try:
            results = await node.submit(txs)
            await asyncio.sleep(0.1)
            return results, node.signatures._starting
        finally:
            await node.stop()

    results, starting = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all(isinstance(r, Accepted) for r in results)
    assert starting is None, "no worker was started for a batch a hop would not pay for"


def test_a_worker_answering_the_wrong_number_of_verdicts_fails_the_request_instead_of_hanging():
    from node.signatures import WorkerGone, _Worker

    # Reads one request, answers one verdict whatever it was asked.
    code = "import sys; head = sys.stdin.buffer.read(4); sys.stdin.buffer.read(int.from_bytes(head, 'big')); " \
           "sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x01\\x01'); sys.stdout.buffer.flush(); sys.stdin.buffer.read()"

    async def scenario():
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.PIPE)
        worker = _Worker(process)
        try:
            await asyncio.wait_for(worker.check([tx.encode() for tx in transfers(2)]), 10)
        except WorkerGone:
            return worker.alive, await asyncio.wait_for(process.wait(), 10)
        finally:
            await worker.stopped()
        raise AssertionError("a short answer was taken as the verdicts")

    alive, exit_code = asyncio.run(scenario())
    assert not alive and exit_code is not None


def test_a_failed_start_is_tried_again_later_not_at_every_batch(monkeypatch):
    import node.signatures as signatures

    attempts = []

    async def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no more processes")

    monkeypatch.setattr(signatures.asyncio, "create_subprocess_exec", refuse)
    pool = SignaturePool(1, CHAIN, False)

    async def scenario():
        for _ in range(5):
            assert pool.begin(10 * CHUNK) is None
            await asyncio.sleep(0.05)
        pool._retry_at = 0.0  # the back-off has passed
        assert pool.begin(10 * CHUNK) is None
        await asyncio.sleep(0.05)
        await pool.close()

    asyncio.run(scenario())
    assert len(attempts) == 2, "one start, then one more once the back-off passed"


def test_closing_while_the_workers_start_is_quick_and_leaves_none_behind():
    import time

    pool = SignaturePool(2, CHAIN, False)

    async def scenario():
        assert pool.begin(10 * CHUNK) is None  # the start begins
        await asyncio.sleep(0.05)
        launched = list(pool._launched)
        started = time.monotonic()
        await pool.close()
        return time.monotonic() - started, [worker.process.returncode for worker in launched]

    took, exits = asyncio.run(scenario())
    assert took < 5
    assert all(code is not None for code in exits)
    assert pool._live == []

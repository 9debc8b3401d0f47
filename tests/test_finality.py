"""Requests waiting for their transactions to become final (node/finality.py)."""

from __future__ import annotations

import asyncio

import pytest

from node.finality import FinalityWaiters

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def store_says(statuses: dict[bytes, str]):
    async def status_of(tx_id: bytes) -> str:
        return statuses.get(tx_id, "unknown")
    return status_of


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_waiter_is_answered_in_the_loop_turn_after_its_block_is_final():
    """The request's task wakes straight from the commit: a Raft leader answers its client
    before the engine task, which yields once, goes on to its next step."""
    async def scenario():
        waiters = FinalityWaiters()
        request = asyncio.create_task(waiters.wait([A], 30, store_says({}), lambda _: True))
        await asyncio.sleep(0)  # the request registers
        waiters.committed(5, [A], finalized_height=5)
        await asyncio.sleep(0)  # one turn, as the engine task gives
        assert request.done()
        return request.result()

    assert run(scenario()) == {A: "final"}


def test_several_ids_answer_once_all_are_final_and_the_rest_say_what_the_store_says():
    async def scenario():
        waiters = FinalityWaiters()
        both = asyncio.create_task(waiters.wait([A, B], 30, store_says({B: "included"}), lambda _: True))
        await asyncio.sleep(0)
        waiters.committed(5, [A], finalized_height=5)
        await asyncio.sleep(0.01)
        assert not both.done()  # B is not final yet
        waiters.committed(6, [B], finalized_height=6)
        assert await both == {A: "final", B: "final"}
        # At the timeout: final ids say so, the rest what the store says.
        partly = await waiters.wait([A, C], 0.05, store_says({A: "final", C: "pending"}), lambda tx: tx == C)
        assert partly == {A: "final", C: "pending"}
        assert not waiters._waiters  # nothing left behind by the timeout

    run(scenario())


def test_a_block_final_only_later_answers_then():
    """Proof of work: included at 5, final only once the finalized height reaches it."""
    async def scenario():
        waiters = FinalityWaiters()
        request = asyncio.create_task(waiters.wait([A], 30, store_says({}), lambda _: True))
        await asyncio.sleep(0)
        waiters.committed(5, [A], finalized_height=2)
        await asyncio.sleep(0.01)
        assert not request.done()
        waiters.finalized(5)
        assert await request == {A: "final"}

    run(scenario())


def test_dropped_transactions_and_a_stopping_node_answer_at_once_with_the_stores_status():
    async def scenario():
        waiters = FinalityWaiters()
        status_of = store_says({A: "unknown", B: "pending"})
        dropped = asyncio.create_task(waiters.wait([A], 30, status_of, lambda _: True))
        stopping = asyncio.create_task(waiters.wait([B], 30, status_of, lambda _: True))
        await asyncio.sleep(0)
        waiters.dropped([A])
        assert await asyncio.wait_for(dropped, 1) == {A: "unknown"}
        waiters.end()
        assert await asyncio.wait_for(stopping, 1) == {B: "pending"}
        # Once stopping, a new request does not wait at all.
        assert await asyncio.wait_for(waiters.wait([C], 30, status_of, lambda _: True), 1) == {C: "unknown"}

    run(scenario())


def test_a_request_whose_client_left_leaves_no_waiter_behind():
    async def scenario():
        waiters = FinalityWaiters()
        request = asyncio.create_task(waiters.wait([A, B], 30, store_says({}), lambda _: True))
        await asyncio.sleep(0)
        assert set(waiters._waiters) == {A, B}
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert not waiters._waiters
        waiters.committed(5, [A, B], finalized_height=5)  # nobody to answer, nothing raised

    run(scenario())


def test_ids_registered_after_a_store_read_still_wait_when_the_earlier_ones_settle_during_it():
    """Review finding: [pending, on the chain already, pending]: the first one's block commits
    while the second's status is read, and the third was answered at once, not final."""
    async def scenario():
        waiters = FinalityWaiters()
        reading = asyncio.Event()
        release = asyncio.Event()

        async def status_of(tx_id: bytes) -> str:
            if tx_id == B:
                reading.set()
                await release.wait()
                return "final"
            return "pending"

        request = asyncio.create_task(waiters.wait([A, B, C], 30, status_of, lambda tx: tx != B))
        await reading.wait()
        waiters.committed(5, [A], finalized_height=5)  # A settles while B's status is read
        release.set()
        await asyncio.sleep(0.01)
        assert not request.done()  # C is not final yet
        waiters.committed(6, [C], finalized_height=6)
        return await asyncio.wait_for(request, 1)

    assert run(scenario()) == {A: "final", B: "final", C: "final"}


def test_a_request_cancelled_while_it_registers_leaves_no_waiter_behind():
    async def scenario():
        waiters = FinalityWaiters()
        reading = asyncio.Event()

        async def status_of(tx_id: bytes) -> str:
            reading.set()
            await asyncio.sleep(30)
            return "final"

        request = asyncio.create_task(waiters.wait([A, B], 30, status_of, lambda tx: tx == A))
        await reading.wait()  # A registered, B's status being read
        assert set(waiters._waiters) == {A}
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert not waiters._waiters

    run(scenario())

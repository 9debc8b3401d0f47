"""The mempool: admission rules, ordering, eviction, expiry and block bookkeeping."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.address import address_of
from ledger.hdkeys import dev_keys
from ledger.mempool import Mempool, MempoolRejection
from ledger.state import State, apply_transactions
from ledger.transaction import Transaction, new_transfer

CHAIN = "mempool-test"
KEYS = dev_keys(6)
ADDRESSES = [address_of(k.public_key) for k in KEYS]
RECIPIENT = bytes.fromhex("11" * 20)
PROPOSER = bytes.fromhex("22" * 20)
RICH = 10**12


@lru_cache(maxsize=None)
def transfer(sender: int, nonce: int, fee: int = 1, amount: int = 10, chain: str = CHAIN) -> Transaction:
    return new_transfer(KEYS[sender], chain, nonce, RECIPIENT, amount, fee)


def funded_state(balances: dict[int, int] | None = None, nonces: dict[int, int] | None = None) -> State:
    balances = balances if balances is not None else {i: RICH for i in range(len(KEYS))}
    nonces = nonces or {}
    return State({ADDRESSES[i]: (balance, nonces.get(i, 0), None) for i, balance in balances.items()})


def new_pool(state: State | None = None, **options) -> tuple[Mempool, State]:
    state = state if state is not None else funded_state()
    return Mempool(CHAIN, state.get, **options), state


def observable(pool: Mempool) -> tuple:
    """Everything a client can see of the pool."""
    return (
        len(pool),
        [tx.id for tx in pool.snapshot(10_000)],
        [pool.pending_nonce(a) for a in ADDRESSES],
        [pool.pending_count(a) for a in ADDRESSES],
        pool.senders(),
        pool.ready_count(),
        [tx.id for tx in pool.select(10_000)],
    )


def assert_rejected(pool: Mempool, tx: Transaction, reason: str, field: str | None = "<any>", now_ms: int = 0):
    before = observable(pool)
    with pytest.raises(MempoolRejection) as caught:
        pool.add(tx, now_ms)
    assert caught.value.reason == reason, caught.value
    if field != "<any>":
        assert caught.value.field == field
    assert caught.value.message
    assert observable(pool) == before, "a rejected add changed the pool"
    return caught.value


def commit_block(pool: Mempool, state: State, txs: list[Transaction]) -> None:
    """What the node does when a block commits: apply, then tell the mempool."""
    state.commit(apply_transactions(state.accounts, txs, PROPOSER, 0))
    pool.remove_committed(txs)


# --- admission ---------------------------------------------------------------------------

def test_admit_then_resubmit_is_idempotent():
    pool, _ = new_pool()
    tx = transfer(0, 0)
    assert pool.add(tx, 0) is True
    assert pool.add(tx, 5) is False
    assert len(pool) == 1 and tx.id in pool and pool.get(tx.id) == tx
    assert pool.get(transfer(0, 1).id) is None and transfer(0, 1).id not in pool
    assert pool.pending_nonce(ADDRESSES[0]) == 1
    assert pool.pending_count(ADDRESSES[0]) == 1
    assert pool.pending_nonce(ADDRESSES[1]) == 0 and pool.pending_count(ADDRESSES[1]) == 0
    assert pool.senders() == 1 and pool.ready_count() == 1


def test_other_chain_is_rejected():
    pool, _ = new_pool()
    pool.add(transfer(1, 0), 0)
    assert_rejected(pool, transfer(0, 0, chain="other-chain"), "wrong_chain", "chain_id")


def test_bad_signature_is_rejected():
    pool, _ = new_pool()
    pool.add(transfer(1, 0), 0)
    good = transfer(0, 0)
    # A valid low-S signature, but over another message.
    forged = dataclasses.replace(good, signature=transfer(0, 1).signature)
    assert_rejected(pool, forged, "bad_signature", "signature")


def test_high_s_signature_is_rejected():
    pool, _ = new_pool()
    good = transfer(0, 0)
    r, s = good.signature[:32], int.from_bytes(good.signature[32:], "big")
    high = dataclasses.replace(good, signature=r + (crypto.CURVE_ORDER - s).to_bytes(32, "big"))
    assert_rejected(pool, high, "high_s_signature", "signature")
    assert pool.add(good, 0) is True


def test_unsigned_and_zero_amount_are_rejected():
    pool, _ = new_pool()
    unsigned = Transaction(CHAIN, 0, KEYS[0].public_key, RECIPIENT, 10, 1)
    assert_rejected(pool, unsigned, "bad_signature", "signature")
    assert_rejected(pool, transfer(0, 0, amount=0), "zero_amount", "amount")


def test_nonce_too_low_is_a_reused_nonce():
    pool, _ = new_pool(funded_state(nonces={0: 5}))
    assert_rejected(pool, transfer(0, 4), "nonce_too_low", "nonce")
    assert pool.add(transfer(0, 5), 0)


def test_nonce_window_boundary():
    pool, _ = new_pool(funded_state(nonces={0: 3}), nonce_window=10)
    assert_rejected(pool, transfer(0, 13), "nonce_too_far", "nonce")
    assert pool.add(transfer(0, 12), 0)  # committed + window - 1 is the last one admitted
    assert pool.ready_count() == 0  # queued behind a gap


@pytest.mark.parametrize(
    "old_fee, bump, refused, accepted",
    [(100, 10, 109, 110), (0, 10, 0, 1), (5, 10, 5, 6), (7, 0, 7, 8), (1000, 25, 1249, 1250)],
)
def test_replace_by_fee_boundary(old_fee, bump, refused, accepted):
    pool, _ = new_pool(replace_bump_percent=bump)
    original = transfer(0, 0, fee=old_fee)
    pool.add(original, 0)
    pool.add(transfer(0, 1, fee=old_fee), 0)
    error = assert_rejected(pool, transfer(0, 0, fee=refused, amount=11), "replacement_underpriced", "fee")
    assert str(accepted) in error.message  # tells the sender the fee that would do
    replacement = transfer(0, 0, fee=accepted, amount=11)
    assert pool.add(replacement, 1) is True
    assert original.id not in pool and replacement.id in pool
    assert len(pool) == 2 and pool.pending_count(ADDRESSES[0]) == 2
    assert pool.select(10) == [replacement, transfer(0, 1, fee=old_fee)]


def test_balance_covers_everything_pending():
    pool, _ = new_pool(funded_state({0: 100}))
    pool.add(transfer(0, 0, amount=50, fee=10), 0)  # 60
    pool.add(transfer(0, 2, amount=20, fee=0), 0)  # queued ones count too: 80
    assert_rejected(pool, transfer(0, 1, amount=20, fee=1), "insufficient_balance", "amount")
    assert pool.add(transfer(0, 1, amount=19, fee=1), 0)  # exactly 100
    # A replacement is charged the difference only.
    assert_rejected(pool, transfer(0, 0, amount=51, fee=11), "insufficient_balance", "amount")
    assert pool.add(transfer(0, 0, amount=38, fee=11), 0)
    # An account the state does not know has nothing.
    empty, _ = new_pool(State({}))
    assert_rejected(empty, transfer(0, 0), "insufficient_balance")


def test_sender_limit():
    pool, _ = new_pool(per_sender_limit=3)
    for nonce in range(3):
        pool.add(transfer(0, nonce), 0)
    assert_rejected(pool, transfer(0, 3), "sender_limit")
    assert pool.add(transfer(0, 2, fee=5), 0)  # a replacement is not a new slot
    assert pool.add(transfer(1, 0), 0)


def test_signature_is_verified_once_per_id(monkeypatch):
    calls = []
    real_verify = crypto.verify
    monkeypatch.setattr(crypto, "verify", lambda *a: calls.append(1) or real_verify(*a))
    pool, _ = new_pool(funded_state(nonces={0: 5}))
    too_low = transfer(0, 1)
    for _ in range(3):
        assert_rejected(pool, too_low, "nonce_too_low")
    assert len(calls) == 1
    forged = dataclasses.replace(transfer(0, 5), signature=transfer(0, 6).signature)
    for _ in range(3):
        assert_rejected(pool, forged, "bad_signature")
    assert len(calls) == 2
    pool.add(transfer(0, 5), 0)
    pool.add(transfer(0, 5), 0)
    assert len(calls) == 3
    # A caller that verified already (block import, a worker) skips it entirely.
    pool.add(transfer(0, 6), 0, verified=True)
    assert len(calls) == 3


def test_verified_cache_is_bounded():
    pool, _ = new_pool(verified_cache_size=4)
    for nonce in range(10):
        pool.add(transfer(0, nonce), 0)
    assert len(pool._checked) <= 4 and transfer(0, 9).id in pool._checked and transfer(0, 0).id not in pool._checked


def test_add_many_reports_each_outcome():
    pool, _ = new_pool(funded_state(nonces={1: 3}))
    outcomes = pool.add_many([transfer(0, 0), transfer(0, 0), transfer(1, 0), transfer(0, 1)], 0)
    assert outcomes[0] is True and outcomes[1] is False and outcomes[3] is True
    assert isinstance(outcomes[2], MempoolRejection) and outcomes[2].reason == "nonce_too_low"
    assert len(pool) == 2


# --- ordering ----------------------------------------------------------------------------

def test_future_nonce_waits_for_the_gap():
    pool, _ = new_pool()
    for nonce in (0, 2, 3):
        pool.add(transfer(0, nonce), 0)
    assert pool.ready_count() == 1
    assert pool.pending_nonce(ADDRESSES[0]) == 1
    assert pool.select(10) == [transfer(0, 0)]
    pool.add(transfer(0, 1), 0)
    assert pool.ready_count() == 4
    assert pool.pending_nonce(ADDRESSES[0]) == 4
    assert pool.select(10) == [transfer(0, n) for n in range(4)]


def test_arrival_out_of_order_still_selects_in_nonce_order():
    pool, _ = new_pool(funded_state(nonces={0: 7}))
    for nonce in (10, 9, 8):
        pool.add(transfer(0, nonce, fee=nonce), 0)
    assert pool.select(10) == []
    pool.add(transfer(0, 7, fee=1), 0)
    assert pool.select(10) == [transfer(0, 7, fee=1)] + [transfer(0, n, fee=n) for n in (8, 9, 10)]


def test_fee_priority_across_senders_keeps_nonce_order():
    pool, _ = new_pool()
    a0, a1 = transfer(0, 0, fee=1), transfer(0, 1, fee=1)
    b0, b1 = transfer(1, 0, fee=5), transfer(1, 1, fee=0)
    c0, c1 = transfer(2, 0, fee=3), transfer(2, 1, fee=9)  # c1 pays most but waits for c0
    for tx in (a0, a1, b0, b1, c0, c1):
        pool.add(tx, 0)
    assert pool.select(10) == [b0, c0, c1, a0, a1, b1]
    assert pool.select(3) == [b0, c0, c1]
    assert pool.select(0) == []


def test_equal_fees_go_by_arrival():
    pool, _ = new_pool()
    order = [transfer(3, 0, fee=2), transfer(1, 0, fee=2), transfer(2, 0, fee=2)]
    for tx in order:
        pool.add(tx, 0)
    assert pool.select(3) == order
    assert pool.snapshot(3) == order


def test_snapshot_is_highest_fee_first():
    pool, _ = new_pool()
    txs = [transfer(0, 0, fee=1), transfer(0, 1, fee=7), transfer(1, 0, fee=3), transfer(2, 4, fee=5)]
    for tx in txs:
        pool.add(tx, 0)
    assert [tx.fee for tx in pool.snapshot(10)] == [7, 5, 3, 1]
    assert [tx.fee for tx in pool.snapshot(2)] == [7, 5]
    assert pool.snapshot(0) == []


# --- capacity and eviction ---------------------------------------------------------------

def test_full_pool_evicts_the_cheapest_tail():
    pool, _ = new_pool(capacity=4)
    a0, a1 = transfer(0, 0, fee=5), transfer(0, 1, fee=5)
    b0, b1 = transfer(1, 0, fee=9), transfer(1, 1, fee=2)
    for tx in (a0, a1, b0, b1):
        pool.add(tx, 0)
    assert_rejected(pool, transfer(2, 0, fee=2), "mempool_full", "fee")  # must pay more, not as much
    c0 = transfer(2, 0, fee=3)
    assert pool.add(c0, 0)
    assert len(pool) == 4 and b1.id not in pool and c0.id in pool
    assert pool.pending_nonce(ADDRESSES[1]) == 1
    # Now the cheapest tail is c0 (3); a1 (5) is a tail too; b0 (9) is.
    assert_rejected(pool, transfer(3, 0, fee=3), "mempool_full")
    assert pool.add(transfer(3, 0, fee=4), 0)
    assert c0.id not in pool and pool.senders() == 3


def test_eviction_never_leaves_a_gap():
    # a0 pays 1 but a1 pays 50: the tail a1 is what can go, so a 10-fee newcomer is refused.
    pool, _ = new_pool(capacity=2)
    pool.add(transfer(0, 0, fee=1), 0)
    pool.add(transfer(0, 1, fee=50), 0)
    assert_rejected(pool, transfer(1, 0, fee=10), "mempool_full")
    assert pool.add(transfer(1, 0, fee=51), 0)
    assert pool.select(5) == [transfer(1, 0, fee=51), transfer(0, 0, fee=1)]


def test_newcomer_does_not_evict_its_own_predecessor():
    pool, _ = new_pool(capacity=2)
    pool.add(transfer(0, 0, fee=1), 0)
    pool.add(transfer(1, 0, fee=9), 0)
    # Evicting a0 for a1 would strand a1 behind a gap; b0 pays more than a1 offers.
    assert_rejected(pool, transfer(0, 1, fee=5), "mempool_full")
    assert pool.add(transfer(0, 1, fee=10), 0)  # outbids b0 instead
    assert pool.select(5) == [transfer(0, 0, fee=1), transfer(0, 1, fee=10)]


def test_replaced_tail_is_evicted_at_its_new_fee():
    pool, _ = new_pool(capacity=2)
    pool.add(transfer(0, 0, fee=1), 0)
    pool.add(transfer(0, 0, fee=2), 0)
    pool.add(transfer(1, 0, fee=9), 0)
    assert_rejected(pool, transfer(2, 0, fee=2), "mempool_full")
    assert pool.add(transfer(2, 0, fee=3), 0)
    assert transfer(0, 0, fee=2).id not in pool and pool.senders() == 2


def test_gap_filler_may_evict_its_own_tail():
    pool, _ = new_pool(capacity=2)
    pool.add(transfer(0, 0, fee=5), 0)
    pool.add(transfer(0, 2, fee=1), 0)
    assert pool.add(transfer(0, 1, fee=2), 0)
    assert pool.select(5) == [transfer(0, 0, fee=5), transfer(0, 1, fee=2)]
    assert len(pool) == 2


# --- expiry, blocks, reorgs --------------------------------------------------------------

def test_expiry_drops_old_ones_and_their_successors():
    pool, _ = new_pool(ttl_ms=1000)
    a0, a1, b0 = transfer(0, 0), transfer(0, 1), transfer(1, 0)
    pool.add(a0, 0)
    pool.add(a1, 900)
    pool.add(b0, 600)
    assert pool.expire(1000) == []  # exactly ttl old is not older than ttl
    assert set(pool.expire(1001)) == {a0, a1}
    assert len(pool) == 1 and pool.pending_nonce(ADDRESSES[0]) == 0 and pool.ready_count() == 1
    assert pool.expire(1601) == [b0]
    assert len(pool) == 0 and pool.senders() == 0


def test_what_the_pool_holds_beside_its_transactions_stays_in_proportion_to_its_senders():
    """Each transfer that becomes its sender's tail leaves the eviction heap's item for the
    old tail stale: a few senders with thousands of transfers each must not keep thousands
    of stale items (they were ~15 % of a full mempool's memory)."""
    from ledger import mempool as module

    pool, _ = new_pool(capacity=10_000, per_sender_limit=5_000, nonce_window=5_000)
    for nonce in range(3_000):
        for sender in (0, 1):
            pool.add(transfer(sender, nonce), nonce)
    assert len(pool) == 6_000
    assert len(pool._tails) <= module._HEAP_SLACK_FACTOR * pool.senders() + module._HEAP_SLACK_MIN


def test_replacement_restarts_the_clock():
    pool, _ = new_pool(ttl_ms=1000)
    pool.add(transfer(0, 0, fee=1), 0)
    replacement = transfer(0, 0, fee=2)
    pool.add(replacement, 800)
    assert pool.expire(1500) == []
    assert pool.expire(1801) == [replacement]


def test_expiry_in_the_middle_of_a_run():
    # a0 was replaced late, so it outlives a1: expiring a1 takes a2 with it, a0 stays ready.
    pool, _ = new_pool(ttl_ms=1000)
    for nonce in range(3):
        pool.add(transfer(0, nonce), 0)
    pool.add(transfer(0, 0, fee=5), 700)
    assert pool.expire(1001) == [transfer(0, 1), transfer(0, 2)]
    assert pool.ready_count() == 1 and pool.pending_nonce(ADDRESSES[0]) == 1
    assert pool.select(10) == [transfer(0, 0, fee=5)]
    pool.add(transfer(0, 1), 1001)
    assert pool.ready_count() == 2


def test_remove_committed_then_select():
    pool, state = new_pool()
    for nonce in range(5):
        pool.add(transfer(0, nonce, fee=2), 0)
    for nonce in range(3):
        pool.add(transfer(1, nonce, fee=1), 0)
    block = pool.select(4)
    assert block == [transfer(0, n, fee=2) for n in range(4)]
    commit_block(pool, state, block)
    assert len(pool) == 4 and pool.ready_count() == 4
    assert all(tx.id not in pool for tx in block)
    assert pool.select(10) == [transfer(0, 4, fee=2)] + [transfer(1, n, fee=1) for n in range(3)]
    assert pool.pending_nonce(ADDRESSES[0]) == 5


def test_conflicting_block_prunes_stale_and_unaffordable():
    pool, state = new_pool(funded_state({0: 100, 1: RICH}))
    for nonce in range(3):
        pool.add(transfer(0, nonce, amount=20, fee=1), 0)  # 63 of 100
    # Another node's block spends nonce 0 differently and leaves 100 - 81 = 19.
    other = transfer(0, 0, amount=80, fee=1)
    commit_block(pool, state, [other])
    assert state.get(ADDRESSES[0]) == (19, 1, None)
    assert len(pool) == 0 and pool.senders() == 0 and pool.ready_count() == 0
    # With enough left, only the tail goes.
    pool.add(transfer(1, 0, amount=10, fee=0), 0)
    pool.add(transfer(1, 1, amount=10, fee=0), 0)
    state.accounts[ADDRESSES[1]] = (10, 0, None)
    pool.revalidate([ADDRESSES[1]])
    assert pool.select(10) == [transfer(1, 0, amount=10, fee=0)]


def test_remove_committed_drops_the_block_even_if_accounts_lag():
    pool, _ = new_pool()
    for nonce in range(3):
        pool.add(transfer(0, nonce), 0)
    pool.remove_committed([transfer(0, 1)])  # state not moved: a gap opens at 1
    assert transfer(0, 1).id not in pool and len(pool) == 2
    assert pool.select(10) == [transfer(0, 0)] and pool.ready_count() == 1
    pool.add(transfer(0, 1), 0)
    assert pool.ready_count() == 3


def test_add_catches_up_when_a_block_was_not_reported():
    pool, state = new_pool()
    for nonce in range(3):
        pool.add(transfer(0, nonce), 0)
    state.commit(apply_transactions(state.accounts, [transfer(0, 0), transfer(0, 1)], PROPOSER, 0))
    assert pool.pending_nonce(ADDRESSES[0]) == 3
    pool.add(transfer(0, 3), 0)
    assert pool.select(10) == [transfer(0, 2), transfer(0, 3)]
    assert len(pool) == 2


def test_readmit_after_reorg():
    pool, state = new_pool()
    for nonce in range(3):
        pool.add(transfer(0, nonce), 0)
    block = pool.select(2)
    before = dict(state.accounts)
    commit_block(pool, state, block)
    assert pool.select(10) == [transfer(0, 2)]
    state.accounts = before  # the block is abandoned
    pool.readmit(list(reversed(block)) + [transfer(0, 0, chain="other-chain")], 5)
    assert pool.select(10) == [transfer(0, n) for n in range(3)]
    assert len(pool) == 3


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError):
        Mempool(CHAIN, funded_state().get, capacity=0)
    with pytest.raises(ValueError):
        Mempool(CHAIN, funded_state().get, replace_bump_percent=-1)


# --- properties --------------------------------------------------------------------------

SENDERS = 3
operation = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(0, SENDERS - 1),
        st.integers(-1, 6),  # nonce offset from the committed nonce
        st.integers(1, 40),  # amount
        st.integers(0, 12),  # fee
    ),
    st.tuples(st.just("block"), st.integers(0, 6)),
    st.tuples(st.just("expire"), st.integers(0, 400)),
    st.tuples(st.just("drain"), st.integers(0, SENDERS - 1)),  # a sender spends elsewhere
)


def check_invariants(pool: Mempool, state: State) -> None:
    assert len(pool) <= pool.capacity
    everything = pool.snapshot(10_000)
    assert len(everything) == len(pool)
    cost_by_sender: dict[bytes, int] = {}
    for tx in everything:
        cost_by_sender[tx.sender_address] = cost_by_sender.get(tx.sender_address, 0) + tx.cost
    for address, cost in cost_by_sender.items():
        balance, _, _ = state.get(address)
        assert cost <= balance
        assert pool.pending_count(address) <= pool.per_sender_limit
    assert pool.senders() == len(cost_by_sender)

    selected = pool.select(10_000)
    assert len(selected) == pool.ready_count()
    runs: dict[bytes, list[int]] = {}
    for tx in selected:
        runs.setdefault(tx.sender_address, []).append(tx.nonce)
    for address, nonces in runs.items():
        committed = state.get(address)[1]
        assert nonces == list(range(committed, committed + len(nonces)))
        assert pool.pending_nonce(address) == committed + len(nonces)
    # The strongest check: the state machine accepts what the pool offers as a block.
    apply_transactions(state.accounts, selected, PROPOSER, 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(operation, max_size=40),
    balances=st.lists(st.integers(0, 150), min_size=SENDERS, max_size=SENDERS),
)
def test_any_sequence_keeps_the_invariants(operations, balances):
    state = funded_state(dict(enumerate(balances)))
    pool = Mempool(CHAIN, state.get, capacity=6, per_sender_limit=4, nonce_window=5, ttl_ms=1000)
    now = 0
    for op in operations:
        if op[0] == "add":
            _, sender, offset, amount, fee = op
            tx = transfer(sender, max(0, state.get(ADDRESSES[sender])[1] + offset), fee, amount)
            before = observable(pool)
            try:
                added = pool.add(tx, now)
            except MempoolRejection:
                assert observable(pool) == before
            else:
                assert tx.id in pool
                if not added:
                    assert observable(pool) == before
        elif op[0] == "block":
            commit_block(pool, state, pool.select(op[1]))
        elif op[0] == "expire":
            now += op[1]
            expired = pool.expire(now)
            assert all(tx.id not in pool for tx in expired)
        else:
            address = ADDRESSES[op[1]]
            balance, nonce, stake = state.get(address)
            state.accounts[address] = (balance // 2, nonce + 1, stake)
            pool.remove_committed([])  # nothing of ours: the runtime reports the sender below
            pool.revalidate([address])
        check_invariants(pool, state)

"""The account state machine: apply, commit, revert, supply, and the undo records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.address import address_of
from ledger.codec import MAX_AMOUNT, DecodeError, Writer
from ledger.state import (
    EMPTY_ACCOUNT, Account, Stake, State, StateError, apply_transactions, decode_undo, encode_undo,
)
from ledger.transaction import new_transfer

CHAIN = "state-test"
KEYS = [crypto.PrivateKey(bytes([i + 1]) * 32) for i in range(3)]
ADDRESSES = [address_of(key.public_key) for key in KEYS]
FRESH = [crypto.sha256(b"fresh-%d" % i)[:20] for i in range(2)]
PROPOSER = crypto.sha256(b"proposer")[:20]
WHALE = crypto.sha256(b"whale")[:20]
START_BALANCE = 1_000
# The whale sits 400 below the limit, so transfers to it can overflow.  (With block rewards
# the total supply may exceed MAX_AMOUNT; only single balances are bounded.)
WHALE_BALANCE = MAX_AMOUNT - 400
REWARD = 7
# Key 2 also holds stake, which transfers must carry along untouched and supply must count.
STAKE = Stake(bonded=300, unbonding=20, release_epoch=9, slashed=4)


def genesis_accounts() -> dict[bytes, Account]:
    accounts = {address: (START_BALANCE, 0, None) for address in ADDRESSES}
    accounts[ADDRESSES[2]] = (START_BALANCE, 0, STAKE)
    accounts[WHALE] = (WHALE_BALANCE, 0, None)
    return accounts


def supply_of(accounts) -> int:
    return sum(balance + (stake.bonded + stake.unbonding if stake else 0) for balance, _, stake in accounts.values())


def pay(key_index: int, nonce: int, recipient: bytes, amount: int, fee: int = 0):
    return new_transfer(KEYS[key_index], CHAIN, nonce, recipient, amount, fee)


# --- an independent model of the rules, used as the oracle ---------------------------------


def model_apply(accounts, transactions, proposer, reward):
    """(new accounts, None) or (None, (reason, index)): the rules written out plainly."""
    view = dict(accounts)
    fees = 0
    for index, tx in enumerate(transactions):
        sender = address_of(tx.sender)
        balance, nonce, stake = view.get(sender, (0, 0, None))
        if tx.nonce != nonce:
            return None, ("bad_nonce", index)
        if tx.amount + tx.fee > balance:
            return None, ("insufficient_balance", index)
        view[sender] = (balance - tx.amount - tx.fee, nonce + 1, stake)
        recipient_balance, recipient_nonce, recipient_stake = view.get(tx.recipient, (0, 0, None))
        if recipient_balance + tx.amount > MAX_AMOUNT:
            return None, ("balance_overflow", index)
        view[tx.recipient] = (recipient_balance + tx.amount, recipient_nonce, recipient_stake)
        fees += tx.fee
    if fees or reward:
        balance, nonce, stake = view.get(proposer, (0, 0, None))
        if balance + fees + reward > MAX_AMOUNT:
            return None, ("balance_overflow", None)
        view[proposer] = (balance + fees + reward, nonce, stake)
    return view, None


recipients = st.sampled_from(ADDRESSES + FRESH + [PROPOSER, WHALE])
planned_transfer = st.tuples(
    st.integers(0, len(KEYS) - 1),  # sender
    recipients,
    st.integers(1, 700),  # amount: sometimes more than the sender has
    st.integers(0, 20),  # fee
    st.sampled_from([0, 0, 0, 0, 0, 1, -1]),  # nonce skew: mostly right, sometimes wrong
)
planned_blocks = st.lists(st.lists(planned_transfer, max_size=5), max_size=8)


def build_block(state: State, plan) -> list:
    """Sign the planned transfers with nonces that follow the state, skewed as planned."""
    next_nonce = {address: state.get(address)[1] for address in ADDRESSES}
    transactions = []
    for sender, recipient, amount, fee, skew in plan:
        nonce = max(0, next_nonce[ADDRESSES[sender]] + skew)
        transactions.append(pay(sender, nonce, recipient, amount, fee))
        next_nonce[ADDRESSES[sender]] += 1
    return transactions


@settings(max_examples=120, deadline=None)
@given(plan=planned_blocks)
def test_random_blocks_follow_the_model_conserve_supply_and_revert_exactly(plan):
    initial = genesis_accounts()
    state = State(dict(initial))
    undo_stack = []
    committed = 0
    for block_plan in plan:
        transactions = build_block(state, block_plan)
        before = dict(state.accounts)
        expected, failure = model_apply(state.accounts, transactions, PROPOSER, REWARD)
        if failure is not None:
            with pytest.raises(StateError) as caught:
                state.apply(transactions, PROPOSER, REWARD)
            assert (caught.value.reason, caught.value.index) == failure
            assert state.accounts == before  # a failed block changes nothing
            continue
        effects = state.apply(transactions, PROPOSER, REWARD)
        assert state.accounts == before  # applying only computes; commit installs
        assert decode_undo(encode_undo(effects.undo)) == effects.undo
        assert effects.fees == sum(tx.fee for tx in transactions)
        state.commit(effects)
        committed += 1
        undo_stack.append(decode_undo(encode_undo(effects.undo)))  # revert from the stored form
        assert state.accounts == expected
        assert state.total_supply() == supply_of(initial) + REWARD * committed
    for undo in reversed(undo_stack):
        state.revert(undo)
    assert state.accounts == initial


# --- each rule on its own -------------------------------------------------------------------


def test_transfer_moves_amount_fee_and_reward():
    state = State(genesis_accounts())
    tx = pay(0, 0, FRESH[0], 100, 5)
    effects = state.apply([tx], PROPOSER, REWARD)
    state.commit(effects)
    assert state.get(ADDRESSES[0]) == (START_BALANCE - 105, 1, None)
    assert state.get(FRESH[0]) == (100, 0, None)
    assert state.get(PROPOSER) == (5 + REWARD, 0, None)
    assert effects.undo == {ADDRESSES[0]: (START_BALANCE, 0, None), FRESH[0]: None, PROPOSER: None}
    assert (effects.fees, effects.reward) == (5, REWARD)


def test_transfer_to_self_costs_only_the_fee():
    state = State(genesis_accounts())
    state.commit(state.apply([pay(0, 0, ADDRESSES[0], 300, 2)], PROPOSER, 0))
    assert state.get(ADDRESSES[0]) == (START_BALANCE - 2, 1, None)


def test_spending_all_but_nothing_more():
    state = State(genesis_accounts())
    state.commit(state.apply([pay(0, 0, FRESH[0], START_BALANCE - 10, 10)], PROPOSER, 0))
    assert state.get(ADDRESSES[0]) == (0, 1, None)


def test_later_transactions_see_earlier_ones_in_the_same_block():
    state = State(genesis_accounts())
    # Key 1 can only pay on after receiving from key 0 in the same block.
    transactions = [pay(0, 0, ADDRESSES[1], 900), pay(1, 0, FRESH[0], 1_800)]
    state.commit(state.apply(transactions, PROPOSER, 0))
    assert state.get(FRESH[0]) == (1_800, 0, None)
    assert state.get(ADDRESSES[1]) == (100, 1, None)


def test_no_fee_and_no_reward_leaves_the_proposer_untouched():
    state = State(genesis_accounts())
    effects = state.apply([pay(0, 0, FRESH[0], 1)], PROPOSER, 0)
    assert PROPOSER not in effects.changes and PROPOSER not in effects.undo


def test_empty_block_pays_the_reward():
    state = State(genesis_accounts())
    state.commit(state.apply([], PROPOSER, REWARD))
    assert state.get(PROPOSER) == (REWARD, 0, None)


@pytest.mark.parametrize(
    ("transactions", "index"),
    [
        ([pay(0, 1, FRESH[0], 1)], 0),  # nonce from the future
        ([pay(0, 0, FRESH[0], 1), pay(0, 0, FRESH[0], 1)], 1),  # replay inside the block
        ([pay(0, 0, FRESH[0], 1), pay(0, 2, FRESH[0], 1)], 1),  # gap
    ],
)
def test_bad_nonce(transactions, index):
    _expect_state_error(State(genesis_accounts()), transactions, "bad_nonce", index)


def test_replayed_transaction_is_a_bad_nonce():
    state = State(genesis_accounts())
    tx = pay(0, 0, FRESH[0], 1)
    state.commit(state.apply([tx], PROPOSER, 0))
    _expect_state_error(state, [tx], "bad_nonce", 0)


@pytest.mark.parametrize(
    ("transactions", "index"),
    [
        ([pay(0, 0, FRESH[0], START_BALANCE + 1)], 0),
        ([pay(0, 0, FRESH[0], START_BALANCE, 1)], 0),  # the fee tips it over
        ([pay(0, 0, FRESH[0], 600), pay(0, 1, FRESH[0], 600)], 1),
    ],
)
def test_insufficient_balance(transactions, index):
    _expect_state_error(State(genesis_accounts()), transactions, "insufficient_balance", index)


def test_unknown_sender_has_no_balance():
    stranger = crypto.PrivateKey(bytes([0x55]) * 32)
    tx = new_transfer(stranger, CHAIN, 0, FRESH[0], 1)
    _expect_state_error(State(genesis_accounts()), [tx], "insufficient_balance", 0)


def test_recipient_balance_overflow():
    state = State(genesis_accounts())
    state.accounts[FRESH[1]] = (MAX_AMOUNT - 10, 0, None)
    _expect_state_error(state, [pay(0, 0, FRESH[1], 11)], "balance_overflow", 0)
    state.commit(state.apply([pay(0, 0, FRESH[1], 10)], PROPOSER, 0))  # exactly at the limit is fine
    assert state.get(FRESH[1]) == (MAX_AMOUNT, 0, None)


def test_proposer_balance_overflow():
    state = State(genesis_accounts())
    state.accounts[PROPOSER] = (MAX_AMOUNT - REWARD, 0, None)
    _expect_state_error(state, [pay(0, 0, FRESH[0], 1, 1)], "balance_overflow", None)


def _expect_state_error(state: State, transactions, reason: str, index) -> None:
    before = {address: value for address, value in state.accounts.items()}
    with pytest.raises(StateError) as caught:
        state.apply(transactions, PROPOSER, REWARD)
    assert caught.value.reason == reason
    assert caught.value.index == index
    assert str(caught.value)
    assert state.accounts == before


def test_apply_transactions_reads_any_mapping_without_writing_it():
    accounts = genesis_accounts()
    frozen = dict(accounts)
    apply_transactions(accounts, [pay(0, 0, FRESH[0], 5, 1)], PROPOSER, REWARD)
    assert accounts == frozen


def test_revert_restores_accounts_that_existed_with_zero_values():
    state = State({ADDRESSES[0]: (START_BALANCE, 0, None), FRESH[0]: (0, 0, None)})
    effects = state.apply([pay(0, 0, FRESH[0], 5)], PROPOSER, 0)
    state.commit(effects)
    state.revert(effects.undo)
    assert state.accounts == {ADDRESSES[0]: (START_BALANCE, 0, None), FRESH[0]: (0, 0, None)}


def test_empty_account_default():
    assert State().get(FRESH[0]) == EMPTY_ACCOUNT == (0, 0, None)


def test_transfers_carry_stake_along_and_supply_counts_what_is_still_held():
    state = State(genesis_accounts())
    staked = ADDRESSES[2]
    state.commit(state.apply([pay(2, 0, staked, 50, 1), pay(0, 0, staked, 10)], staked, REWARD))
    assert state.get(staked) == (START_BALANCE + 10 + REWARD, 1, STAKE)
    # Bonded and unbonding stake are supply; slashed stake is not.
    assert state.total_supply() == 3 * START_BALANCE + WHALE_BALANCE + 300 + 20 + REWARD


def test_from_allocations_opens_accounts_without_stake():
    assert State.from_allocations({FRESH[0]: 5}).accounts == {FRESH[0]: (5, 0, None)}


# --- undo records ---------------------------------------------------------------------------

addresses20 = st.binary(min_size=20, max_size=20)
amounts = st.integers(0, MAX_AMOUNT)
stakes = st.builds(Stake, amounts, amounts, amounts, amounts).filter(lambda stake: stake != Stake())
account_values = st.none() | st.tuples(amounts, amounts, st.none() | stakes)


@given(undo=st.dictionaries(addresses20, account_values, max_size=20))
def test_undo_round_trip(undo):
    data = encode_undo(undo)
    assert decode_undo(data) == undo
    assert encode_undo(decode_undo(data)) == data


def test_undo_layout_is_sorted_and_fixed_width():
    low, high = b"\x01" * 20, b"\x02" * 20
    data = encode_undo({high: (5, 6, None), low: None})
    expected = (
        (2).to_bytes(4, "big")
        + low + b"\x00"
        + high + b"\x01" + (5).to_bytes(8, "big") + (6).to_bytes(8, "big")
    )
    assert data == expected


def test_undo_layout_of_an_account_with_stake():
    address = b"\x03" * 20
    data = encode_undo({address: (5, 6, Stake(bonded=7, unbonding=8, release_epoch=9, slashed=10))})
    amounts = b"".join(value.to_bytes(8, "big") for value in (5, 6, 7, 8, 9, 10))
    assert data == (1).to_bytes(4, "big") + address + b"\x02" + amounts


def test_undo_records_written_before_stake_existed_still_decode():
    # Bytes as the two-field encoding wrote them: flag 1, balance, nonce.
    written = bytes.fromhex("00000002" + "01" * 20 + "00" + "02" * 20 + "01" + "0000000000000005" + "0000000000000006")
    assert decode_undo(written) == {b"\x01" * 20: None, b"\x02" * 20: (5, 6, None)}


def test_undo_refuses_to_encode_an_empty_stake():
    # Stake() would come back as None: one account, two forms.
    with pytest.raises(ValueError, match="Stake"):
        encode_undo({b"\x01" * 20: (5, 6, Stake())})


def test_undo_decode_refuses_malformed_records():
    good = encode_undo({b"\x01" * 20: (5, 6, None), b"\x02" * 20: (5, 6, STAKE)})
    with pytest.raises(DecodeError):
        decode_undo(good + b"\x00")
    for length in range(len(good)):
        with pytest.raises(DecodeError):
            decode_undo(good[:length])
    over = Writer().u32(1).fixed(b"\x01" * 20, 20).u8(1).u64(MAX_AMOUNT + 1).u64(0).bytes()
    with pytest.raises(DecodeError):
        decode_undo(over)


def test_undo_decode_refuses_non_canonical_records():
    # An unknown flag, a stake of all zeros (flag 1 says that), or addresses out of order or
    # repeated, would give a second encoding of the same record.
    flag_three = Writer().u32(1).fixed(b"\x01" * 20, 20).u8(3).u64(5).u64(6).bytes()
    with pytest.raises(DecodeError):
        decode_undo(flag_three)
    zero_stake = Writer().u32(1).fixed(b"\x01" * 20, 20).u8(2).u64(5).u64(6).u64(0).u64(0).u64(0).u64(0).bytes()
    with pytest.raises(DecodeError, match="flag 1"):
        decode_undo(zero_stake)
    unsorted = Writer().u32(2).fixed(b"\x02" * 20, 20).u8(0).fixed(b"\x01" * 20, 20).u8(0).bytes()
    with pytest.raises(DecodeError):
        decode_undo(unsorted)
    repeated = Writer().u32(2).fixed(b"\x01" * 20, 20).u8(0).fixed(b"\x01" * 20, 20).u8(0).bytes()
    with pytest.raises(DecodeError):
        decode_undo(repeated)

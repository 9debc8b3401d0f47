"""The ledger half of proof of stake: stake and unstake transactions, the stake ops a header
orders (ledger/staking.py), their undo, the supply, the mempool, block validity, genesis stakes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bft_helpers import key
from ledger.address import address_of, encode_address
from ledger.block import Block, InvalidBlock, build_header
from ledger.codec import DecodeError, Reader, Writer
from ledger.genesis import Genesis, GenesisStake, InvalidGenesis
from ledger.mempool import Mempool, MempoolRejection
from ledger.staking import Stake, StakeChange, StakeOp, StakeOpKind, stake_changes_of
from ledger.state import State, StateError, apply_transactions, decode_undo, encode_undo
from ledger.transaction import InvalidTransaction, new_stake, new_transfer, new_unstake, Transaction
from ledger.validate import BlockRules, validate_block

CHAIN = "stake-test"
ALICE, BOB = key("stake-alice"), key("stake-bob")
A, B = address_of(ALICE.public_key), address_of(BOB.public_key)
PROPOSER = bytes(20)
UNIT = 10**9


def staked(balance=100 * UNIT, bonded=0, unbonding=0, release=0, slashed=0, nonce=0):
    stake = Stake(bonded, unbonding, release, slashed) if (bonded or unbonding or release or slashed) else None
    return (balance, nonce, stake)


def supply(accounts) -> int:
    return State(dict(accounts)).total_supply()


# ----------------------------------------------------------------------------- transactions


def test_a_stake_bonds_from_the_balance_and_an_unstake_only_asks():
    accounts = {A: staked()}
    effects = apply_transactions(accounts, [new_stake(ALICE, CHAIN, 0, 40 * UNIT, fee=2)], PROPOSER, 0)
    assert effects.changes[A] == staked(balance=60 * UNIT - 2, bonded=40 * UNIT, nonce=1)
    assert effects.stake_changes == (StakeChange(A, ALICE.public_key, 40 * UNIT, True),)
    after = {**accounts, **effects.changes}
    effects = apply_transactions(after, [new_unstake(ALICE, CHAIN, 1, 10 * UNIT, fee=3)], PROPOSER, 0)
    assert effects.changes[A] == staked(balance=60 * UNIT - 5, bonded=40 * UNIT, nonce=2)
    assert effects.stake_changes == (StakeChange(A, b"", 10 * UNIT, False),)
    assert supply({**after, **effects.changes}) == supply(accounts)


def test_an_unstake_of_more_than_is_bonded_or_a_stake_beyond_the_balance_is_refused():
    with pytest.raises(StateError) as caught:
        apply_transactions({A: staked(bonded=5)}, [new_unstake(ALICE, CHAIN, 0, 6)], PROPOSER, 0)
    assert caught.value.reason == "insufficient_stake"
    with pytest.raises(StateError) as caught:
        apply_transactions({A: staked(balance=10)}, [new_stake(ALICE, CHAIN, 0, 10, fee=1)], PROPOSER, 0)
    assert caught.value.reason == "insufficient_balance"


@pytest.mark.parametrize("tx, reason", [
    (lambda: new_stake(ALICE, CHAIN, 0, 5), "staking_not_supported"),
    (lambda: replace(new_stake(ALICE, CHAIN, 0, 5), payload=b"\x02" + bytes(32), signature=b"").signed(ALICE), "bad_validator_key"),
    (lambda: replace(new_stake(ALICE, CHAIN, 0, 5), payload=b"short", signature=b"").signed(ALICE), "bad_validator_key"),
    (lambda: replace(new_stake(ALICE, CHAIN, 0, 5), recipient=B, signature=b"").signed(ALICE), "bad_recipient"),
    (lambda: replace(new_unstake(ALICE, CHAIN, 0, 5), payload=b"x", signature=b"").signed(ALICE), "bad_payload"),
    (lambda: replace(new_unstake(ALICE, CHAIN, 0, 5), kind=7, signature=b"").signed(ALICE), "unknown_kind"),
])
def test_malformed_staking_transactions_are_refused_statelessly(tx, reason):
    staking = reason != "staking_not_supported"
    with pytest.raises(InvalidTransaction) as caught:
        tx().check_stateless(CHAIN, staking=staking)
    assert caught.value.reason == reason


def test_a_stake_names_the_senders_key_unless_told_otherwise():
    assert new_stake(ALICE, CHAIN, 0, 5).payload == ALICE.public_key
    assert new_stake(ALICE, CHAIN, 0, 5, validator_key=BOB.public_key).payload == BOB.public_key
    for tx in (new_stake(ALICE, CHAIN, 0, 5), new_unstake(ALICE, CHAIN, 0, 5)):
        tx.check_stateless(CHAIN, staking=True)
        assert Transaction.decode(tx.encode()) == tx
    assert new_unstake(ALICE, CHAIN, 0, 5, fee=2).cost == 2 and new_stake(ALICE, CHAIN, 0, 5, fee=2).cost == 7


# ----------------------------------------------------------------------------- ops


def test_each_op_moves_money_as_documented_and_the_supply_follows_issued_and_burned():
    accounts = {A: staked(balance=10, bonded=100, unbonding=20, release=3)}
    cases = [
        (StakeOp(StakeOpKind.REWARD, A, 5), staked(balance=15, bonded=100, unbonding=20, release=3), 5, 0),
        (StakeOp(StakeOpKind.PENALTY, A, 7), staked(balance=10, bonded=93, unbonding=20, release=3), 0, 7),
        (StakeOp(StakeOpKind.SLASH, A, 110), staked(balance=10, bonded=0, unbonding=10, release=3, slashed=110), 0, 110),
        (StakeOp(StakeOpKind.UNBOND, A, 30, epoch=9), staked(balance=10, bonded=70, unbonding=50, release=9), 0, 0),
        (StakeOp(StakeOpKind.RELEASE, A, 20), staked(balance=30, bonded=100), 0, 0),
    ]
    for op, after, issued, burned in cases:
        effects = apply_transactions(accounts, [], PROPOSER, 0, [op])
        assert effects.changes[A] == after, op
        assert (effects.issued, effects.burned) == (issued, burned)
        assert supply({**accounts, **effects.changes}) == supply(accounts) + issued - burned


@pytest.mark.parametrize("op", [
    StakeOp(StakeOpKind.PENALTY, A, 101), StakeOp(StakeOpKind.SLASH, A, 121), StakeOp(StakeOpKind.UNBOND, A, 101, 1),
    StakeOp(StakeOpKind.RELEASE, A, 21), StakeOp(StakeOpKind.REWARD, A, 2**63 - 1),
])
def test_an_op_the_account_cannot_bear_makes_the_block_invalid(op):
    with pytest.raises(StateError) as caught:
        apply_transactions({A: staked(balance=10, bonded=100, unbonding=20)}, [], PROPOSER, 0, [op])
    assert caught.value.reason == "bad_stake_op"


def test_an_account_whose_stake_is_all_gone_holds_none_and_undo_round_trips():
    effects = apply_transactions({A: staked(balance=0, unbonding=5, release=2)}, [], PROPOSER, 0,
                                 [StakeOp(StakeOpKind.RELEASE, A, 5)])
    assert effects.changes[A] == (5, 0, None)
    undo = {A: staked(bonded=3, unbonding=4, release=5, slashed=6), B: None}
    assert decode_undo(encode_undo(undo)) == undo


def test_ops_and_changes_have_one_encoding():
    for item in (StakeOp(StakeOpKind.UNBOND, A, 3, 4), StakeChange(A, ALICE.public_key, 3, True), StakeChange(A, b"", 3, False)):
        writer = Writer()
        item.write(writer)
        reader = Reader(writer.bytes())
        assert type(item).read(reader) == item
        reader.finish()
    with pytest.raises(DecodeError):
        StakeOp.read(Reader(bytes([9]) + bytes(36)))
    with pytest.raises(DecodeError):
        StakeChange.read(Reader(bytes([0]) + A + bytes([1, 7]) + bytes(8)))  # an unstake naming a key


# ----------------------------------------------------------------------------- mempool and blocks


def test_the_mempool_admits_staking_only_on_a_staking_chain_and_charges_an_unstake_its_fee():
    accounts = {A: staked(balance=10, bonded=100)}
    plain = Mempool(CHAIN, lambda a: accounts.get(a, (0, 0, None)))
    with pytest.raises(MempoolRejection) as caught:
        plain.add(new_stake(ALICE, CHAIN, 0, 5), 0)
    assert caught.value.reason == "staking_not_supported"
    pool = Mempool(CHAIN, lambda a: accounts.get(a, (0, 0, None)), staking=True)
    assert pool.add(new_unstake(ALICE, CHAIN, 0, 100, fee=4), 0)
    assert pool.add(new_transfer(ALICE, CHAIN, 1, B, 6), 0)  # 4 + 6 = the whole balance
    with pytest.raises(MempoolRejection) as caught:
        pool.add(new_unstake(ALICE, CHAIN, 2, 101), 0)
    assert caught.value.reason == "insufficient_stake"


def _rules(declared=()) -> BlockRules:
    return BlockRules(CHAIN, 100, 0, 10_000, staking=True, declared_stake_changes=lambda extra: tuple(declared))


def test_a_block_must_declare_what_its_stake_transactions_did():
    from ledger.block import BlockHeader, ZERO_HASH
    from ledger.merkle import EMPTY_ROOT

    parent = BlockHeader(CHAIN, 0, ZERO_HASH, 1000, EMPTY_ROOT, 0, bytes(20))
    txs = [new_stake(ALICE, CHAIN, 0, 5)]
    block = Block(build_header(CHAIN, parent, 2000, txs, PROPOSER), tuple(txs))
    accounts = {A: staked()}
    with pytest.raises(InvalidBlock) as caught:
        validate_block(block, (parent,), accounts, _rules(), lambda *a: None, None)
    assert caught.value.reason == "stake_changes_mismatch"
    effects = validate_block(block, (parent,), accounts, _rules(stake_changes_of(txs)), lambda *a: None, None)
    assert effects.changes[A][2] == Stake(bonded=5)


# ----------------------------------------------------------------------------- genesis


def _genesis_json(**extra) -> dict:
    return {"chain_id": CHAIN, "address_prefix": "dev", "timestamp": 1, "engine": {"name": "pos", "params": {}},
            "allocations": [{"address": encode_address("dev", A), "balance": 50}], **extra}


def test_genesis_stakes_are_bonded_from_block_zero_and_counted_in_the_supply():
    stake = {"address": encode_address("dev", A), "validator_key": ALICE.public_key.hex(), "amount": 30}
    genesis = Genesis.from_json(_genesis_json(stakes=[stake]))
    assert genesis.stakes == (GenesisStake(A, ALICE.public_key, 30),)
    assert State.from_genesis(genesis).get(A) == staked(balance=50, bonded=30)
    assert genesis.expected_supply(0) == 80 and genesis.expected_supply(3, issued=7, burned=2) == 85
    assert Genesis.from_json(json.loads(json.dumps(genesis.to_json()))) == genesis
    # Stakes are in the hash, and a chain without them keeps the hash it always had.
    assert genesis.hash != Genesis.from_json(_genesis_json()).hash
    assert Genesis.from_json(_genesis_json()).encode() == replace(genesis, stakes=()).encode()


@pytest.mark.parametrize("stakes, message", [
    ([{"address": "dev1nope", "validator_key": ALICE.public_key.hex(), "amount": 1}], r"stakes\[0\]\.address"),
    ([{"address": encode_address("dev", A), "validator_key": "04" * 33, "amount": 1}], "validator_key"),
    ([{"address": encode_address("dev", A), "validator_key": ALICE.public_key.hex(), "amount": 0}], "amount"),
    ([{"address": encode_address("dev", A), "validator_key": ALICE.public_key.hex(), "amount": 1, "x": 1}], "unknown"),
    ([{"address": encode_address("dev", A), "validator_key": ALICE.public_key.hex(), "amount": 1},
      {"address": encode_address("dev", B), "validator_key": ALICE.public_key.hex(), "amount": 1}], "twice"),
    ("all of it", "list"),
])
def test_bad_genesis_stakes_are_refused_clearly(stakes, message):
    with pytest.raises(InvalidGenesis, match=message):
        Genesis.from_json(_genesis_json(stakes=stakes))


def test_the_store_starts_from_the_genesis_stakes(tmp_path):
    from ledger.store import ChainStore
    import migrations

    stake = {"address": encode_address("dev", A), "validator_key": ALICE.public_key.hex(), "amount": 30}
    genesis = Genesis.from_json(_genesis_json(stakes=[stake]))
    store = ChainStore(f"sqlite:///{tmp_path / 'chain.db'}")
    migrations.upgrade(store)
    store.initialize(genesis)
    assert store.load_accounts() == State.from_genesis(genesis).accounts
    store.close()

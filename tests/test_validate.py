"""The block-validity rule (ledger/validate.py): one pure function for every path a block takes."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.pow import PowEngine
from ledger.block import Block, BlockHeader, InvalidBlock, InvalidSeal, build_header
from ledger.address import address_of
from ledger.hdkeys import dev_keys
from ledger.merkle import EMPTY_ROOT
from ledger.state import State, StateError
from ledger.transaction import InvalidTransaction, new_transfer
from ledger.validate import BlockRules, too_far_ahead, validate_block, validate_header

CHAIN = "validate-test"
SENDER = dev_keys(1)[0]
SENDER_ADDRESS = address_of(SENDER.public_key)
BOB = bytes(range(20))
PARENT = BlockHeader(CHAIN, 0, bytes(32), 1_000_000, EMPTY_ROOT, 0, bytes(20))
RULES = BlockRules(CHAIN, 100, 0, max_future_ms=15_000)


def accept(header, recent, now):
    return None


def block_at(timestamp: int, transactions=()) -> Block:
    return Block(build_header(CHAIN, PARENT, timestamp, list(transactions), BOB), tuple(transactions))


def test_the_future_bound_is_the_rules_one_not_a_constant():
    ahead = block_at(PARENT.timestamp + 30_000)
    with pytest.raises(InvalidBlock, match="30000 ms in the future") as refused:
        validate_header(ahead, (PARENT,), RULES, accept, now_ms=PARENT.timestamp)
    assert refused.value.reason == "future_timestamp"
    # An engine that allows a minute (PoW's max_future_ms) gets a minute.
    validate_header(ahead, (PARENT,), BlockRules(CHAIN, 100, 0, 60_000), accept, now_ms=PARENT.timestamp)
    # A block accepted once is not judged by the clock again.
    validate_header(ahead, (PARENT,), RULES, accept, now_ms=None)
    assert too_far_ahead(10, 0, 10) is None and too_far_ahead(11, 0, 10) is not None


def test_pow_declares_its_genesis_bounds():
    engine = PowEngine({"target_block_ms": 1000, "initial_target": "207fffff", "max_future_ms": 60_000,
                        "max_reorg_depth": 7})
    assert (engine.max_future_ms, engine.max_reorg_depth) == (60_000, 7)


def test_each_refusal_names_its_reason_and_the_engine_rule_runs_last_before_state():
    tx = new_transfer(SENDER, CHAIN, 0, BOB, 5)
    state = State({})
    good = block_at(PARENT.timestamp + 1, [tx])
    with pytest.raises(InvalidBlock) as refused:
        validate_block(good, (BlockHeader(CHAIN, 5, bytes(32), 0, EMPTY_ROOT, 0, bytes(20)),), state.accounts, RULES,
                       accept, PARENT.timestamp)
    assert refused.value.reason == "bad_parent"

    def refuse_seal(header, recent, now):
        raise InvalidSeal("not sealed")

    with pytest.raises(InvalidSeal):
        validate_block(good, (PARENT,), state.accounts, RULES, refuse_seal, PARENT.timestamp)
    with pytest.raises(StateError) as broke:  # the sender has nothing in this state
        validate_block(good, (PARENT,), state.accounts, RULES, accept, PARENT.timestamp)
    assert broke.value.reason == "insufficient_balance"
    funded = State({SENDER_ADDRESS: (100, 0, None)})
    effects = validate_block(good, (PARENT,), funded.accounts, RULES, accept, PARENT.timestamp)
    assert effects.changes[BOB][0] == 5 and effects.validator_updates == ()


def test_a_transaction_the_mempool_verified_is_not_checked_again():
    signed = new_transfer(SENDER, CHAIN, 0, BOB, 5)
    forged = dataclasses.replace(signed, signature=bytes(len(signed.signature)))  # a signature nobody made
    block = block_at(PARENT.timestamp + 1, [forged])
    funded = State({SENDER_ADDRESS: (100, 0, None)})
    with pytest.raises(InvalidTransaction):
        validate_block(block, (PARENT,), funded.accounts, RULES, accept, PARENT.timestamp)
    # Verified at admission (the mempool's ids): the block's check does not repeat it.
    validate_block(block, (PARENT,), funded.accounts, RULES, accept, PARENT.timestamp, verified={forged.id})

"""Validator sets by height: changes decided by block h take effect at h + 2, and a BFT
engine checks each header against the set of its own height."""

from __future__ import annotations

import sys
import threading

import pytest

from consensus.bft import BftEngine, BftParams
from consensus.engine import BlockCommitted, InvalidSeal, Started
from consensus.validators import Validator, ValidatorSchedule, ValidatorSet
from ledger.address import address_of
from ledger.block import BlockHeader
from ledger.crypto import PrivateKey
from ledger.merkle import EMPTY_ROOT
from ledger.state import ValidatorUpdate

KEYS = [PrivateKey(bytes(31) + bytes([i])) for i in range(1, 6)]
CHAIN = "schedule-test"


def validator(key: PrivateKey, power: int = 10) -> Validator:
    return Validator(address_of(key.public_key), key.public_key, power)


GENESIS_SET = ValidatorSet([validator(k) for k in KEYS[:4]])
JOINER = KEYS[4]


def test_an_update_takes_effect_two_heights_after_its_block():
    schedule = ValidatorSchedule(GENESIS_SET)
    schedule.apply(5, [ValidatorUpdate(JOINER.public_key, 7), ValidatorUpdate(KEYS[0].public_key, 0)])
    for height in (1, 6):
        assert schedule.at(height) is GENESIS_SET
    joined = schedule.at(7)
    assert address_of(JOINER.public_key) in joined and joined.get(address_of(JOINER.public_key)).power == 7
    assert address_of(KEYS[0].public_key) not in joined and len(joined) == 4
    assert schedule.at(1000) is joined
    # The new set's rotation starts at its first height, as the genesis set's does at 1.
    assert schedule.proposer(7, 0) == joined.proposer(1, 0)
    assert schedule.proposer(6, 2) == GENESIS_SET.proposer(6, 2)


def test_a_later_commit_at_the_same_height_replaces_what_a_reverted_branch_decided():
    schedule = ValidatorSchedule(GENESIS_SET)
    schedule.apply(5, [ValidatorUpdate(JOINER.public_key, 7)])
    schedule.apply(5, [ValidatorUpdate(KEYS[1].public_key, 0)])
    assert address_of(JOINER.public_key) not in schedule.at(7)
    assert address_of(KEYS[1].public_key) not in schedule.at(7)


def test_a_replacing_block_without_updates_undoes_what_the_reverted_one_decided():
    schedule = ValidatorSchedule(GENESIS_SET)
    schedule.apply(5, [ValidatorUpdate(JOINER.public_key, 7)])
    schedule.apply(5, [])  # the branch that decided it was reverted; its replacement decides nothing
    assert schedule.at(7) is GENESIS_SET and len(schedule) == 1


def test_proposers_asked_from_two_threads_at_once_are_the_ones_asked_from_one():
    """API threads read an engine's status (which names the current proposer) while the
    event loop asks for the proposer of each new height: the schedule computes forward
    under a lock, or the two step its frontier twice for one height."""
    stakes = (1_000_003, 999_983, 77_777, 123_457, 500_009)  # stake-like powers: a very long period
    heights = 3_000

    def schedule() -> ValidatorSchedule:
        return ValidatorSchedule(ValidatorSet([validator(k, p) for k, p in zip(KEYS, stakes)]))

    shared, current, done = schedule(), [1], threading.Event()

    def api_polling() -> None:
        while not done.is_set():
            shared.proposer(current[0], 0)

    poller = threading.Thread(target=api_polling)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside the computation too
    try:
        poller.start()
        for height in range(1, heights):
            current[0] = height
            shared.proposer(height, 0)
    finally:
        done.set()
        poller.join()
        sys.setswitchinterval(interval)
    reference = schedule()
    wrong = [h for h in range(1, heights) if shared.proposer(h, 0) != reference.proposer(h, 0)]
    assert wrong == []


def test_sets_no_height_needs_are_forgotten():
    schedule = ValidatorSchedule(GENESIS_SET)
    schedule.apply(5, [ValidatorUpdate(JOINER.public_key, 7)])
    schedule.forget_below(6)
    assert len(schedule) == 2 and schedule.at(6) is GENESIS_SET
    schedule.forget_below(7)
    assert len(schedule) == 1 and address_of(JOINER.public_key) in schedule.at(1)


def test_an_update_that_empties_the_set_is_refused():
    schedule = ValidatorSchedule(ValidatorSet([validator(KEYS[0])]))
    with pytest.raises(ValueError):
        schedule.apply(1, [ValidatorUpdate(KEYS[0].public_key, 0)])


def sealed(parent: BlockHeader, key: PrivateKey, extra: bytes = b"") -> BlockHeader:
    header = BlockHeader(CHAIN, parent.height + 1, parent.hash, parent.timestamp + 1, EMPTY_ROOT, 0,
                         address_of(key.public_key), extra)
    return header.with_seal(key.sign_digest(header.sealing_digest()))


def test_the_bft_engine_checks_a_proposer_against_the_set_of_the_block_height():
    params, _ = BftParams.from_genesis({"validators": GENESIS_SET.to_genesis()})
    engine = BftEngine(CHAIN, GENESIS_SET, params, None, 100)
    genesis = BlockHeader(CHAIN, 0, bytes(32), 1_000, EMPTY_ROOT, 0, bytes(20))
    engine.handle(Started(1_000, genesis, None))
    block1 = sealed(genesis, KEYS[0])
    engine.verify_header(block1, (genesis,))
    with pytest.raises(InvalidSeal, match="not a validator"):
        engine.verify_header(sealed(genesis, JOINER), (genesis,))
    # Block 1 commits with an update that adds JOINER from height 3 on.
    engine.handle(BlockCommitted(1_001, block1, (genesis, block1), (ValidatorUpdate(JOINER.public_key, 10),)))
    assert address_of(JOINER.public_key) not in engine.validators  # height 2: the old set
    assert address_of(JOINER.public_key) in engine.schedule.at(3)
    # A block 2 by JOINER is still refused: height 2 belongs to the old set.
    with pytest.raises(InvalidSeal, match="not a validator"):
        engine.verify_header(sealed(block1, JOINER), (block1,))
    # A block 3 by JOINER passes the proposer check (it then needs the certificate of 2).
    block2 = sealed(block1, KEYS[1])
    with pytest.raises(InvalidSeal) as refused:
        engine.verify_header(sealed(block2, JOINER), (block2,))
    assert "not a validator" not in str(refused.value)

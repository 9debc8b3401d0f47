"""The pure proof-of-stake rules (consensus/pos/beacon.py): proposers, Casper FFG,
rewards and penalties, the registry, slashing, and the header checks."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from consensus.pos import beacon
from consensus.pos.messages import Attestation, AttesterSlashing, Checkpoint, PosExtra, slashable_votes
from consensus.pos.guard import Guard
from ledger.block import InvalidSeal
from ledger.codec import Reader
from ledger.staking import StakeChange, StakeOp, StakeOpKind
from pos_helpers import KEYS, UNIT, attest, make_block, owner, run_chain, setup


def test_proposers_are_sampled_by_stake():
    chain, _, state = setup(stakes=[1 * UNIT, 1 * UNIT, 1 * UNIT, 97 * UNIT])
    counts = Counter(beacon.proposer_index(state, slot, chain.params, chain.genesis_seed) for slot in range(1, 2001))
    assert counts[3] > 1800 and all(counts[i] > 0 for i in range(3))


def test_the_schedule_is_a_pure_function_of_the_state():
    chain, _, state = setup()
    first = [beacon.proposer_index(state, s, chain.params, chain.genesis_seed) for s in range(1, 50)]
    assert first == [beacon.proposer_index(state, s, chain.params, chain.genesis_seed) for s in range(1, 50)]
    assert len(set(first)) == 4


def test_with_every_vote_in_checkpoints_are_justified_and_finalized_two_epochs_behind():
    chain, genesis, state = setup()
    blocks = run_chain(chain, genesis, state, 16)  # four epochs of four slots
    final = blocks[-1][1]
    assert final.justified.epoch == 3
    assert final.finalized.epoch == 2
    # The finalized root is the first block of its epoch on this chain.
    assert final.finalized.root == blocks[8][0].hash


def test_half_the_stake_justifies_nothing():
    chain, genesis, state = setup()
    final = run_chain(chain, genesis, state, 16, voters=[0, 1])[-1][1]
    assert final.justified.epoch == 0 and final.finalized.epoch == 0


def test_three_of_four_equal_stakes_finalize():
    chain, genesis, state = setup()
    final = run_chain(chain, genesis, state, 16, voters=[0, 1, 2])[-1][1]
    assert final.finalized.epoch == 2


def test_timely_attesters_are_rewarded_and_the_silent_penalised():
    chain, genesis, state = setup()
    blocks = run_chain(chain, genesis, state, 9, voters=[0, 1, 2])
    header = blocks[-1][0]  # slot 9 is not an epoch start: look at the block of slot 8
    ops = PosExtra.decode(blocks[8][0].extra).ops
    rewarded = {op.address for op in ops if op.kind == StakeOpKind.REWARD}
    penalised = {op.address: op.amount for op in ops if op.kind == StakeOpKind.PENALTY}
    assert {owner(0), owner(1), owner(2)} <= rewarded
    assert set(penalised) == {owner(3)}
    assert blocks[8][1].validators[3].stake == 32 * UNIT - penalised[owner(3)]
    assert header is not None


def test_the_inactivity_leak_drains_the_silent_until_the_rest_finalize():
    chain, genesis, state = setup(inactivity_leak_after=2, inactivity_leak_bps=2500)
    blocks = run_chain(chain, genesis, state, 60, voters=[0, 1])
    final = blocks[-1][1]
    assert final.finalized.epoch > 5, "the online half finalizes again once the leak cut the others down"
    assert final.validators[2].stake < 16 * UNIT and final.validators[0].stake == 32 * UNIT


def test_double_and_surround_votes_are_slashable_and_repeats_are_not():
    a, b, c = (Checkpoint(e, bytes([e]) * 32) for e in (1, 2, 3))
    vote = Attestation(0, 9, b"h" * 32, a, b)
    assert slashable_votes(vote, replace(vote, slot=10, head=b"x" * 32)) is None
    assert slashable_votes(vote, replace(vote, target=Checkpoint(2, b"z" * 32))) == "double_vote"
    assert slashable_votes(Attestation(0, 9, b"h" * 32, Checkpoint(0, bytes(32)), c), vote) == "surround_vote"
    assert slashable_votes(vote, replace(vote, validator=1, target=Checkpoint(2, b"z" * 32))) is None


def test_the_guard_never_allows_a_slashable_pair():
    a, b, c = (Checkpoint(e, bytes([e]) * 32) for e in (1, 2, 3))
    guard = Guard(source=a, target=b)
    assert guard.may_vote(a, b)
    assert not guard.may_vote(a, Checkpoint(2, b"z" * 32))  # double
    assert not guard.may_vote(Checkpoint(0, bytes(32)), c)  # would surround
    assert guard.may_vote(b, c) and guard.may_vote(a, c)
    assert not Guard(proposed_slot=7).may_propose(7) and Guard(proposed_slot=7).may_propose(8)


def test_an_attester_slashing_takes_the_fraction_ejects_and_pays_the_includer():
    chain, genesis, state = setup()
    blocks = run_chain(chain, genesis, state, 5)
    parent, parent_state = blocks[-1]
    one = attest(chain, parent_state, 2, 5, parent.hash)
    two = replace(one, target=Checkpoint(one.target.epoch, b"\x01" * 32), signature=b"").signed(KEYS[2], chain.chain_id)
    first, second = sorted((one, two), key=beacon.evidence_key)
    header, after = make_block(chain, parent, parent_state, 6, attester_slashings=[AttesterSlashing(first, second)])
    ops = PosExtra.decode(header.extra).ops
    taken = 32 * UNIT // 10
    assert StakeOp(StakeOpKind.SLASH, owner(2), taken) in ops
    assert any(op.kind == StakeOpKind.UNBOND and op.address == owner(2) and op.amount == 32 * UNIT - taken for op in ops)
    assert StakeOp(StakeOpKind.REWARD, header.proposer, taken // 10) in ops
    assert after.validators[2].slashed and after.validators[2].stake == 0
    # The same evidence again is refused: a validator is slashed once.
    with pytest.raises(InvalidSeal, match="already slashed"):
        make_block(chain, header, after, 7, attester_slashings=[AttesterSlashing(first, second)])


def test_an_unstake_exits_at_the_epoch_boundary_and_releases_after_the_delay():
    chain, genesis, state = setup(count=5, exit_delay_epochs=2)
    blocks = run_chain(chain, genesis, state, 2)
    parent, parent_state = blocks[-1]
    header, after = make_block(chain, parent, parent_state, 3, stake_changes=[StakeChange(owner(4), b"", 32 * UNIT, False)])
    assert after.validators[4].exit_requested == 32 * UNIT
    chain_state, tip = after, header
    unbond = release = None
    for slot in range(4, 24):
        tip, chain_state = make_block(chain, tip, chain_state, slot)
        for op in PosExtra.decode(tip.extra).ops:
            if op.address == owner(4) and op.kind == StakeOpKind.UNBOND:
                unbond = (slot, op)
            if op.address == owner(4) and op.kind == StakeOpKind.RELEASE:
                release = (slot, op)
    # Requested in epoch 0: it leaves at the boundary into epoch 1 (slot 4), and its stake is
    # released at the boundary into epoch 1 + 2 (slot 12).
    assert unbond is not None and unbond[0] == 4 and unbond[1].epoch == 3
    assert release is not None and release[0] == 12 and release[1].amount == 32 * UNIT
    assert chain_state.validators[4].status(chain_state.epoch(chain.params)) == "exited"


def test_deposits_activate_at_the_next_boundary_within_the_churn_limit():
    chain, genesis, state = setup(churn_limit=2)
    blocks = run_chain(chain, genesis, state, 1)
    parent, parent_state = blocks[-1]
    deposits = [StakeChange(owner(i), KEYS[i].public_key, 32 * UNIT, True) for i in (4, 5, 6)]
    header, after = make_block(chain, parent, parent_state, 2, stake_changes=deposits)
    assert [v.status(0) for v in after.validators[4:]] == ["pending"] * 3
    tip, st = header, after
    for slot in range(3, 9):
        tip, st = make_block(chain, tip, st, slot)
    assert [v.activation_epoch for v in st.validators[4:]] == [1, 1, 2]
    assert st.epoch_stake[6] == 32 * UNIT  # active in epoch 2


def test_a_deposit_naming_another_validators_key_never_activates():
    chain, genesis, state = setup()
    after = beacon.apply_stake_changes(state, (StakeChange(owner(5), KEYS[0].public_key, 32 * UNIT, True),), 0)
    assert after.validators[4].key_taken
    registry, _ = beacon.process_registry(after.validators, 0, chain.params)
    assert registry[4].activation_epoch == beacon.FAR


@pytest.mark.parametrize("what, tamper, message", [
    ("ops", lambda e: replace(e, ops=e.ops + (StakeOp(StakeOpKind.REWARD, owner(0), 1),)), "ops differ"),
    ("reveal", lambda e: replace(e, randao_reveal=bytes(64)), "RANDAO"),
])
def test_a_header_with_wrong_contents_is_refused(what, tamper, message):
    chain, genesis, state = setup()
    with pytest.raises(InvalidSeal, match=message):
        make_block(chain, genesis, state, 1, tamper=tamper)


def test_a_header_sealed_by_another_validator_or_off_slot_is_refused():
    chain, genesis, state = setup()
    header, _ = make_block(chain, genesis, state, 1)
    proposer = beacon.proposer_index(state, 1, chain.params, chain.genesis_seed)
    other = (proposer + 1) % 4
    forged = replace(header, seal=beacon.sign_block(KEYS[other], header, 1, chain.chain_id))
    with pytest.raises(InvalidSeal, match="seal"):
        beacon.apply_block(state, forged, chain)
    with pytest.raises(InvalidSeal, match="start of a slot"):
        beacon.apply_block(state, replace(header, timestamp=header.timestamp + 1), chain)
    with pytest.raises(InvalidSeal, match="belongs to validator"):
        beacon.apply_block(state, replace(header, proposer=owner(other)), chain)


def test_an_attestation_needs_a_slot_of_delay_and_is_counted_once():
    chain, genesis, state = setup()
    header, after = make_block(chain, genesis, state, 1)
    vote = attest(chain, after, 0, 1, header.hash)
    processed, _ = beacon.process_slots(after, 1, chain.params)
    assert "window" in beacon.check_attestation(processed, vote, 1, chain)
    tip, st = make_block(chain, header, after, 2, attestations=[vote])
    assert 0 in st.votes
    processed, _ = beacon.process_slots(st, 3, chain.params)
    assert beacon.check_attestation(processed, vote, 3, chain) == "attestation already included"
    wrong_source = replace(vote, source=Checkpoint(0, b"\x02" * 32), signature=b"").signed(KEYS[0], chain.chain_id)
    assert "source" in beacon.check_attestation(processed, wrong_source, 3, chain)


def test_a_state_survives_its_encoding():
    chain, genesis, state = setup()
    final = run_chain(chain, genesis, state, 9)[-1][1]
    reader = Reader(beacon.encode_state(final))
    assert beacon.read_state(reader) == final
    reader.finish()

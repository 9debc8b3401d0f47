"""The proof-of-stake state machine (consensus/pos/engine.py) driven event by event:
duties, the fork choice's SetHead, evidence from what peers send, the double-sign guard
across a restart, and hostile messages."""

from __future__ import annotations

from dataclasses import replace

from consensus.engine import (
    BlockCommitted,
    BlockReceived,
    Broadcast,
    BuildBlock,
    Persist,
    PeerMessage,
    ReportEvidence,
    SetHead,
    Started,
    Tick,
)
from consensus.pos import beacon
from consensus.pos.engine import PosEngine
from consensus.pos.messages import (
    Attestation,
    AttesterSlashing,
    Checkpoint,
    ProposerSlashing,
    decode_message,
    encode_message,
)
from ledger.block import Block
from ledger.staking import StakeChange
from pos_helpers import KEYS, UNIT, make_block, owner, pos_genesis

GENESIS = pos_genesis(4)


def started(index: int | None, persisted: bytes | None = None, now: int | None = None) -> PosEngine:
    engine = PosEngine(GENESIS, KEYS[index] if index is not None else None)
    head = engine.genesis_header
    engine.handle(Started(now or GENESIS.timestamp + 10, head, persisted, (head,)))
    return engine


def slot_time(engine: PosEngine, slot: int, offset: int = 0) -> int:
    return engine.chain.slot_time(slot) + offset


def receive(engine: PosEngine, header, now: int) -> list:
    """A peer's block as the runtime hands it over: checked (verify_header), then announced."""
    parent = engine._headers[header.parent]
    engine.verify_header(header, (parent,), now)
    return engine.handle(BlockReceived(now, Block(header, ()), "peer"))


def test_the_slot_proposer_asks_for_a_block_and_others_do_not():
    engines = [started(i) for i in range(4)]
    proposer = beacon.proposer_index(engines[0].genesis_state, 1, engines[0].params, engines[0].chain.genesis_seed)
    for index, engine in enumerate(engines):
        actions = engine.handle(Tick(slot_time(engine, 1)))
        builds = [a for a in actions if isinstance(a, BuildBlock)]
        assert len(builds) == (1 if index == proposer else 0)
    follower = started(None)
    assert not [a for a in follower.handle(Tick(slot_time(follower, 1, 400))) if isinstance(a, (BuildBlock, Broadcast))]


def test_an_attestation_is_persisted_before_it_is_broadcast_and_never_contradicted_after_a_restart():
    engine = started(2)
    actions = engine.handle(Tick(slot_time(engine, 1, 400)))
    kinds = [type(a) for a in actions]
    assert Persist in kinds and Broadcast in kinds and kinds.index(Persist) < kinds.index(Broadcast)
    persisted = next(a.state for a in actions if isinstance(a, Persist))
    vote = decode_message(next(a.message for a in actions if isinstance(a, Broadcast)))
    # Restarted from that Persist, on a chain whose epoch-0 checkpoint is another block, the
    # validator would have to sign a different target for epoch 0: it does not.
    again = started(2, persisted)
    assert again.guard.target == vote.target
    assert not again.guard.may_vote(vote.source, Checkpoint(0, b"\x07" * 32))


def test_two_blocks_for_one_slot_by_one_proposer_become_evidence_and_go_into_the_next_block():
    watcher = started(0)
    state = watcher.genesis_state
    genesis = watcher.genesis_header
    one, _ = make_block(watcher.chain, genesis, state, 1)
    two, _ = make_block(watcher.chain, genesis, state, 1, stake_changes=[StakeChange(owner(3), b"", 1, False)])
    assert one.hash != two.hash
    now = slot_time(watcher, 1, 10)
    receive(watcher, one, now)
    actions = receive(watcher, two, now)
    reports = [a for a in actions if isinstance(a, ReportEvidence)]
    assert len(reports) == 1 and isinstance(decode_message(reports[0].evidence), ProposerSlashing)
    assert [a for a in actions if isinstance(a, Broadcast)], "the evidence is gossiped for whoever proposes next"
    record = watcher.status().evidence[0]
    assert record.kind == "proposer_equivocation" and record.validator == one.proposer


def test_a_double_vote_from_gossip_becomes_evidence():
    watcher = started(0)
    genesis = watcher.genesis_header
    now = slot_time(watcher, 1, 400)
    source = Checkpoint(0, genesis.hash)
    first = Attestation(3, 1, genesis.hash, source, Checkpoint(0, genesis.hash)).signed(KEYS[3], GENESIS.chain_id)
    second = Attestation(3, 2, genesis.hash, source, Checkpoint(0, b"\x05" * 32)).signed(KEYS[3], GENESIS.chain_id)
    assert not [a for a in watcher.handle(PeerMessage(now, "p", encode_message(first))) if isinstance(a, ReportEvidence)]
    actions = watcher.handle(PeerMessage(slot_time(watcher, 2, 400), "p", encode_message(second)))
    reports = [decode_message(a.evidence) for a in actions if isinstance(a, ReportEvidence)]
    assert len(reports) == 1 and isinstance(reports[0], AttesterSlashing)
    assert {reports[0].first.target, reports[0].second.target} == {first.target, second.target}


def test_a_new_attestation_is_relayed_once_and_a_refused_or_stale_one_never():
    engine = started(0)
    genesis = engine.genesis_header
    checkpoint = Checkpoint(0, genesis.hash)
    vote = Attestation(2, 1, genesis.hash, checkpoint, checkpoint).signed(KEYS[2], GENESIS.chain_id)
    message = encode_message(vote)

    def relayed(now: int, data: bytes) -> bool:
        return Broadcast(data) in engine.handle(PeerMessage(now, "p", data))

    assert relayed(slot_time(engine, 1, 400), message)
    assert not relayed(slot_time(engine, 1, 450), message)  # already pooled: the gossip stops
    forged = encode_message(replace(vote, validator=3))  # signed by another key
    assert not relayed(slot_time(engine, 1, 500), forged)
    # Past the inclusion window no block takes it any more: pooled for slashing checks, not relayed.
    late = encode_message(Attestation(1, 1, genesis.hash, checkpoint, checkpoint).signed(KEYS[1], GENESIS.chain_id))
    assert not relayed(slot_time(engine, 1 + engine.params.slots_per_epoch + 1, 400), late)


def test_the_fork_choice_follows_the_votes_and_says_so_with_set_head():
    engine = started(0)
    chain, state, genesis = engine.chain, engine.genesis_state, engine.genesis_header
    ours, _ = make_block(chain, genesis, state, 1)
    theirs, _ = make_block(chain, genesis, state, 2)
    now = slot_time(engine, 2, 10)
    engine.verify_header(ours, (genesis,), now)
    engine.handle(BlockCommitted(now, ours, (genesis, ours)))
    receive(engine, theirs, now)
    actions = []
    for validator in (1, 2, 3):
        vote = Attestation(validator, 2, theirs.hash, Checkpoint(0, genesis.hash), Checkpoint(0, genesis.hash))
        actions += engine.handle(PeerMessage(slot_time(engine, 2, 400), "p", encode_message(vote.signed(KEYS[validator], GENESIS.chain_id))))
    assert SetHead(theirs.hash) in actions


def test_hostile_messages_change_nothing():
    engine = started(0)
    now = slot_time(engine, 1, 400)
    engine.handle(Tick(now))  # its own duties of the slot are done
    before = engine.status().details["attestation_pool"]
    for garbage in (b"", b"\x01", b"\x09" + bytes(300), bytes(5000)):
        assert not [a for a in engine.handle(PeerMessage(now, "p", garbage)) if isinstance(a, (Broadcast, ReportEvidence))]
    genesis = engine.genesis_header
    forged = Attestation(1, 1, genesis.hash, Checkpoint(0, genesis.hash), Checkpoint(0, genesis.hash)).signed(KEYS[2], GENESIS.chain_id)
    unknown = replace(forged, validator=99)
    for message in (forged, unknown):
        engine.handle(PeerMessage(now, "p", encode_message(message)))
    assert engine.refused_messages == 6
    assert engine.status().details["attestation_pool"] == before


def test_the_status_names_slot_epoch_checkpoints_and_validators():
    engine = started(1)
    engine.handle(Tick(slot_time(engine, 9, 500)))
    status = engine.status()
    assert status.engine == "pos" and status.epoch == 2 and status.slot == status.details["slot"] == 9  # four slots an epoch
    assert status.finalized.epoch == 0 and status.justified.epoch == 0
    assert [v.status for v in status.validators] == ["active"] * 4
    assert [v.power for v in status.validators] == [32 * UNIT] * 4
    assert [v.attested_previous_epoch for v in status.validators] == [False] * 4  # no block carried a vote


def test_the_status_answers_before_the_engine_has_started():
    status = PosEngine(pos_genesis(4), KEYS[0]).status()
    assert status.phase == "not started" and status.height is None
    assert [v.status for v in status.validators] == ["active"] * 4

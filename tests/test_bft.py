"""The BFT engine, rule by rule, from hand-built message sequences (four validators of
power 1 with deterministic keys), plus small in-memory clusters for whole heights.

Validator i below is the i-th in address order; with equal powers the proposer of
(height h, round r) is validator (h + r - 1) mod 4, which `proposer_index` computes
through the real rotation rather than assuming it.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft_helpers import (
    ADDRESSES,
    CHAIN,
    FAST,
    GENESIS,
    KEYS,
    MAX_TX,
    OUTSIDER,
    T0,
    VALIDATORS,
    Cluster,
    answer_executions,
    certificate_for,
    make_block,
    make_engine,
    of_type,
    others,
    peer,
    proposal_bytes,
    proposer_index,
    sent_messages,
    sent_proposals,
    sent_votes,
    vote,
    vote_bytes,
)
from consensus.bft import BftEngine, BftParams, Step
from consensus.bft_evidence import MAX_BLOCK_EVIDENCE, BlockExtra, Evidence, EvidenceType, verify_evidence
from consensus.bft_messages import (
    Certificate,
    Decision,
    InvalidCertificate,
    Proposal,
    SignedProposal,
    Status,
    Vote,
    VoteType,
    decode_message,
    encode_message,
    verify_certificate,
)
from consensus.engine import (
    BlockBuilt,
    BlockCommitted,
    BlockExecuted,
    Broadcast,
    BuildBlock,
    Commit,
    ExecuteBlock,
    InvalidSeal,
    PeerConnected,
    PeerMessage,
    Persist,
    ReportEvidence,
    Send,
    SetTimer,
    Started,
    Tick,
    TxsAvailable,
)
from consensus.registry import create_engine
from consensus.validators import ValidatorSet, increment_priorities, validator_set_of
from ledger import crypto
from ledger.address import address_of
from ledger.block import Block, build_header
from ledger.codec import DecodeError, Writer
from ledger.engine_status import Finality
from ledger.genesis import Genesis

PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
QUIET = dataclasses.replace(FAST, gossip_interval_ms=600_000)  # no gossip in the way of timer checks


def started(index: int, params: BftParams = QUIET, persisted: bytes | None = None, head=GENESIS, now: int = T0):
    engine = make_engine(index, params)
    return engine, engine.handle(Started(now, head, persisted))


def deliver(engine: BftEngine, data: bytes, now: int = T0, sender: int = 0) -> list:
    return engine.handle(PeerMessage(now, peer(sender), data))


def deliver_all(engine: BftEngine, messages: list[bytes], now: int = T0) -> list:
    out = []
    for data in messages:
        out.extend(deliver(engine, data, now))
    return out


def timers(actions) -> list[int]:
    return [a.at for a in of_type(actions, SetTimer)]


def tick_to(engine: BftEngine, at: int) -> list:
    return engine.handle(Tick(at))


def jump_to_round(engine: BftEngine, round: int, senders=(0, 1), now: int = T0) -> list:
    """Line 55: nil prevotes of `round` from validators holding more than a third."""
    return deliver_all(engine, [vote_bytes(i, PREVOTE, engine.height, round, None) for i in senders], now)


BLOCK_A = make_block(proposer_index(1, 0))
BLOCK_B = make_block(proposer_index(1, 1), timestamp=T0 + 7)  # another value for height 1


def lock_on_a_in_round_0(engine: BftEngine) -> list:
    """Validator 3 prevotes A, sees 2f+1 prevotes for it and locks (lines 22-24, 36-41)."""
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0)
    actions += deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 0, BLOCK_A.hash) for i in (0, 1)])
    return actions


# ============================================================================ whole heights


def test_happy_path_commits_in_round_zero_with_a_certificate_in_the_next_header():
    cluster = Cluster([make_engine(i) for i in range(4)])
    cluster.start()
    cluster.run(cluster.all_at_least(3), limit_ms=10_000)
    for height in (1, 2, 3):
        blocks = {cluster.committed[i][height][0].hash for i in range(4)}
        assert len(blocks) == 1
        block, certificate = cluster.committed[0][height]
        assert certificate.round == 0
        assert block.header.proposer == VALIDATORS.proposer(height, 0).address
        verify_certificate(certificate, block.header, VALIDATORS)
    # Block h+1 carries the certificate of block h, and every engine accepts the chain.
    for height in (2, 3):
        header, parent = cluster.committed[0][height][0].header, cluster.committed[0][height - 1][0].header
        verify_certificate(BlockExtra.decode(header.extra).certificate, parent, VALIDATORS)
        carried = cluster.engines[1].parent_certificate(header)
        assert verify_certificate(carried, parent, VALIDATORS).block_hash == parent.hash
        cluster.engines[1].verify_header(header, (parent,))
    assert cluster.committed[0][1][0].header.extra == b""
    # No timeout was needed: three heights within a few message delays.
    assert cluster.now - T0 < FAST.timeout_propose_ms


def test_a_silent_proposer_leads_to_round_one_where_the_next_proposer_commits():
    silent = proposer_index(1, 0)
    cluster = Cluster([make_engine(i) for i in range(4)], silent={silent})
    cluster.start()
    honest = others(silent)
    cluster.run(cluster.all_at_least(1, honest), limit_ms=20_000)
    block, certificate = cluster.committed[honest[0]][1]
    assert certificate.round == 1
    assert block.header.proposer == VALIDATORS.proposer(1, 1).address
    assert block.header.proposer != ADDRESSES[silent]
    assert cluster.now - T0 >= FAST.timeout_propose_ms  # round 0 ended by its timeout
    assert all(cluster.committed[i][1][0].hash == block.hash for i in honest)


def test_persist_precedes_every_new_signed_message_in_the_same_action_list():
    cluster = Cluster([make_engine(i) for i in range(4)])
    cluster.start()
    cluster.run(cluster.all_at_least(2), limit_ms=10_000)
    seen: set[bytes] = set()
    checked = 0
    for index, _, actions in cluster.log:
        for position, action in enumerate(actions):
            if not isinstance(action, Broadcast):
                continue
            message = decode_message(action.message, MAX_TX)
            signer = message.validator if isinstance(message, Vote) else (
                message.signed.proposer if isinstance(message, Proposal) else None)
            if signer != ADDRESSES[index] or action.message in seen:
                continue
            seen.add(action.message)
            checked += 1
            assert any(isinstance(a, Persist) for a in actions[:position]), "a signature left before its Persist"
    assert checked >= 2 * 4 * 2  # prevote and precommit of every validator at two heights, at least


def test_same_events_give_the_same_actions():
    def run() -> list:
        rng = random.Random(7)
        cluster = Cluster([make_engine(i) for i in range(4)], sync=True, latency_ms=3,
                          drop=lambda a, b, m: rng.random() < 0.2)
        cluster.start()
        cluster.run(cluster.all_at_least(4), limit_ms=120_000)
        return [(index, name, [repr(action) for action in actions]) for index, name, actions in cluster.log]

    first, second = run(), run()
    assert len(first) > 100
    assert first == second


def byzantine_cluster(seed: int, byzantine: int) -> Cluster:
    """Validator `byzantine` equivocates: every vote it casts goes out to each peer with
    a value of its own choosing, and each proposal as two different blocks."""
    rng = random.Random(seed)
    cluster = Cluster([make_engine(i) for i in range(4)], sync=True, latency_ms=rng.randint(1, 30),
                      drop=lambda a, b, m: rng.random() < 0.1)
    honest_perform = cluster.perform

    def perform(index: int, actions) -> None:
        if index != byzantine:
            return honest_perform(index, actions)
        kept = []
        for action in actions:
            if not isinstance(action, Broadcast):
                kept.append(action)
                continue
            message = decode_message(action.message, MAX_TX)
            for target in others(index):
                if isinstance(message, Vote):
                    value = rng.choice([message.block_hash, None, bytes([rng.randrange(256)]) * 32])
                    forged = encode_message(Vote.sign(KEYS[index], CHAIN, message.kind, message.height,
                                                      message.round, value))
                elif isinstance(message, Proposal) and target % 2:
                    header = dataclasses.replace(message.block.header, timestamp=message.block.header.timestamp + 1)
                    header = header.with_seal(KEYS[index].sign_digest(header.sealing_digest()))
                    other_block = Block(header, ())
                    forged = proposal_bytes(index, message.height, message.round, other_block,
                                            message.pol_round)
                else:
                    forged = action.message
                cluster.push(cluster.now + cluster.latency_ms, target,
                             PeerMessage(cluster.now + cluster.latency_ms, peer(index), forged))
        honest_perform(index, kept)

    cluster.perform = perform  # type: ignore[method-assign]
    return cluster


def _recorded_in(cluster: Cluster, index: int) -> list[Evidence]:
    return [item for block, _ in cluster.committed[index].values() for item in BlockExtra.decode(block.header.extra).evidence]


@pytest.mark.parametrize("seed", range(8))
def test_an_equivocating_validator_breaks_neither_safety_nor_liveness(seed):
    byzantine = seed % 4
    honest = others(byzantine)
    cluster = byzantine_cluster(seed, byzantine)
    cluster.start()
    cluster.run(cluster.all_at_least(4, honest), limit_ms=600_000)
    # Its misbehaviour ends up in a block, which every honest engine accepted.
    cluster.run(lambda c: any(_recorded_in(c, i) for i in honest), limit_ms=600_000)
    for height in range(1, 5):
        assert len({cluster.committed[i][height][0].hash for i in honest if height in cluster.committed[i]}) == 1
        for i in honest:
            block, certificate = cluster.committed[i][height]
            verify_certificate(certificate, block.header, VALIDATORS)
    reported = [Evidence.decode(raw) for i in honest for raw in cluster.evidence[i]]
    assert reported, "its conflicting votes were never noticed"
    for evidence in reported + [item for i in honest for item in _recorded_in(cluster, i)]:
        assert evidence.validator == ADDRESSES[byzantine]
        verify_evidence(evidence, VALIDATORS, CHAIN)


# ============================================================================ propose (lines 11-33)


def test_proposer_builds_on_the_head_seals_and_proposes_then_prevotes_its_own_block():
    proposer = proposer_index(1, 0)
    engine, actions = started(proposer)
    build = of_type(actions, BuildBlock)
    assert build == [BuildBlock(GENESIS.hash, 1, T0, ADDRESSES[proposer], b"")]
    block = Block(build_header(CHAIN, GENESIS, T0, [], ADDRESSES[proposer]), ())
    actions = engine.handle(BlockBuilt(T0 + 1, block))
    [proposal] = sent_proposals(actions)
    assert proposal.round == 0 and proposal.pol_round == -1 and proposal.signed.proposer == ADDRESSES[proposer]
    assert proposal.signed.verify(CHAIN, KEYS[proposer].public_key)
    engine.verify_header(proposal.block.header, (GENESIS,))  # sealed by the proposer
    [prevote] = sent_votes(actions, PREVOTE)
    assert prevote.block_hash == proposal.block_hash
    assert not of_type(actions, ExecuteBlock)  # its own block was built by applying it


def test_a_proposal_is_executed_before_it_is_prevoted():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    assert [a.block for a in of_type(actions, ExecuteBlock)] == [BLOCK_A]
    assert sent_votes(actions) == []  # valid(v) is not known yet
    actions = answer_executions(engine, actions, T0)
    [prevote] = sent_votes(actions, PREVOTE)
    assert (prevote.height, prevote.round, prevote.block_hash) == (1, 0, BLOCK_A.hash)
    assert engine.step is Step.PREVOTE


def test_a_block_the_runtime_finds_invalid_gets_a_nil_prevote():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions = answer_executions(engine, actions, T0, valid=False)
    [prevote] = sent_votes(actions, PREVOTE)
    assert prevote.block_hash is None
    assert "test says no" in engine.invalid_reasons[BLOCK_A.hash]


@pytest.mark.parametrize("problem", ["seal", "parent", "certificate", "proposer"])
def test_a_block_breaking_the_engine_rules_gets_a_nil_prevote_without_execution(problem):
    engine, _ = started(3)
    if problem == "seal":
        block = make_block(0, signer=OUTSIDER)  # proposer 0's block sealed by someone else
    elif problem == "parent":
        block = make_block(0, parent=dataclasses.replace(GENESIS, timestamp=T0 + 1))
    elif problem == "certificate":
        block = make_block(0, extra=b"\x00" * 10)  # block 1 carries no certificate
    else:
        header = build_header(CHAIN, GENESIS, T0 + 1, [], address_of(OUTSIDER.public_key))
        block = Block(header.with_seal(OUTSIDER.sign_digest(header.sealing_digest())), ())
    actions = deliver(engine, proposal_bytes(0, 1, 0, block))
    assert not of_type(actions, ExecuteBlock)
    [prevote] = sent_votes(actions, PREVOTE)
    assert prevote.block_hash is None


def test_a_proposal_from_anyone_but_the_rounds_proposer_is_ignored():
    engine, _ = started(3)
    wrong = (proposer_index(1, 0) + 1) % 4
    actions = deliver(engine, proposal_bytes(wrong, 1, 0, make_block(wrong)))
    assert not sent_votes(actions) and not of_type(actions, ExecuteBlock)
    assert engine.proposals == {}
    forged = proposal_bytes(0, 1, 0, BLOCK_A, signer=KEYS[1])  # proposer 0's name, key 1's signature
    assert not sent_votes(deliver(engine, forged))
    assert engine.refused_messages == 2


def test_timeout_propose_prevotes_nil_and_timeouts_grow_with_the_round():
    engine, actions = started(3)
    assert timers(actions) == [T0 + QUIET.timeout_propose(0)]
    actions = tick_to(engine, T0 + QUIET.timeout_propose(0))  # lines 57-60
    [prevote] = sent_votes(actions)
    assert (prevote.kind, prevote.round, prevote.block_hash) == (PREVOTE, 0, None)
    now = T0 + 5000
    actions = jump_to_round(engine, 3, now=now)
    assert engine.round == 3
    assert now + QUIET.timeout_propose_ms + 3 * QUIET.timeout_delta_ms in timers(actions)
    assert QUIET.timeout_prevote(3) == QUIET.timeout_prevote_ms + 3 * QUIET.timeout_delta_ms
    assert QUIET.timeout_precommit(2) == QUIET.timeout_precommit_ms + 2 * QUIET.timeout_delta_ms


def test_prevotes_of_any_kind_arm_the_prevote_timeout_which_precommits_nil():
    engine, _ = started(3)
    tick_to(engine, T0 + 1000)  # prevote nil
    now = T0 + 1100
    actions = deliver(engine, vote_bytes(0, PREVOTE, 1, 0, BLOCK_A.hash), now)
    assert timers(actions) == []
    actions = deliver(engine, vote_bytes(1, PREVOTE, 1, 0, BLOCK_B.hash), now)  # 2f+1 of any kind: line 34
    assert timers(actions) == [now + QUIET.timeout_prevote(0)]
    assert sent_votes(actions) == []
    actions = tick_to(engine, now + QUIET.timeout_prevote(0))  # lines 61-64
    [precommit] = sent_votes(actions)
    assert (precommit.kind, precommit.block_hash) == (PRECOMMIT, None)
    assert engine.step is Step.PRECOMMIT


def test_two_thirds_nil_prevotes_precommit_nil_at_once():
    engine, _ = started(3)
    tick_to(engine, T0 + 1000)
    actions = deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 0, None) for i in (0, 1)], T0 + 1001)  # line 44
    [precommit] = sent_votes(actions)
    assert (precommit.kind, precommit.block_hash) == (PRECOMMIT, None)


def test_precommits_of_any_kind_arm_the_precommit_timeout_which_starts_the_next_round():
    engine, _ = started(3)
    now = T0 + 10
    deliver(engine, vote_bytes(0, PRECOMMIT, 1, 0, None), now)
    actions = deliver(engine, vote_bytes(1, PRECOMMIT, 1, 0, BLOCK_A.hash), now)
    assert timers(actions) == []  # two of four: no quorum yet
    actions = deliver(engine, vote_bytes(2, PRECOMMIT, 1, 0, None), now)  # line 47
    assert now + QUIET.timeout_precommit(0) in timers(actions)
    assert engine.round == 0
    tick_to(engine, now + QUIET.timeout_precommit(0))  # lines 65-67
    assert (engine.round, engine.step) == (1, Step.PROPOSE)


def test_f_plus_one_messages_of_a_higher_round_pull_a_validator_into_it():
    engine, _ = started(3)
    deliver(engine, vote_bytes(0, PREVOTE, 1, 5, None))
    assert engine.round == 0  # one validator of four is not more than a third
    deliver(engine, vote_bytes(1, PRECOMMIT, 1, 5, None))  # line 55: any kind counts
    assert engine.round == 5
    deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 2, None) for i in (0, 1, 2)])
    assert engine.round == 5  # never back to a lower round


# ============================================================================ locks (lines 22-43)


def test_a_locked_validator_precommits_only_its_value_until_a_higher_round_pol():
    engine, _ = started(3)
    actions = lock_on_a_in_round_0(engine)
    assert [(v.kind, v.block_hash) for v in sent_votes(actions)] == [(PREVOTE, BLOCK_A.hash), (PRECOMMIT, BLOCK_A.hash)]
    assert (engine.locked_round, engine.locked_hash) == (0, BLOCK_A.hash)
    # Round 0 ends without a decision.
    deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, None) for i in (0, 1)])
    tick_to(engine, T0 + QUIET.timeout_precommit(0))
    assert engine.round == 1
    # Round 1: a fresh proposal for B.  Locked on A: nil (line 26), even though B is valid.
    actions = deliver(engine, proposal_bytes(1, 1, 1, BLOCK_B), T0 + 600, sender=1)
    actions += answer_executions(engine, actions, T0 + 600)
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(1, None)]
    # Two others prevote B: no POL (2 + our nil is no quorum for B); the prevote timeout precommits nil.
    actions = deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 1, BLOCK_B.hash) for i in (0, 1)], T0 + 700)
    actions += tick_to(engine, T0 + 700 + QUIET.timeout_prevote(1))
    assert [(v.kind, v.block_hash) for v in sent_votes(actions)] == [(PRECOMMIT, None)]
    assert (engine.locked_round, engine.locked_hash) == (0, BLOCK_A.hash)
    # Round 2: B again, and now 2f+1 prevote it in round 2 - a POL for B newer than the lock (line 36).
    deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 1, None) for i in (0, 1)], T0 + 2000)
    tick_to(engine, T0 + 2000 + QUIET.timeout_precommit(1))
    assert engine.round == 2
    actions = deliver(engine, proposal_bytes(2, 1, 2, BLOCK_B), T0 + 3000, sender=2)
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(2, None)]  # still locked on A
    actions = deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 2, BLOCK_B.hash) for i in (0, 1, 2)], T0 + 3000)
    assert [(v.kind, v.round, v.block_hash) for v in sent_votes(actions)] == [(PRECOMMIT, 2, BLOCK_B.hash)]
    assert (engine.locked_round, engine.locked_hash) == (2, BLOCK_B.hash)
    assert (engine.valid_round, engine.valid_hash) == (2, BLOCK_B.hash)


def test_a_reproposal_with_a_pol_newer_than_the_lock_unlocks():
    engine, _ = started(3)
    lock_on_a_in_round_0(engine)
    deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, None) for i in (0, 1)])
    tick_to(engine, T0 + QUIET.timeout_precommit(0))
    assert engine.round == 1  # it never sees round 1's proposal or prevotes, only their POL later
    pol = tuple(vote(i, PREVOTE, 1, 1, BLOCK_B.hash) for i in (0, 1, 2))
    actions = deliver(engine, proposal_bytes(2, 1, 2, BLOCK_B, pol_round=1, pol_votes=pol), T0 + 800, sender=2)
    assert sent_votes(actions) == []  # round 2 is not ours yet; B is not executed yet either
    actions += deliver(engine, vote_bytes(0, PREVOTE, 1, 2, None), T0 + 800)  # f+1 in round 2: line 55
    assert engine.round == 2
    actions += answer_executions(engine, actions, T0 + 800)
    # Line 28-30: lockedRound 0 <= vr 1, so B gets our prevote despite the lock on A.
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(2, BLOCK_B.hash)]


def test_a_reproposal_with_a_pol_older_than_the_lock_gets_nil():
    engine, _ = started(3)
    jump_to_round(engine, 1, senders=(0, 2))
    actions = deliver(engine, proposal_bytes(1, 1, 1, BLOCK_A), sender=1)
    actions += answer_executions(engine, actions, T0)
    deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 1, BLOCK_A.hash) for i in (0, 1)])
    assert (engine.locked_round, engine.locked_hash) == (1, BLOCK_A.hash)
    jump_to_round(engine, 2, senders=(0, 1))
    pol = tuple(vote(i, PREVOTE, 1, 0, BLOCK_B.hash) for i in (0, 1, 2))
    actions = deliver(engine, proposal_bytes(2, 1, 2, BLOCK_B, pol_round=0, pol_votes=pol), sender=2)
    actions += answer_executions(engine, actions, T0)
    # Line 29 fails (lockedRound 1 > vr 0, lockedValue A != B): line 32, nil.
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(2, None)]


def test_late_prevotes_set_the_valid_value_which_the_next_proposer_reproposes():
    proposer = proposer_index(1, 1)
    engine, _ = started(proposer)
    late = [i for i in range(4) if i != proposer]
    tick_to(engine, T0 + 1000)  # no proposal in time: nil prevote
    deliver_all(engine, [vote_bytes(i, PREVOTE, 1, 0, BLOCK_A.hash) for i in late], T0 + 1010)
    tick_to(engine, T0 + 1010 + QUIET.timeout_prevote(0))  # no proposal yet either: nil precommit
    assert engine.step is Step.PRECOMMIT
    # The proposal arrives late: line 36 with step = precommit sets only validValue (lines 42-43).
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A), T0 + 1600)
    actions += answer_executions(engine, actions, T0 + 1600)
    assert sent_votes(actions) == []
    assert (engine.valid_round, engine.valid_hash) == (0, BLOCK_A.hash)
    assert (engine.locked_round, engine.locked_hash) == (-1, None)
    # Round 1 is ours: we propose the valid value with its POL round (lines 15-16, 19), no BuildBlock.
    deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, None) for i in late[:2]], T0 + 1700)
    actions = tick_to(engine, T0 + 1700 + QUIET.timeout_precommit(0))
    assert not of_type(actions, BuildBlock)
    [proposal] = sent_proposals(actions)
    assert (proposal.round, proposal.pol_round, proposal.block_hash) == (1, 0, BLOCK_A.hash)
    assert {v.validator for v in proposal.pol_votes} >= {ADDRESSES[i] for i in late}
    # A validator that saw nothing of round 0 accepts it from the POL the proposal carries.
    fresh, _ = started(late[0])
    out = deliver(fresh, encode_message(proposal), T0 + 1800, sender=proposer)
    out += deliver(fresh, vote_bytes(late[1], PREVOTE, 1, 1, None), T0 + 1800)  # f+1 in round 1
    out += answer_executions(fresh, out, T0 + 1800)
    assert [(v.round, v.block_hash) for v in sent_votes(out, PREVOTE)] == [(1, BLOCK_A.hash)]


def test_a_decision_can_come_from_an_earlier_round():
    engine, _ = started(3)
    jump_to_round(engine, 1, senders=(0, 1))
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0)
    actions += deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])  # line 49
    [commit] = of_type(actions, Commit)
    assert commit.block == BLOCK_A
    certificate = verify_certificate(commit.certificate, BLOCK_A.header, VALIDATORS)
    assert certificate.round == 0 and set(certificate.signers) == {ADDRESSES[i] for i in (0, 1, 2)}
    assert engine.status().step == "decided" and engine.status().phase == "committing the decided block"


def test_two_thirds_precommits_for_an_invalid_block_do_not_commit():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0, valid=False)
    actions += deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])
    assert not of_type(actions, Commit)  # line 50: only if valid(v)


def test_status_counts_each_validators_proposals_and_last_signature():
    cluster = Cluster([make_engine(i) for i in range(4)])
    cluster.start()
    cluster.run(cluster.all_at_least(3), limit_ms=10_000)
    engine = cluster.engines[0]
    head = engine.head.height
    status = engine.status()
    assert (status.engine, status.finality, status.role) == ("bft", Finality.CERTIFICATE, "validator")
    assert (status.total_power, status.quorum_power) == (VALIDATORS.total_power, VALIDATORS.quorum_power)
    assert status.height == head + 1 and status.round is not None and status.epoch is None
    proposers = [cluster.committed[0][height][0].header.proposer for height in range(1, head + 1)]
    assert {v.address: v.blocks_proposed for v in status.validators} == {a: proposers.count(a) for a in ADDRESSES}
    head_signers = set(cluster.committed[0][head][1].signers)
    for validator in status.validators:
        if validator.address in head_signers:
            assert validator.last_signed_height == head
        else:
            assert validator.last_signed_height is None or validator.last_signed_height < head


def test_after_commit_the_next_height_starts_and_uses_messages_that_came_early():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0)
    actions += deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])
    [commit] = of_type(actions, Commit)
    # A proposal of height 2 arrives while the runtime still writes block 1.
    certificate = Certificate.decode(commit.certificate)
    block_2 = make_block(proposer_index(2, 0), parent=BLOCK_A.header, extra=BlockExtra(certificate).encode())
    assert deliver(engine, proposal_bytes(proposer_index(2, 0), 2, 0, block_2), T0 + 5) == []
    actions = engine.handle(BlockCommitted(T0 + 6, BLOCK_A.header))
    assert engine.height == 2 and (engine.locked_round, engine.valid_round) == (-1, -1)
    assert [a.block for a in of_type(actions, ExecuteBlock)] == [block_2]
    actions = answer_executions(engine, actions, T0 + 7)
    assert [(v.height, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(2, block_2.hash)]


def test_the_next_proposer_puts_the_heads_certificate_in_extra():
    cluster = Cluster([make_engine(i) for i in range(4)])
    cluster.start()
    cluster.run(cluster.all_at_least(2), limit_ms=5_000)
    proposer = proposer_index(2, 0)
    builds = [a for index, _, actions in cluster.log if index == proposer for a in of_type(actions, BuildBlock)]
    [build] = [b for b in builds if b.height == 2]
    assert build.extra == cluster.committed[proposer][2][0].header.extra
    verify_certificate(BlockExtra.decode(build.extra).certificate, cluster.committed[proposer][1][0].header, VALIDATORS)


# ============================================================================ empty blocks


def test_round_zero_waits_for_transactions_unless_empty_blocks_are_asked_for():
    params = dataclasses.replace(QUIET, create_empty_blocks=False)
    proposer = proposer_index(1, 0)
    engine, actions = started(proposer, params)
    assert not of_type(actions, BuildBlock) and engine.waiting_for_txs
    assert engine.handle(TxsAvailable(T0 + 50, 0)) == []
    actions = engine.handle(TxsAvailable(T0 + 60, 3))
    assert of_type(actions, BuildBlock)[0].timestamp == T0 + 60
    # A validator that is not the proposer does not time out while nothing is pending...
    follower, actions = started(3, params)
    assert QUIET.timeout_propose(0) + T0 not in timers(actions)
    assert sent_votes(tick_to(follower, T0 + 100_000)) == []
    # ...and starts the round as soon as it hears of it.
    actions = deliver(follower, vote_bytes(0, PREVOTE, 1, 0, None), T0 + 100_001)
    assert T0 + 100_001 + QUIET.timeout_propose(0) in timers(actions)


def test_max_block_interval_makes_an_empty_block_when_nothing_is_pending():
    params = dataclasses.replace(QUIET, create_empty_blocks=False, max_block_interval_ms=5000)
    engine, actions = started(proposer_index(1, 0), params)
    assert not of_type(actions, BuildBlock) and T0 + 5000 in timers(actions)
    assert not of_type(tick_to(engine, T0 + 4999), BuildBlock)
    assert of_type(tick_to(engine, T0 + 5000), BuildBlock)


def test_min_block_interval_delays_round_zero():
    params = dataclasses.replace(QUIET, min_block_interval_ms=2000)
    engine, actions = started(proposer_index(1, 0), params)
    assert not of_type(actions, BuildBlock)
    assert of_type(tick_to(engine, T0 + 2000), BuildBlock)


# ============================================================================ evidence


def test_conflicting_votes_are_reported_once_and_count_their_validator_once():
    engine, _ = started(3)
    tick_to(engine, T0 + 1000)  # our own nil prevote
    deliver(engine, vote_bytes(0, PREVOTE, 1, 0, BLOCK_A.hash), T0 + 1001)
    actions = deliver(engine, vote_bytes(0, PREVOTE, 1, 0, BLOCK_B.hash), T0 + 1002)
    [report] = of_type(actions, ReportEvidence)
    evidence = verify_evidence(report.evidence, VALIDATORS, CHAIN)
    assert evidence.kind == EvidenceType.DUPLICATE_VOTE and evidence.validator == ADDRESSES[0]
    assert {evidence.first.block_hash, evidence.second.block_hash} == {BLOCK_A.hash, BLOCK_B.hash}
    # "2f+1 prevotes of any kind" counts validators, not messages: two of four, no timer (line 34).
    assert timers(actions) == []
    actions = deliver(engine, vote_bytes(0, PREVOTE, 1, 0, None), T0 + 1003)
    assert of_type(actions, ReportEvidence) == []  # one report per (validator, height, round, type)
    status = engine.status()
    # Each signed value counts for itself (the paper counts messages), but a third one is not kept.
    assert status.details["votes"]["0"]["prevote"] == {BLOCK_A.hash.hex(): 1, BLOCK_B.hash.hex(): 1, "nil": 1}
    assert [(e.validator, e.kind, e.height, e.round) for e in status.evidence] == [(ADDRESSES[0], "duplicate_vote", 1, 0)]
    assert verify_evidence(status.evidence[0].data, VALIDATORS, CHAIN).validator == ADDRESSES[0]
    # A prevote and a precommit for different values at one round are no equivocation.
    assert of_type(deliver(engine, vote_bytes(1, PREVOTE, 1, 0, None)), ReportEvidence) == []
    assert of_type(deliver(engine, vote_bytes(1, PRECOMMIT, 1, 0, BLOCK_A.hash)), ReportEvidence) == []


def test_a_conflicting_vote_or_proposal_that_arrives_after_the_decision_is_still_evidence():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0)
    actions += deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])
    assert of_type(actions, Commit) and engine.decided is not None
    # Decided, not yet committed: validator 1's nil precommit of round 0 comes late.
    [report] = of_type(deliver(engine, vote_bytes(1, PRECOMMIT, 1, 0, None), T0 + 1), ReportEvidence)
    assert Evidence.decode(report.evidence).validator == ADDRESSES[1]
    engine.handle(BlockCommitted(T0 + 2, BLOCK_A.header))
    assert engine.height == 2
    # Committed: validator 2's other precommit and validator 0's second proposal of height 1.
    [report] = of_type(deliver(engine, vote_bytes(2, PRECOMMIT, 1, 0, BLOCK_B.hash), T0 + 3), ReportEvidence)
    assert Evidence.decode(report.evidence).validator == ADDRESSES[2]
    other = make_block(0, timestamp=T0 + 99)
    [report] = of_type(deliver(engine, proposal_bytes(0, 1, 0, other), T0 + 4), ReportEvidence)
    assert Evidence.decode(report.evidence).kind == EvidenceType.DUPLICATE_PROPOSAL
    # Repeats and forgeries are nothing; two heights back is forgotten.
    assert of_type(deliver(engine, vote_bytes(0, PRECOMMIT, 1, 0, BLOCK_A.hash), T0 + 5), ReportEvidence) == []
    forged = dataclasses.replace(vote(0, PRECOMMIT, 1, 0, None), signature=vote(1, PRECOMMIT, 1, 0, None).signature)
    assert of_type(deliver(engine, encode_message(forged), T0 + 6), ReportEvidence) == []
    assert len(engine.evidence) == 3


def test_an_equivocators_vote_inside_a_pol_still_counts():
    # Validator 0 told us nil for round 1, but signed a prevote for B too; with it, B has a POL.
    engine, _ = started(3)
    jump_to_round(engine, 1, senders=(0, 1))  # validator 0's nil prevote of round 1 comes first
    jump_to_round(engine, 2, senders=(1, 2))
    pol = tuple(vote(i, PREVOTE, 1, 1, BLOCK_B.hash) for i in (0, 1, 2))  # 1 and 2 equivocate too: all count
    actions = deliver(engine, proposal_bytes(2, 1, 2, BLOCK_B, pol_round=1, pol_votes=pol), sender=2)
    actions += answer_executions(engine, actions, T0)
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(2, BLOCK_B.hash)]
    assert len(of_type(actions, ReportEvidence)) == 2


def test_two_proposals_from_one_proposer_at_one_round_are_evidence():
    engine, _ = started(3)
    deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    other = make_block(0, timestamp=T0 + 99)
    actions = deliver(engine, proposal_bytes(0, 1, 0, other))
    [report] = of_type(actions, ReportEvidence)
    evidence = verify_evidence(report.evidence, VALIDATORS, CHAIN)
    assert evidence.kind == EvidenceType.DUPLICATE_PROPOSAL
    assert engine.proposals[0].block_hash == BLOCK_A.hash


def _resigned(signed: SignedProposal, key) -> SignedProposal:
    """The same proposal signed again with another nonce (ECDSA allows many signatures of
    one payload), through the independent `ecdsa` package, low-S as ours."""
    import ecdsa
    from ecdsa.util import sigencode_string

    digest = crypto.signing_digest(crypto.DOMAIN_PROPOSAL, signed.payload(CHAIN))
    signing_key = ecdsa.SigningKey.from_string(key.secret, curve=ecdsa.SECP256k1)
    order = ecdsa.SECP256k1.order
    signature = signing_key.sign_digest(digest, sigencode=sigencode_string, k=12345)
    r, s_value = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    low_s = min(s_value, order - s_value)
    resigned = dataclasses.replace(signed, signature=r.to_bytes(32, "big") + low_s.to_bytes(32, "big"))
    assert resigned.signature != signed.signature and resigned.verify(CHAIN, key.public_key)
    return resigned


def test_one_proposal_signed_twice_is_a_repeat_not_evidence():
    # Else the pair would be kept, put in our next block, and every node (we too) would
    # refuse that block: one Byzantine proposer could stall the chain at each of its turns.
    engine, _ = started(3)
    first = decode_message(proposal_bytes(0, 1, 0, BLOCK_A), MAX_TX)
    deliver(engine, encode_message(first))
    again = dataclasses.replace(first, signed=_resigned(first.signed, KEYS[0]))
    assert of_type(deliver(engine, encode_message(again)), ReportEvidence) == []
    assert engine.evidence == {} and engine._evidence_to_record() == ()
    # Late (after the decision) too.
    actions = answer_executions(engine, [ExecuteBlock(BLOCK_A)], T0)
    deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])
    assert engine.decided is not None
    assert of_type(deliver(engine, encode_message(again)), ReportEvidence) == [] and engine.evidence == {}


def test_a_forged_conflicting_vote_is_not_evidence():
    engine, _ = started(3)
    deliver(engine, vote_bytes(0, PREVOTE, 1, 0, BLOCK_A.hash))
    forged = dataclasses.replace(vote(0, PREVOTE, 1, 0, BLOCK_B.hash), signature=vote(1, PREVOTE, 1, 0, BLOCK_B.hash).signature)
    assert of_type(deliver(engine, encode_message(forged)), ReportEvidence) == []
    assert engine.refused_messages == 1


def _duplicate_prevote(validator: int, height: int, round: int = 0) -> Evidence:
    return Evidence.of(vote(validator, PREVOTE, height, round, BLOCK_A.hash), vote(validator, PREVOTE, height, round, None))


def _chain(length: int) -> list[Block]:
    """Blocks 1..length, each carrying a certificate of its parent; index 0 is block 1."""
    blocks = [make_block(proposer_index(1, 0))]
    while len(blocks) < length:
        parent = blocks[-1]
        blocks.append(make_block(proposer_index(parent.height + 1, 0), parent=parent.header,
                                 extra=BlockExtra(certificate_for(parent)).encode()))
    return blocks


def _with_evidence(parent: Block, *evidence: Evidence) -> Block:
    return make_block(proposer_index(parent.height + 1, 0), parent=parent.header,
                      extra=BlockExtra(certificate_for(parent), evidence).encode())


def test_evidence_seen_goes_into_the_next_block_this_validator_builds_once():
    engine = make_engine(proposer_index(3, 0), params=QUIET)
    chain = _chain(1)
    engine.handle(Started(T0, chain[0].header, None))
    deliver(engine, vote_bytes(0, PREVOTE, 2, 0, BLOCK_A.hash), T0 + 1)
    [report] = of_type(deliver(engine, vote_bytes(0, PREVOTE, 2, 0, None), T0 + 2), ReportEvidence)
    # Block 2 is decided from DECISIONs (the first proves block 1, which block 3 must carry).
    engine.handle(PeerMessage(T0 + 3, peer(1), encode_message(Decision(certificate_for(chain[0]), chain[0]))))
    block_2 = _with_evidence(chain[0])
    engine.handle(PeerMessage(T0 + 4, peer(1), encode_message(Decision(certificate_for(block_2), block_2))))
    [commit] = of_type(engine.handle(BlockExecuted(T0 + 5, block_2.hash, True)), Commit)
    actions = engine.handle(BlockCommitted(T0 + 6, block_2.header, (chain[0].header, block_2.header)))
    [build] = of_type(actions, BuildBlock)
    extra = BlockExtra.decode(build.extra)
    assert [item.encode() for item in extra.evidence] == [report.evidence]
    assert extra.certificate is not None and extra.certificate.encode() == commit.certificate
    # Once a block records it, it is not proposed again (also after a restart).
    block_3 = make_block(proposer_index(3, 0), parent=block_2.header, extra=build.extra)
    recent = (chain[0].header, block_2.header, block_3.header)
    engine.verify_header(block_3.header, recent[:-1])
    engine.handle(Started(T0 + 8, block_2.header, None, recent[:-1]))
    assert engine._evidence_to_record() == extra.evidence
    engine.handle(Started(T0 + 9, block_3.header, None, recent))
    assert engine._evidence_to_record() == ()
    [record] = engine.block_evidence(block_3.header)
    assert (record.validator, record.height, record.round, record.kind) == (ADDRESSES[0], 2, 0, "duplicate_vote")


def test_verify_header_checks_every_piece_of_evidence_a_block_records():
    engine = make_engine(None, signer=OUTSIDER)
    chain = _chain(3)
    ancestors = tuple(block.header for block in chain)
    good = _duplicate_prevote(1, 2)
    engine.verify_header(_with_evidence(chain[-1], good, _duplicate_prevote(2, 3)).header, ancestors)
    assert [r.height for r in engine.block_evidence(_with_evidence(chain[-1], good).header)] == [2]
    forged = Evidence.of(vote(1, PREVOTE, 2, 0, BLOCK_A.hash), dataclasses.replace(vote(1, PREVOTE, 2, 0, None),
                                                                                 signature=vote(2, PREVOTE, 2, 0, None).signature))
    recorded = _with_evidence(chain[-1], good)
    cases = {
        "forged signature": (_with_evidence(chain[-1], forged), ancestors),
        "from the block's own height": (_with_evidence(chain[-1], _duplicate_prevote(1, 4)), ancestors),
        "twice in one block": (_with_evidence(chain[-1], good, good), ancestors),
        "already recorded": (_with_evidence(recorded, good), ancestors + (recorded.header,)),
        "not a validator's": (_with_evidence(chain[-1], Evidence.of(
            Vote.sign(OUTSIDER, CHAIN, PREVOTE, 2, 0, BLOCK_A.hash), Vote.sign(OUTSIDER, CHAIN, PREVOTE, 2, 0, None))), ancestors),
    }
    for name, (block, given) in cases.items():
        with pytest.raises(InvalidSeal):
            engine.verify_header(block.header, given)
            pytest.fail(name)
    old = make_engine(None, params=dataclasses.replace(FAST, evidence_max_age=1), signer=OUTSIDER)
    with pytest.raises(InvalidSeal, match="heights 3 to 3"):
        old.verify_header(_with_evidence(chain[-1], good).header, ancestors)
    undecodable = make_block(proposer_index(4, 0), parent=chain[-1].header, extra=b"\x01\x02")
    with pytest.raises(InvalidSeal, match="does not decode"):
        engine.verify_header(undecodable.header, ancestors)


def test_block_extra_has_one_encoding():
    certificate = certificate_for(BLOCK_A)
    evidence = (_duplicate_prevote(1, 1),)
    for extra in (BlockExtra(), BlockExtra(certificate), BlockExtra(certificate, evidence), BlockExtra(None, evidence)):
        assert BlockExtra.decode(extra.encode()) == extra
    assert BlockExtra().encode() == b""
    with pytest.raises(DecodeError):  # "nothing" has the empty encoding only
        BlockExtra.decode(Writer().var_bytes(b"").u32(0).bytes())
    with pytest.raises(DecodeError):
        BlockExtra.decode(Writer().var_bytes(b"").u32(MAX_BLOCK_EVIDENCE + 1).bytes())
    with pytest.raises(DecodeError):
        BlockExtra.decode(BlockExtra(certificate).encode() + b"\x00")


# ============================================================================ restart


def last_persisted(actions) -> bytes:
    return of_type(actions, Persist)[-1].state


def test_a_restarted_validator_never_signs_a_second_prevote_at_the_same_round():
    engine, _ = started(3)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions = answer_executions(engine, actions, T0)
    [prevote] = sent_votes(actions)
    state = last_persisted(actions)
    # Without its state a restarted validator would prevote nil at the propose timeout:
    forgetful, _ = started(3)
    assert [v.block_hash for v in sent_votes(tick_to(forgetful, T0 + 2000))] == [None]
    # With it, it repeats the very same prevote and signs no other.
    restarted, actions = started(3, persisted=state, now=T0 + 100)
    assert sent_votes(actions) == [prevote]
    later = tick_to(restarted, T0 + 2000)
    later += deliver(restarted, proposal_bytes(0, 1, 0, BLOCK_A), T0 + 2001)
    later += answer_executions(restarted, later, T0 + 2001)
    assert all(v == prevote for v in sent_votes(later, PREVOTE) if v.round == 0)


def test_a_lock_survives_a_restart():
    engine, _ = started(3)
    state = last_persisted(lock_on_a_in_round_0(engine))
    restarted, _ = started(3, persisted=state, now=T0 + 100)
    assert (restarted.locked_round, restarted.locked_hash) == (0, BLOCK_A.hash)
    jump_to_round(restarted, 1, now=T0 + 200)
    actions = deliver(restarted, proposal_bytes(1, 1, 1, BLOCK_B), T0 + 200, sender=1)
    actions += answer_executions(restarted, actions, T0 + 200)
    assert [(v.round, v.block_hash) for v in sent_votes(actions, PREVOTE)] == [(1, None)]


def test_a_restarted_proposer_does_not_propose_a_second_block_in_the_same_round():
    proposer = proposer_index(1, 0)
    engine, actions = started(proposer)
    block = Block(build_header(CHAIN, GENESIS, T0, [], ADDRESSES[proposer]), ())
    actions = engine.handle(BlockBuilt(T0 + 1, block))
    assert len(sent_proposals(actions)) == 1
    state = of_type(actions, Persist)[0].state  # the one before the proposal left
    restarted, actions = started(proposer, persisted=state, now=T0 + 50)
    [build] = of_type(actions, BuildBlock)
    rebuilt = Block(build_header(CHAIN, GENESIS, build.timestamp, [], ADDRESSES[proposer]), ())
    assert rebuilt.hash != block.hash
    assert sent_proposals(restarted.handle(BlockBuilt(T0 + 51, rebuilt))) == []


def test_a_certificate_persisted_at_decision_lets_a_restarted_proposer_build_the_next_block():
    proposer = proposer_index(2, 0)
    engine, _ = started(proposer)
    actions = deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(engine, actions, T0)
    actions += deliver_all(engine, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in others(proposer)])
    [commit] = of_type(actions, Commit)
    state = last_persisted(actions)
    # Killed before BlockCommitted; the runtime had written block 1.
    restarted = make_engine(proposer)
    actions = restarted.handle(Started(T0 + 10, BLOCK_A.header, state))
    [build] = of_type(actions, BuildBlock)
    assert build.height == 2 and BlockExtra.decode(build.extra).certificate.encode() == commit.certificate
    verify_certificate(commit.certificate, BLOCK_A.header, VALIDATORS)


@pytest.mark.parametrize("seed", range(8))
def test_crashes_and_restarts_from_persisted_state_never_double_sign(seed):
    rng = random.Random(seed)
    cluster = Cluster([make_engine(i) for i in range(4)], sync=True, latency_ms=rng.randint(1, 20),
                      drop=lambda a, b, m: rng.random() < 0.05)
    cluster.start()
    for _ in range(25):  # a stormy period: crashes and restarts every few dozen milliseconds
        fault_at = cluster.now + rng.randint(20, 400)
        cluster.run(lambda c: c.now >= fault_at, limit_ms=10_000)
        # Up to two validators down at once: then nothing commits, and a restarted one is
        # needed again at the height and round it voted in before.
        if len(cluster.down) == 2 or (cluster.down and rng.random() < 0.5):
            index = min(cluster.down)
            cluster.restart(index, make_engine(index))
        else:
            cluster.crash(rng.choice([i for i in range(4) if i not in cluster.down]))
    for index in sorted(cluster.down):
        cluster.restart(index, make_engine(index))
    target = max(cluster.heights()) + 2
    cluster.run(cluster.all_at_least(target), limit_ms=300_000)  # liveness once the storm is over
    signed: dict[tuple, set] = {}
    for index, _, actions in cluster.log:
        for message in sent_votes(actions):
            if message.validator == ADDRESSES[index]:
                signed.setdefault((index, message.height, message.round, message.kind), set()).add(message.block_hash)
    assert signed and all(len(values) == 1 for values in signed.values())
    assert not any(cluster.evidence)
    for height in range(1, target + 1):
        assert len({cluster.committed[i][height][0].hash for i in range(4)}) == 1


def test_corrupt_persisted_state_refuses_to_start():
    engine, _ = started(3)
    actions = answer_executions(engine, deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A)), T0)
    state = last_persisted(actions)
    for broken in (state[:-1], state + b"\x00", b"\x09" + state[1:]):
        with pytest.raises(DecodeError):
            make_engine(3).handle(Started(T0, GENESIS, broken))


# ============================================================================ catch-up and followers


def test_a_validator_a_height_behind_commits_the_decision_its_status_asks_for():
    cut_off = {"on": True}
    params = dataclasses.replace(FAST, create_empty_blocks=False)  # heights stop at 2 with no transactions
    cluster = Cluster([make_engine(i, params) for i in range(4)],
                      drop=lambda a, b, m: cut_off["on"] and 3 in (a, b))
    cluster.start()
    for i in range(4):
        cluster.push(T0, i, TxsAvailable(T0, 1))
    cluster.run(cluster.all_at_least(1, [0, 1, 2]), limit_ms=10_000)
    assert cluster.heads[3].height == 0
    cut_off["on"] = False
    cluster.run(cluster.all_at_least(1, [3]), limit_ms=10_000)
    block, certificate = cluster.committed[3][1]
    assert block.hash == cluster.committed[0][1][0].hash
    verify_certificate(certificate, block.header, VALIDATORS)
    answered = [m for index, _, actions in cluster.log if index != 3 for a in actions if isinstance(a, Send)
                for m in [decode_message(a.message, MAX_TX)] if isinstance(m, Decision)]
    # The certificate first, the block to a peer that asks again (it had missed the proposal).
    assert answered and all(m.certificate.block_hash == block.hash for m in answered)
    assert any(m.block is not None for m in answered) and all(m.block in (None, block) for m in answered)


def test_a_node_without_its_heads_certificate_asks_for_it_and_can_then_propose():
    proposer = proposer_index(2, 0)
    engine, actions = started(proposer, head=BLOCK_A.header)  # block 1 came from sync: no certificate
    assert not of_type(actions, BuildBlock)  # no valid block 2 without block 1's certificate
    [status] = [m for m in sent_messages(actions) if isinstance(m, Status)]
    assert status == Status(2, 0, True)
    # A peer that imported block 1 the same way cannot help; one that decided it answers.
    importer, _ = started(3)
    importer.handle(BlockCommitted(T0 + 1, BLOCK_A.header))
    assert importer.handle(PeerMessage(T0 + 2, peer(proposer), encode_message(status))) == []
    decider, _ = started(3)
    actions = deliver(decider, proposal_bytes(0, 1, 0, BLOCK_A))
    actions += answer_executions(decider, actions, T0)
    actions += deliver_all(decider, [vote_bytes(i, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in (0, 1, 2)])
    decider.handle(BlockCommitted(T0 + 1, BLOCK_A.header))
    [answer] = decider.handle(PeerMessage(T0 + 2, peer(proposer), encode_message(status)))
    assert isinstance(answer, Send) and answer.peer == peer(proposer)
    assert decider.handle(PeerMessage(T0 + 3, peer(proposer), encode_message(status))) == []  # not again so soon
    decision = decode_message(answer.message, MAX_TX)
    assert isinstance(decision, Decision) and decision.block is None  # it holds block 1: the certificate does
    deliver(engine, answer.message, T0 + 4)
    assert engine.last_commit == decision.certificate
    # Its next turn to propose at height 2 (round 4 with four equal validators) builds on it.
    assert proposer_index(2, 4) == proposer
    actions = jump_to_round(engine, 4, senders=others(proposer)[:2], now=T0 + 5)
    [build] = of_type(actions, BuildBlock)
    assert build.extra == BlockExtra(decision.certificate).encode()


def test_a_restarted_node_answers_from_its_stored_head_block_and_certificate():
    # A peer still deciding height 1 needs the block, not only the certificate: a node that
    # restarted after committing block 1 takes both from the store (Started), not memory.
    certificate = certificate_for(BLOCK_A)
    engine = make_engine(3, params=QUIET)
    engine.handle(Started(T0, BLOCK_A.header, None, (GENESIS, BLOCK_A.header), BLOCK_A, certificate.encode()))
    [first] = engine.handle(PeerMessage(T0 + 1, peer(1), encode_message(Status(1, 2))))
    assert decode_message(first.message, MAX_TX) == Decision(certificate, None)  # mostly, the peer has the block
    [answer] = engine.handle(PeerMessage(T0 + 1 + QUIET.gossip_interval_ms, peer(1), encode_message(Status(1, 2))))
    decision = decode_message(answer.message, MAX_TX)
    assert isinstance(decision, Decision) and decision.block == BLOCK_A and decision.certificate == certificate
    # With the stored certificate it can build block 2 (its proposer, with no persisted state).
    proposer = make_engine(proposer_index(2, 0), params=QUIET)
    actions = proposer.handle(Started(T0, BLOCK_A.header, None, (GENESIS, BLOCK_A.header), BLOCK_A, certificate.encode()))
    [build] = of_type(actions, BuildBlock)
    assert BlockExtra.decode(build.extra).certificate == certificate
    # A stored certificate that does not prove the head is ignored, not trusted.
    doubtful = make_engine(proposer_index(2, 0), params=QUIET)
    weak = certificate_for(BLOCK_A, signers=[0, 1]).encode()
    actions = doubtful.handle(Started(T0, BLOCK_A.header, None, (GENESIS, BLOCK_A.header), BLOCK_A, weak))
    assert of_type(actions, BuildBlock) == [] and doubtful.last_commit is None


def test_a_peer_left_in_an_older_round_gets_the_votes_of_its_round_and_ours():
    params = dataclasses.replace(QUIET, gossip_interval_ms=300)
    engine, _ = started(3, params)
    round_0 = [vote_bytes(i, PRECOMMIT, 1, 0, None) for i in (0, 1)]
    deliver_all(engine, round_0)
    jump_to_round(engine, 1, senders=(0, 1))
    assert engine.round == 1
    actions = engine.handle(PeerMessage(T0 + 1, peer(2), encode_message(Status(1, 0))))
    sent = [decode_message(a.message, MAX_TX) for a in actions if isinstance(a, Send) and a.peer == peer(2)]
    assert {(v.round, v.kind, v.validator) for v in sent} >= {
        (0, PRECOMMIT, ADDRESSES[0]), (0, PRECOMMIT, ADDRESSES[1]), (1, PREVOTE, ADDRESSES[0]), (1, PREVOTE, ADDRESSES[1]),
    }
    assert all(isinstance(v, Vote) and v.round in (0, 1) for v in sent)
    # Not again within a gossip interval; again after it if the peer is still behind.
    assert engine.handle(PeerMessage(T0 + 2, peer(2), encode_message(Status(1, 0)))) == []
    again = engine.handle(PeerMessage(T0 + 301, peer(2), encode_message(Status(1, 0))))
    assert len([a for a in again if isinstance(a, Send)]) == len(sent)
    # A peer in our round or ahead gets nothing of this kind.
    assert engine.handle(PeerMessage(T0 + 3, peer(1), encode_message(Status(1, 1)))) == []


def test_a_decision_with_a_bad_certificate_is_refused():
    engine, _ = started(3)
    weak = certificate_for(BLOCK_A, signers=[0, 1])
    assert of_type(deliver(engine, encode_message(Decision(weak, BLOCK_A))), ExecuteBlock) == []
    assert engine.refused_messages == 1
    good = certificate_for(BLOCK_A)
    actions = deliver(engine, encode_message(Decision(good, BLOCK_A)))
    actions += answer_executions(engine, actions, T0)
    [commit] = of_type(actions, Commit)
    assert commit.block == BLOCK_A and Certificate.decode(commit.certificate).signers == good.signers


def test_a_follower_commits_every_height_and_never_signs():
    engines = [make_engine(i) for i in range(4)] + [make_engine(None, signer=OUTSIDER)]
    cluster = Cluster(engines)
    cluster.start()
    cluster.run(cluster.all_at_least(3), limit_ms=10_000)
    follower = engines[4]
    assert not follower.is_validator and follower.status().role == "follower"
    for height in (1, 2, 3):
        assert cluster.committed[4][height][0].hash == cluster.committed[0][height][0].hash
    for index, _, actions in cluster.log:
        if index == 4:
            assert not of_type(actions, Persist) and not of_type(actions, BuildBlock)
            assert not [m for m in sent_messages(actions) if not isinstance(m, Status)]


def test_gossip_repeats_our_own_votes_when_a_round_stalls():
    params = dataclasses.replace(QUIET, gossip_interval_ms=300)
    engine, _ = started(3, params)
    actions = answer_executions(engine, deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A)), T0)
    [prevote] = sent_votes(actions)
    repeated = tick_to(engine, T0 + 300)
    assert sent_votes(repeated) == [prevote]
    assert [m for m in sent_messages(repeated) if isinstance(m, Status)] == [Status(1, 0, False)]
    assert len(sent_messages(repeated)) <= 4
    assert not of_type(repeated, Persist)  # nothing new was signed
    assert T0 + 600 in timers(repeated)


def test_gossip_waits_for_a_quiet_interval_after_the_last_new_vote_of_our_round():
    params = dataclasses.replace(QUIET, gossip_interval_ms=300)
    engine, _ = started(3, params)
    actions = answer_executions(engine, deliver(engine, proposal_bytes(0, 1, 0, BLOCK_A)), T0)
    [prevote] = sent_votes(actions)
    deliver(engine, vote_bytes(1, PREVOTE, 1, 0, None), T0 + 250)  # progress at 250
    assert sent_messages(tick_to(engine, T0 + 300)) == []  # not quiet for 300 ms yet
    assert sent_votes(tick_to(engine, T0 + 550)) == [prevote]
    # A vote of another round is no progress of ours.
    deliver(engine, vote_bytes(1, PREVOTE, 1, 5, None), T0 + 700)
    assert sent_votes(tick_to(engine, T0 + 850)) == [prevote]


def test_peer_connected_gets_our_status():
    engine, _ = started(3)
    [send] = engine.handle(PeerConnected(T0 + 1, "newcomer"))
    assert send.peer == "newcomer" and decode_message(send.message, MAX_TX) == Status(1, 0, False)


def test_garbage_from_peers_changes_nothing():
    engine, _ = started(3)
    before = engine.status()
    for data in (b"", b"\x02", b"\x09hello", vote_bytes(0, PREVOTE, 1, 0, None)[:-1],
                 encode_message(vote(0, PREVOTE, 1, 0, None, chain="other-chain"))):
        assert deliver(engine, data) == []
    assert engine.refused_messages == 5
    after = engine.status()
    assert after.details["refused_messages"] == before.details["refused_messages"] + 5
    # Everything else is as it was (details compared without the refusal count).
    assert dataclasses.replace(after, details={}) == dataclasses.replace(before, details={})
    assert {**after.details, "refused_messages": 0} == {**before.details, "refused_messages": 0}


def test_messages_before_started_are_ignored():
    engine = make_engine(3)
    assert engine.handle(PeerMessage(T0, peer(0), vote_bytes(0, PREVOTE, 1, 0, None))) == []
    assert engine.handle(Tick(T0)) == []


def test_a_validator_cannot_flood_far_rounds():
    engine, _ = started(3)
    for round in range(10, 40):
        deliver(engine, vote_bytes(0, PREVOTE, 1, round, None))
    kept = {round for (round, _), votes in engine.votes.items() if ADDRESSES[0] in votes}
    assert kept == set(range(36, 40))  # its four newest far rounds
    assert engine.round == 0


# ============================================================================ certificates and headers


def test_certificate_verification():
    block = BLOCK_A
    good = certificate_for(block, signers=[0, 1, 2])
    assert verify_certificate(good.encode(), block.header, VALIDATORS) == good
    with pytest.raises(InvalidCertificate, match="more than two thirds"):
        verify_certificate(certificate_for(block, signers=[0, 1]), block.header, VALIDATORS)
    flipped = bytearray(good.signatures[1][1])
    flipped[5] ^= 1
    bad_signature = dataclasses.replace(good, signatures=(good.signatures[0], (good.signatures[1][0], bytes(flipped)),
                                                          good.signatures[2]))
    with pytest.raises(InvalidCertificate, match="signature"):
        verify_certificate(bad_signature, block.header, VALIDATORS)
    with pytest.raises(InvalidCertificate, match="height"):
        verify_certificate(dataclasses.replace(good, height=2), block.header, VALIDATORS)
    with pytest.raises(InvalidCertificate, match="signature"):  # the round is in every signed precommit
        verify_certificate(dataclasses.replace(good, round=1), block.header, VALIDATORS)
    with pytest.raises(InvalidCertificate, match="not .*"):
        verify_certificate(good, BLOCK_B.header, VALIDATORS)
    prevotes = Certificate(1, 0, block.hash, tuple(sorted((v.validator, v.signature) for v in
                                                         [vote(i, PREVOTE, 1, 0, block.hash) for i in (0, 1, 2)])))
    with pytest.raises(InvalidCertificate, match="signature"):
        verify_certificate(prevotes, block.header, VALIDATORS)
    other_chain = Certificate.from_votes([vote(i, PRECOMMIT, 1, 0, block.hash, chain="other") for i in (0, 1, 2)])
    with pytest.raises(InvalidCertificate, match="signature"):
        verify_certificate(other_chain, block.header, VALIDATORS)
    outsider = Vote.sign(OUTSIDER, CHAIN, PRECOMMIT, 1, 0, block.hash)
    padded = Certificate.from_votes([vote(i, PRECOMMIT, 1, 0, block.hash) for i in (0, 1)] + [outsider])
    with pytest.raises(InvalidCertificate, match="not a validator"):
        verify_certificate(padded, block.header, VALIDATORS)
    with pytest.raises(InvalidCertificate, match="decode"):
        verify_certificate(good.encode() + b"\x00", block.header, VALIDATORS)


def test_certificate_quorum_counts_power_not_heads():
    keys = KEYS
    weighted = validator_set_of([(k.public_key, power) for k, power in zip(keys, (1, 1, 1, 3))])
    heavy = [i for i, v in enumerate(weighted) if v.power == 3][0]
    light = [i for i, v in enumerate(weighted) if v.power == 1]
    by_index = {i: keys[[address_of(k.public_key) for k in keys].index(v.address)] for i, v in enumerate(weighted)}

    def certificate(indexes):
        return Certificate.from_votes([Vote.sign(by_index[i], CHAIN, PRECOMMIT, 1, 0, BLOCK_A.hash) for i in indexes])

    with pytest.raises(InvalidCertificate):  # three validators of four, but 3 of 6 power
        verify_certificate(certificate(light), BLOCK_A.header, weighted)
    with pytest.raises(InvalidCertificate):  # 4 of 6 is not more than two thirds
        verify_certificate(certificate([heavy, light[0]]), BLOCK_A.header, weighted)
    verify_certificate(certificate([heavy, light[0], light[1]]), BLOCK_A.header, weighted)  # 5 of 6


def test_verify_header_checks_the_parents_certificate_and_the_seal():
    engine = make_engine(None, signer=OUTSIDER)
    block_1 = make_block(proposer_index(1, 0))
    engine.verify_header(block_1.header, (GENESIS,))
    engine.verify_seal(block_1.header, GENESIS)
    certificate = certificate_for(block_1)
    block_2 = make_block(proposer_index(2, 0), parent=block_1.header, extra=BlockExtra(certificate).encode())
    engine.verify_header(block_2.header, (block_1.header,))
    assert engine.verify_commit(block_1.header, certificate.encode()) == certificate
    cases = {
        "weak certificate": make_block(1, parent=block_1.header, extra=BlockExtra(certificate_for(block_1, signers=[0, 1])).encode()),
        "no certificate": make_block(1, parent=block_1.header),
        "foreign seal": make_block(1, parent=block_1.header, extra=BlockExtra(certificate).encode(), signer=KEYS[2]),
        "early timestamp": make_block(1, parent=block_1.header, extra=BlockExtra(certificate).encode(), timestamp=T0),
        "certificate on block 1": make_block(0, extra=BlockExtra(certificate).encode()),
    }
    for name, block in cases.items():
        parent = GENESIS if block.height == 1 else block_1.header
        with pytest.raises(InvalidSeal):
            engine.verify_header(block.header, (parent,))
            pytest.fail(name)
    assert engine.finalized_height(17) == 17


# ============================================================================ proposer rotation


def test_proposer_rotation_follows_the_cometbft_spec_example():
    # CometBFT's proposer-selection spec: powers (p0,4) (p1,2) (p2,2) (p3,2) give
    # p0 p1 p2 p3 p0, p0 p1 p2 p3 p0, ...  (ties go to the smaller address).
    weighted = validator_set_of([(k.public_key, p) for k, p in zip(KEYS, (4, 2, 2, 2))])
    names = {v.address: ("p0" if v.power == 4 else None) for v in weighted}
    for name, member in zip(("p1", "p2", "p3"), [v for v in weighted if v.power == 2]):
        names[member.address] = name
    sequence = [names[weighted.proposer(height, 0).address] for height in range(1, 11)]
    assert sequence == ["p0", "p1", "p2", "p3", "p0", "p0", "p1", "p2", "p3", "p0"]
    # Round r of height h continues from that height's priorities.
    assert [names[weighted.proposer(1, r).address] for r in range(5)] == ["p0", "p1", "p2", "p3", "p0"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=7), st.integers(1, 500))
def test_in_any_window_of_total_power_heights_each_validator_proposes_its_power(powers, start):
    keys = [f"rotation-{i}" for i in range(len(powers))]
    from bft_helpers import key as make_key

    validators = validator_set_of([(make_key(k).public_key, p) for k, p in zip(keys, powers)])
    total = validators.total_power
    window = [validators.proposer(height, 0).address for height in range(start, start + total)]
    assert {v.address: window.count(v.address) for v in validators} == {v.address: v.power for v in validators}


def test_proposer_schedule_agrees_with_step_by_step_priorities_far_out():
    weighted = validator_set_of([(k.public_key, p) for k, p in zip(KEYS, (5, 3, 2, 7))])
    powers = [v.power for v in weighted]
    addresses = [v.address for v in weighted]
    priorities: tuple[int, ...] = (0, 0, 0, 0)
    expected = []
    for _ in range(700):
        priorities, index = increment_priorities(priorities, powers, addresses, 1)
        expected.append(addresses[index])
    assert [weighted.proposer(h, 0).address for h in range(1, 701)] == expected
    fresh = validator_set_of([(k.public_key, p) for k, p in zip(KEYS, (5, 3, 2, 7))])
    assert fresh.proposer(650, 0).address == expected[649]  # far heights without walking there first


# ============================================================================ genesis and registry


def bft_genesis(**params) -> Genesis:
    entries = [{"public_key": k.public_key.hex(), "power": 1} for k in KEYS]
    return Genesis(chain_id=CHAIN, address_prefix="dev", timestamp=T0, engine="bft",
                   engine_params={"validators": entries, **params}, allocations={})


def test_registry_builds_the_bft_engine_from_genesis():
    engine = create_engine(bft_genesis(timeout_propose_ms=2000, create_empty_blocks=True), KEYS[2])
    assert isinstance(engine, BftEngine) and engine.is_validator and engine.address == ADDRESSES[2]
    assert engine.params.timeout_propose_ms == 2000 and engine.params.create_empty_blocks
    assert len(engine.validators) == 4 and engine.validators.total_power == 4
    follower = create_engine(bft_genesis(), OUTSIDER)
    assert isinstance(follower, BftEngine) and not follower.is_validator
    assert create_engine(bft_genesis(), None).status().role == "follower"


@pytest.mark.parametrize(("params", "message"), [
    ({"timeout_propse_ms": 1}, "unknown engine.params timeout_propse_ms"),
    ({"timeout_propose_ms": 0}, "timeout_propose_ms"),
    ({"create_empty_blocks": "yes"}, "create_empty_blocks"),
    ({"validators": []}, "validators"),
    ({"validators": [{"public_key": "02" + "00" * 32, "power": 1}]}, "public_key"),
    ({"validators": [{"public_key": KEYS[0].public_key.hex(), "power": 0}]}, "power"),
    ({"validators": [{"public_key": KEYS[0].public_key.hex(), "power": 1, "name": "x"}]}, "unknown fields"),
    ({"validators": [{"public_key": KEYS[0].public_key.hex(), "power": 1}] * 2}, "twice"),
])
def test_bad_bft_genesis_params_are_refused_clearly(params, message):
    with pytest.raises(ValueError, match=message):
        create_engine(bft_genesis(**params), KEYS[0])


def test_validator_set_round_trips_through_genesis_json():
    again = ValidatorSet.from_genesis(VALIDATORS.to_genesis())
    assert again.validators == VALIDATORS.validators
    assert VALIDATORS.quorum_power == 3 and VALIDATORS.is_quorum(3) and not VALIDATORS.is_quorum(2)
    assert VALIDATORS.is_one_third(2) and not VALIDATORS.is_one_third(1)

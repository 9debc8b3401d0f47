"""Byzantine proof-of-stake validators in the simulator (node/sim/pos_byzantine.py): up to f
of 3f + 1 validators equivocate as proposers, double-vote, surround-vote or fall silent, under
every network fault kind.  The harness checks after every step that no two nodes finalize
different blocks, that honest nodes hold evidence only against Byzantine validators and only
evidence that proves an offence, and at the end that every validator whose offence reached
the honest nodes is slashed on their chain and no honest one is."""

from __future__ import annotations

import pytest

from consensus.pos.engine import PosEngine
from consensus.pos.messages import (
    DOMAIN_POS_BLOCK,
    Attestation,
    AttesterSlashing,
    Checkpoint,
    ProposerSlashing,
    SealedDigest,
    encode_message,
)
from ledger.codec import Writer
from ledger.crypto import PrivateKey
from node.sim import __main__ as cli
from node.sim.harness import SimConfig, SimulationFailure, run_seed
from node.sim.pos_byzantine import evidence_problem

EPOCH_S = 2.0  # 500 ms slots, 4 an epoch (node/sim/pos_setup.py)
# As without Byzantine validators (tests/test_pos_sim.py): after the heal, every transfer is
# final within six epochs, offenders slashed by then.
FINALITY_BOUND_S = 6 * EPOCH_S
OFFENCE_STAT = {"equivocate": "proposer equivocations", "double_vote": "double votes",
                "surround_vote": "surround votes"}


def byzantine_config(seed: int, kind: str, nodes: int = 4, byzantine: int = 1, **changes) -> SimConfig:
    settings = dict(seed=seed, consensus="pos", nodes=nodes, duration=16.0, tx_per_second=10.0,
                    byzantine=byzantine, byzantine_kind=kind)
    settings.update(changes)
    return SimConfig(**settings)


@pytest.mark.parametrize("kind", ["equivocate", "double_vote", "surround_vote"])
@pytest.mark.parametrize("seed", [1, 2])
def test_each_offence_is_caught_and_slashed_and_finality_resumes(seed, kind):
    result = run_seed(byzantine_config(seed, kind))
    assert result.final == result.submitted > 0
    assert result.converged_after <= FINALITY_BOUND_S, result.converged_after
    (liar,) = result.byzantine
    assert result.byzantine_actions[OFFENCE_STAT[kind]] >= 1, result.byzantine_actions
    # Every honest node saw the evidence, and the run ended only once it was slashed.
    assert result.evidence[liar] >= 3


@pytest.mark.parametrize("seed", [1, 2])
def test_a_silent_validator_is_never_slashed_and_the_rest_finalize(seed):
    result = run_seed(byzantine_config(seed, "silent"))
    assert result.final == result.submitted > 0
    assert result.converged_after <= FINALITY_BOUND_S
    assert not result.evidence
    assert result.byzantine_actions["withheld attestations"] > 0


@pytest.mark.parametrize("seed", [3, 4])
def test_two_of_seven_mixing_every_kind_leave_the_chain_safe(seed):
    result = run_seed(byzantine_config(seed, "mix", nodes=7, byzantine=2))
    assert result.final == result.submitted > 0
    assert result.converged_after <= FINALITY_BOUND_S


def test_seed_84_of_seven_a_branch_forking_below_finality_is_taken_in_once():
    """A regression seed of the 7-validator sweep: a long side branch that forks below the
    finalized checkpoint arrived whole, and the engine walked it again from each of its
    blocks, which never ended (consensus/pos/engine.py `_on_block`)."""
    cli_defaults = cli.build_parser().parse_args(["--consensus", "pos", "--nodes", "7", "--byzantine", "2",
                                                  "--byzantine-kind", "mix"])
    result = run_seed(cli._config(cli_defaults, 84))
    assert result.final == result.submitted > 0


def test_an_offence_left_unslashed_fails_the_run(monkeypatch):
    # Honest proposers that never include evidence: the double voter stays unslashed, and the
    # run must say so rather than pass.
    monkeypatch.setattr(PosEngine, "_evidence_for", lambda self, state: ([], []))
    with pytest.raises(SimulationFailure, match="offenders not slashed"):
        run_seed(byzantine_config(1, "double_vote", converge_within=8.0))


def test_evidence_is_judged_by_what_it_proves():
    key, other = PrivateKey((7).to_bytes(32, "big")), PrivateKey((8).to_bytes(32, "big"))
    chain = "sim"
    source, target = Checkpoint(1, b"\1" * 32), Checkpoint(2, b"\2" * 32)
    first = Attestation(0, 8, b"\3" * 32, source, target).signed(key, chain)
    second = Attestation(0, 8, b"\3" * 32, source, Checkpoint(2, b"\4" * 32)).signed(key, chain)
    assert evidence_problem(encode_message(AttesterSlashing(first, second)), key.public_key, chain) is None
    assert "not the accused" in evidence_problem(encode_message(AttesterSlashing(first, second)), other.public_key, chain)
    assert "not slashable" in evidence_problem(encode_message(AttesterSlashing(first, first)), key.public_key, chain)
    later = Attestation(0, 12, b"\3" * 32, Checkpoint(0, b"\0" * 32), Checkpoint(3, b"\5" * 32)).signed(key, chain)
    assert evidence_problem(encode_message(AttesterSlashing(first, later)), key.public_key, chain) is None  # surround

    def sealed(digest: bytes, slot: int = 5) -> SealedDigest:
        # What a block seal signs: (chain, slot, digest of the unsealed header).
        payload = Writer().text(chain).u64(slot).fixed(digest, 32).bytes()
        return SealedDigest(slot, digest, key.sign(DOMAIN_POS_BLOCK, payload))

    pair = ProposerSlashing(0, sealed(b"\1" * 32), sealed(b"\2" * 32))
    assert evidence_problem(encode_message(pair), key.public_key, chain) is None
    same = ProposerSlashing(0, sealed(b"\1" * 32), sealed(b"\1" * 32))
    assert "not two different blocks" in evidence_problem(encode_message(same), key.public_key, chain)
    apart = ProposerSlashing(0, sealed(b"\1" * 32, 5), sealed(b"\2" * 32, 6))
    assert "not two different blocks" in evidence_problem(encode_message(apart), key.public_key, chain)
    assert "undecodable" in evidence_problem(b"\x09junk", key.public_key, chain)


def test_byzantine_kinds_are_checked_per_engine():
    with pytest.raises(ValueError, match="under pos, one of equivocate, double_vote, surround_vote, silent, mix"):
        SimConfig(seed=1, consensus="pos", byzantine=1, byzantine_kind="invalid")
    with pytest.raises(ValueError, match="under bft"):
        SimConfig(seed=1, consensus="bft", byzantine=1, byzantine_kind="double_vote")
    with pytest.raises(ValueError, match="only with --consensus bft or pos"):
        SimConfig(seed=1, consensus="pow", byzantine=1)


def test_the_command_line_runs_byzantine_pos_seeds(capsys):
    assert cli.main(["--seeds", "1", "--consensus", "pos", "--byzantine", "1", "--byzantine-kind", "surround_vote",
                     "--duration", "10", "-v"]) == 0
    out = capsys.readouterr().out
    assert "surround-votes" in out and "evidence against" in out
    assert "1 seeds, 0 failed (pos, 4 nodes, 1 byzantine (surround_vote)" in out

"""Byzantine validators in the simulator (node/sim/byzantine.py): up to f of 3f + 1 validators
equivocate, propose and vote for invalid blocks, or stay silent, while the network misbehaves.
On every seed the honest nodes stay safe (one final block a height, each with a valid
certificate, no invalid block committed, evidence only against Byzantine validators) and
live (after the heal every transfer is final); equivocation is caught as evidence.  The
unit tests check that the lies are really told, so the suite fails if the Byzantine module
quietly turns honest."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.bft_evidence import Evidence, verify_evidence
from consensus.bft_messages import (
    Proposal,
    SignedProposal,
    Status,
    Vote,
    VoteType,
    decode_message,
    encode_message,
)
from ledger import crypto
from ledger.address import address_of
from ledger.block import Block, build_header
from ledger.state import StateError, apply_transactions
from ledger.transaction import new_transfer
from node.runtime import Node
from node.sim import __main__ as cli
from node.sim import byzantine
from node.sim.harness import CHAIN_ID, EPOCH_MS, GENESIS_MS, SimConfig, Simulation, SimulationFailure, run_seed
from node.sim.loop import inline_blocking

ROOT = Path(__file__).resolve().parent.parent
COMMIT = re.compile(r"^\s*([\d.]+) (n\d+) commit (\d+) ")
NETWORK_FAULTS = frozenset({"delay", "drop", "duplicate", "reorder"})


def byzantine_config(seed: int, nodes: int = 4, kind: str = "mix", **changes) -> SimConfig:
    settings = dict(
        seed=seed, consensus="bft", nodes=nodes, byzantine=(nodes - 1) // 3, byzantine_kind=kind,
        duration=10.0, tx_per_second=10.0, fault_gap=(0.3, 1.5),
    )
    settings.update(changes)
    return SimConfig(**settings)


def check_run(config: SimConfig):
    """Run a seed (the harness fails it on any broken invariant) and check what it reports."""
    result = run_seed(config)
    assert len(result.byzantine) == config.byzantine
    assert result.submitted > 0 and result.final == result.submitted  # liveness after the heal
    assert result.reorgs == 0
    assert set(result.evidence) <= set(result.byzantine)  # the harness fails a run sooner
    return result


# ---------------------------------------------------------------------------- whole runs

# (nodes, seeds per kind): CI-sized; `make sim` runs the long sweeps.
SIZES = [(4, range(1, 11)), (7, range(1, 3)), (10, range(1, 2))]
RUNS = [(nodes, kind, seed) for nodes, seeds in SIZES for kind in byzantine.MODES for seed in seeds]


@pytest.mark.parametrize("nodes,kind,seed", RUNS)
def test_f_byzantine_validators_under_every_fault_keep_the_honest_nodes_safe_and_live(nodes, kind, seed):
    duration = 10.0 if nodes == 4 else 6.0
    result = check_run(byzantine_config(seed, nodes, kind, duration=duration, tx_per_second=40.0 / nodes))
    acted = sum(result.byzantine_actions.values())
    assert acted > 0, result.byzantine_actions  # the Byzantine validators did lie
    if kind == "equivocate":
        assert result.byzantine_actions["equivocating votes"] > 0


def test_equivocation_is_caught_as_evidence_against_the_equivocators_only():
    for nodes, seed in [(4, 1), (4, 2), (7, 1), (10, 1)]:
        result = check_run(byzantine_config(seed, nodes, "equivocate", faults=NETWORK_FAULTS, duration=6.0))
        # Every equivocator is caught, and only they: on 10 validators, n4's conflicting votes
        # all arrived after the height was decided, which were not compared before.
        assert set(result.evidence) == set(result.byzantine), (nodes, seed)


def test_with_f_byzantine_validators_the_honest_ones_commit_all_along():
    """No crash nor partition, only lossy links: f liars never stop the 2f + 1 honest ones."""
    for kind in byzantine.MODES:
        lines: list[str] = []
        result = run_seed(byzantine_config(3, 4, kind, faults=NETWORK_FAULTS, duration=12.0), echo=lines.append)
        assert result.final == result.submitted
        commits = [(float(m.group(1)), int(m.group(3))) for m in map(COMMIT.match, lines) if m]
        assert any(at < 6.0 for at, _ in commits), kind
        assert any(6.0 <= at < 12.0 for at, _ in commits), kind
        assert max(height for at, height in commits if at < 12.0) >= 4, kind


def test_more_than_f_equivocators_fork_the_chain_and_the_run_fails():
    """Two of four validators, coordinated: each honest side gets its own block and the
    Byzantine votes for it, so each commits a different one.  The invariant must catch it
    (which shows the equivocating attack is real, and f is the limit)."""
    config = byzantine_config(1, 4, "equivocate", byzantine=2, faults=frozenset())
    with pytest.raises(SimulationFailure, match="finalized different blocks") as caught:
        run_seed(config)
    assert "--byzantine 2 --byzantine-kind equivocate" in caught.value.replay


def test_an_honest_node_that_commits_an_invalid_block_fails_the_run(monkeypatch):
    """Break block validation on two honest nodes (f + 1 faulty with the liar): they prevote
    and precommit the Byzantine proposer's invalid block, which then commits."""
    monkeypatch.setattr(byzantine, "INVALID_VARIANTS", ("bad_signature",))
    broken: list[str] = []

    def on_node(slot, node):
        if slot.byzantine is None and len(broken) < 2 and slot.label not in broken:
            broken.append(slot.label)
        if slot.label in broken:
            execute = node._execute

            def accept_all(block):
                return type(execute(block))(node.now_ms(), block.hash, True)

            node._execute = accept_all

    config = byzantine_config(2, 4, "invalid", faults=frozenset())
    with pytest.raises(SimulationFailure, match=r"committed invalid block .* \(bad_signature\)"):
        run_seed(config, on_node=on_node)


# Seeds that stalled the honest validators for good before bft caught peers up across rounds
# and from the stored head block (0b99c98); the default command line settings, 20 s of faults.
STALLS = [
    # Honest validators left in rounds 0 and 1 of one height, the silent one no help: a peer
    # behind in an older round must get the votes that moved the others on.
    pytest.param(25, "silent", id="rounds-apart-silent-25"),
    pytest.param(20, "mix", id="rounds-apart-mix-20"),
    # One validator a height behind after its peers restarted: they must answer with the
    # block from their store, not only its certificate.
    pytest.param(84, "mix", id="height-behind-mix-84"),
]


@pytest.mark.parametrize("seed,kind", STALLS)
def test_seeds_that_once_stalled_the_honest_validators_converge(seed, kind):
    result = check_run(SimConfig(seed=seed, consensus="bft", nodes=4, byzantine=1, byzantine_kind=kind))
    assert result.converged_after < 30


def test_a_byzantine_seed_replays_to_the_same_trace_in_another_process():
    """The replay runs under another PYTHONHASHSEED: no lie may depend on a set's order."""
    config = byzantine_config(5, 4, "mix")
    first = run_seed(config)
    code = (
        "from tests.test_bft_byzantine import byzantine_config\n"
        "from node.sim.harness import run_seed\n"
        "r = run_seed(byzantine_config(5, 4, 'mix'))\n"
        "print(r.digest, sum(r.byzantine_actions.values()), sum(r.evidence.values()))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="4242")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = f"{first.digest} {sum(first.byzantine_actions.values())} {sum(first.evidence.values())}"
    assert done.stdout.strip() == expected
    assert sum(first.byzantine_actions.values()) > 0
    assert run_seed(byzantine_config(5, 4, "equivocate")).digest != first.digest


def test_byzantine_settings_are_checked_and_replayed(capsys):
    with pytest.raises(ValueError, match="byzantine"):
        byzantine_config(1, 4, byzantine=4)
    with pytest.raises(ValueError, match="byzantine_kind"):
        byzantine_config(1, 4, kind="lazy")
    with pytest.raises(ValueError, match="only with --consensus bft"):
        SimConfig(seed=1, consensus="pow", byzantine=1)
    replay = byzantine_config(7, 7, "silent").replay_command()
    assert "--nodes 7" in replay and "--byzantine 2 --byzantine-kind silent" in replay
    assert "--tx-rate 10 --fault-gap 0.3,1.5" in replay
    args = ["--seeds", "1", "--consensus", "bft", "--duration", "4", "--tx-rate", "5", "--byzantine", "1",
            "--byzantine-kind", "equivocate", "-v"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 byzantine (equivocate)" in out and "equivocating-votesx" in out
    assert cli.main(["--seeds", "1", "--consensus", "pow", "--byzantine", "1"]) == 2
    assert "only with --consensus bft" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--byzantine-kind", "lazy"])
    with pytest.raises(SystemExit):
        cli.main(["--fault-gap", "3,1"])


# ---------------------------------------------------------------------------- the lies themselves


@pytest.fixture
def liar():
    """A Byzantine validator of a 4-validator run with its node opened (not started) at genesis,
    and a valid block 1 it could propose."""
    simulation = Simulation(byzantine_config(1, 4, "equivocate"))
    slot = next(slot for slot in simulation.slots if slot.byzantine is not None)
    node = Node(simulation._node_config(slot), simulation.genesis, slot.key, None, clock=lambda: EPOCH_MS + 5000,
                blocking=inline_blocking, store=slot.store)
    node.open()
    validator = slot.byzantine
    validator.node = node
    recipient = address_of(simulation.senders[0].public_key)
    transactions = [new_transfer(key, CHAIN_ID, 0, recipient, 10 + i, 1) for i, key in enumerate(simulation.senders[1:4])]
    header = build_header(CHAIN_ID, node.head, GENESIS_MS + 1000, transactions, validator.address, b"")
    block = Block(header.with_seal(slot.key.sign_digest(header.sealing_digest())), tuple(transactions))
    assert node._execute(block).valid
    peers = [other.node_id for other in simulation.slots if other is not slot]
    yield simulation, validator, node, block, peers
    for each in simulation.slots:
        each.store.close()


def _proposal(validator, block: Block, round: int = 0) -> bytes:
    signed = SignedProposal.sign(validator.key, CHAIN_ID, block.height, round, -1, block.hash)
    return encode_message(Proposal(signed, block, ()))


def _decoded(sent):
    return [(peer, decode_message(payload, 1000)) for peer, payload in sent]


def test_an_equivocating_proposer_signs_two_valid_blocks_and_its_votes_follow_each_side(liar):
    simulation, validator, node, block, peers = liar
    public_key = validator.key.public_key
    sent = _decoded(validator.rewrite(_proposal(validator, block), peers))
    proposals = {message.block_hash: message for _, message in sent}
    assert len(proposals) == 2  # two different blocks for height 1, round 0
    for proposal in proposals.values():
        assert (proposal.height, proposal.round, proposal.signed.proposer) == (1, 0, validator.address)
        assert proposal.signed.verify(CHAIN_ID, public_key)
        assert node._execute(proposal.block).valid  # each one a block honest nodes accept
    first, second = proposals.values()
    verify_evidence(Evidence.of(first.signed, second.signed), node.engine.validators, CHAIN_ID)
    got = {}
    for peer, message in sent:
        got.setdefault(peer, []).append(message.block_hash)
    honest = [peer for peer in peers if peer not in simulation.adversary.byzantine]
    assert {hashes[0] for peer, hashes in got.items() if peer in honest} == set(proposals)  # both sides honest

    # Its prevote for the real block: each peer hears a vote for the block it was sent.
    vote = Vote.sign(validator.key, CHAIN_ID, VoteType.PREVOTE, 1, 0, block.hash)
    votes = _decoded(validator.rewrite(encode_message(vote), peers))
    assert len({message.block_hash for _, message in votes}) == 2
    for peer, message in votes:
        assert message.verify(CHAIN_ID, public_key)
        assert message.block_hash in got[peer]
    a, b = {message.block_hash: message for _, message in votes}.values()
    verify_evidence(Evidence.of(a, b), node.engine.validators, CHAIN_ID)
    # The engine repeats its messages: they are rewritten the same way.
    assert _decoded(validator.rewrite(encode_message(vote), peers)) == votes


def test_an_equivocating_voter_without_a_split_proposal_signs_its_value_and_another(liar):
    simulation, validator, node, block, peers = liar
    for kind, round in ((VoteType.PREVOTE, 3), (VoteType.PRECOMMIT, 3), (VoteType.PRECOMMIT, 4)):
        value = block.hash if round == 3 else None
        vote = Vote.sign(validator.key, CHAIN_ID, kind, 1, round, value)
        sent = _decoded(validator.rewrite(encode_message(vote), peers))
        values = {message.block_hash for _, message in sent}
        assert len(values) == 2 and value in values, (kind, round)
        assert all(message.verify(CHAIN_ID, validator.key.public_key) for _, message in sent)


def test_an_invalid_proposer_proposes_blocks_that_honest_validation_refuses(liar):
    simulation, validator, node, block, peers = liar
    reasons = {}
    for variant in ("bad_signature", "bad_tx_root", "overspend"):
        bad, became = validator.invalid_block(block, variant)
        assert became == variant
        assert crypto.verify_digest(validator.key.public_key, bad.header.sealing_digest(), bad.header.seal)
        executed = node._execute(bad)
        assert not executed.valid, variant
        reasons[variant] = executed.reason
    assert reasons == {"bad_signature": "bad_signature", "bad_tx_root": "bad_merkle_root",
                       "overspend": "insufficient_balance"}
    assert validator.invalid_block(block, "replay")[1] == "overspend"  # nothing committed yet
    asyncio.run(node.commit(block, b""))  # block 1 commits: its transfers can be replayed
    header = build_header(CHAIN_ID, node.head, GENESIS_MS + 2000, [], validator.address, b"")
    empty = Block(header.with_seal(validator.key.sign_digest(header.sealing_digest())))
    replayed, became = validator.invalid_block(empty, "replay")
    assert became == "replay" and replayed.transactions[0] in block.transactions
    with pytest.raises(StateError) as refused:  # what validation applies after the header checks
        apply_transactions(node.state.accounts, replayed.transactions, validator.address, 0)
    assert refused.value.reason == "bad_nonce"

    # In `invalid` mode the proposal on the wire is an invalid block, and so is its vote.
    simulation.adversary.mode = "invalid"
    sent = _decoded(validator.rewrite(_proposal(validator, empty, round=1), peers))
    assert len(sent) == len(peers) and len({message.block_hash for _, message in sent}) == 1
    proposed = sent[0][1].block
    assert proposed.hash in simulation.adversary.invalid_blocks and not node._execute(proposed).valid
    vote = Vote.sign(validator.key, CHAIN_ID, VoteType.PREVOTE, 2, 1, empty.hash)
    votes = _decoded(validator.rewrite(encode_message(vote), peers))
    assert {message.block_hash for _, message in votes} == {proposed.hash}


def test_a_silent_validator_sends_no_consensus_message(liar):
    simulation, validator, node, block, peers = liar
    simulation.adversary.mode = "silent"
    vote = Vote.sign(validator.key, CHAIN_ID, VoteType.PRECOMMIT, 1, 0, block.hash)
    for payload in (_proposal(validator, block), encode_message(vote), encode_message(Status(1, 0))):
        assert validator.rewrite(payload, peers) == []

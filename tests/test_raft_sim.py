"""Raft in the deterministic simulator: every node a member (500 ms election timeouts, 50 ms
heartbeats), under every network fault kind and crash-restarts.  After every loop step the
harness checks one final block a height and nothing final reverted (state machine safety),
and node/sim/raft_checks.py at most one leader a term and leader completeness; at the end,
log matching.  Liveness: after the heal a leader is elected and every transfer commits,
within the bound stated here."""

from __future__ import annotations

import re

import pytest

from node.sim import __main__ as cli
from node.sim.config import FAULT_KINDS, SimConfig
from node.sim.harness import run_seed
from node.sim.raft_checks import RaftChecks
from raft_cluster import ELECTION_MS, Cluster

# After the heal: a leader within two election timeouts (a pre-vote round and a vote round,
# each timeout drawn in [500, 1000) ms), then every transfer commits.  A transfer whose
# announcement was lost on the way to the leader waits for the next re-announcement of
# pending transactions (every 10 s) or the workload's resubmission to the leader itself.
BOUND_S = 12.0
LEADS = re.compile(r"^\s*([\d.]+) (n\d+) leads term (\d+)$")


def raft_config(seed: int, nodes: int = 3, **changes) -> SimConfig:
    settings = dict(seed=seed, consensus="raft", nodes=nodes, duration=16.0, tx_per_second=10.0)
    settings.update(changes)
    return SimConfig(**settings)


@pytest.mark.parametrize("nodes, seed", [(3, seed) for seed in range(1, 7)] + [(5, seed) for seed in range(1, 4)])
def test_every_fault_kind_keeps_raft_safe_and_it_commits_again_after_the_heal(nodes, seed):
    result = run_seed(raft_config(seed, nodes))
    assert result.submitted > 0 and result.final == result.submitted
    assert result.converged_after <= BOUND_S, result.converged_after
    assert result.reorgs == 0  # committed is final: a node's head never moves to another branch


def test_the_seeds_meet_every_fault_kind():
    seen = set()
    for seed in range(1, 30):
        seen |= set(run_seed(raft_config(seed, tx_per_second=2.0)).faults)
        if set(FAULT_KINDS) <= seen:
            break
    assert set(FAULT_KINDS) <= seen


def test_crashes_move_the_lead_and_the_trace_names_one_leader_a_term():
    moved = 0
    for seed in range(1, 7):
        lines: list[str] = []
        result = run_seed(raft_config(seed, faults=frozenset({"crash"}), fault_gap=(1.0, 2.0)), echo=lines.append)
        assert result.final == result.submitted > 0
        leaders = [(float(m.group(1)), m.group(2), int(m.group(3))) for m in map(LEADS.match, lines) if m]
        terms = [term for _, _, term in leaders]
        assert len(terms) == len(set(terms)), leaders  # one leader a term
        moved += len({label for _, label, _ in leaders}) >= 2
    assert moved >= 2  # crashes of the leader elected another member, on several seeds


def test_the_checks_catch_two_leaders_in_a_term_and_a_leader_missing_a_committed_block():
    """RaftChecks on engines of a scripted cluster, made wrong by hand."""
    failures: list[str] = []
    checks = RaftChecks(failures.append, lambda line: None)
    cluster = Cluster(3)
    cluster.tick(0, after_ms=3 * ELECTION_MS)
    first, second = cluster.engines[0], cluster.engines[1]
    checks.after_step("n0", first, {})
    assert not failures
    second.role, second.term = "leader", first.term  # what granting every candidate leads to
    checks.after_step("n1", second, {})
    assert failures and f"two leaders in term {first.term}" in failures[0]
    failures.clear()
    committed = {1: (first.log.hash_at(1), "n0"), 2: (b"\x07" * 32, "n2")}  # a block n0 never saw
    first.term += 1
    checks.after_step("n0", first, committed)
    assert failures and "without block 2" in failures[0]


def test_the_same_seed_replays_identically():
    first, second = run_seed(raft_config(2)), run_seed(raft_config(2))
    assert first.digest == second.digest


def test_the_command_line_runs_raft_seeds(capsys):
    assert cli.main(["--seeds", "1-2", "--consensus", "raft", "--nodes", "3", "--duration", "8", "-v"]) == 0
    out = capsys.readouterr().out
    assert "2 seeds, 0 failed (raft, 3 nodes" in out

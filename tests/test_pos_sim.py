"""Proof of stake in the deterministic simulator: four validators of equal stake on virtual
time (500 ms slots, 4 an epoch), under every network fault kind and crash-restarts.  Safety
(one final block a height, finality never back, no final transfer lost, the supply with
what stake ops issued and burnt) is checked after every loop step; liveness is the run's
convergence after the heal, within the bound stated here."""

from __future__ import annotations

import re

import pytest

from node.sim import __main__ as cli
from node.sim.config import FAULT_KINDS, SimConfig
from node.sim.harness import run_seed

SEEDS = range(1, 9)
EPOCH_S = 2.0  # 500 ms slots, 4 an epoch
# After everything heals, every transfer is final within this: a partition's leftovers
# reorganise in a slot or two, the next epoch's votes justify, the one after finalizes, and
# a transfer the mempool dropped waits for the workload's resubmission (5 s).
FINALITY_BOUND_S = 6 * EPOCH_S
COMMIT = re.compile(r"^\s*([\d.]+) (n\d+) commit (\d+) ")
FINAL = re.compile(r"^\s*([\d.]+) (n\d+) final (\d+)$")


def pos_config(seed: int, **changes) -> SimConfig:
    settings = dict(seed=seed, consensus="pos", nodes=4, duration=16.0, tx_per_second=10.0, fault_gap=(0.5, 3.0))
    settings.update(changes)
    return SimConfig(**settings)


class Lines(list):
    """The trace as it happens (a run's `echo`)."""

    def matches(self, pattern: re.Pattern) -> list[tuple[float, str, int]]:
        found = (pattern.match(line) for line in self)
        return [(float(m.group(1)), m.group(2), int(m.group(3))) for m in found if m]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_fault_kind_keeps_pos_safe_and_final_again_within_the_bound(seed):
    result = run_seed(pos_config(seed))
    assert result.submitted > 0 and result.final == result.submitted
    assert result.converged_after <= FINALITY_BOUND_S, result.converged_after


def test_the_seeds_meet_every_fault_kind():
    seen = set()
    for seed in range(1, 30):
        seen |= set(run_seed(pos_config(seed, tx_per_second=2.0)).faults)
        if set(FAULT_KINDS) <= seen:
            break
    assert set(FAULT_KINDS) <= seen


# One split from 4 s to 12 s (four epochs, the partition bound), on a network that loses
# nothing: with a quarter of the votes lost as well, three of four validators (exactly the
# two thirds) justify an epoch only when none of their votes is lost, and may not.
SPLIT_AT, HEAL_AT = 4.0, 12.0


def split_run(seed: int, side: tuple[int, ...]) -> tuple[Lines, int]:
    trace = Lines()
    result = run_seed(pos_config(seed, faults=frozenset(), duration=16.0,
                                 scripted_partitions=((SPLIT_AT, HEAL_AT, side),)), echo=trace.append)
    assert result.final == result.submitted
    assert result.converged_after <= FINALITY_BOUND_S, result.converged_after
    made_before = max(h for at, _, h in trace.matches(COMMIT) if at <= SPLIT_AT)
    return trace, made_before


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_under_a_two_two_split_both_sides_grow_neither_finalizes_and_finality_resumes_after_the_heal(seed):
    trace, made_before = split_run(seed, (0, 1))
    commits, finals = trace.matches(COMMIT), trace.matches(FINAL)
    # Votes cast before the cut may still finalize checkpoints made before it; no block made
    # after it becomes final anywhere while the two halves are apart.
    assert all(h <= made_before for at, _, h in finals if SPLIT_AT < at <= HEAL_AT)
    for side in (("n0", "n1"), ("n2", "n3")):
        assert any(SPLIT_AT < at <= HEAL_AT and node in side and h > made_before + 2 for at, node, h in commits), side
    # After the heal one branch wins on every node (the run converged on one head) and
    # blocks made after the cut become final.
    assert any(at > HEAL_AT and h > made_before for at, _, h in finals)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_under_a_three_one_split_the_side_of_three_keeps_finalizing(seed):
    trace, made_before = split_run(seed, (3,))
    finals = trace.matches(FINAL)
    assert any(SPLIT_AT < at <= HEAL_AT and node != "n3" and h > made_before for at, node, h in finals)
    assert not any(SPLIT_AT < at <= HEAL_AT and node == "n3" and h > made_before for at, node, h in finals)


def test_a_seed_replays_to_the_same_trace():
    first, again = run_seed(pos_config(5, duration=6.0)), run_seed(pos_config(5, duration=6.0))
    assert first.digest == again.digest and first.steps == again.steps


def test_the_command_line_runs_pos_seeds(capsys):
    assert cli.main(["--seeds", "1-2", "--consensus", "pos", "--duration", "6"]) == 0
    assert "2 seeds, 0 failed (pos, 4 nodes" in capsys.readouterr().out

"""The BFT engine in the deterministic simulator: four validators of equal power (f = 1) on
virtual time, under every network fault kind and crash-restarts.  Safety (one final block a
height, every committed block proven by a valid commit certificate, no final transfer lost,
supply) is checked after every loop step; liveness is the run's convergence after the heal."""

from __future__ import annotations

import re

import pytest

from node.sim import __main__ as cli
from node.sim.config import FAULT_KINDS, SimConfig, SimulationFailure
from node.sim.harness import run_seed

SEEDS = range(1, 11)
COMMIT = re.compile(r"^\s*([\d.]+) (n\d+) commit (\d+) ")
SPLIT = re.compile(r"^\s*([\d.]+) fault partition: (\S+) \| (\S+)$")
HEAL = re.compile(r"^\s*([\d.]+) (fault heal|all faults healed)")


def bft_config(seed: int, **changes) -> SimConfig:
    settings = dict(seed=seed, consensus="bft", nodes=4, duration=10.0, tx_per_second=10.0, fault_gap=(0.3, 1.5))
    settings.update(changes)
    return SimConfig(**settings)


class Lines:
    """The trace, as it happens (the `echo` of a run)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def commits(self) -> list[tuple[float, str, int]]:
        found = (COMMIT.match(line) for line in self.lines)
        return [(float(m.group(1)), m.group(2), int(m.group(3))) for m in found if m]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_fault_kind_keeps_bft_safe_and_it_commits_again_after_the_heal(seed):
    result = run_seed(bft_config(seed))
    assert result.submitted > 0
    assert result.final == result.submitted  # liveness: every transfer final after the heal
    assert result.head_height > 0
    assert result.reorgs == 0  # final at once: a BFT chain never undoes a block
    assert result.converged_after < 60


@pytest.mark.parametrize("seed", [63, 196])
def test_a_validator_that_built_a_losing_proposal_credits_the_fees_of_the_winning_one(seed):
    # These seeds make a validator build a proposal that loses to another proposer's block
    # with the same transactions: the fees must go to the winner (the supply invariant checks it).
    result = run_seed(bft_config(seed, fault_gap=(0.5, 3.0)))  # the command line's default gap
    assert result.final == result.submitted


def test_the_seeds_meet_every_fault_kind():
    seen = set()
    for seed in SEEDS[:6]:
        result = run_seed(bft_config(seed, tx_per_second=5.0, duration=6.0))
        seen |= set(result.faults)
    assert set(FAULT_KINDS) <= seen


def test_with_one_validator_crashing_and_restarting_the_others_keep_committing():
    faults = frozenset({"crash", "delay", "drop", "duplicate", "reorder"})
    crashes = 0
    for seed in range(1, 7):
        trace = Lines()
        result = run_seed(bft_config(seed, faults=faults, max_down=1, duration=12.0), echo=trace)
        crashes += result.faults["crash"]
        assert result.final == result.submitted
        # f = 1 down never stops a quorum: blocks commit through the faults, in each half of them.
        commits = trace.commits()
        assert any(at < 6.0 for at, _, _ in commits), seed
        assert any(6.0 <= at < 12.0 for at, _, _ in commits), seed
        assert max(height for at, _, height in commits if at < 12.0) >= 5, seed
    assert crashes >= 3


def test_a_two_two_split_commits_nothing_new_and_the_chain_resumes_after_the_heal():
    """Two of four validators hold 20 of 40 power, short of the quorum of 27: while split,
    no height beyond those already decided commits; after the heal every transfer is final."""
    checked = 0
    for seed in range(1, 30):
        trace = Lines()
        config = bft_config(seed, faults=frozenset({"partition"}), fault_gap=(1.0, 3.0), duration=12.0)
        result = run_seed(config, echo=trace)
        assert result.final == result.submitted
        commits = trace.commits()
        split_at = None  # while a 2|2 split holds: when it began
        for line in trace.lines:
            split = SPLIT.match(line)
            ended = split or HEAL.match(line)
            if ended and split_at is not None:
                # The split ends with a heal or with another split (a new one may hold a quorum).
                ended_at = float(ended.group(1))
                new = [h for at, _, h in commits if split_at < at < ended_at]
                # One height may have gathered its precommits just before the split.
                assert max(new, default=before) <= before + 1, (seed, split_at, ended_at, new, before)
                checked += ended_at - split_at > 2.0
                split_at = None
            if split and len(split.group(2).split(",")) == 2:
                split_at = float(split.group(1))
                before = max((h for at, _, h in commits if at <= split_at), default=0)
        if checked >= 2:
            break
    assert checked >= 2  # long 2|2 splits did happen, and stalled


def test_a_seed_replays_to_the_same_trace():
    first = run_seed(bft_config(3))
    again = run_seed(bft_config(3))
    other = run_seed(bft_config(4))
    assert first.digest == again.digest
    assert (first.head_height, first.final, first.steps) == (again.head_height, again.final, again.steps)
    assert other.digest != first.digest


def test_a_block_stored_with_a_broken_certificate_fails_the_run():
    def on_node(slot, node):
        if slot.label != "n1":
            return
        commit_block = node.store.commit_block

        def forged(block, effects, certificate, *rest):  # rest: whatever else the store takes
            if block.height == 3 and certificate:
                certificate = certificate[:-1] + bytes([certificate[-1] ^ 1])
            return commit_block(block, effects, certificate, *rest)

        node.store.commit_block = forged

    with pytest.raises(SimulationFailure, match="valid commit certificate"):
        run_seed(bft_config(1, faults=frozenset(), duration=6.0), on_node=on_node)


def test_max_down_is_checked():
    with pytest.raises(ValueError, match="max_down"):
        bft_config(1, max_down=4)


def test_the_command_line_runs_bft_seeds(capsys):
    assert cli.main(["--seeds", "1-2", "--consensus", "bft", "--duration", "4", "--tx-rate", "5"]) == 0
    assert "2 seeds, 0 failed (bft, 4 nodes" in capsys.readouterr().out


def test_the_command_line_takes_max_down_and_a_failure_replays_with_it(capsys):
    assert cli.main(["--seeds", "1", "--consensus", "bft", "--duration", "4", "--max-down", "1"]) == 0
    assert cli.main(["--seeds", "1", "--consensus", "bft", "--max-down", "4"]) == 2
    assert "max_down" in capsys.readouterr().err
    assert "--max-down 1 --trace" in bft_config(1, max_down=1).replay_command()

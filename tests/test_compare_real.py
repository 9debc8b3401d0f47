"""`ledger compare --real`: the comparison on real `ledger node` processes, wall-clock.

The runs take their seconds (24 s of workload each), so one command covers two schedules
on Raft, the engine whose partition outcome is the sharpest to check: commits on the
majority side only.  Each test points TMPDIR at its own folder, to see that the runs leave
no testnet folder and no process behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from node.compare import Schedule
from node.compare_real import _traffic
from tests.nodeproc import ROOT, child_env, run_cli
from tests.test_testnet_cli import processes_naming


def _compare(tmp_path, *arguments: str, timeout: float = 400) -> subprocess.CompletedProcess:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return run_cli("compare", *arguments, env={"TMPDIR": str(tmp_path / "tmp")}, timeout=timeout)


def test_raft_on_real_processes_commits_on_the_majority_side_only_and_survives_a_crash(tmp_path):
    out = tmp_path / "report"
    result = _compare(tmp_path, "--real", "--engines", "raft", "--faults", "crash,partition", "--nodes", "3",
                      "--seed", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "real processes" in result.stdout and "wall-clock" in result.stdout
    document = json.loads((out / "results.json").read_text())
    assert document["time"].startswith("wall-clock") and document["command"].endswith("--real")
    crash, partition = document["results"]
    for row in (crash, partition):
        assert (row["mode"], row["status"], row["nodes"]) == ("real", "ok", 3), row
        assert row["submitted"] > 300 and row["final"] == row["submitted"]  # ~20/s for 24 s, all final in the end
        assert row["latency_p50"] is not None and row["messages_per_block_per_node"] > 0
        assert row["bytes_per_block_per_node"] > 0 and row["reorgs"] == 0
        assert set(row["final_series"]) == {"n0", "n1", "n2"}
    # The sides' growth is counted while the cut held: from when it was laid on every node
    # to when the heal was asked for.
    assert 8.0 <= partition["window"][0] < partition["window"][1] <= 14.5
    majority, minority = partition["sides"]
    assert majority["nodes"] == ["n0", "n1"] and minority["nodes"] == ["n2"]
    assert majority["final_growth"] > 0 and minority["final_growth"] == 0 and minority["head_growth"] == 0
    assert crash["recovery"] is not None  # blocks are final again after node0 is back
    assert "wall-clock s" in (out / "report.html").read_text()
    assert list((tmp_path / "tmp").iterdir()) == []  # the testnet folders are gone
    assert processes_naming(str(tmp_path / "tmp")) == []


@pytest.mark.parametrize("after_start", [0.0, 6.0], ids=["while-starting", "during-the-workload"])
def test_a_sigterm_stops_the_nodes_and_removes_the_testnet(tmp_path, after_start):
    env = {**child_env(), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    command = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "compare", "--real", "--engines", "solo", "--faults", "none", "--nodes", "2",
         "--out", str(tmp_path / "report")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(processes_naming(str(tmp_path / "tmp"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(processes_naming(str(tmp_path / "tmp"))) >= 2, "the nodes never started"
        time.sleep(after_start)
        assert command.poll() is None
        command.send_signal(signal.SIGTERM)
        command.wait(timeout=30)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert command.returncode == 143
    stderr = command.stderr.read().decode()
    assert "Traceback" not in stderr and "never retrieved" not in stderr
    assert "stopped by SIGTERM after 0 of 1 runs;" in stderr and "nothing written" in stderr
    assert processes_naming(str(tmp_path / "tmp")) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "report").exists()  # nothing half-written


def test_too_many_processes_are_refused_before_any_starts(tmp_path):
    result = _compare(tmp_path, "--real", "--engines", "solo", "--nodes", "4,17", "--out", str(tmp_path / "r"),
                      timeout=60)
    assert result.returncode == 2 and "at most 16 processes" in result.stderr + result.stdout
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "r").exists()


def test_a_request_with_nothing_applicable_is_refused_and_writes_nothing(tmp_path):
    result = _compare(tmp_path, "--real", "--faults", "byzantine", "--out", str(tmp_path / "r"), timeout=60)
    assert result.returncode == 2 and "nothing to run" in result.stderr + result.stdout
    assert "only honest code" in result.stderr + result.stdout
    assert not (tmp_path / "r").exists()


def test_byzantine_is_not_applicable_on_real_processes_and_says_why():
    assert "only honest code" in Schedule("byzantine", 4).not_applicable("bft", real=True)
    assert Schedule("byzantine", 4).not_applicable("bft") is None  # the simulator has lying BFT validators
    assert "nothing to vote on" in Schedule("byzantine", 4).not_applicable("solo", real=True)
    assert Schedule("crash", 4).not_applicable("bft", real=True) is None


def test_traffic_is_read_from_the_metrics_text():
    text = "\n".join([
        "# HELP ledger_p2p_messages_sent_total Peer messages sent",
        'ledger_p2p_messages_sent_total{type="Ping"} 12.0',
        'ledger_p2p_messages_sent_total{type="NewBlock"} 30.0',
        'ledger_p2p_messages_received_total{type="Ping"} 99.0',
        "ledger_p2p_bytes_sent_total 4096.0",
        "ledger_p2p_bytes_sent_created 1.7e9",
    ])
    assert _traffic(text) == (42, 4096)

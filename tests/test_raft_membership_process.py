"""Raft membership changes on real `ledger node` processes, through `ledger raft add-member`
and `remove-member` as an operator runs them.

Three members and one node that only follows (a fourth folder, as `ledger testnet --nodes 4`
writes for a three-member network):

1. add-member node3: it joins as a learner, catches up and becomes a voter; four voters.
2. A member is killed: three of four still commit, and the new voter's acknowledgement is
   one of the three they need.
3. remove-member of the dead member: three voters, so two make a majority; a second member
   killed leaves the leader and node3, which go on committing.
4. Refusals: adding a member twice says so; a name outside the folder is refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodeproc import ROOT, child_env
from tests.test_network_process import stop_with_children
from tests.test_raft_process import (
    COMMIT_TIMEOUT,
    DEV,
    START_TIMEOUT,
    consensus,
    raft_network,
    start,
    wait_leader,
)

pytestmark = pytest.mark.integration


def ledger_raft(net, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "raft", *args, "--dir", str(net.directory)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)


def test_a_node_joins_as_a_learner_becomes_a_voter_and_a_dead_member_is_removed(tmp_path: Path):
    net, nodes = raft_network(tmp_path, 3, spares=1)
    try:
        start(net, nodes)
        net.wait_connected(nodes, timeout=START_TIMEOUT)
        members = nodes[:3]
        leader = wait_leader(net, members, START_TIMEOUT)
        net.wait_final_everywhere(net.send_transfer(leader, DEV[0]), nodes, COMMIT_TIMEOUT)
        assert consensus(net, nodes[3])["role"] == "observer"

        # 1. The fourth node joins.
        added = ledger_raft(net, "add-member", "node3")
        assert added.returncode == 0, added.stderr
        assert "node3 is a voter: 4 voters, a majority is 3" in added.stdout, added.stdout
        state = consensus(net, leader)
        assert len(state["details"]["voters"]) == 4 and state["details"]["learners"] == []
        assert (state["total_power"], state["quorum_power"]) == (4, 3)
        net.wait(lambda: consensus(net, nodes[3])["role"] == "follower", COMMIT_TIMEOUT, "node3 follows as a voter")
        again = ledger_raft(net, "add-member", "node3")
        assert again.returncode == 0 and "node3 is a voter already" in again.stdout, (again.stdout, again.stderr)

        # 2. One member dies: the leader, the other and node3 are the three of four needed.
        others = [node for node in members if node is not leader]
        others[0].kill()
        alive = [leader, others[1], nodes[3]]
        records = net.wait_final_everywhere(net.send_transfer(leader, DEV[1]), alive, COMMIT_TIMEOUT)
        assert len({r["block_hash"] for r in records}) == 1

        # 3. The dead member is removed: two of three are a majority, so a second death
        #    leaves the leader and node3 committing.
        dead = f"node{nodes.index(others[0])}"
        removed = ledger_raft(net, "remove-member", dead)
        assert removed.returncode == 0, removed.stderr
        assert f"{dead} is no longer a member: 3 voters, a majority is 2" in removed.stdout, removed.stdout
        others[1].kill()
        records = net.wait_final_everywhere(net.send_transfer(leader, DEV[2]), [leader, nodes[3]], COMMIT_TIMEOUT)
        assert records[0]["block_hash"] == records[1]["block_hash"]

        # The explorer's dashboard shows the elections among its network events.
        dashboard = net.http.get(f"{nodes[3].url}/explorer?fragment=live").text
        assert "election" in dashboard and f"leads term {consensus(net, leader)['term']}" in dashboard

        # 4. Refusals.
        unknown = ledger_raft(net, "add-member", "node9")
        assert unknown.returncode == 2 and "'node9' names no node of this network" in unknown.stderr, unknown.stderr
        assert "Traceback" not in unknown.stderr
    finally:
        stop_with_children(nodes)
        net.http.close()

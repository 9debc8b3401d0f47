"""Raft testnets of real `ledger node` processes on 127.0.0.1 (issue 13's "real processes").

Three members, in one network (starting nodes is the slow part):

1. All three commit a transfer; it is final on every node at once (committed means final).
   A read with `consistency=linearizable` on a follower sees each write the leader has
   just committed.
2. A member cut off from the others (the admin fault endpoint) times out again and again,
   but its pre-votes reach nobody: after the heal the working leader still leads the same
   term and nobody's term moved.  Then `ledger raft transfer-leadership` hands the lead to
   another member, which leads the next term and commits.
3. The leader is SIGKILLed: the two others elect a new one within a few election timeouts
   and go on committing.
4. One more is SIGKILLed: one of three is no majority.  A transfer is accepted into its
   mempool, but nothing commits and its head stays where it was.
5. Both come back on their own data: the waiting transfer is committed and every node
   holds the same block at every height.

Five members survive two down (the leader among them).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ledger.address import address_of, encode_address
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.testnet import add_nodes, write_network
from tests.nodeproc import ROOT, child_env
from tests.test_network_process import BOB, ConfiguredNode, Network, free_port_run, stop_with_children
from tests.test_pos_process import partition

pytestmark = pytest.mark.integration

DEV = dev_keys(10)
ELECTION_MS = 500
START_TIMEOUT = 40.0
COMMIT_TIMEOUT = 30.0
# A new leader is due within about two election timeouts (1-2 s here); a loaded 2-core
# machine adds start-up and scheduling noise, so the test allows more and prints what it saw.
FAILOVER_TIMEOUT = 15.0
HALT_WINDOW = 4 * ELECTION_MS / 1000


def raft_network(tmp_path: Path, members: int, spares: int = 0) -> tuple[Network, list[ConfiguredNode]]:
    """`members` nodes the genesis names, and `spares` more that follow (ledger testnet's growth)."""
    count = members + spares
    api_port = free_port_run(count)
    p2p_port = free_port_run(count, avoid=range(api_port, api_port + count))
    directory = tmp_path / "net"
    write_network(directory, members, "raft", api_port, p2p_port)
    add_nodes(directory, count, api_port, p2p_port)
    path = directory / "genesis.json"
    genesis = Genesis.load(path)
    genesis = dataclasses.replace(genesis, engine_params={**genesis.engine_params, "election_timeout_ms": ELECTION_MS,
                                                          "heartbeat_ms": 50})
    genesis.save(path)
    nodes = [ConfiguredNode(directory / f"node{i}", api_port + i, tmp_path / f"node{i}-logs") for i in range(count)]
    return Network(directory, genesis, nodes, httpx.Client(timeout=5.0)), nodes


def start(net: Network, nodes: list[ConfiguredNode]) -> None:
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready(START_TIMEOUT)


def consensus(net: Network, node: ConfiguredNode) -> dict | None:
    try:
        response = net.http.get(f"{node.url}/v1/consensus")
    except httpx.HTTPError:
        return None
    return response.json()["state"] if response.status_code == 200 else None


def leader_of(net: Network, nodes: list[ConfiguredNode]) -> ConfiguredNode | None:
    """The member that says it leads, once the others follow it in its term."""
    states = {node: consensus(net, node) for node in nodes}
    leading = [node for node, state in states.items() if state is not None and state["role"] == "leader"]
    if len(leading) != 1:
        return None
    leader = states[leading[0]]
    address = leader["details"]["leader"]
    if all(state is not None and state["term"] == leader["term"] and state["details"]["leader"] == address
           for state in states.values()):
        return leading[0]
    return None


def wait_leader(net: Network, nodes: list[ConfiguredNode], timeout: float) -> ConfiguredNode:
    found: list[ConfiguredNode] = []

    def elected() -> bool:
        leader = leader_of(net, nodes)
        found[:] = [leader] if leader is not None else []
        return bool(found)

    net.wait(elected, timeout, "one leader that every live member follows")
    return found[0]


def same_blocks(net: Network, nodes: list[ConfiguredNode], top: int) -> None:
    for height in range(1, top + 1):
        hashes = {net.block_hash(node, height) for node in nodes}
        assert len(hashes) == 1 and None not in hashes, f"the members differ at height {height}: {hashes}"


def test_three_members_commit_keep_the_term_fail_over_halt_without_a_majority_and_recover(tmp_path: Path):
    net, nodes = raft_network(tmp_path, 3)
    try:
        start(net, nodes)
        net.wait_connected(nodes, timeout=START_TIMEOUT)
        assert {net.info(node)["engine"] for node in nodes} == {"raft"}

        # 1. A transfer to a follower is forwarded, committed, and final everywhere.
        leader = wait_leader(net, nodes, START_TIMEOUT)
        follower = next(node for node in nodes if node is not leader)
        records = net.wait_final_everywhere(net.send_transfer(follower, DEV[0]), nodes, COMMIT_TIMEOUT)
        assert len({(r["block_height"], r["block_hash"]) for r in records}) == 1, records
        for node in nodes:
            info = net.info(node)
            assert info["finalized_height"] == info["height"]  # committed is final

        # A linearizable read on a follower sees a write the leader has just committed.
        sender = encode_address(net.genesis.address_prefix, address_of(DEV[5].public_key))
        before = net.http.get(f"{follower.url}/v1/accounts/{sender}").json()["balance"]
        for _ in range(15):  # a plain read there was stale 6 times in 30 when measured
            tx = new_transfer(DEV[5], net.genesis.chain_id,
                              net.http.get(f"{leader.url}/v1/accounts/{sender}").json()["pending_nonce"], BOB, 7, 1)
            answer = net.http.post(f"{leader.url}/v1/transactions?wait=final", json={"raw": tx.encode().hex()})
            assert answer.status_code == 200 and answer.json()["status"] == "final", answer.text
            read = net.http.get(f"{follower.url}/v1/accounts/{sender}", params={"consistency": "linearizable"})
            assert read.status_code == 200, read.text
            before -= 8
            assert read.json()["balance"] == before, "a linearizable read missed a committed write"

        # 2. Pre-vote: a member cut off for many election timeouts raises no term.
        term = consensus(net, leader)["term"]
        outcast = next(node for node in nodes if node is not leader)
        partition(net, [outcast], [node for node in nodes if node is not outcast])
        time.sleep(6 * ELECTION_MS / 1000)
        assert consensus(net, outcast)["role"] != "leader"
        partition(net, nodes)  # heal: nobody blocks anybody
        time.sleep(3 * ELECTION_MS / 1000)
        assert wait_leader(net, nodes, COMMIT_TIMEOUT) is leader
        assert {consensus(net, node)["term"] for node in nodes} == {term}, "a returning member raised the term"

        # Leadership transfer, as an operator does it: the member asked for leads a new term.
        chosen = next(node for node in nodes if node is not leader)
        moved = subprocess.run([sys.executable, "-m", "node.cli", "raft", "transfer-leadership",
                                f"node{nodes.index(chosen)}", "--dir", str(net.directory)],
                               cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stderr
        assert f"node{nodes.index(chosen)} leads term {term + 1}" in moved.stdout, moved.stdout
        assert wait_leader(net, nodes, COMMIT_TIMEOUT) is chosen
        records = net.wait_final_everywhere(net.send_transfer(leader, DEV[3]), nodes, COMMIT_TIMEOUT)
        assert {r["block_hash"] for r in records} == {records[0]["block_hash"]}
        leader, term = chosen, term + 1

        # 3. SIGKILL the leader: the two others elect a new one and commit.
        leader.kill()
        killed_at = time.monotonic()
        survivors = [node for node in nodes if node is not leader]
        new_leader = wait_leader(net, survivors, FAILOVER_TIMEOUT)
        failover = time.monotonic() - killed_at
        assert consensus(net, new_leader)["term"] > term
        records = net.wait_final_everywhere(net.send_transfer(survivors[0], DEV[1]), survivors, COMMIT_TIMEOUT)
        assert len({r["block_hash"] for r in records}) == 1

        # 4. One of three: no majority, no commit, no fork.
        lone = next(node for node in survivors if node is not new_leader)
        new_leader.kill()
        before = net.info(lone)
        pending = net.send_transfer(lone, DEV[2])
        window_end = time.monotonic() + HALT_WINDOW
        while time.monotonic() < window_end:
            info = net.info(lone)
            assert (info["height"], info["head_hash"]) == (before["height"], before["head_hash"]), \
                f"committed without a majority: {info}"
            time.sleep(0.1)
        assert net.transaction(lone, pending)["status"] == "pending"
        assert consensus(net, lone)["role"] != "leader"

        # 5. Both come back: the transfer commits and every node holds the same chain.
        start(net, [leader, new_leader])
        records = net.wait_final_everywhere(pending, nodes, COMMIT_TIMEOUT + START_TIMEOUT)
        top = max(r["block_height"] for r in records)
        net.wait(lambda: min(net.info(node)["height"] for node in nodes) >= top, COMMIT_TIMEOUT, "all at the top")
        same_blocks(net, nodes, top)
        print(f"failover to a new leader took {failover:.2f} s (election timeout {ELECTION_MS} ms)")
    finally:
        stop_with_children(nodes)
        net.http.close()


def test_five_members_survive_two_down(tmp_path: Path):
    net, nodes = raft_network(tmp_path, 5)
    try:
        start(net, nodes)
        net.wait_connected(nodes, timeout=START_TIMEOUT)
        leader = wait_leader(net, nodes, START_TIMEOUT)
        net.wait_final_everywhere(net.send_transfer(leader, DEV[0]), nodes, COMMIT_TIMEOUT)
        down = [leader, next(node for node in nodes if node is not leader)]
        for node in down:
            node.kill()
        alive = [node for node in nodes if node not in down]
        wait_leader(net, alive, FAILOVER_TIMEOUT)
        for sender in DEV[1:3]:
            records = net.wait_final_everywhere(net.send_transfer(alive[0], sender), alive, COMMIT_TIMEOUT)
            assert len({r["block_hash"] for r in records}) == 1
        start(net, down)
        top = records[0]["block_height"]
        net.wait(lambda: min(net.info(node)["height"] for node in nodes) >= top, COMMIT_TIMEOUT, "all caught up")
        same_blocks(net, nodes, top)
    finally:
        stop_with_children(nodes)
        net.http.close()

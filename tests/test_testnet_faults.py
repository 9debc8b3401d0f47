"""The fault lab on real processes: `ledger testnet` keeps its network when a node dies, and a
second terminal breaks the network on purpose (`ledger testnet kill|start|partition|heal`)
while the nodes hold what the engine promises.

BFT, 4 validators: one killed, the other three commit; started again, it catches up to the
same head.  A 2|2 partition: no height moves on any node (safety before liveness); heal:
commits resume and every node has the same hash at every height.  Proof of work, 2|2: both
sides mine; after heal every node is on one chain again (the lighter side reorganised).
The admin endpoint refuses a caller without the token, and Ctrl-C leaves no process.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from ledger.hdkeys import dev_keys
from tests.nodeproc import ROOT, child_env
from tests.test_testnet_cli import (  # noqa: F401  (testnets is a fixture)
    assert_stopped_cleanly, free_port_run, info_or_none, testnets, transfer_final_everywhere, wait_until,
)

pytestmark = pytest.mark.integration

NODES = 4
KEYS = dev_keys(4)
STILL_SECONDS = 4.0  # the check holds heights for 10 s by hand; 4 s here keeps CI short


def control(directory, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "testnet", *args, "--dir", str(directory)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)


def heights(http: httpx.Client, urls: list[str]) -> list[int | None]:
    return [(info or {}).get("height") for info in (info_or_none(http, url) for url in urls)]


def chain(http: httpx.Client, url: str, up_to: int) -> list[str]:
    return [http.get(f"{url}/v1/blocks/{h}").json()["hash"] for h in range(up_to + 1)]


def start(testnets, tmp_path, consensus: str):
    api_port = free_port_run(NODES)
    p2p_port = free_port_run(NODES, avoid=range(api_port, api_port + NODES))
    testnet = testnets(tmp_path / "tn", api_port, p2p_port, nodes=NODES, consensus=consensus).start()
    testnet.wait_for_output("Ctrl-C stops every node")
    return testnet


def test_bft_keeps_committing_with_one_killed_and_halts_then_heals_under_a_2_2_partition(tmp_path, testnets):
    testnet = start(testnets, tmp_path, "bft")
    urls, directory = testnet.urls, testnet.directory
    with httpx.Client(timeout=5) as http:
        # One validator crashes: the launcher keeps the network and the other three commit.
        answer = control(directory, "kill", "node3")
        assert answer.returncode == 0 and "killed (SIGKILL)" in answer.stdout, answer.stderr
        status = control(directory, "status").stdout
        assert "node3  down" in status and "killed by SIGKILL" in status and "node3 log:" in status, status
        assert testnet.process.poll() is None, "the launcher went on"
        transfer_final_everywhere(http, urls[:3], KEYS[0], via=urls[0])
        # Back up: it catches up to the same head.
        assert control(directory, "start", "node3").returncode == 0
        wait_until(lambda: len(set(heights(http, urls))) == 1 and None not in heights(http, urls), 30,
                   "node3 caught up")
        transfer_final_everywhere(http, urls, KEYS[1], via=urls[3])

        # 2|2: no side has two thirds of the power, so no height moves anywhere.
        answer = control(directory, "partition", "0,1", "2,3")
        assert answer.returncode == 0 and "node0,node1 | node2,node3" in answer.stdout, answer.stderr
        wait_until(lambda: all(p == 1 for p in peers(http, urls)), 10, "each node sees only its own side")
        before = heights(http, urls)
        for url, key in zip((urls[0], urls[2]), KEYS[2:]):  # work waits on both sides
            submit(http, url, key)
        time.sleep(STILL_SECONDS)
        assert heights(http, urls) == before, "a height moved under a 2|2 partition"
        assert "cut off from 2" in control(directory, "status").stdout

        # Heal: commits resume, one chain everywhere.
        assert control(directory, "heal").returncode == 0
        wait_until(lambda: min(h or 0 for h in heights(http, urls)) > max(before), 10, "commits resume after heal")
        top = min(heights(http, urls))
        assert len({tuple(chain(http, url, top)) for url in urls}) == 1, "the nodes disagree on a block"

        # The admin endpoint the launcher uses refuses a caller without the token.
        response = http.put(f"{urls[0]}/v1/admin/faults", json={"delay_ms": 1})
        assert response.status_code == 401 and response.json()["reason"] == "unauthorized"
        response = http.put(f"{urls[0]}/v1/admin/faults", json={"delay_ms": 1},
                            headers={"Authorization": "Bearer " + "0" * 64})
        assert response.status_code == 401

    testnet.process.send_signal(2)  # Ctrl-C
    assert_stopped_cleanly(testnet)


def test_bad_control_commands_are_clear_errors_and_change_nothing(tmp_path, testnets):
    answer = control(tmp_path / "nowhere", "status")
    assert answer.returncode == 1 and "no testnet is running in" in answer.stderr
    testnet = start(testnets, tmp_path, "solo")
    directory = testnet.directory
    for args, message in (
        (("kill", "node9"), "no node 'node9'"),
        (("partition", "0,1"), "usage: ledger testnet partition 0,1 2,3"),
        (("partition", "0,1", "1,2,3"), "name every node exactly once"),
        (("delay", "node0", "1.5"), "whole milliseconds"),
        (("loss", "node0", "abc"), "percentage from 0 to 100"),
        (("resume", "node1"), "node1 is not paused"),
    ):
        answer = control(directory, *args)
        assert answer.returncode == 2 and message in answer.stderr, (args, answer.stderr)
        assert "Traceback" not in answer.stderr
    assert "cut off" not in control(directory, "status").stdout
    testnet.process.send_signal(2)
    assert_stopped_cleanly(testnet)


def peers(http: httpx.Client, urls: list[str]) -> list[int]:
    return [(info_or_none(http, url) or {}).get("peers", -1) for url in urls]


def submit(http: httpx.Client, url: str, key) -> None:
    from ledger.address import address_of, encode_address
    from ledger.transaction import new_transfer

    info = http.get(f"{url}/v1/node").json()
    sender = encode_address(info["address_prefix"], address_of(key.public_key))
    nonce = http.get(f"{url}/v1/accounts/{sender}").json()["pending_nonce"]
    tx = new_transfer(key, info["chain_id"], nonce, bytes(20), 1)
    assert http.post(f"{url}/v1/transactions", json={"raw": tx.encode().hex()}).status_code == 202


def test_pow_both_sides_mine_under_a_partition_and_one_chain_remains_after_heal(tmp_path, testnets):
    testnet = start(testnets, tmp_path, "pow")
    urls, directory = testnet.urls, testnet.directory
    with httpx.Client(timeout=5) as http:
        tx_id = transfer_final_everywhere(http, urls, KEYS[0], via=urls[0])
        record = http.get(f"{urls[0]}/v1/transactions/{tx_id}").json()
        block = (record["block_height"], record["block_hash"])

        # Two miners can race to the same height before the split; those reorgs are not the heal's.
        def reorgs_so_far() -> list[dict]:
            return [reorg for url in urls for reorg in http.get(f"{url}/v1/node").json()["extra"]["reorgs"]]

        before_split = reorgs_so_far()
        assert control(directory, "partition", "0,1", "2,3").returncode == 0
        at_split = heights(http, urls)
        split_at = max(at_split)

        def sides_diverged() -> bool:
            tips = [http.get(f"{url}/v1/blocks/latest").json() for url in (urls[0], urls[2])]
            return all(tip["height"] > split_at for tip in tips) and tips[0]["hash"] != tips[1]["hash"]

        wait_until(sides_diverged, 30, "both sides mining their own branch")
        time.sleep(2.0)
        assert control(directory, "heal").returncode == 0

        def one_chain() -> bool:
            tips = [http.get(f"{url}/v1/blocks/latest").json() for url in urls]
            return len({tip["hash"] for tip in tips}) == 1

        wait_until(one_chain, 30, "one chain on every node after heal")
        reorgs = [reorg for reorg in reorgs_so_far() if reorg not in before_split]
        assert reorgs and all(reorg["fork_height"] >= min(at_split) - 1 for reorg in reorgs), reorgs
        for url in urls:  # the transfer made before the split stays final in the same block
            after = http.get(f"{url}/v1/transactions/{tx_id}").json()
            assert after["status"] == "final" and (after["block_height"], after["block_hash"]) == block
    testnet.process.send_signal(2)
    assert_stopped_cleanly(testnet)

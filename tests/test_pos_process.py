"""A proof-of-stake network of real `ledger node` processes on 127.0.0.1.

The layout is `node.testnet.write_network`'s for five nodes (as `ledger init --consensus
pos` writes it), with node4 taken out of the genesis stakes: it starts as a follower, the
way an operator adds a machine.  Short slots (250 ms, 4 an epoch) keep the story short;
the rules are those of the 1 s testnet.

1. The four validators finalize.
2. `wallet stake` from a dev account, for node4's key, makes node4 a fifth validator that
   proposes and attests once active.
3. A validator killed with SIGKILL loses stake for the votes it misses, and attests again
   after a restart on its own data folder.
4. `wallet unstake` returns the stake to the balance after the exit delay.

A second network shows partitions through the nodes' admin endpoint: under 2|2 both sides
keep making blocks and neither finalizes; after heal one head wins and finality resumes;
under 3|1 the side of three keeps finalizing.  Every process is stopped in a `finally`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ledger.address import address_of, encode_address
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from node.admin import ADMIN_TOKEN_FILE
from node.testnet import POS_STAKE, write_network
from tests.nodeproc import ROOT, child_env
from tests.test_network_process import ConfiguredNode, Network, free_port_run, stop_with_children

pytestmark = pytest.mark.integration

DEV = dev_keys(10)
SLOT_MS = 250
SLOTS_PER_EPOCH = 4
EPOCH_S = SLOT_MS * SLOTS_PER_EPOCH / 1000
START_TIMEOUT = 40.0
# Finality needs two epochs with every vote in; a loaded machine misses some slots.
FINAL_TIMEOUT = 30.0


def pos_network(tmp_path: Path, nodes: int, validators: int) -> tuple[Path, list[ConfiguredNode]]:
    api_port = free_port_run(nodes)
    p2p_port = free_port_run(nodes, avoid=range(api_port, api_port + nodes))
    directory = tmp_path / "net"
    write_network(directory, nodes, "pos", api_port, p2p_port)
    path = directory / "genesis.json"
    genesis = Genesis.load(path)
    params = {**genesis.engine_params, "slot_ms": SLOT_MS, "slots_per_epoch": SLOTS_PER_EPOCH, "exit_delay_epochs": 2}
    # A genesis a second in the future: every node is up before slot 1.
    genesis = dataclasses.replace(genesis, engine_params=params, stakes=genesis.stakes[:validators],
                                  timestamp=int(time.time() * 1000) + 1000)
    genesis.save(path)
    return directory, [ConfiguredNode(directory / f"node{i}", api_port + i, tmp_path / f"node{i}-logs")
                       for i in range(nodes)]


def start_until_final(net: Network, nodes: list[ConfiguredNode]) -> None:
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready(START_TIMEOUT)
    net.wait_connected(nodes, timeout=START_TIMEOUT)
    net.wait(lambda: min(finalized(net, node) for node in nodes) > 0, FINAL_TIMEOUT, "finality on every node")


def validators(net: Network, node: ConfiguredNode) -> dict[str, dict]:
    answer = net.http.get(f"{node.url}/v1/validators").json()
    return {v["public_key"]: v for v in answer["validators"]}


def finalized(net: Network, node: ConfiguredNode) -> int:
    info = net.try_info(node)
    return -1 if info is None else info["finalized_height"]


def wallet(keystore: Path, node: ConfiguredNode, *args: str, expect: int = 0) -> dict:
    env = child_env({"LEDGER_KEYSTORE": str(keystore), "LEDGER_NODE": node.url})
    done = subprocess.run([sys.executable, "-m", "wallet.cli", *args, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == expect, f"wallet {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def account(net: Network, node: ConfiguredNode, address: str) -> dict:
    return net.http.get(f"{node.url}/v1/accounts/{address}").json()


def test_validators_finalize_a_staker_joins_a_crashed_one_pays_and_an_unstake_comes_back(tmp_path: Path):
    directory, nodes = pos_network(tmp_path, nodes=5, validators=4)
    genesis = Genesis.load(directory / "genesis.json")
    staker = DEV[4]
    owner = encode_address(genesis.address_prefix, address_of(staker.public_key))
    keystore = tmp_path / "keystore"
    key_file = tmp_path / "dev4.key"
    key_file.write_text(staker.secret.hex() + "\n")
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    with httpx.Client(timeout=5.0) as http:
        net = Network(directory, genesis, nodes, http)
        try:
            # 1. Four validators of equal stake finalize; node4 follows.
            start_until_final(net, nodes)
            assert [net.info(node)["extra"]["engine"]["role"] for node in nodes] == ["validator"] * 4 + ["follower"]

            # 2. `wallet stake` for node4's key: a fifth validator that proposes and attests.
            node4_key = net.info(nodes[4])["node_key"]
            assert node4_key not in validators(net, nodes[0])
            wallet(keystore, nodes[0], "import", "dev4", "--key-file", str(key_file), "--password-file", str(password),
                   "--light")
            staked = wallet(keystore, nodes[0], "stake", "--amount", "40", "--validator-key", node4_key,
                            "--password-file", str(password), "--wait", "--timeout", str(FINAL_TIMEOUT))
            assert staked["status"] == "final" and staked["validator_key"] == node4_key
            assert account(net, nodes[0], owner)["bonded"] == 40 * 10**9

            def fifth_validator_works() -> bool:
                fifth = validators(net, nodes[0]).get(node4_key)
                return (fifth is not None and fifth["status"] == "active" and fifth["blocks_proposed"] > 0
                        and bool(fifth["attested_previous_epoch"]))

            net.wait(fifth_validator_works, FINAL_TIMEOUT, "node4 active, proposing and attesting")
            assert net.info(nodes[4])["extra"]["engine"]["role"] == "validator"
            shown = wallet(keystore, nodes[0], "validator", "status", owner)
            assert shown["validator"]["status"] == "active" and shown["bonded"] == 40 * 10**9

            # 3. A validator crashes: it pays for the votes it misses, and votes again after a restart.
            crashed = nodes[3]
            crashed_key = net.info(crashed)["node_key"]
            crashed.kill()
            net.wait(lambda: validators(net, nodes[0])[crashed_key]["power"] < POS_STAKE, 6 * EPOCH_S + 20,
                     "the crashed validator penalised")
            lost = POS_STAKE - validators(net, nodes[0])[crashed_key]["power"]
            assert 0 < lost < POS_STAKE // 100, f"a missed epoch costs a little, not {lost}"
            crashed.start(wait=True, timeout=START_TIMEOUT)
            net.wait(lambda: validators(net, nodes[0])[crashed_key]["attested_previous_epoch"] is True,
                     FINAL_TIMEOUT, "the restarted validator attesting again")

            # An unstake beyond the bond is refused before anything is signed.
            refused = wallet(keystore, nodes[0], "unstake", "--amount", "41", "--password-file", str(password), expect=4)
            assert refused["error"]["reason"] == "insufficient_stake"

            # 4. Unstake: the bond leaves, then comes back to the balance after the exit delay.
            before = account(net, nodes[0], owner)
            unstaked = wallet(keystore, nodes[0], "unstake", "--amount", "40", "--password-file", str(password),
                              "--wait", "--timeout", str(FINAL_TIMEOUT))
            assert unstaked["status"] == "final"

            def returned() -> bool:
                now = account(net, nodes[0], owner)
                return now["bonded"] == 0 and now["unbonding"] == 0 and now["balance"] >= before["balance"] + 40 * 10**9

            net.wait(returned, 8 * EPOCH_S + FINAL_TIMEOUT, "the unstaked 40 back in the balance")
            assert validators(net, nodes[0])[node4_key]["status"] == "exited"
            # Every node holds one chain up to what is final.
            top = min(finalized(net, node) for node in nodes)
            assert len({net.block_hash(node, top) for node in nodes}) == 1
        finally:
            stop_with_children(nodes)


def lay_faults(net: Network, node: ConfiguredNode, blocked: list[ConfiguredNode]) -> None:
    token = (node.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    ids = [net.info(other)["node_id"] for other in blocked]
    response = net.http.put(f"{node.url}/v1/admin/faults", json={"blocked": ids},
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


def partition(net: Network, *sides: list[ConfiguredNode]) -> None:
    for side in sides:
        others = [node for other in sides if other is not side for node in other]
        for node in side:
            lay_faults(net, node, others)


def test_partitions_both_sides_grow_only_a_two_thirds_side_finalizes_and_heal_rejoins(tmp_path: Path):
    directory, nodes = pos_network(tmp_path, nodes=4, validators=4)
    genesis = Genesis.load(directory / "genesis.json")
    with httpx.Client(timeout=5.0) as http:
        net = Network(directory, genesis, nodes, http)
        try:
            start_until_final(net, nodes)

            # 2|2: each side holds half the stake.  Votes cast before the cut may still
            # finalize checkpoints made before it; no block made after it becomes final,
            # while both sides keep making blocks.
            left, right = nodes[:2], nodes[2:]
            partition(net, left, right)
            split = max(net.info(node)["height"] for node in nodes)
            time.sleep(3 * EPOCH_S)
            heights = [net.info(node)["height"] for node in nodes]
            time.sleep(3 * EPOCH_S)
            stalled = [finalized(net, node) for node in nodes]
            assert max(stalled) <= split, f"half of the stake finalized a block made after the cut: {stalled}"
            assert all(net.info(node)["height"] > height for node, height in zip(nodes, heights)), "a side stopped"
            tips = {net.info(node)["head_hash"] for node in (left[0], right[0])}
            assert len(tips) == 2, "the two sides are on different branches"

            # Heal: one head wins on every node, and finality resumes past the stall.
            for node in nodes:
                lay_faults(net, node, [])
            net.wait(lambda: min(finalized(net, node) for node in nodes) > max(stalled), 10 * EPOCH_S + FINAL_TIMEOUT,
                     "finality resumed after heal")
            top = min(finalized(net, node) for node in nodes)
            assert len({net.block_hash(node, top) for node in nodes}) == 1, "the nodes finalized different blocks"

            # 3|1: the side of three holds 3/4 of the stake and keeps finalizing; the one does not.
            three, one = nodes[:3], nodes[3:]
            partition(net, three, one)
            split = max(net.info(node)["height"] for node in nodes)
            net.wait(lambda: min(finalized(net, node) for node in three) > split, 6 * EPOCH_S + 15,
                     "the side of three finalizing blocks made after the cut")
            assert finalized(net, one[0]) <= split, "a quarter of the stake finalized a block made after the cut"
        finally:
            stop_with_children(nodes)

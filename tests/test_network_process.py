"""Real node processes on 127.0.0.1 forming a network, laid out by `ledger init`.

A story in three parts, as Bitcoin Core's functional tests tell them:

1. Three proof-of-work miners (`ledger init --consensus pow`, with a genesis rewritten
   for sub-second blocks and a finality depth of 3): a transfer submitted to node A is
   gossiped, mined by whichever miner wins, and final on all three in the same block.
2. One of them is killed with SIGKILL, the others mine on (and confirm a transfer sent
   meanwhile), and the restarted node catches up to their head with that transfer final.
3. A solo network whose authority (node 0) already holds 1,000 blocks, written straight
   into its SQLite file before it starts: a follower syncs them, and a node started
   later still syncs all of them and reaches the same head hash.

Every process started here is stopped in teardown, pass or fail, with its children
(the miner's worker process); ports are free ones found at run time.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from consensus.pow import to_compact
from ledger.address import address_of, encode_address
from ledger.block import Block, build_header
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from ledger.state import State
from ledger.store import ChainStore
from ledger.transaction import new_transfer
import migrations
from node.testnet import free_port_run
from tests.nodeproc import ROOT, NodeFailed, NodeProcess, NodeProcesses, child_env, run_cli

pytestmark = pytest.mark.integration

NODES = 3
DEV = dev_keys(10)
BOB = address_of(PrivateKey(bytes(31) + b"\x0b").public_key)
POW_FINALITY_DEPTH = 3
SYNCED_BLOCKS = 1000


# ----------------------------------------------------------------------------- processes
class ConfiguredNode(NodeProcess):
    """`ledger node --config <dir>/config.toml`, as written by `ledger init`."""

    def __init__(self, directory: Path, api_port: int, log_dir: Path):
        super().__init__(directory, api_port=api_port, log_dir=log_dir)

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "node.cli", "node", "--config", str(self.data_dir / "config.toml"), *self.args]


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (the miner's worker and multiprocessing's helpers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        kids = parents.get(frontier.pop(), [])
        found.extend(kids)
        frontier.extend(kids)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_with_children(nodes: list[NodeProcess]) -> None:
    """SIGTERM to all at once (a node stops its miner itself), then whatever is left is killed."""
    started = [node for node in nodes if node.process is not None]
    children = [pid for node in started if node.alive for pid in children_of(node.pid)]
    try:
        for node in started:
            if node.alive:
                node.process.send_signal(signal.SIGTERM)
        for node in started:
            try:
                node.stop(signal.SIGTERM, timeout=10)
            except NodeFailed:
                pass
    finally:
        for node in started:
            node.kill()
        kill_all(children)


@dataclasses.dataclass
class Network:
    directory: Path
    genesis: Genesis
    nodes: list[ConfiguredNode]
    http: httpx.Client

    # --- REST --------------------------------------------------------------------------
    def info(self, node: NodeProcess) -> dict:
        response = self.http.get(f"{node.url}/v1/node")
        response.raise_for_status()
        return response.json()

    def try_info(self, node: NodeProcess) -> dict | None:
        try:
            return self.info(node) if node.alive else None
        except httpx.HTTPError:
            return None

    def block_hash(self, node: NodeProcess, height: int) -> str | None:
        try:
            response = self.http.get(f"{node.url}/v1/blocks/{height}")
        except httpx.HTTPError:
            return None
        return response.json()["hash"] if response.status_code == 200 else None

    def transaction(self, node: NodeProcess, tx_id: str) -> dict | None:
        try:
            response = self.http.get(f"{node.url}/v1/transactions/{tx_id}")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def send_transfer(self, node: NodeProcess, key: PrivateKey, amount: int = 7, fee: int = 1) -> str:
        """A transfer signed here, with the chain id and nonce the node reports."""
        info = self.info(node)
        sender = encode_address(info["address_prefix"], address_of(key.public_key))
        account = self.http.get(f"{node.url}/v1/accounts/{sender}").json()
        tx = new_transfer(key, info["chain_id"], account["pending_nonce"], BOB, amount, fee)
        response = self.http.post(f"{node.url}/v1/transactions", json={"raw": tx.encode().hex()})
        assert response.status_code == 202, response.text
        assert response.json()["id"] == tx.id.hex()
        return tx.id.hex()

    # --- waiting -------------------------------------------------------------------------
    def describe(self) -> str:
        lines = []
        for index, node in enumerate(self.nodes):
            info = self.try_info(node)
            state = "down" if info is None else (f"height {info['height']} {info['head_hash'][:12]} "
                                                 f"peers {info['peers']} syncing {info['syncing']}")
            lines.append(f"node{index}: {state}\n    {node.stderr[-1500:].strip()[-1500:]}")
        return "\n".join(lines)

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.describe()}")
            time.sleep(0.1)

    def wait_connected(self, nodes: list[ConfiguredNode], timeout: float = 20) -> None:
        def connected() -> bool:
            infos = [self.try_info(node) for node in nodes]
            return all(info is not None and info["peers"] >= len(nodes) - 1 for info in infos)

        self.wait(connected, timeout, f"{len(nodes)} nodes connected to each other")

    def wait_final_everywhere(self, tx_id: str, nodes: list[ConfiguredNode], timeout: float) -> list[dict]:
        records: list[dict | None] = []

        def final_everywhere() -> bool:
            records[:] = [self.transaction(node, tx_id) for node in nodes]
            return all(record is not None and record["status"] == "final" for record in records)

        self.wait(final_everywhere, timeout, f"transaction {tx_id[:12]} final on every node")
        return records  # type: ignore[return-value]


def init_network(tmp_path: Path, consensus: str) -> tuple[Path, int, int]:
    api_port = free_port_run(NODES)
    p2p_port = free_port_run(NODES, avoid=range(api_port, api_port + NODES))
    directory = tmp_path / "net"
    result = run_cli("init", "--nodes", str(NODES), "--consensus", consensus, "--out", str(directory),
                     "--api-port", str(api_port), "--p2p-port", str(p2p_port))
    assert result.returncode == 0, result.stderr
    for i in range(NODES):
        config = (directory / f"node{i}" / "config.toml").read_text()
        assert f"api_port = {api_port + i}" in config and f"p2p_port = {p2p_port + i}" in config
        assert (directory / f"node{i}" / "node_key").stat().st_mode & 0o077 == 0
    return directory, api_port, p2p_port


@contextmanager
def network_of(tmp_path: Path, consensus: str, rewrite_genesis: Callable[[Genesis], Genesis] | None = None) -> Iterator[Network]:
    directory, api_port, _ = init_network(tmp_path, consensus)
    genesis = Genesis.load(directory / "genesis.json")
    if rewrite_genesis is not None:
        genesis = rewrite_genesis(genesis)
        genesis.save(directory / "genesis.json")
    nodes = [ConfiguredNode(directory / f"node{i}", api_port + i, tmp_path / f"node{i}-logs") for i in range(NODES)]
    with httpx.Client(timeout=5.0) as http, NodeProcesses(tmp_path) as group:
        group.nodes.extend(nodes)  # killed by the group even if the graceful stop below fails
        try:
            yield Network(directory, genesis, nodes, http)
        finally:
            stop_with_children(nodes)


# ----------------------------------------------------------------------------- proof of work
def fast_pow(genesis: Genesis) -> Genesis:
    """Sub-second blocks on three Python miners sharing this machine, final at depth 3."""
    params = dict(genesis.engine_params, target_block_ms=500, retarget_window=10, finality_depth=POW_FINALITY_DEPTH,
                  initial_target=f"{to_compact(2**256 // 1_000_000):08x}")
    return dataclasses.replace(genesis, engine_params=params)


@pytest.fixture(scope="class")
def pow_network(tmp_path_factory) -> Iterator[Network]:
    # Class-scoped, so the miners stop before the tests after the class (module scope would
    # keep them spinning until the end of the file, slowing everything after them).
    with network_of(tmp_path_factory.mktemp("pow"), "pow", fast_pow) as network:
        for node in network.nodes:
            node.start(wait=False)
        for node in network.nodes:
            node.wait_ready()
        network.wait_connected(network.nodes)
        yield network


class TestThreeMiners:
    """One network for both tests: starting three miners is the slow part."""

    def test_a_transfer_sent_to_one_miner_is_mined_and_final_on_all_three(self, pow_network):
        net = pow_network
        a = net.nodes[0]
        info = net.info(a)
        assert info["engine"] == "pow" and info["chain_id"] == net.genesis.chain_id
        assert info["extra"]["engine"]["role"] == "miner"

        tx_id = net.send_transfer(a, DEV[0])
        records = net.wait_final_everywhere(tx_id, net.nodes, timeout=45)
        assert len({(r["block_height"], r["block_hash"]) for r in records}) == 1, records
        assert all(r["confirmations"] > POW_FINALITY_DEPTH for r in records)
        # Final means buried deep enough on each node's own chain.
        for node, record in zip(net.nodes, records):
            assert net.info(node)["finalized_height"] >= record["block_height"]
            assert net.block_hash(node, record["block_height"]) == record["block_hash"]

    def test_a_node_killed_with_sigkill_catches_up_after_a_restart(self, pow_network):
        net = pow_network
        survivors, victim = net.nodes[:2], net.nodes[2]
        heights = [net.info(node)["height"] for node in net.nodes]
        workers = children_of(victim.pid)
        victim_height = net.info(victim)["height"]
        victim.kill()
        assert victim.returncode == -signal.SIGKILL
        try:
            # The miner's worker (and multiprocessing's resource tracker) go with the node.
            deadline = time.monotonic() + 5
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert workers and not any(alive(pid) for pid in workers), "the killed node's children outlived it"
        finally:
            kill_all(workers)

        # The others go on: more blocks, and a transfer that becomes final while the victim is down.
        tx_id = net.send_transfer(survivors[1], DEV[1])
        net.wait_final_everywhere(tx_id, survivors, timeout=45)
        net.wait(lambda: min(net.info(node)["height"] for node in survivors) >= max(heights) + 3, 30,
                 "the survivors three blocks further")

        target_height = max(net.info(node)["height"] for node in survivors)
        victim.start()
        assert net.info(victim)["height"] >= victim_height, "the restarted node lost blocks it had committed"

        def caught_up() -> bool:
            hashes = {net.block_hash(node, target_height) for node in net.nodes}
            return len(hashes) == 1 and None not in hashes

        net.wait(caught_up, 30, f"the restarted node at the survivors' height {target_height} on the same chain")
        record = net.transaction(victim, tx_id)
        assert record is not None and record["status"] == "final", record
        assert record["block_hash"] == net.transaction(survivors[0], tx_id)["block_hash"]
        net.wait_connected(net.nodes)


MINING_HOST = """
import asyncio
from ledger.block import BlockHeader
from node.mining import ProcessMiner

async def main():
    miner = ProcessMiner()
    header = BlockHeader("orphan-test", 1, bytes(32), 0, bytes(32), 0, bytes(20), bytes(4))
    miner.start(header, 0, lambda found: None)  # target 0: the search never ends
    await asyncio.sleep(0.3)
    print("mining", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_a_miner_worker_does_not_outlive_a_sigkilled_node():
    """What a node's miner does when the node is SIGKILLed, without the rest of the node."""
    host = subprocess.Popen([sys.executable, "-c", MINING_HOST], cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    workers: list[int] = []
    try:
        assert host.stdout.readline().strip() == "mining"
        workers = children_of(host.pid)
        assert workers, "the miner runs in a worker process"
        host.kill()
        host.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "the miner's processes outlived the node"
    finally:
        host.kill()
        host.wait()
        host.stdout.close()
        kill_all(workers)


# ----------------------------------------------------------------------------- catching up 1,000 blocks
def write_solo_chain(directory: Path, genesis: Genesis, blocks: int) -> bytes:
    """`blocks` signed blocks of one transfer each, straight into node 0's (the authority's)
    chain store, as if it had produced them; the head hash."""
    authority = PrivateKey.from_hex((directory / "node0" / "node_key").read_text())
    assert genesis.engine_params["authority"] == authority.public_key.hex()
    proposer = address_of(authority.public_key)
    store = ChainStore(f"sqlite:///{directory / 'node0' / 'chain.db'}")
    try:
        migrations.upgrade(store)
        store.initialize(genesis)
        state = State(store.load_accounts())
        head = store.head()
        nonces = [0] * len(DEV)
        for height in range(1, blocks + 1):
            sender = height % len(DEV)
            transactions = [new_transfer(DEV[sender], genesis.chain_id, nonces[sender], BOB, 1, 1)]
            nonces[sender] += 1
            effects = state.apply(transactions, proposer, genesis.block_reward)
            header = build_header(genesis.chain_id, head, genesis.timestamp + height, transactions, proposer)
            header = header.with_seal(authority.sign_digest(header.sealing_digest()))
            store.commit_block(Block(header, tuple(transactions)), effects)
            state.commit(effects)
            head = header
        return head.hash
    finally:
        store.close()


def test_a_node_started_late_syncs_a_thousand_blocks_to_the_same_head(tmp_path):
    with network_of(tmp_path, "solo") as net:
        authority, follower, late = net.nodes
        follower.start(wait=False)  # at genesis meanwhile; the authority dials it when it starts
        head_hash = write_solo_chain(net.directory, net.genesis, SYNCED_BLOCKS)
        authority.start()
        follower.wait_ready()
        assert net.info(authority)["height"] == SYNCED_BLOCKS
        net.wait(lambda: net.info(follower)["head_hash"] == head_hash.hex(), 20, "the follower synced")

        # One more block made the ordinary way, then the late node joins.
        tx_id = net.send_transfer(follower, DEV[0])
        net.wait_final_everywhere(tx_id, [authority, follower], timeout=20)
        final_head = net.info(authority)
        assert final_head["height"] == SYNCED_BLOCKS + 1

        started = time.monotonic()
        late.start()
        net.wait(lambda: net.info(late)["head_hash"] == final_head["head_hash"], 25, "the late node synced")
        elapsed = time.monotonic() - started
        info = net.info(late)
        assert info["height"] == SYNCED_BLOCKS + 1 and not info["syncing"] and info["sync_progress"] == 1.0
        assert net.transaction(late, tx_id)["status"] == "final"
        for height in (1, SYNCED_BLOCKS // 2, SYNCED_BLOCKS):
            assert net.block_hash(late, height) == net.block_hash(authority, height)
        print(f"late node: {SYNCED_BLOCKS + 1} blocks in {elapsed:.1f} s from start (including its start-up)")

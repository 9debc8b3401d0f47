"""`ledger testnet` refuses a bad request before --fresh deletes anything, and says which
command would do what was asked; `--fresh` is a plain flag.  No node process is started."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app, status_cell
from node import testnet as launcher
from node.testnet import check_request, write_network


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        digest.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def bft_testnet(tmp_path) -> Path:
    directory = tmp_path / "testnet"
    write_network(directory, 4, "bft", 28000, 29000)
    return directory


@pytest.mark.parametrize(("arguments", "message"), [
    (["--consensus", "nosuch", "--fresh"], "--consensus is one of solo, pow, bft, pos, raft, not 'nosuch'"),
    (["--consensus", "raft"], "holds a bft network, not raft"),
    (["--consensus", "pow"], "holds a bft network, not pow"),
    (["--nodes", "3"], "holds a network of 4 nodes, not 3"),
    (["--nodes", "65", "--fresh"], "--nodes is 1 to 64"),
    (["--db", "mysql://root@db", "--fresh"], "--db 'mysql://root@db'"),
])
def test_a_refused_request_leaves_the_testnet_byte_for_byte(bft_testnet, arguments, message):
    before = tree_digest(bft_testnet)
    result = CliRunner().invoke(app, ["testnet", "--dir", str(bft_testnet), "--api-port", "28000",
                                      "--p2p-port", "29000", *arguments])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert tree_digest(bft_testnet) == before


def test_the_refusal_names_the_commands_that_would_do_it(bft_testnet):
    with pytest.raises(launcher.TestnetError) as refused:
        check_request(bft_testnet, 4, "solo", fresh=False)
    text = str(refused.value)
    assert f"`ledger testnet --nodes 4 --dir {bft_testnet}` runs it as it is" in text
    assert f"`ledger testnet --nodes 4 --consensus solo --dir {bft_testnet} --fresh` deletes it" in text
    assert "`ledger testnet --nodes 4 --consensus solo --dir testnet-solo` keeps it" in text


def test_the_suggested_commands_keep_the_ports_and_the_database_asked_for(bft_testnet):
    db = "postgresql://postgres@127.0.0.1/my chains"
    with pytest.raises(launcher.TestnetError) as refused:
        check_request(bft_testnet, 4, "raft", fresh=False, db=db, api_port=28000, p2p_port=29000)
    kept = "--api-port 28000 --p2p-port 29000 --db 'postgresql://postgres@127.0.0.1/my chains'"
    text = str(refused.value)
    assert f"`ledger testnet --nodes 4 --dir {bft_testnet} {kept}` runs it as it is" in text
    assert f"`ledger testnet --nodes 4 --consensus raft --dir {bft_testnet} {kept} --fresh` deletes it" in text
    assert f"`ledger testnet --nodes 4 --consensus raft --dir testnet-raft {kept}` keeps it" in text
    with pytest.raises(launcher.TestnetError) as refused:
        check_request(bft_testnet, 2, None, fresh=False, api_port=28000)
    assert f"`ledger testnet --nodes 4 --dir {bft_testnet} --api-port 28000` runs it" in str(refused.value)


def test_what_is_accepted(bft_testnet, tmp_path):
    assert check_request(bft_testnet, 4, None, fresh=False) == "bft"  # the chain on disk wins
    assert check_request(bft_testnet, 4, "bft", fresh=False) == "bft"
    assert check_request(bft_testnet, 2, "pow", fresh=True) == "pow"
    assert check_request(bft_testnet, 4, "pos", fresh=True) == "pos"
    assert check_request(tmp_path / "new", 4, None, fresh=False) == "bft"
    assert check_request(tmp_path / "new", 1, "solo", fresh=False, db="postgresql://postgres@127.0.0.1/x") == "solo"


def test_fresh_is_a_plain_flag_in_help():
    result = CliRunner().invoke(app, ["testnet", "--help"], env={"COLUMNS": "200"})
    [line] = [line for line in result.output.splitlines() if "--fresh" in line]
    assert "<bool>" not in line and "Delete --dir first" in line


def test_a_pos_network_makes_every_node_a_validator_of_equal_stake(tmp_path):
    from consensus.registry import create_engine
    from ledger.address import address_of
    from ledger.crypto import PrivateKey
    from ledger.genesis import Genesis

    layouts = write_network(tmp_path / "pos", 4, "pos", 28100, 29100)
    genesis = Genesis.load(tmp_path / "pos" / "genesis.json")
    keys = [PrivateKey(bytes.fromhex((layout.directory / "node_key").read_text().strip())) for layout in layouts]
    assert [(s.owner, s.validator_key, s.amount) for s in genesis.stakes] == [
        (address_of(k.public_key), k.public_key, launcher.POS_STAKE) for k in keys
    ]
    engine = create_engine(genesis, keys[0])
    assert engine.name == "pos" and engine.staking


def test_more_nodes_than_the_folder_holds_add_followers_with_fresh_keys(tmp_path):
    directory = tmp_path / "raft"
    write_network(directory, 3, "raft", 28100, 29100)
    genesis_before = (directory / "genesis.json").read_bytes()
    configs_before = [(directory / f"node{i}" / "config.toml").read_bytes() for i in range(3)]
    assert check_request(directory, 4, None, fresh=False) == "raft"
    assert launcher.add_nodes(directory, 4, 28100, 29100) == [3]
    config = (directory / "node3" / "config.toml").read_text()
    assert "api_port = 28103" in config and "p2p_port = 29103" in config
    assert all(f'"127.0.0.1:{29100 + j}"' in config for j in range(3))
    keys = {(directory / f"node{i}" / "node_key").read_text() for i in range(4)}
    assert len(keys) == 4  # a key of its own, in no genesis
    assert (directory / "genesis.json").read_bytes() == genesis_before
    assert [(directory / f"node{i}" / "config.toml").read_bytes() for i in range(3)] == configs_before
    assert launcher.add_nodes(directory, 4, 28100, 29100) == []  # nothing more to add


def _row(**changes) -> dict:
    row = {"node": "node1", "state": "up", "exit": None, "height": 7, "finalized": 7, "peers": 2, "role": "follower"}
    row.update(changes)
    return row


@pytest.mark.parametrize(("row", "cell"), [
    (_row(), "node1 h=7 p=2"),
    (_row(role="leader"), "node1 h=7 p=2 leader"),  # Raft: a failover shows in the live line
    (_row(role="validator"), "node1 h=7 p=2"),
    (_row(finalized=5, role="leader", state="paused"), "node1 h=7 f=5 p=2 leader paused"),
    (_row(state="down", exit="killed by SIGKILL", height=None), "node1 down (killed by SIGKILL)"),
    (_row(height=None, role=None), "node1 up"),
])
def test_the_live_status_line_names_each_nodes_height_peers_and_the_raft_leader(row, cell):
    assert status_cell(row) == cell

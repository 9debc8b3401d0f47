"""`ledger state dump` and `ledger node --load-state`: the chain as one file, and every way a
file or a data folder can be wrong (one error line, nothing written).

A small solo chain is built once in process; the commands run through the real typer app
(typer's CliRunner), and only `node --load-state` refusals run it, which stop before any
server starts.  tests/test_state_process.py does the round trip on real node processes.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.store import ChainStore
from ledger.transaction import new_transfer
from node.cli import app
from node.config import NodeConfig
from node.datalock import DataDirLock
from node.runtime import Node
from node.state_file import load_into, read_header

NODE_KEY = PrivateKey(bytes(31) + b"\x07")
GENESIS = dev_genesis(NODE_KEY.public_key)
ALICE = dev_keys(1)[0]
BOB = address_of(PrivateKey(bytes(31) + b"\x09").public_key)
RUNNER = CliRunner()


def ledger(*args: str):
    return RUNNER.invoke(app, list(args))


def one_error_line(result, *phrases: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """A stopped dev node's data folder: genesis.json, node_key and four blocks, three transfers."""
    folder = tmp_path_factory.mktemp("chain")
    GENESIS.save(folder / "genesis.json")
    (folder / "node_key").write_text(NODE_KEY.secret.hex() + "\n")

    async def build():
        node = Node(NodeConfig(data_dir=folder, db=f"sqlite:///{folder / 'chain.db'}"), GENESIS, NODE_KEY)
        await node.start()
        try:
            for nonce in range(3):
                tx = new_transfer(ALICE, GENESIS.chain_id, nonce, BOB, 1_000 + nonce, fee=10)
                await node.submit([tx])
                assert (await node.wait_final([tx.id], 10))[tx.id] == "final"
            await node.dev.mine(1)  # an empty block too
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(build(), 30))
    return folder


@pytest.fixture(scope="module")
def dump(chain, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dump") / "chain.state.gz"
    result = ledger("state", "dump", str(path), "--data-dir", str(chain))
    assert result.exit_code == 0, result.output
    assert "head 4" in result.stdout
    return path


def chain_of(folder: Path) -> tuple:
    store = ChainStore(f"sqlite:///{folder / 'chain.db'}")
    try:
        head = store.head()
        return head.height, head.hash, store.load_accounts(), [store.certificate(h) for h in range(head.height + 1)]
    finally:
        store.close()


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a state file whose lines `change` edits, with its checksum made right again:
    what an editor with bad intent would write."""
    lines = [json.loads(line) for line in gzip.decompress(source.read_bytes()).splitlines()]
    lines = change(lines)
    body = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines[:-1])
    closing = dict(lines[-1], sha256=hashlib.sha256(body).hexdigest())
    target.write_bytes(gzip.compress(body + json.dumps(closing).encode() + b"\n"))
    return target


def test_load_gives_the_same_head_blocks_and_accounts(chain, dump, tmp_path):
    header = read_header(dump)
    assert (header.genesis.hash, header.head_height, header.node_key) == (GENESIS.hash, 4, None)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert load_into(dump, NodeConfig(data_dir=fresh), header) == 4
    assert chain_of(fresh) == chain_of(chain)
    assert (fresh / "genesis.json").read_text() == (chain / "genesis.json").read_text()
    assert not (fresh / "node_key").exists()  # the authority key travels only when asked for


def test_include_node_key_carries_the_authority_and_only_on_a_dev_chain(chain, tmp_path):
    path = tmp_path / "with-key.gz"
    result = ledger("state", "dump", str(path), "--data-dir", str(chain), "--include-node-key")
    assert result.exit_code == 0, result.output
    assert "keep it private" in result.stdout
    header = read_header(path)
    assert header.node_key.secret == NODE_KEY.secret
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    load_into(path, NodeConfig(data_dir=fresh), header)
    assert (fresh / "node_key").read_text().strip() == NODE_KEY.secret.hex()

    other = tmp_path / "other"
    shutil.copytree(chain, other)
    (other / "node_key").write_text(PrivateKey.generate().secret.hex())
    one_error_line(ledger("state", "dump", str(tmp_path / "x.gz"), "--data-dir", str(other), "--include-node-key"),
                   "not this chain's authority key")
    assert not (tmp_path / "x.gz").exists()


def test_dump_refuses_a_missing_store_a_running_node_and_an_existing_file(chain, dump, tmp_path):
    target = tmp_path / "out.gz"
    one_error_line(ledger("state", "dump", str(target), "--data-dir", str(tmp_path / "nothing")), "no chain database")
    assert not (tmp_path / "nothing").exists()
    lock = DataDirLock(chain).acquire()  # what a running node holds
    try:
        one_error_line(ledger("state", "dump", str(target), "--data-dir", str(chain)), "in use", "stop the node first")
    finally:
        lock.release()
    before = dump.read_bytes()
    one_error_line(ledger("state", "dump", str(dump), "--data-dir", str(chain)), "exists already")
    assert dump.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _drop_block(height):
    return lambda lines: [line for line in lines if line.get("height") != height]


def _add_to_a_balance(lines):
    account = next(line for line in lines if "address" in line)
    account["balance"] += 1
    return lines


def _flip_a_block_byte(lines):
    block = bytearray.fromhex(lines[2]["block"])
    block[-5] ^= 1  # inside the last transaction's signature
    lines[2]["block"] = block.hex()
    return lines


BAD_FILES = {
    "truncated": (lambda good, bad: bad.write_bytes(good.read_bytes()[:-40]), ["truncated or corrupt"]),
    "checksum": (lambda good, bad: bad.write_bytes(gzip.compress(
        gzip.decompress(good.read_bytes()).replace(b'"nonce":3', b'"nonce":2'))), ["checksum does not match"]),
    "not gzip or JSON": (lambda good, bad: bad.write_bytes(b"PK\x03\x04 a zip file\n"), ["line 1", "not JSON"]),
    "empty": (lambda good, bad: bad.write_bytes(b""), ["empty"]),
    "a block missing": (lambda good, bad: rewrite(good, bad, _drop_block(2)), ["holds block 3 where block 2 belongs"]),
    "the head missing": (lambda good, bad: rewrite(good, bad, _drop_block(4)), ["the header names head 4"]),
    "accounts differ": (lambda good, bad: rewrite(good, bad, _add_to_a_balance), ["accounts", "differ"]),
    "an invalid block": (lambda good, bad: rewrite(good, bad, _flip_a_block_byte), ["block 2 is invalid"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_one_error_line_and_leaves_no_data_folder(dump, tmp_path, case):
    make, phrases = BAD_FILES[case]
    bad = tmp_path / "bad.gz"
    make(dump, bad)
    folder = tmp_path / "fresh"
    one_error_line(ledger("node", "--data-dir", str(folder), "--load-state", str(bad)), *phrases)
    assert not folder.exists()


def test_another_chain_or_a_folder_with_a_chain_is_refused_and_left_as_it_was(chain, dump, tmp_path):
    other_genesis = tmp_path / "other-genesis.json"
    dev_genesis(PrivateKey.generate().public_key).save(other_genesis)
    one_error_line(ledger("node", "--data-dir", str(tmp_path / "a"), "--genesis", str(other_genesis),
                          "--load-state", str(dump)), "holds chain 'ledger-dev'", "fresh data folder")
    assert not (tmp_path / "a").exists()

    used = tmp_path / "used"
    shutil.copytree(chain, used)
    before = {p.name: p.read_bytes() for p in used.iterdir()}
    one_error_line(ledger("node", "--data-dir", str(used), "--load-state", str(dump)), "exists already", "fresh data folder")
    assert {p.name: p.read_bytes() for p in used.iterdir()} == before

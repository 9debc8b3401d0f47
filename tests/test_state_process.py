"""The issue's check on real processes: a dev node makes transfers and stops, `ledger state
dump` writes its chain, and a node started with `--load-state` on a fresh data folder
serves the same head hash and balances; with `--include-node-key` it also keeps sealing."""

from __future__ import annotations

import pytest

from api.client import LedgerClient
from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from tests.nodeproc import node_processes, run_cli

pytestmark = pytest.mark.integration

ALICE = dev_keys(1)[0]
BOB = address_of(PrivateKey(bytes(31) + b"\x0b").public_key)


def send(url: str, amount: int) -> None:
    with LedgerClient(url) as client:
        info = client.node_info()
        sender = encode_address(info.address_prefix, address_of(ALICE.public_key))
        nonce = client.account(sender).pending_nonce
        tx = new_transfer(ALICE, info.chain_id, nonce, BOB, amount, fee=1_000)
        assert client.submit(tx, wait_final=True).status == "final"


def chain_view(url: str) -> tuple:
    with LedgerClient(url) as client:
        info = client.node_info()
        prefix = info.address_prefix
        accounts = [address_of(ALICE.public_key), BOB, address_of(dev_keys(2)[1].public_key)]
        return info.head_hash, info.height, [client.account(encode_address(prefix, a)).balance for a in accounts]


def test_dump_then_load_on_a_fresh_folder_gives_the_same_head_and_balances(tmp_path):
    with node_processes(tmp_path) as nodes:
        first = nodes.start("first")
        for amount in (5_000, 7_000):
            send(first.url, amount)
        before = chain_view(first.url)
        assert before[1] == 2 and before[2][1] == 12_000
        first.stop()

        plain, keyed = tmp_path / "plain.state.gz", tmp_path / "keyed.state.gz"
        for path, extra in ((plain, ()), (keyed, ("--include-node-key",))):
            result = run_cli("state", "dump", str(path), "--data-dir", str(first.data_dir), *extra)
            assert result.returncode == 0, result.stderr

        follower = nodes.start("follower", "--load-state", str(plain))
        assert "loaded 2 blocks" in follower.stdout
        assert chain_view(follower.url) == before
        follower.stop()

        sealer = nodes.start("sealer", "--load-state", str(keyed))
        assert chain_view(sealer.url) == before
        send(sealer.url, 1_000)  # the authority key came with the file: the chain goes on
        after = chain_view(sealer.url)
        assert after[1] == 3 and after[2][1] == 13_000
        sealer.stop()

        # The next start of a loaded folder is an ordinary start; loading again is refused.
        again = run_cli("node", "--data-dir", str(sealer.data_dir), "--p2p-port", "0", "--load-state", str(keyed))
        assert again.returncode == 2 and "fresh data folder" in again.stderr

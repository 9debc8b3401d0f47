"""`wallet stake`, `unstake` and `validator status` where they must refuse: a chain whose
engine bonds no stake (the solo test node), and bad arguments.  The commands at work on a
proof-of-stake network: tests/test_pos_process.py."""

from __future__ import annotations

import pytest

from tests.test_wallet_cli import Wallet, node_url, one_error_line  # noqa: F401  (node_url is a fixture)


@pytest.fixture
def wallet(tmp_path, node_url):  # noqa: F811
    w = Wallet(tmp_path, node_url)
    w.import_dev("dev0", 0)
    return w


@pytest.mark.parametrize("command", [
    ("stake", "--amount", "1"),
    ("unstake", "--amount", "1"),
    ("validator", "status"),
])
def test_a_chain_without_stake_is_refused_before_anything_is_signed(wallet, command):
    before = wallet.json("balance")
    result = wallet(*command, expect=4)
    one_error_line(result, "bonds no stake", "solo")
    document = wallet.json(*command, expect=4)
    assert document["error"]["reason"] == "staking_not_supported" and document["error"]["exit_code"] == 4
    assert wallet.json("balance")["nonce"] == before["nonce"], "nothing was submitted"


@pytest.mark.parametrize("key", ["zz", "02" + "00" * 32, "04" + "11" * 32, "02" + "11" * 31])
def test_a_bad_validator_key_is_a_usage_error(wallet, key):
    result = wallet("stake", "--amount", "1", "--validator-key", key, expect=2)
    one_error_line(result, "--validator-key", "compressed secp256k1 public key")

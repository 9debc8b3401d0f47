"""The `wallet` command end to end, through its entry point, against a real node process.

One solo dev node is started for the module on a free 127.0.0.1 port in a temporary
folder (its genesis funds the ten dev keys) and always stopped.  Each test has its own
keystore; tests draw on different dev keys so their nonces never collide.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from ledger.hdkeys import DEV_MNEMONIC, ExtendedKey, dev_keys
from wallet.cli import app as wallet_app

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
UNIT = 10**9  # the dev genesis: 9 decimals
DEV_BALANCE = 1_000_000 * UNIT

# Published vectors (see test_wallet_keystore.py for their sources).
TREZOR_PHRASE = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
TREZOR_XPRV = "xprv9s21ZrQH143K3h3fDYiay8mocZ3afhfULfb5GX8kCBdno77K4HiA15Tg23wpbeF1pLfs1c5SPmYHrEpTuuRhxMwvKDwqdKiGJS9XFKzUsAF"
WEB3_SECRET = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
WEB3_PBKDF2 = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2",
        "kdfparams": {"c": 262144, "dklen": 32, "prf": "hmac-sha256",
                      "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}


RUNNER = CliRunner()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_node(folder: Path):
    """A `ledger node` process on `folder` (a dev chain unless a genesis.json is there), always stopped."""
    port = free_port()
    log = open(folder / "node.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "--data-dir", str(folder / "data"), "--api-port", str(port), "--p2p-port", "0"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the node exited with {process.returncode}: {(folder / 'node.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not answer in 30 s: {(folder / 'node.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("wallet-node")) as url:
        yield url


@pytest.fixture(scope="module")
def tst_node_url(tmp_path_factory):
    """A dev chain whose addresses read tst1..., as a `ledger testnet`'s do."""
    folder = tmp_path_factory.mktemp("wallet-tst-node")
    key = PrivateKey.generate()
    (folder / "data").mkdir()
    (folder / "data" / "node_key").write_text(key.secret.hex() + "\n")
    dev_genesis(key.public_key, chain_id="ledger-tst", prefix="tst").save(folder / "data" / "genesis.json")
    with running_node(folder) as url:
        yield url


class Wallet:
    """Runs the wallet's real typer app with its own keystore and the test node: in process
    through typer's CliRunner (fast), or as `python -m wallet.cli` when `process=True`."""

    def __init__(self, folder: Path, node_url: str, password: str = "pw"):
        self.folder = folder
        self.keystore = folder / "keystore"
        self.env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LEDGER_")}
        self.env.update(
            LEDGER_KEYSTORE=str(self.keystore), LEDGER_NODE=node_url,
            LEDGER_WALLET_PASSWORD=password, LEDGER_WALLET_LIGHT_KDF="1",
        )

    def __call__(self, *args: str, input: str | None = None, expect: int | None = 0, process: bool = False,
                 **env: str | None) -> Result:
        environment = {**self.env, **env}
        if process:
            full = {k: v for k, v in {**os.environ, **environment, "PYTHONPATH": str(REPO)}.items() if v is not None}
            done = subprocess.run(
                [sys.executable, "-m", "wallet.cli", *args], cwd=REPO, env=full, input=input or "",
                capture_output=True, text=True, timeout=60,
            )
            result = Result(done.returncode, done.stdout, done.stderr)
        else:
            ran = RUNNER.invoke(wallet_app, list(args), input=input or "", env=environment, catch_exceptions=True)
            if ran.exception is not None and not isinstance(ran.exception, SystemExit):
                raise ran.exception
            result = Result(ran.exit_code, ran.stdout, ran.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        if expect is not None:
            assert result.returncode == expect, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        return result

    def json(self, *args: str, **kwargs):
        result = self(*args, "--json", **kwargs)
        return json.loads(result.stdout)

    def file(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text)
        return path

    def import_dev(self, name: str, index: int) -> str:
        phrase = self.file(f"{name}.phrase", DEV_MNEMONIC + "\n")
        return self.json("import", name, "--mnemonic-file", str(phrase), "--index", str(index))["address"]


@pytest.fixture
def wallet(tmp_path, node_url):
    return Wallet(tmp_path, node_url)


def dev_address(index: int) -> str:
    return encode_address("dev", address_of(dev_keys(index + 1)[index].public_key))


def one_error_line(result, *words: str, after_prompts: bool = False) -> None:
    """The failure is one line, "error: ...", holding `words` (after the questions asked, if any)."""
    lines = result.stderr.strip().splitlines()
    if not after_prompts:
        assert len(lines) == 1, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error") for line in lines) == 1, result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


# --- keys ------------------------------------------------------------------------------------------


def test_new_key_is_shown_once_stored_privately_and_listed(wallet):
    created = wallet.json("new", "alice", process=True)
    words = created["mnemonic"].split()
    assert len(words) == 24
    file = Path(created["file"])
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(wallet.keystore.stat().st_mode) == 0o700
    assert created["mnemonic"] not in file.read_text()

    listed = wallet.json("list", LEDGER_WALLET_PASSWORD=None)  # no password needed to list
    assert [(k["name"], k["address"]) for k in listed["keys"]] == [("alice", created["address"])]
    assert wallet("address", "alice", LEDGER_WALLET_PASSWORD=None).stdout.strip() == created["address"]

    # The phrase restores the same key (in another keystore).
    other = Wallet(wallet.folder / "restore", wallet.env["LEDGER_NODE"])
    other.folder.mkdir()
    restored = other.json("import", "again", "--mnemonic-file", str(wallet.file("p", created["mnemonic"])))
    assert restored["address"] == created["address"]
    # A second key of the same name is refused, and the first file is untouched.
    before = file.read_bytes()
    refused = wallet("new", "alice", expect=2)
    one_error_line(refused, "already exists")
    assert file.read_bytes() == before


def test_human_new_prints_the_phrase_and_a_warning(wallet):
    result = wallet("new", "bob", "--words", "12")
    assert "Write these words down" in result.stdout
    assert "12." in result.stdout and "Saved key 'bob'" in result.stdout


def test_import_from_the_published_vectors(wallet):
    # BIP-39 phrase + passphrase -> the published master key -> our account path
    master = _xprv(TREZOR_XPRV)
    for index in (0, 3):
        expected = encode_address("dev", address_of(master.derive(f"m/44'/1'/0'/0/{index}").public_key()))
        imported = wallet.json(
            "import", f"trezor{index}", "--mnemonic-file", str(wallet.file("phrase", TREZOR_PHRASE)),
            "--passphrase-file", str(wallet.file("passphrase", "TREZOR\n")), "--index", str(index),
        )
        assert imported["address"] == expected
        assert imported["path"] == f"m/44'/1'/0'/0/{index}"

    # The Web3 v3 vector and its raw secret are one key.
    web3_file = wallet.file("web3.json", json.dumps(WEB3_PBKDF2))
    from_web3 = wallet.json("import", "web3", "--keystore-file", str(web3_file),
                            LEDGER_WALLET_SOURCE_PASSWORD="testpassword")
    other = Wallet(wallet.folder / "raw", wallet.env["LEDGER_NODE"])
    other.folder.mkdir()
    from_hex = other.json("import", "raw", "--key-file", str(wallet.file("key.hex", "0x" + WEB3_SECRET + "\n")))
    assert from_web3["address"] == from_hex["address"]
    assert from_web3["source"] == "keystore-file" and from_hex["source"] == "private-key"

    # A wrong source password: exit 6, nothing stored.
    wrong = wallet("import", "web3b", "--keystore-file", str(web3_file), expect=6,
                   LEDGER_WALLET_SOURCE_PASSWORD="testpassworD")
    one_error_line(wrong, "wrong password")
    assert not (wallet.keystore / "web3b.json").exists()


def test_keystore_round_trip_password_change_and_a_flipped_byte(wallet):
    key_hex = dev_keys(9)[8].secret.hex()
    wallet("import", "k", "--key-file", str(wallet.file("k.hex", key_hex)))
    file = wallet.keystore / "k.json"

    exported = wallet.json("export", "k", input="y\nk\n")
    assert exported["private_key"] == key_hex

    wallet("passwd", "k", LEDGER_WALLET_NEW_PASSWORD="second password")
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    one_error_line(wallet("export", "k", input="y\nk\n", expect=6), "wrong password", after_prompts=True)
    out_file = wallet.folder / "k.out"
    wallet("export", "k", "--out", str(out_file), input="y\nk\n", LEDGER_WALLET_PASSWORD="second password")
    assert out_file.read_text().strip() == key_hex
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600

    document = json.loads(file.read_text())
    ciphertext = bytearray.fromhex(document["crypto"]["ciphertext"])
    ciphertext[0] ^= 0x80
    document["crypto"]["ciphertext"] = ciphertext.hex()
    file.write_text(json.dumps(document))
    tampered = wallet("export", "k", input="y\nk\n", expect=6, LEDGER_WALLET_PASSWORD="second password")
    one_error_line(tampered, "altered", str(file), after_prompts=True)
    assert tampered.stdout == ""
    assert sorted(p.name for p in wallet.keystore.iterdir()) == ["k.json"]  # no temp files


def test_export_asks_twice_and_stops_at_a_no(wallet):
    wallet("import", "k", "--key-file", str(wallet.file("k.hex", dev_keys(9)[8].secret.hex())))
    for answers in ("n\n", "y\nnot-k\n", ""):
        refused = wallet("export", "k", input=answers, expect=1)
        assert refused.stdout == ""
        assert "WARNING" in refused.stderr and "aborted" in refused.stderr


def test_no_password_and_no_terminal_says_what_to_use(wallet):
    wallet("import", "k", "--key-file", str(wallet.file("k.hex", dev_keys(9)[8].secret.hex())))
    result = wallet("export", "k", input="y\nk\n", expect=2, LEDGER_WALLET_PASSWORD=None)
    assert "--password-file" in result.stderr and "LEDGER_WALLET_PASSWORD" in result.stderr
    password_file = wallet.file("pw.txt", "pw\n")
    exported = wallet.json("export", "k", "--password-file", str(password_file), input="y\nk\n",
                           LEDGER_WALLET_PASSWORD=None)
    assert exported["private_key"] == dev_keys(9)[8].secret.hex()


# --- moving funds --------------------------------------------------------------------------------


def test_send_waits_for_finality_and_history_shows_it(wallet):
    sender = wallet.import_dev("dev1", 1)
    recipient = wallet.json("new", "fresh")["address"]
    before = wallet.json("balance", "dev1")

    sent = wallet("send", "--from", "dev1", "--to", "fresh", "--amount", "1.5", "--fee", "0.000000002", "--wait",
                  process=True)
    tx_id = sent.stdout.strip()
    assert len(tx_id) == 64
    assert "final in block" in sent.stderr

    assert wallet.json("balance", recipient)["balance"] == 1_500_000_000
    after = wallet.json("balance", "dev1")
    assert after["balance"] == before["balance"] - 1_500_000_002
    assert after["nonce"] == before["nonce"] + 1
    assert "1.5 LED" in wallet("balance", "fresh").stdout

    shown = wallet.json("tx", tx_id)
    assert (shown["status"], shown["sender_address"], shown["recipient"], shown["amount"]) == (
        "final", sender, recipient, 1_500_000_000)
    history = wallet.json("history", "fresh")
    assert [(t["id"], t["status"]) for t in history["transactions"]] == [(tx_id, "final")]
    assert tx_id in wallet("history", "fresh").stdout


def test_send_json_and_history_pages(wallet):
    wallet.import_dev("dev2", 2)
    recipient = wallet.json("new", "pages")["address"]
    ids = []
    for amount in ("1", "2", "3"):
        sent = wallet.json("send", "--from", "dev2", "--to", recipient, "--amount", amount, "--wait")
        assert sent["status"] == "final" and sent["amount"] == int(amount) * UNIT
        ids.append(sent["id"])
    first = wallet.json("history", recipient, "--limit", "2")
    assert [t["id"] for t in first["transactions"]] == ids[:0:-1]  # newest first
    assert first["next"]
    second = wallet.json("history", recipient, "--limit", "2", "--before", first["next"])
    assert [t["id"] for t in second["transactions"]] == ids[:1]
    assert "--before" in wallet("history", recipient, "--limit", "2").stdout


def test_offline_sign_then_broadcast_gives_the_same_id(wallet):
    wallet.import_dev("dev3", 3)
    nonce = wallet.json("balance", "dev3")["pending_nonce"]
    recipient = dev_address(4)
    # Signing needs no node: point the wallet at a dead port to prove it.
    signed = wallet.json(
        "sign", "--from", "dev3", "--to", recipient, "--amount", "2.25", "--nonce", str(nonce),
        "--chain-id", "ledger-dev", "--prefix", "dev", "--decimals", "9", LEDGER_NODE=f"http://127.0.0.1:{free_port()}",
        process=True,
    )
    assert signed["id"] == hashlib.sha256(bytes.fromhex(signed["raw"])).hexdigest()
    assert signed["transaction"]["amount"] == 2_250_000_000

    broadcast = wallet.json("broadcast", signed["raw"], "--wait", process=True)
    assert (broadcast["id"], broadcast["status"]) == (signed["id"], "final")
    assert wallet.json("tx", signed["id"])["status"] == "final"

    # Submitting is idempotent: the same bytes again are the same, already final, transaction.
    again = wallet.json("broadcast", signed["raw"], process=True)
    assert again["id"] == signed["id"]


# --- bad input -------------------------------------------------------------------------------------


def test_bad_input_is_one_line_with_its_exit_code(wallet, node_url):
    wallet.import_dev("dev5", 5)
    good = dev_address(6)
    typo = good[:-1] + ("q" if good[-1] != "q" else "p")
    other_network = encode_address("main", address_of(dev_keys(7)[6].public_key))
    cases = [
        (["send", "--to", good, "--amount", "1", "--from", "nobody"], 7, "no key 'nobody'"),
        (["send", "--to", typo, "--amount", "1"], 2, "checksum"),
        (["send", "--to", other_network, "--amount", "1"], 2, "network 'main'"),
        (["send", "--to", "nobody-here", "--amount", "1"], 7, "neither a key"),
        (["send", "--to", good, "--amount", "0.0000000001"], 2, "has 10 decimals"),
        (["send", "--to", good, "--amount", "-5"], 2, "negative"),
        (["send", "--to", good, "--amount", "10000000000"], 2, "too large"),
        (["send", "--to", good, "--amount", "1.5.1"], 2, "not a number"),
        (["send", "--to", good, "--amount", "0"], 2, "more than zero"),
        (["send", "--to", good, "--amount", "2000000"], 4, "insufficient balance"),
        (["send", "--to", good, "--amount", "1", "--chain-id", "ledger-main"], 2, "serves chain 'ledger-dev'"),
        (["balance", "dev1qqqqqqqqqq"], 2, "checksum"),
        (["tx", "ab" * 32], 7, "no transaction"),
        (["tx", "xyz"], 2, "not a transaction id"),
        (["broadcast", "00ff"], 2, "not a signed transaction"),
        (["address", "ghost"], 7, "no key 'ghost'"),
    ]
    for args, code, words in cases:
        result = wallet(*args, expect=code)
        one_error_line(result, words)
        as_json = wallet(*args, "--json", expect=code, process=True)  # and through the entry point
        assert json.loads(as_json.stdout)["error"]["exit_code"] == code
    # Nothing above reached the chain.
    assert wallet.json("balance", "dev5")["nonce"] == 0
    assert wallet.json("balance", good)["balance"] == DEV_BALANCE


def test_the_nodes_refusal_is_shown_in_words(wallet):
    wallet.import_dev("dev7", 7)
    wallet("send", "--to", dev_address(8), "--amount", "1", "--wait")
    refused = wallet("send", "--to", dev_address(8), "--amount", "2", "--nonce", "0", expect=4)
    one_error_line(refused, "the node refused the transaction (nonce_too_low)")


def test_unreachable_node_is_one_line_naming_the_url(wallet):
    wallet.import_dev("dev5", 5)
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["balance"], ["send", "--to", dev_address(6), "--amount", "1"], ["history"], ["tx", "ab" * 32]):
        result = wallet(*args, "--node", dead, expect=3, process=True)
        one_error_line(result, dead, "--node")


def test_wrong_password_for_send_is_exit_6_and_sends_nothing(wallet):
    wallet.import_dev("dev5", 5)
    result = wallet("send", "--to", dev_address(6), "--amount", "1", expect=6, LEDGER_WALLET_PASSWORD="nope")
    one_error_line(result, "wrong password for key 'dev5'")
    assert wallet.json("balance", "dev5")["pending_count"] == 0


def test_help_documents_the_exit_codes(wallet):
    text = wallet("--help", process=True).stdout
    for code in range(8):
        assert f"\n  {code}  " in text
    assert "LEDGER_WALLET_PASSWORD" in text


def _xprv(text: str) -> ExtendedKey:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = 0
    for char in text:
        number = number * 58 + alphabet.index(char)
    payload = number.to_bytes(82, "big")[:-4]
    return ExtendedKey(payload[46:78], payload[13:45])


def test_the_wallet_shows_keys_in_the_prefix_of_the_node_it_talks_to(tmp_path, tst_node_url):
    wallet = Wallet(tmp_path, tst_node_url)
    stored = wallet.import_dev("dev3", 3)  # no node asked: stored with the default prefix
    assert stored == dev_address(3)
    tst = encode_address("tst", address_of(dev_keys(4)[3].public_key))
    listed = wallet.json("list", "--node", tst_node_url)["keys"]
    assert [key["address"] for key in listed] == [tst]
    assert wallet.json("address", "dev3", "--node", tst_node_url)["address"] == tst
    assert wallet("list", "--node", tst_node_url).stdout.count("tst1") == 1
    assert wallet.json("list")["keys"][0]["address"] == stored  # offline: as stored, no node needed
    one_error_line(wallet("list", "--node", tst_node_url, "--prefix", "dev", expect=2), "not both")
    assert wallet.json("balance", "dev3")["address"] == tst
    # A read takes the other form of the same account, as explorer search does.
    assert wallet.json("balance", stored)["address"] == tst

    created = wallet.json("new", "carol", "--node", tst_node_url)["address"]
    assert created.startswith("tst1") and json.loads((wallet.keystore / "carol.json").read_text())["address"] == created


def test_send_to_another_networks_form_is_refused_with_this_networks_form(tmp_path, tst_node_url):
    wallet = Wallet(tmp_path, tst_node_url)
    wallet.import_dev("dev2", 2)
    recipient = address_of(dev_keys(10)[9].public_key)
    result = wallet("send", "--to", encode_address("dev", recipient), "--amount", "1", expect=2)
    one_error_line(result, "network 'dev', this network is 'tst'", encode_address("tst", recipient), "nothing was signed")
    assert wallet.json("balance", "dev2")["pending_nonce"] == 0
    sent = wallet.json("send", "--to", encode_address("tst", recipient), "--amount", "1", "--wait")
    assert sent["status"] == "final" and sent["from"].startswith("tst1") and sent["to"] == encode_address("tst", recipient)

"""`ledger testnet` as a user runs it: a real process that starts node processes.

The story: it prints the node table and the dev keys, the nodes agree on a transfer
made with a printed key, Ctrl-C (SIGINT to the whole process group, as a terminal sends
it) stops every node with exit code 0; a second `testnet` on the same --dir continues
the same chain, its banner showing dev account (0)'s balance after the transfer and its
fee, and SIGTERM to the launcher alone stops it just as cleanly.  After each
stop no process whose command line names the testnet's directory is left.  What `make
testnet` starts with no --consensus, four BFT validators, commits a transfer and stops
cleanly too; a second run without --consensus on a solo directory keeps the solo chain
and says so.  Bad arguments are one-line errors that write nothing; a taken port is a
clear error that leaves no node behind.

Every process started here is killed in teardown, pass or fail.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.testnet import free_port_run
from tests.nodeproc import ROOT, child_env

pytestmark = pytest.mark.integration

NODES = 3
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 25.0
BOB = address_of(PrivateKey(bytes(31) + b"\x0b").public_key)


# ----------------------------------------------------------------------------- processes
def processes_naming(text: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry))
    return found


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    # Between fork and exec: if pytest dies, the launcher gets SIGKILL, and its nodes (which
    # it starts with their own death signal) get SIGTERM.
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Testnet:
    """One `ledger testnet` process in its own process group, its output in files."""

    __test__ = False  # a helper, not a test class

    def __init__(self, directory: Path, api_port: int, p2p_port: int, logs: Path, *extra: str,
                 nodes: int = NODES, consensus: str | None = "solo"):
        self.directory = directory
        self.nodes = nodes
        self.consensus = consensus  # None: the command's default
        self.api_port = api_port
        self.p2p_port = p2p_port
        self.logs = logs
        self.extra = extra
        self.process: subprocess.Popen | None = None
        self.runs = 0

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.api_port + i}" for i in range(self.nodes)]

    def start(self) -> Testnet:
        self.runs += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.logs / f"testnet{self.runs}.stdout"
        self.stderr_path = self.logs / f"testnet{self.runs}.stderr"
        command = [
            sys.executable, "-m", "node.cli", "testnet", "--nodes", str(self.nodes),
            *(("--consensus", self.consensus) if self.consensus is not None else ()),
            "--dir", str(self.directory), "--api-port", str(self.api_port), "--p2p-port", str(self.p2p_port),
            *self.extra,
        ]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=child_env({"COLUMNS": "200"}), stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, start_new_session=True, preexec_fn=_die_with_parent,
            )
        return self

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stdout:
            if self.process.poll() is not None:
                raise AssertionError(f"testnet exited with {self.process.returncode} before printing {text!r}:\n"
                                     f"{self.stdout}\n{self.stderr}\n{self.node_logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s:\n{self.stdout}\n{self.stderr}\n{self.node_logs()}")
            time.sleep(0.1)
        return self.stdout

    def node_logs(self) -> str:
        tails = []
        for i in range(self.nodes):
            log = self.directory / f"node{i}" / "node.log"
            if log.exists():
                tails.append(f"--- node{i}.log\n" + log.read_text(errors="replace")[-1500:])
        return "\n".join(tails)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"testnet did not exit within {timeout} s:\n{self.stdout}\n{self.stderr}") from None

    def kill_everything(self) -> None:
        """Teardown: the launcher's process group, then anything still naming the directory."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
        for pid in processes_naming(str(self.directory)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def testnets(tmp_path) -> Iterator[Callable[..., Testnet]]:
    started: list[Testnet] = []

    def make(directory: Path, api_port: int, p2p_port: int, *extra: str, **options) -> Testnet:
        testnet = Testnet(directory, api_port, p2p_port, tmp_path / "logs", *extra, **options)
        started.append(testnet)
        return testnet

    try:
        yield make
    finally:
        for testnet in started:
            testnet.kill_everything()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def info_or_none(http: httpx.Client, url: str) -> dict | None:
    try:
        response = http.get(f"{url}/v1/node")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def printed_roles(testnet: Testnet, output: str) -> list[str]:
    """The table: one line per node, with its API, explorer and peer port; the roles."""
    roles = []
    for i in range(testnet.nodes):
        api, p2p = testnet.api_port + i, testnet.p2p_port + i
        row = re.search(rf"node{i}\s+API http://127\.0\.0\.1:{api}/v1\s+explorer "
                        rf"http://127\.0\.0\.1:{api}/explorer\s+p2p 127\.0\.0\.1:{p2p}\s+(\w+)", output)
        assert row is not None, output
        roles.append(row.group(1))
    return roles


def printed_dev_keys(output: str) -> dict[int, PrivateKey]:
    """The ten dev accounts, their keys printed in full."""
    printed = dict(re.findall(r"^\s+\((\d)\) ([0-9a-f]{64})\s*$", output, re.MULTILINE))
    assert {int(i): key for i, key in printed.items()} == {i: key.secret.hex() for i, key in enumerate(dev_keys(10))}
    return {int(i): PrivateKey.from_hex(key) for i, key in printed.items()}


def transfer_final_everywhere(http: httpx.Client, urls: list[str], key: PrivateKey, via: str) -> str:
    """A transfer from `key`, sent to `via`, awaited until final on every node of `urls`; its id."""
    info = http.get(f"{via}/v1/node").json()
    sender = encode_address(info["address_prefix"], address_of(key.public_key))
    nonce = http.get(f"{via}/v1/accounts/{sender}").json()["pending_nonce"]
    tx = new_transfer(key, info["chain_id"], nonce, BOB, 1_000, 1)
    response = http.post(f"{via}/v1/transactions", json={"raw": tx.encode().hex()})
    assert response.status_code == 202, response.text

    def agreed() -> bool:
        records = [http.get(f"{url}/v1/transactions/{tx.id.hex()}") for url in urls]
        return all(r.status_code == 200 and r.json()["status"] == "final" for r in records)

    wait_until(agreed, 20, "the transfer final on every node")
    return tx.id.hex()


def assert_stopped_cleanly(testnet: Testnet) -> None:
    code = testnet.wait_exit()
    assert code == 0, f"exit code {code}:\n{testnet.stdout}\n{testnet.stderr}"
    assert "all nodes stopped" in testnet.stdout
    assert "Traceback" not in testnet.stdout + testnet.stderr
    wait_until(lambda: not processes_naming(str(testnet.directory)), 5, "no process left naming the testnet dir")
    for i in range(testnet.nodes):
        log = (testnet.directory / f"node{i}" / "node.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert "node stopped at height" in log.splitlines()[-1] or "node stopped at height" in log[-2000:]


# ----------------------------------------------------------------------------- the story
def test_testnet_serves_then_stops_on_ctrl_c_and_sigterm_and_keeps_its_chain(tmp_path, testnets):
    api_port = free_port_run(NODES)
    p2p_port = free_port_run(NODES, avoid=range(api_port, api_port + NODES))
    directory = tmp_path / "tn"
    testnet = testnets(directory, api_port, p2p_port).start()
    output = testnet.wait_for_output("Ctrl-C stops every node.")

    assert printed_roles(testnet, output) == ["producer"] + ["follower"] * (NODES - 1)
    alice = printed_dev_keys(output)[0]
    genesis = Genesis.load(directory / "genesis.json")
    alice_line = re.compile(rf"^\s+\(0\) {genesis.address(address_of(alice.public_key))}\s+(\S+) LED\s*$", re.MULTILINE)
    assert alice_line.findall(output) == ["1,000,000"]

    with httpx.Client(timeout=5.0) as http:
        infos = [info_or_none(http, url) for url in testnet.urls]
        assert all(info is not None and info["peers"] == NODES - 1 for info in infos), infos

        # A transfer with a printed key, sent to a follower: gossiped to the producer, then
        # the block reaches everyone.
        tx_id = transfer_final_everywhere(http, testnet.urls, alice, via=testnet.urls[1])
        heads = {(info["height"], info["head_hash"]) for info in (info_or_none(http, url) for url in testnet.urls)}
        assert len(heads) == 1 and next(iter(heads))[0] >= 1, heads
        [(height, head_hash)] = heads
        # The status line streams heights and peers.
        testnet.wait_for_output(f"h={height} p={NODES - 1}", timeout=20)

        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(testnet.process.pid, signal.SIGINT)
        assert_stopped_cleanly(testnet)
        assert all(info_or_none(http, url) is None for url in testnet.urls)

        # Again on the same --dir, without --consensus: the same solo chain, not a new one
        # of the default engine (only an explicit other --consensus is refused).
        genesis_before = (directory / "genesis.json").read_bytes()
        again = testnets(directory, api_port, p2p_port, consensus=None).start()
        output = again.wait_for_output("Ctrl-C stops every node.")
        assert f"engine solo, data in {directory}" in output.replace("\n", " ")
        # The banner shows what account (0) holds now: 1,000 base units and a fee of 1 less.
        assert alice_line.findall(output) == ["999,999.999998999"]
        assert (directory / "genesis.json").read_bytes() == genesis_before
        for url in again.urls:
            info = info_or_none(http, url)
            assert info is not None and info["height"] == height and info["head_hash"] == head_hash, info
            assert http.get(f"{url}/v1/transactions/{tx_id}").json()["status"] == "final"

        # `kill <pid>` of the launcher alone: it stops its nodes itself.
        again.process.send_signal(signal.SIGTERM)
        assert_stopped_cleanly(again)


def test_make_testnet_runs_four_bft_validators_by_default(tmp_path, testnets):
    """What the README's first command starts: `make testnet` is `ledger testnet --nodes 4`
    with no --consensus, so the command's default is what users get."""
    recipe = re.search(r"^testnet:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None and recipe.group(1).split() == ["$(BIN)/ledger", "testnet", "--nodes", "4", "$(ARGS)"]

    api_port = free_port_run(4)
    p2p_port = free_port_run(4, avoid=range(api_port, api_port + 4))
    directory = tmp_path / "tn"
    testnet = testnets(directory, api_port, p2p_port, nodes=4, consensus=None).start()
    output = testnet.wait_for_output("Ctrl-C stops every node.")
    assert re.search(r"Testnet 4 nodes, chain \S+, engine bft", output), output
    assert printed_roles(testnet, output) == ["validator"] * 4
    genesis = Genesis.load(directory / "genesis.json")
    node_keys = {PrivateKey.from_hex((directory / f"node{i}" / "node_key").read_text().strip()).public_key.hex()
                 for i in range(4)}
    assert genesis.engine == "bft"
    assert {v["public_key"] for v in genesis.engine_params["validators"]} == node_keys
    assert len({v["power"] for v in genesis.engine_params["validators"]}) == 1

    with httpx.Client(timeout=5.0) as http:
        tx_id = transfer_final_everywhere(http, testnet.urls, printed_dev_keys(output)[0], via=testnet.urls[2])
        blocks = {http.get(f"{url}/v1/transactions/{tx_id}").json()["block_hash"] for url in testnet.urls}
        assert len(blocks) == 1, blocks
        os.killpg(testnet.process.pid, signal.SIGINT)
        assert_stopped_cleanly(testnet)


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stop_during_start_up_is_a_clean_stop_not_an_error(tmp_path, testnets, stop):
    api_port = free_port_run(NODES)
    p2p_port = free_port_run(NODES, avoid=range(api_port, api_port + NODES))
    testnet = testnets(tmp_path / "tn", api_port, p2p_port).start()
    # As soon as the launcher has started its node processes, before they are up.
    wait_until(lambda: len(processes_naming(f"{tmp_path / 'tn'}/node")) >= NODES, 20, "the node processes")
    started = time.monotonic()
    if stop == "ctrl-c":
        os.killpg(testnet.process.pid, signal.SIGINT)  # the nodes get it too, and may exit first
    else:
        testnet.process.send_signal(signal.SIGTERM)
    code = testnet.wait_exit()
    assert time.monotonic() - started < 15
    assert code == 0, f"exit code {code}:\n{testnet.stdout}\n{testnet.stderr}"
    assert testnet.stderr.strip() == "" and "all nodes stopped" in testnet.stdout, testnet.stdout + testnet.stderr
    assert "Traceback" not in testnet.stdout
    wait_until(lambda: not processes_naming(str(tmp_path / "tn")), 5, "no process left naming the testnet dir")


def test_a_taken_port_is_a_clear_error_and_leaves_no_node_behind(tmp_path, testnets):
    api_port = free_port_run(NODES)
    p2p_port = free_port_run(NODES, avoid=range(api_port, api_port + NODES))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", api_port + 1))
        squatter.listen()
        testnet = testnets(tmp_path / "tn", api_port, p2p_port).start()
        code = testnet.wait_exit(STARTUP_TIMEOUT)
    assert code == 1, testnet.stdout + testnet.stderr
    errors = testnet.stderr.strip().splitlines()
    assert errors and errors[-1].startswith("error: node1 exited"), testnet.stderr
    assert f"cannot listen on 127.0.0.1:{api_port + 1}" in testnet.stderr
    assert "Traceback" not in testnet.stdout + testnet.stderr
    wait_until(lambda: not processes_naming(str(tmp_path / "tn")), 5, "no process left naming the testnet dir")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--nodes", "0"), "--nodes is 1 to 64"),
        (("--nodes", "65"), "--nodes is 1 to 64"),
        (("--consensus", "nakamoto"), "--consensus is one of"),
        (("--db", "mysql://x"), "--db 'mysql://x': sqlite, or a postgresql:// server URL"),
        (("--api-port", "25000", "--p2p-port", "25002"), "--api-port and --p2p-port ranges overlap"),
        (("--api-port", "65535"), "node ports must stay within 1-65535"),
        (("--nodes", "three"), "Invalid value for '--nodes'"),
    ],
)
def test_bad_arguments_are_one_line_errors_that_write_nothing(tmp_path, arguments, message):
    directory = tmp_path / "tn"
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "testnet", "--nodes", "3", "--dir", str(directory), *arguments],
        cwd=ROOT, env=child_env({"COLUMNS": "200"}), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not directory.exists()

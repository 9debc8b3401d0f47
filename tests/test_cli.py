"""The `ledger` command as a user meets it: each mistake gets one line, "error: ...", on
stderr and a non-zero exit, never a Python traceback; and the small commands work.

Every case runs `python -m node.cli` in a real process: what matters is what the terminal
shows, including the wrapping of long lines.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ledger.crypto import PrivateKey
from ledger.genesis import Genesis, dev_genesis
from ledger.schema import metadata
from ledger.store import ChainStore
import migrations
from node import __version__
from tests.nodeproc import free_port, run_cli

pytestmark = pytest.mark.integration


def assert_one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> str:
    """A non-zero exit whose stderr ends with exactly one `error:` line holding `phrases`
    (log lines the node wrote before it gave up may precede it); the line."""
    stderr = result.stderr
    assert result.returncode not in (0, None), f"exit 0 for a mistake; stderr: {stderr}"
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    error_lines = [line for line in lines if line.startswith("error: ")]
    assert len(error_lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[-1] == error_lines[0], f"the error is not the last line (wrapped or followed by more):\n{stderr}"
    for phrase in phrases:
        assert phrase in error_lines[0], f"{phrase!r} not in {error_lines[0]!r}"
    return error_lines[0]


def node_command(data_dir: Path, *args: str) -> list[str]:
    return ["node", "--data-dir", str(data_dir), "--api-port", str(free_port()), "--p2p-port", "0", *args]


def write_genesis(path: Path, mutate=None) -> Genesis:
    genesis = dev_genesis(PrivateKey.generate().public_key)
    data = genesis.to_json()
    if mutate is not None:
        mutate(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return genesis


# --- ports --------------------------------------------------------------------------------------


def test_api_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("node", "--data-dir", str(tmp_path / "d"), "--api-port", str(port), "--p2p-port", "0")
    assert result.returncode == 1
    assert_one_line_error(result, f"127.0.0.1:{port}", "--api-port")


@pytest.mark.parametrize("value, phrase", [
    ("eighty", "--api-port"),
    ("70000", "api_port (from command line)"),
    ("-5", "api_port (from command line)"),
    ("", "--api-port"),
])
def test_bad_api_port_value(tmp_path, value, phrase):
    result = run_cli("node", "--data-dir", str(tmp_path / "d"), "--api-port", value)
    assert result.returncode == 2
    assert_one_line_error(result, phrase)
    assert not (tmp_path / "d").exists(), "a refused command created the data dir"


def test_unknown_flag(tmp_path):
    result = run_cli("node", "--data-dir", str(tmp_path / "d"), "--frobnicate")
    assert result.returncode == 2
    assert_one_line_error(result, "--frobnicate")


def test_unknown_command():
    result = run_cli("nodes")
    assert result.returncode == 2
    assert_one_line_error(result, "nodes")


def test_flag_without_its_value(tmp_path):
    result = run_cli("node", "--data-dir")
    assert result.returncode == 2
    assert_one_line_error(result, "--data-dir")


# --- genesis ------------------------------------------------------------------------------------


def test_genesis_file_missing(tmp_path):
    missing = tmp_path / "nowhere" / "genesis.json"
    result = run_cli(*node_command(tmp_path / "d", "--genesis", str(missing)))
    assert_one_line_error(result, str(missing))
    assert not missing.exists(), "a named genesis file must never be invented"


def test_genesis_file_not_json(tmp_path):
    bad = tmp_path / "genesis.json"
    bad.write_text("{not json", encoding="utf-8")
    result = run_cli(*node_command(tmp_path / "d", "--genesis", str(bad)))
    assert_one_line_error(result, str(bad), "JSON")


@pytest.mark.parametrize("mutate, phrases", [
    (lambda data: data.update(timestamp="soon"), ("timestamp",)),
    (lambda data: data.update(chain_id="Bad Chain!"), ("chain_id",)),
    (lambda data: data.update(launch_date=1), ("launch_date",)),
    (lambda data: data["allocations"][0].update(address="dev1notanaddress"), ("address",)),
    (lambda data: data.update(engine={"name": "zzz", "params": {}}), ("engine.name", "solo")),
], ids=["timestamp", "chain_id", "unknown_field", "allocation_address", "unknown_engine"])
def test_genesis_file_with_a_bad_field(tmp_path, mutate, phrases):
    path = tmp_path / "genesis.json"
    write_genesis(path, mutate)
    result = run_cli(*node_command(tmp_path / "d", "--genesis", str(path)))
    assert_one_line_error(result, *phrases)


def test_genesis_of_another_chain_for_an_existing_data_dir(tmp_path):
    """The data dir's database belongs to genesis A; starting it with genesis B is refused
    and the database keeps A."""
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    original = write_genesis(data_dir / "genesis.json")
    with ChainStore(f"sqlite:///{data_dir / 'chain.db'}") as store:  # what a first start does
        migrations.upgrade(store)
        store.initialize(original)
    other = write_genesis(tmp_path / "other.json")
    result = run_cli(*node_command(data_dir, "--genesis", str(tmp_path / "other.json")))
    assert_one_line_error(result, original.hash.hex(), other.hash.hex())
    with ChainStore(f"sqlite:///{data_dir / 'chain.db'}") as store:
        store.initialize(original)  # still the chain of genesis A
        assert store.head().height == 0


# --- database -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, phrases", [
    ("mysql://root@127.0.0.1/chain", ("db (from command line)",)),
    ("chain.db", ("db (from command line)",)),
    ("postgresql+psycopg://nobody@127.0.0.1:{closed}/chain", ("127.0.0.1",)),
    ("postgresql+nosuchdriver://nobody@127.0.0.1/chain", ("nosuchdriver",)),
    ("sqlite:///{file}/chain.db", ("chain.db",)),
], ids=["other_backend", "not_a_url", "unreachable_server", "unknown_driver", "path_through_a_file"])
def test_bad_db_url(tmp_path, url, phrases):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    url = url.format(closed=free_port(), file=a_file)
    result = run_cli(*node_command(tmp_path / "d", "--db", url), timeout=60)
    assert_one_line_error(result, *phrases)


def test_db_upgrade_creates_the_schema_and_is_idempotent(tmp_path):
    db = tmp_path / "sub" / "chain.db"
    for _ in range(2):
        result = run_cli("db", "upgrade", "--db", f"sqlite:///{db}")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "schema is current" in result.stdout
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert tables == set(metadata.tables) | {"alembic_version"}
    assert revision


def test_db_upgrade_of_an_unreachable_database(tmp_path):
    result = run_cli("db", "upgrade", "--db", f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/chain")
    assert result.returncode == 1
    assert_one_line_error(result, "cannot upgrade")


# --- data dir, node key and config ---------------------------------------------------------------


def test_data_dir_under_a_file(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("in the way")
    result = run_cli(*node_command(a_file / "data"))
    assert_one_line_error(result, str(a_file / "data"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_data_dir(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    try:
        result = run_cli(*node_command(read_only / "data"))
        assert_one_line_error(result, str(read_only / "data"))
    finally:
        read_only.chmod(0o700)


def test_data_dir_with_a_bracketed_name_is_not_markup(tmp_path):
    """Paths in messages are printed as they are, never read as rich markup: this one
    reads as a closing tag with nothing open, which rich refuses with an exception."""
    (tmp_path / "old[").mkdir()
    a_file = tmp_path / "old[" / "]x"
    a_file.write_text("in the way")
    result = run_cli(*node_command(a_file / "data"))
    assert_one_line_error(result, str(a_file / "data"))


def test_node_key_that_is_not_a_key(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "node_key").write_text("not hex at all\n")
    result = run_cli(*node_command(data_dir))
    assert_one_line_error(result, "node_key")
    assert (data_dir / "node_key").read_text() == "not hex at all\n", "a bad key must not be replaced"


def test_config_file_with_an_unknown_setting(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("api-port = 8001\n")
    result = run_cli(*node_command(tmp_path / "d", "--config", str(config)))
    assert result.returncode == 2
    assert_one_line_error(result, str(config), "api-port")


def test_bad_environment_setting_names_the_variable(tmp_path):
    result = run_cli("node", "--data-dir", str(tmp_path / "d"), env={"LEDGER_LOG_LEVEL": "loud"})
    assert result.returncode == 2
    assert_one_line_error(result, "log_level (from LEDGER_LOG_LEVEL)")


# --- the small commands -------------------------------------------------------------------------


def test_version():
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__
    assert result.stderr == ""


def test_help_lists_the_commands_and_the_node_flags():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("node", "db", "version"):
        assert command in result.stdout
    result = run_cli("node", "--help")
    assert result.returncode == 0
    for flag in ("--data-dir", "--api-port", "--p2p-port", "--db", "--genesis", "--config"):
        assert flag in result.stdout

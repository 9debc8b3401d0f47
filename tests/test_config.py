"""node.config.load_config: flags > TOML file > LEDGER_* environment > defaults.

Each setting has one name in all three places; a bad value names the setting and the
source it came from, and a TOML key the node does not know is refused (a typo must not
silently leave a default in place).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import ConfigError, NodeConfig, load_config

NO_ENV: dict[str, str] = {}


def toml_file(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_without_any_source():
    config = load_config({}, None, NO_ENV)
    assert config == NodeConfig()
    assert (config.api_host, config.api_port, config.p2p_port) == ("127.0.0.1", 8000, 9000)
    assert config.db_url == f"sqlite:///{Path('data/node') / 'chain.db'}"
    assert config.genesis_path == Path("data/node") / "genesis.json"
    assert config.api_url == "http://127.0.0.1:8000"


def test_derived_paths_follow_the_data_dir_unless_set():
    config = load_config({"data_dir": "/srv/ledger"}, None, NO_ENV)
    assert config.db_url == "sqlite:////srv/ledger/chain.db"
    assert config.genesis_path == Path("/srv/ledger/genesis.json")
    config = load_config({"data_dir": "/srv/ledger", "db": "sqlite:////elsewhere/c.db", "genesis": "/etc/g.json"}, None, NO_ENV)
    assert config.db_url == "sqlite:////elsewhere/c.db"
    assert config.genesis_path == Path("/etc/g.json")


def test_flags_given_as_none_are_not_given():
    """The CLI passes every option, None when absent: None must not hide a lower source."""
    config = load_config({"api_port": None, "log_level": None}, None, {"LEDGER_API_PORT": "8100"})
    assert config.api_port == 8100
    assert config.log_level == "info"


def test_empty_environment_variable_counts_as_unset():
    assert load_config({}, None, {"LEDGER_API_PORT": "", "LEDGER_LOG_LEVEL": ""}) == NodeConfig()


def test_unrelated_ledger_variables_are_ignored():
    # CI sets LEDGER_TEST_POSTGRES; LEDGER_CONFIG names the file, it is not a setting.
    environ = {"LEDGER_TEST_POSTGRES": "1", "LEDGER_CONFIG": "/nowhere.toml", "LEDGER_NODE": "http://x"}
    assert load_config({}, None, environ) == NodeConfig()


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("LEDGER_API_PORT", "8123")
    assert load_config({}).api_port == 8123


# --- precedence -------------------------------------------------------------------------------


def test_each_source_overrides_the_one_below(tmp_path):
    environ = {"LEDGER_API_PORT": "8100", "LEDGER_P2P_PORT": "9100", "LEDGER_LOG_LEVEL": "debug", "LEDGER_MAX_BATCH": "11"}
    file = toml_file(tmp_path, 'api_port = 8200\np2p_port = 9200\nlog_level = "warning"\n')
    config = load_config({"api_port": 8300}, file, environ)
    assert config.api_port == 8300  # flag > file > env
    assert config.p2p_port == 9200  # file > env
    assert config.log_level == "warning"  # file > env
    assert config.max_batch == 11  # env > default
    assert config.mempool_capacity == NodeConfig().mempool_capacity  # default


SOURCES = st.fixed_dictionaries({}, optional={
    "env": st.integers(1, 65535), "file": st.integers(1, 65535), "flag": st.integers(1, 65535),
})


@settings(max_examples=60, deadline=None)
@given(values=SOURCES, level_sources=st.sets(st.sampled_from(["env", "file", "flag"])))
def test_precedence_holds_for_every_combination(tmp_path_factory, values, level_sources):
    """Whichever sources give a setting, the highest one wins, setting by setting."""
    levels = {"env": "error", "file": "warning", "flag": "debug"}
    environ, file_lines, flags = {}, [], {}
    if "env" in values:
        environ["LEDGER_API_PORT"] = str(values["env"])
    if "file" in values:
        file_lines.append(f"api_port = {values['file']}")
    if "flag" in values:
        flags["api_port"] = values["flag"]
    if "env" in level_sources:
        environ["LEDGER_LOG_LEVEL"] = levels["env"].upper()
    if "file" in level_sources:
        file_lines.append(f'log_level = "{levels["file"]}"')
    if "flag" in level_sources:
        flags["log_level"] = levels["flag"]
    file = toml_file(tmp_path_factory.mktemp("cfg"), "\n".join(file_lines) + "\n") if file_lines else None
    config = load_config(flags, file, environ)

    def winner(present, value_of, default):
        for source in ("flag", "file", "env"):
            if source in present:
                return value_of(source)
        return default

    assert config.api_port == winner(values, values.get, 8000)
    assert config.log_level == winner(level_sources, levels.get, "info")


def test_toml_peers_list_and_env_peers_string(tmp_path):
    assert load_config({}, None, {"LEDGER_PEERS": "a.example:9001, 10.0.0.2:9002"}).peers == ("a.example:9001", "10.0.0.2:9002")
    file = toml_file(tmp_path, 'peers = ["127.0.0.1:9001", "127.0.0.1:9002"]\n')
    assert load_config({}, file, {"LEDGER_PEERS": "x:1"}).peers == ("127.0.0.1:9001", "127.0.0.1:9002")


def test_values_are_normalised(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config({"data_dir": "~/chain", "genesis": "~/g.json", "log_level": "DEBUG"}, None, {"LEDGER_MINE": "off"})
    assert config.data_dir == tmp_path / "chain"
    assert config.genesis == tmp_path / "g.json"
    assert config.log_level == "debug"
    assert config.mine is False
    assert load_config({}, None, {"LEDGER_API_PORT": " 8001 "}).api_port == 8001
    assert load_config({}, None, {"LEDGER_API_HOST": "::1"}).api_url == "http://[::1]:8000"


def test_http_limits_read_as_numbers_from_every_source(tmp_path):
    file = toml_file(tmp_path, "api_header_timeout = 4\napi_max_connections = 3000\n")
    config = load_config({"api_body_timeout": "2.5"}, file, NO_ENV)
    assert (config.api_header_timeout, config.api_body_timeout, config.api_max_connections) == (4.0, 2.5, 3000)
    assert isinstance(config.api_header_timeout, float)
    assert load_config({}, None, NO_ENV).api_max_connections > 1000  # room for 1,000 slowloris sockets and more


def test_the_config_is_immutable():
    config = load_config({}, None, NO_ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.api_port = 1  # type: ignore[misc]


# --- errors name the setting and the source --------------------------------------------------

BAD_VALUES = [
    # (setting, bad value as text, what the message says)
    ("api_port", "eighty", "not an integer"),
    ("api_port", "65536", "0 to 65535"),
    ("api_port", "-1", "0 to 65535"),
    ("p2p_port", "1.5", "not an integer"),
    ("max_batch", "0", "1 to 100000"),
    ("max_body_bytes", "10", "1024"),
    ("mempool_capacity", "99999999999", "1 to 10000000"),
    ("api_host", "my-laptop", "IP address"),
    ("p2p_host", "300.1.1.1", "IP address"),
    ("log_level", "loud", "debug"),
    ("db", "mysql://root@db/chain", "sqlite:///"),
    ("peers", "localhost", "host:port"),
    ("peers", "a:1,b:99999", "'b:99999'"),
    ("mine", "maybe", "true or false"),
    ("max_inbound", "-1", "0 to 1000"),
    ("p2p_frame_memory", "1048576", "33554432"),  # less than one frame of the largest size
    ("p2p_frame_timeout_ms", "50", "100 to 600000"),
    ("p2p_frame_min_rate", "0", "1024"),
    ("api_header_timeout", "soon", "not a number"),
    ("api_header_timeout", "0", "0.1 to 3600"),
    ("api_body_timeout", "nan", "0.1 to 3600"),
    ("api_body_timeout", "inf", "0.1 to 3600"),
    ("api_max_connections", "0", "1 to 1000000"),
]


@pytest.mark.parametrize("name, text, says", BAD_VALUES)
def test_bad_environment_value_names_setting_and_variable(name, text, says):
    variable = f"LEDGER_{name.upper()}"
    with pytest.raises(ConfigError) as raised:
        load_config({}, None, {variable: text})
    message = str(raised.value)
    assert message.startswith(f"{name} (from {variable})"), message
    assert says in message


@pytest.mark.parametrize("name, text, says", BAD_VALUES)
def test_bad_flag_value_names_setting_and_command_line(name, text, says):
    with pytest.raises(ConfigError) as raised:
        load_config({name: text}, None, NO_ENV)
    message = str(raised.value)
    assert message.startswith(f"{name} (from command line)"), message
    assert says in message


@pytest.mark.parametrize("line, name, says", [
    ("api_port = 70000", "api_port", "0 to 65535"),
    ("api_port = true", "api_port", "integer"),  # a TOML boolean is not a port
    ("api_port = 80.0", "api_port", "integer"),
    ("api_port = 'http'", "api_port", "not an integer"),
    ("log_level = 3", "log_level", "a string"),
    ("data_dir = ['a']", "data_dir", "a string"),
    ("peers = 9001", "peers", "host:port"),
    ("peers = ['ok:1', 2]", "peers", "host:port"),
    ("mine = 'sometimes'", "mine", "true or false"),
    ("db = 'oracle://x'", "db", "postgresql"),
    ("api_host = 'example.com'", "api_host", "IP address"),
    ("api_header_timeout = true", "api_header_timeout", "seconds"),
    ("api_body_timeout = '30s'", "api_body_timeout", "not a number"),
])
def test_bad_file_value_names_setting_and_file(tmp_path, line, name, says):
    file = toml_file(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config({}, file, NO_ENV)
    message = str(raised.value)
    assert message.startswith(f"{name} (from {file})"), message
    assert says in message


def test_a_flag_error_is_reported_even_when_lower_sources_are_fine(tmp_path):
    file = toml_file(tmp_path, "api_port = 8001\n")
    with pytest.raises(ConfigError, match=r"^api_port \(from command line\)"):
        load_config({"api_port": 99999}, file, {"LEDGER_API_PORT": "8002"})


@pytest.mark.parametrize("text, unknown", [
    ("api-port = 8001\n", "api-port"),  # the flag's spelling, not the setting's
    ("apiport = 8001\napi_port = 8002\n", "apiport"),
    ("[api]\nport = 8001\n", "api"),
    ("API_PORT = 8001\n", "API_PORT"),
])
def test_unknown_file_keys_are_refused(tmp_path, text, unknown):
    file = toml_file(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config({}, file, NO_ENV)
    message = str(raised.value)
    assert str(file) in message and "unknown" in message and unknown in message


def test_unknown_flag_name_is_refused():
    with pytest.raises(ConfigError, match="frobnicate"):
        load_config({"frobnicate": 1}, None, NO_ENV)


def test_file_that_is_missing_unreadable_or_not_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.toml"):
        load_config({}, tmp_path / "missing.toml", NO_ENV)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, tmp_path, NO_ENV)  # a directory
    broken = toml_file(tmp_path, "api_port = \n", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_config({}, broken, NO_ENV)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('log_level = "d\xe9bug"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not valid TOML"):
        load_config({}, latin1, NO_ENV)

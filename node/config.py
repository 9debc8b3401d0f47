"""Node configuration: command-line flags > TOML file > LEDGER_* environment > defaults.

Every setting has one name, used in all three places: `--api-port` on the command
line, `api_port` in the TOML file, `LEDGER_API_PORT` in the environment.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = Path("data/node")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    p2p_host: str = "127.0.0.1"
    p2p_port: int = 9000
    db: str = ""  # empty: sqlite:///<data_dir>/chain.db
    genesis: Path | None = None  # empty: <data_dir>/genesis.json, written as a dev genesis when missing
    # About 1.1 KB a pending transaction: the mempool's bound is most of the node's worst-case
    # memory, and 40,000 is about three seconds of what one node commits.
    mempool_capacity: int = 40_000
    mempool_per_sender: int = 10_000
    max_batch: int = 1_000
    max_body_bytes: int = 8 * 1024 * 1024
    api_header_timeout: float = 10.0  # s from a request's start to the end of its headers
    api_body_timeout: float = 30.0  # s from the end of the headers to the end of the body
    api_max_connections: int = 2048  # concurrent API connections; beyond: 503
    log_level: str = "info"
    peers: tuple[str, ...] = ()  # static peers, "host:port"
    max_peers: int = 16  # peers we dial (static peers are dialled whatever the count)
    max_inbound: int = 0  # peers that dial us; 0: as many as max_peers
    p2p_frame_memory: int = 64 * 1024 * 1024  # bytes that unfinished large frames hold, all peers together
    p2p_frame_timeout_ms: int = 5_000  # a frame's wait for that memory, and its slack beyond the rate below
    p2p_frame_min_rate: int = 1024 * 1024  # bytes a second a frame's body must keep up
    mine: bool = True  # proof-of-work: whether this node mines
    miner_address: str = ""  # proof-of-work: who gets rewards and fees; empty: the node key's address
    stall_seconds: int = 30  # /healthz answers 503 when the head stood still this long with work to do
    block_time: int = 0  # solo: seal a block every this many seconds, empty or not; 0: when transactions wait
    signature_workers: int = -1  # processes that check signatures beside the loop; -1: one fewer than the cores

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'chain.db'}"

    @property
    def genesis_path(self) -> Path:
        return self.genesis or self.data_dir / "genesis.json"

    @property
    def api_url(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{host}:{self.api_port}"


_NAMES = {f.name: f for f in fields(NodeConfig)}
_INT_BOUNDS = {
    "api_port": (0, 65535),
    "p2p_port": (0, 65535),
    "mempool_capacity": (1, 10_000_000),
    "mempool_per_sender": (1, 10_000_000),
    "max_batch": (1, 100_000),
    "max_body_bytes": (1024, 1 << 30),
    "max_peers": (1, 1000),
    "stall_seconds": (1, 86_400),
    "max_inbound": (0, 1000),
    "p2p_frame_memory": (32 * 1024 * 1024, 1 << 36),  # at least one frame of the largest size
    "p2p_frame_timeout_ms": (100, 600_000),
    "p2p_frame_min_rate": (1024, 1 << 30),
    "block_time": (0, 86_400),
    "signature_workers": (-1, 64),
    "api_max_connections": (1, 1_000_000),
}
_FLOAT_BOUNDS = {
    "api_header_timeout": (0.1, 3600.0),
    "api_body_timeout": (0.1, 3600.0),
}
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _coerce(name: str, value: Any, source: str) -> Any:
    where = f"{name} (from {source})"
    if name in _INT_BOUNDS:
        low, high = _INT_BOUNDS[name]
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: '{value}' is not an integer") from None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{where}: an integer from {low} to {high}")
        return value
    if name in _FLOAT_BOUNDS:
        low, high = _FLOAT_BOUNDS[name]
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: '{value}' is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{where}: seconds from {low:g} to {high:g}")
        return float(value)
    if name == "peers":
        return _peer_list(value, where)
    if name == "mine":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.strip().lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: true or false")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: a string")
    if name == "genesis":
        return Path(value).expanduser() if value else None
    if name == "data_dir":
        return Path(value).expanduser()
    if name in ("api_host", "p2p_host"):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if value != "localhost":
                raise ConfigError(f"{where}: an IP address to bind, e.g. 127.0.0.1 or 0.0.0.0") from None
        return value
    if name == "log_level":
        if value.lower() not in _LOG_LEVELS:
            raise ConfigError(f"{where}: one of {', '.join(_LOG_LEVELS)}")
        return value.lower()
    if name == "db" and value and not value.startswith(("sqlite://", "postgresql")):
        raise ConfigError(f"{where}: a sqlite:/// or postgresql+psycopg:// URL")
    return value


def _peer_list(value: Any, where: str) -> tuple[str, ...]:
    """Peers as "host:port" strings, from a comma-separated string or a TOML list."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(f"{where}: a list of host:port")
    for item in items:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{where}: '{item}' is not host:port")
    return tuple(items)


def load_config(
    flags: Mapping[str, Any], config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Merge the sources; `flags` holds only the options given on the command line."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in _NAMES:
        raw = environ.get(f"LEDGER_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"LEDGER_{name.upper()}")
    if config_file is not None:
        try:
            table = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from None
        unknown = sorted(set(table) - set(_NAMES))
        if unknown:
            raise ConfigError(f"{config_file}: unknown settings {', '.join(unknown)}")
        for name, value in table.items():
            values[name] = _coerce(name, value, str(config_file))
    for name, value in flags.items():
        if name not in _NAMES:
            raise ConfigError(f"unknown option {name}")
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    return NodeConfig(**values)

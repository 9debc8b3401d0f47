"""`ledger init` and `ledger testnet`: files for an N-node network, and running it locally.

`write_network` lays out DIR/genesis.json and DIR/node<i>/{node_key, config.toml}; every
node lists the others as static peers.  `run_testnet` starts one `ledger node` process
per config, waits until they are up and connected, prints where everything is, streams
a status line, and stops every child on Ctrl-C (children also get SIGTERM if this
process dies, through PR_SET_PDEATHSIG, so none is orphaned).
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import ENGINES, Genesis, GenesisStake, InvalidGenesis
from ledger.hdkeys import dev_keys
from node.keys import NODE_KEY_FILE, write_private_file
from node.lifetime import die_with_parent

CONSENSUS = ENGINES  # every engine the design names is built
TESTNET_CHAIN_ID = "ledger-testnet"
DEV_BALANCE = 1_000_000 * 10**9
POS_STAKE = 32 * 10**9  # each testnet validator's genesis stake: 32 coins


class TestnetError(Exception):
    pass


@dataclass(frozen=True)
class NodeLayout:
    index: int
    directory: Path
    config: Path
    api_url: str
    p2p_port: int


def engine_params(consensus: str, authority: PrivateKey, validators: list[PrivateKey] | None = None) -> dict:
    if consensus == "solo":
        return {"authority": authority.public_key.hex(), "block_interval_ms": 0}
    if consensus == "bft":
        # Every node of the testnet is a validator of equal power.
        return {"validators": [{"public_key": key.public_key.hex(), "power": 10} for key in validators or [authority]]}
    if consensus == "raft":
        # Every node of the testnet is a member.  etcd's defaults: a leader that goes silent
        # is replaced after 1-2 s; heartbeats every 100 ms keep followers from campaigning.
        return {"members": [key.public_key.hex() for key in validators or [authority]],
                "election_timeout_ms": 1000, "heartbeat_ms": 100}
    if consensus == "pos":
        # The validators are genesis stakes (make_genesis); 1 s slots, 8-slot epochs: a block
        # is final about two epochs (16 s) after it is made.
        return {"slot_ms": 1000, "slots_per_epoch": 8}
    # Proof of work tuned for a laptop: blocks every ~2 s on a few local miners.  The first
    # blocks are easier (a quarter of the work: about 0.5 s at the ~2 MH/s of one Python
    # miner), so a testnet whose miners share the cores with nodes still starting has its
    # first block within a second or two; the retargeting raises the work toward 2 s a block
    # (blocks average ~1.1 s over the first five, ~1.7 s by block 30, ~1.9 s by block 50).
    return {
        "target_block_ms": 2000,
        "initial_target": "1e10c6f7",  # 2**256 / 1,000,000 hashes
        "retarget_window": 45,
        "max_step": 2,
        "finality_depth": 6,
        "max_future_ms": 15000,
        "max_reorg_depth": 100,
    }


def make_genesis(
    consensus: str, authority: PrivateKey, chain_id: str = TESTNET_CHAIN_ID, validators: list[PrivateKey] | None = None,
) -> Genesis:
    return Genesis(
        chain_id=chain_id,
        address_prefix="tst",
        timestamp=int(time.time() * 1000),
        engine=consensus,
        engine_params=engine_params(consensus, authority, validators),
        allocations={address_of(key.public_key): DEV_BALANCE for key in dev_keys(10)},
        block_reward=50 * 10**9 if consensus == "pow" else 0,
        # Proof of stake: every node's key a validator of equal stake, owned by its own address.
        stakes=tuple(GenesisStake(address_of(key.public_key), key.public_key, POS_STAKE)
                     for key in validators or [authority]) if consensus == "pos" else (),
    )


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _command(directory: Path, nodes: int, consensus: str | None = None, *extra: str, kept: tuple[str, ...] = ()) -> str:
    """The launcher command line that would run this request, for an error to suggest;
    `kept` are the request's other options (ports, database), which every suggestion keeps."""
    words = ["ledger testnet", f"--nodes {nodes}"]
    if consensus is not None:
        words.append(f"--consensus {consensus}")
    if directory != Path("testnet"):
        words.append(f"--dir {shlex.quote(str(directory))}")
    return "`" + " ".join(words + list(kept) + list(extra)) + "`"


def _options_kept(api_port: int, p2p_port: int, db: str) -> tuple[str, ...]:
    """The options besides --nodes, --consensus and --dir that differ from their defaults."""
    kept = []
    if api_port != 8000:
        kept.append(f"--api-port {api_port}")
    if p2p_port != 9000:
        kept.append(f"--p2p-port {p2p_port}")
    if db != "sqlite":
        kept.append(f"--db {shlex.quote(db)}")
    return tuple(kept)


def check_request(directory: Path, nodes: int, consensus: str | None, fresh: bool, db: str = "sqlite",
                  api_port: int = 8000, p2p_port: int = 9000) -> str:
    """The engine `ledger testnet` would run for these arguments, or TestnetError saying why
    not and which command would do what was asked (with the same ports and database).  Reads
    only: it runs before --fresh deletes anything, so a refused request leaves the folder as it
    was."""
    kept = _options_kept(api_port, p2p_port, db)
    if not 1 <= nodes <= 64:
        raise TestnetError(f"--nodes is 1 to 64, not {nodes}")
    if consensus is not None and consensus not in CONSENSUS:
        raise TestnetError(f"--consensus is one of {', '.join(CONSENSUS)}, not {consensus!r}; "
                           f"e.g. {_command(directory, nodes, CONSENSUS[-1], kept=kept)}")
    if db != "sqlite" and not db.startswith(("postgresql://", "postgresql+psycopg://")):
        raise TestnetError(f"--db {db!r}: sqlite, or a postgresql:// server URL")
    genesis_file = directory / "genesis.json"
    if fresh or not genesis_file.exists():
        return consensus or "bft"
    try:
        existing = Genesis.load(genesis_file).engine
    except (InvalidGenesis, OSError) as exc:
        raise TestnetError(f"{directory} holds no usable network ({exc}); "
                           f"{_command(directory, nodes, consensus, '--fresh', kept=kept)} deletes it and starts a new one") from None
    if consensus is not None and consensus != existing:
        raise TestnetError(
            f"{directory} holds a {existing} network, not {consensus}: {_command(directory, nodes, kept=kept)} runs it "
            f"as it is, {_command(directory, nodes, consensus, '--fresh', kept=kept)} deletes it and starts a "
            f"{consensus} one, {_command(Path(f'testnet-{consensus}'), nodes, consensus, kept=kept)} keeps it and "
            "starts one beside it")
    held = held_nodes(directory)
    if held > nodes:
        raise TestnetError(f"{directory} holds a network of {held} nodes, not {nodes}: {_command(directory, held, kept=kept)} "
                           f"runs it, {_command(directory, nodes, consensus, '--fresh', kept=kept)} deletes it and starts "
                           f"one of {nodes}")
    return existing  # with more nodes than it holds, the new ones join it (add_nodes)


def held_nodes(directory: Path) -> int:
    """How many nodes a network folder holds (node0, node1, ... with a config)."""
    return sum(1 for i in range(64) if (directory / f"node{i}" / "config.toml").exists())


def write_network(
    out: Path, nodes: int, consensus: str, api_port: int = 8000, p2p_port: int = 9000, db: str = "sqlite",
    docker: bool = False,
) -> list[NodeLayout]:
    """Keys, genesis and one config per node.  With `docker`, configs use container paths and
    service names (node0, node1, ...) and every node listens on 8000/9000 inside its container."""
    if nodes < 1 or nodes > 64:
        raise TestnetError("--nodes is 1 to 64")
    if consensus not in CONSENSUS:
        raise TestnetError(f"--consensus is one of {', '.join(CONSENSUS)}")
    if (out / "genesis.json").exists():
        raise TestnetError(f"{out} already holds a network; remove it or pick another --dir/--out")
    out.mkdir(parents=True, exist_ok=True)
    keys = [PrivateKey.generate() for _ in range(nodes)]
    genesis = make_genesis(consensus, keys[0], validators=keys)
    genesis.save(out / "genesis.json")
    return [_write_node(out, i, key, nodes, consensus, api_port, p2p_port, db, docker) for i, key in enumerate(keys)]


def add_nodes(directory: Path, nodes: int, api_port: int = 8000, p2p_port: int = 9000, db: str = "sqlite") -> list[int]:
    """Grow a network folder to `nodes` nodes: each new one gets a fresh key and a config that
    dials every other node.  They are not validators or members (genesis named those): they
    follow the chain, and under Raft `ledger raft add-member` makes one a member."""
    held = held_nodes(directory)
    genesis = Genesis.load(directory / "genesis.json")
    added = list(range(held, nodes))
    for i in added:
        _write_node(directory, i, PrivateKey.generate(), nodes, genesis.engine, api_port, p2p_port, db, False)
    return added


def _write_node(out: Path, i: int, key: PrivateKey, nodes: int, consensus: str, api_port: int, p2p_port: int,
                db: str, docker: bool) -> NodeLayout:
    directory = out / f"node{i}"
    write_private_file(directory / NODE_KEY_FILE, key.secret.hex() + "\n")
    if docker:
        settings = {
            "data_dir": f"/testnet/node{i}", "genesis": "/testnet/genesis.json",
            "api_host": "0.0.0.0", "api_port": 8000, "p2p_host": "0.0.0.0", "p2p_port": 9000,
            "peers": [f"node{j}:9000" for j in range(nodes) if j != i],
        }
        if db != "sqlite":
            settings["db"] = f"postgresql+psycopg://postgres@postgres:5432/ledger_node{i}"
    else:
        settings = {
            "data_dir": str(directory.resolve()), "genesis": str((out / "genesis.json").resolve()),
            "api_port": api_port + i, "p2p_port": p2p_port + i,
            "peers": [f"127.0.0.1:{p2p_port + j}" for j in range(nodes) if j != i],
        }
        if db != "sqlite":
            settings["db"] = _database_url(db, i)
    if consensus == "pow":
        settings["mine"] = True
    config = directory / "config.toml"
    config.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in settings.items()), encoding="utf-8")
    return NodeLayout(i, directory, config, f"http://127.0.0.1:{api_port + i}", p2p_port + i)


def _database_url(base: str, index: int) -> str:
    import sqlalchemy as sa

    url = sa.make_url(base if "+" in base.split("://")[0] else base.replace("postgresql://", "postgresql+psycopg://", 1))
    return url.set(database=f"ledger_node{index}").render_as_string(hide_password=False)


def ensure_databases(db: str, nodes: int) -> None:
    """With PostgreSQL, one database per node, created when missing."""
    if db == "sqlite":
        return
    import sqlalchemy as sa

    admin_url = sa.make_url(_database_url(db, 0)).set(database="postgres")
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            existing = set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
            for i in range(nodes):
                if f"ledger_node{i}" not in existing:
                    conn.execute(sa.text(f'CREATE DATABASE "ledger_node{i}"'))
    except sa.exc.OperationalError as exc:
        raise TestnetError(f"cannot reach PostgreSQL at {admin_url.render_as_string()}: {exc.orig}") from None
    finally:
        engine.dispose()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_run(count: int, avoid: range = range(0)) -> int:
    """The first of `count` consecutive loopback ports that are free now (node i gets first + i).

    Below the kernel's ephemeral range: the ports the kernel hands out for port 0 and for
    outgoing connections (other nodes' dials) never land there."""
    rng = random.Random()
    high = max(_ephemeral_low(), 21_000) - count
    for _ in range(200):
        first = rng.randrange(20_000, high)
        ports = range(first, first + count)
        if not any(port in avoid for port in ports) and all(_bindable(port) for port in ports):
            return first
    raise TestnetError(f"no run of {count} free ports found on 127.0.0.1")


def start_nodes(layouts: list[NodeLayout]) -> list[subprocess.Popen]:
    processes = []
    for layout in layouts:
        log = open(layout.directory / "node.log", "ab")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "--config", str(layout.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        )
        log.close()
    return processes


def stop_nodes(processes: list[subprocess.Popen], timeout: float = 15.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def node_status(client: httpx.Client, url: str) -> dict | None:
    try:
        response = client.get(f"{url}/v1/node", timeout=2)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def wait_until_connected(
    layouts: list[NodeLayout], processes: list[subprocess.Popen], timeout: float = 60,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[dict] | None:
    """The nodes' statuses once all are up and connected; None if `should_stop()` turns true
    first (Ctrl-C while they start: a stop, not a failure, even if the nodes exit on it)."""
    deadline = time.monotonic() + timeout
    want = min(1, len(layouts) - 1)
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if should_stop():
                return None
            for layout, process in zip(layouts, processes):
                if process.poll() is not None:
                    tail = (layout.directory / "node.log").read_text(errors="replace").strip().splitlines()[-3:]
                    raise TestnetError(f"node{layout.index} exited ({process.returncode}): " + " | ".join(tail))
            statuses = [node_status(client, layout.api_url) for layout in layouts]
            if all(s is not None and s["peers"] >= want for s in statuses):
                if len(layouts) == 1 or all(s["peers"] >= len(layouts) - 1 for s in statuses):
                    return statuses  # type: ignore[return-value]
            time.sleep(0.2)
    raise TestnetError(f"the nodes did not all connect within {timeout:.0f} s; see their node.log files")

"""The `ledger` command: run a node, upgrade its database."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Optional

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape

from consensus.registry import EngineNotBuilt, NotForThisEngine
from ledger.address import address_of
from ledger.genesis import Genesis, InvalidGenesis, dev_genesis
from ledger.hdkeys import DEV_MNEMONIC, account_path, dev_keys
from ledger.store import ChainStore, ChainStoreError, GenesisMismatch
import migrations
from node import __version__
from node.config import ConfigError, NodeConfig, load_config
from node.keys import NodeKeyError, load_or_create_node_key
from node.compare_cli import add_compare_command
from node.raft_cli import add_raft_commands

app = typer.Typer(
    name="ledger", help="Run and manage a ledger node.", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Chain database commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

# soft_wrap: lines are never broken at the terminal width, so an error stays on one line
# and keys, addresses and URLs stay whole for copying.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EXIT_USAGE = 2
EXIT_RUNTIME = 1


def print_error(message: str) -> None:
    # One line, whatever the message holds (driver errors span several), and its text is
    # never read as markup: a path like "data/[old]" is printed as it is.
    one_line = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    errors.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print_error(message)
    raise typer.Exit(code)


def _shown_url(url: str) -> str:
    """A database URL fit for the terminal: without its password."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def _database_error(exc: Exception) -> str:
    """The driver's own words (SQLAlchemy wraps them with a link to its docs)."""
    return str(getattr(exc, "orig", None) or exc)


def _config(flags: dict, config_file: Optional[Path]) -> NodeConfig:
    try:
        return load_config(flags, config_file)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


DATA_DIR = typer.Option(None, "--data-dir", help="Where the node keeps its key, genesis and SQLite chain [default: data/node]")
DB = typer.Option(None, "--db", help="Database URL: sqlite:///path.db or postgresql+psycopg://user@host/db [default: sqlite in the data dir]")
CONFIG = typer.Option(None, "--config", envvar="LEDGER_CONFIG", help="TOML file of settings (flags win over it, it wins over LEDGER_* variables)")


def _load_genesis(config: NodeConfig, node_public_key: bytes) -> tuple[Genesis, bool]:
    """The configured genesis; on a fresh data dir without one, a new dev genesis (True)."""
    path = config.genesis_path
    if config.genesis is None and not path.exists():
        genesis = dev_genesis(node_public_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        genesis.save(path)
        return genesis, True
    return Genesis.load(path), False


@app.command()
def node(
    data_dir: Optional[Path] = DATA_DIR,
    api_host: Optional[str] = typer.Option(None, "--api-host", help="Address the REST API binds [default: 127.0.0.1]"),
    api_port: Optional[int] = typer.Option(None, "--api-port", help="REST API port [default: 8000]"),
    p2p_host: Optional[str] = typer.Option(None, "--p2p-host", help="Address the peer port binds [default: 127.0.0.1]"),
    p2p_port: Optional[int] = typer.Option(None, "--p2p-port", help="Peer port [default: 9000; 0 picks a free one]"),
    peers: Optional[str] = typer.Option(None, "--peers", help="Static peers, host:port,host:port"),
    max_peers: Optional[int] = typer.Option(None, "--max-peers", help="Most peers to dial; as many may dial in (max_inbound) [default: 16]"),
    mine: Optional[bool] = typer.Option(None, "--mine/--no-mine", help="Proof of work: mine blocks [default: mine]"),
    miner_address: Optional[str] = typer.Option(None, "--miner-address", help="Proof of work: address for rewards and fees [default: the node key's]"),
    db: Optional[str] = DB,
    genesis: Optional[Path] = typer.Option(None, "--genesis", help="Genesis JSON file [default: <data-dir>/genesis.json, a dev genesis is written there when missing]"),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="critical, error, warning, info or debug"),
    block_time: Optional[int] = typer.Option(None, "--block-time", help="Dev chain (solo): seal a block every S seconds, empty or not, instead of when transactions wait [default: 0, on demand]"),
    load_state: Optional[Path] = typer.Option(None, "--load-state", help="Fill a fresh data folder from a file of `ledger state dump` (every block checked from genesis) and run on it"),
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Run one node: the chain store, the consensus engine and the REST API."""
    flags = dict(data_dir=data_dir, api_host=api_host, api_port=api_port, p2p_host=p2p_host, p2p_port=p2p_port,
                 peers=peers, max_peers=max_peers, mine=mine, miner_address=miner_address, db=db,
                 genesis=str(genesis) if genesis else None, log_level=log_level, block_time=block_time)
    config = _config({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}, config_file)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    state_header = _state_header(load_state) if load_state is not None else None  # a bad file creates no folder
    try:
        folder_is_new = not config.data_dir.exists()
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Held until the process ends: a second node, a dump or a load on this folder is refused.
        _data_dir_lock = _lock_data_dir(config.data_dir)  # noqa: F841
        if load_state is not None:
            _load_state(load_state, state_header, config, folder_is_new)
        node_key = load_or_create_node_key(config.data_dir)
        genesis_data, created = _load_genesis(config, node_key.public_key)
    except NodeKeyError as exc:
        fail(str(exc))
    except InvalidGenesis as exc:
        path = str(config.genesis_path)
        fail(str(exc) if path in str(exc) else f"genesis {path}: {exc}")
    except OSError as exc:
        fail(f"cannot use data dir {config.data_dir}: {exc.strerror}")

    from node.runtime import Node
    from node.server import bind_socket, serve

    try:
        api_socket = bind_socket(config.api_host, config.api_port)
    except OSError as exc:
        fail(f"cannot listen on {config.api_host}:{config.api_port}: {exc.strerror}; "
             "is another node running? Pick another port with --api-port.", EXIT_RUNTIME)
    from node.p2p.tcp import P2PSettings, TcpNetwork

    p2p_settings = P2PSettings(
        max_inbound=config.max_inbound or None, frame_memory=config.p2p_frame_memory,
        frame_timeout=config.p2p_frame_timeout_ms / 1000, frame_min_rate=float(config.p2p_frame_min_rate),
    )
    network = TcpNetwork(
        node_key, genesis_data.chain_id, genesis_data.hash, config.p2p_host, config.p2p_port,
        list(config.peers), max_peers=config.max_peers, settings=p2p_settings,
    )
    try:
        runtime = Node(config, genesis_data, node_key, network)
    except (EngineNotBuilt, NotForThisEngine) as exc:
        fail(str(exc))
    except (ChainStoreError, sa.exc.SQLAlchemyError) as exc:  # a URL the driver refuses, or a missing driver
        fail(f"cannot open the database {_shown_url(config.db_url)}: {_database_error(exc)}", EXIT_RUNTIME)
    except ValueError as exc:
        fail(f"genesis {config.genesis_path}: {exc}")
    except OSError as exc:  # the folder of a SQLite file cannot be created
        fail(f"cannot open the database {_shown_url(config.db_url)}: {exc.strerror or exc}", EXIT_RUNTIME)

    def ready() -> None:
        _print_banner(config, runtime, created)

    try:
        asyncio.run(serve(runtime, config, api_socket, on_ready=ready))
    except GenesisMismatch as exc:
        fail(str(exc))
    except (ChainStoreError, sa.exc.SQLAlchemyError) as exc:  # the database is unreachable or unusable at start
        logging.getLogger("ledger.node").debug("opening the database failed", exc_info=True)
        fail(f"cannot open the database {_shown_url(config.db_url)}: {_database_error(exc)}", EXIT_RUNTIME)
    except OSError as exc:
        fail(f"cannot listen for peers on {config.p2p_host}:{config.p2p_port}: {exc.strerror}; "
             "is another node running? Pick another port with --p2p-port.", EXIT_RUNTIME)
    except KeyboardInterrupt:
        pass
    if runtime.failure is not None:
        fail(f"the node stopped: {runtime.failure}", EXIT_RUNTIME)


def _lock_data_dir(data_dir: Path):
    from node.datalock import DataDirInUse, DataDirLock

    try:
        return DataDirLock(data_dir).acquire()
    except DataDirInUse as exc:
        fail(str(exc), EXIT_RUNTIME)
    except OSError as exc:
        fail(f"cannot use data dir {data_dir}: {exc.strerror}")


def _state_header(path: Path):
    from node.state_file import StateFileError, read_header

    try:
        return read_header(path)
    except StateFileError as exc:
        fail(str(exc))


def _load_state(path: Path, header, config: NodeConfig, folder_is_new: bool) -> None:
    import shutil

    from node.state_file import StateFileError, load_into

    console.print(f"loading {path}: chain {header.genesis.chain_id}, {header.head_height} blocks, "
                  "each checked from genesis...", highlight=False)
    try:
        height = load_into(path, config, header)
    except (StateFileError, ChainStoreError, sa.exc.SQLAlchemyError, OSError) as exc:
        if folder_is_new:  # nothing of this run stays behind
            shutil.rmtree(config.data_dir, ignore_errors=True)
        if isinstance(exc, StateFileError):
            fail(str(exc))
        detail = _database_error(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
        fail(f"cannot load {path} into {_shown_url(config.db_url)}: {detail}", EXIT_RUNTIME)
    console.print(f"loaded {height} blocks into {escape(_shown_url(config.db_url))}", highlight=False)


def _print_banner(config: NodeConfig, runtime, created: bool) -> None:
    genesis = runtime.genesis
    console.print(f"[bold]Ledger node {__version__}[/]  chain [cyan]{genesis.chain_id}[/]  engine [cyan]{runtime.engine.name}[/]  "
                  f"height {runtime.head.height}" + ("  (new dev chain)" if created else ""), highlight=False)
    console.print(f"  REST API   {config.api_url}/v1      OpenAPI  {config.api_url}/docs", highlight=False)
    console.print(f"  Explorer   {config.api_url}/explorer", highlight=False)
    console.print(f"  Database   {escape(_shown_url(config.db_url))}", highlight=False)
    console.print(f"  Data dir   {escape(str(config.data_dir))}", highlight=False)
    _print_dev_accounts(genesis, lambda account: runtime.state.get(account)[0])
    console.print("Ctrl-C stops the node.", style="dim")
    sys.stdout.flush()


def _print_dev_accounts(genesis: Genesis, balance_of) -> None:
    funded = [(i, key) for i, key in enumerate(dev_keys(10)) if address_of(key.public_key) in genesis.allocations]
    if not funded:
        return
    # Plain lines, never truncated: people copy these keys.
    unit = 10 ** genesis.denomination.decimals
    console.print(f"\n[bold]Dev accounts[/] (mnemonic \"{DEV_MNEMONIC}\", path {account_path(0)[:-1]}i)", highlight=False)
    console.print("[yellow]These keys are public: never use them for anything of value.[/]")
    for index, key in funded:
        account = address_of(key.public_key)
        whole, fraction = divmod(balance_of(account), unit)
        amount = f"{whole:,}" + (f".{fraction:0{genesis.denomination.decimals}d}".rstrip("0") if fraction else "")
        console.print(f"  ({index}) {genesis.address(account)}  {amount} {genesis.denomination.name}", highlight=False, soft_wrap=True)
    console.print("\n[bold]Private keys[/]")
    for index, key in funded:
        console.print(f"  ({index}) {key.secret.hex()}", highlight=False, soft_wrap=True)


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Optional[Path] = DATA_DIR,
    db: Optional[str] = DB,
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Bring the chain database to the current schema (a node also does this on start)."""
    config = _config({"data_dir": str(data_dir) if data_dir else None, "db": db}, config_file)
    # No mkdir of the data dir here: the store creates a SQLite file's folder itself, and a
    # --db elsewhere must not leave an empty data/node behind.
    try:
        store = ChainStore(config.db_url)
        migrations.upgrade(store)
        store.close()
    except Exception as exc:  # the database driver's errors vary by backend; say which URL failed
        fail(f"cannot upgrade {_shown_url(config.db_url)}: {_database_error(exc)}", EXIT_RUNTIME)
    console.print(f"{escape(_shown_url(config.db_url))}: schema is current", highlight=False)


state_app = typer.Typer(
    no_args_is_help=True,
    help="The whole chain as one portable file, like anvil's --dump-state and --load-state: "
         "`ledger state dump FILE` writes a stopped node's chain; `ledger node --load-state FILE` starts a node "
         "on a fresh data folder from it, after checking every block from genesis.\n\n"
         "The file is gzip-compressed JSON Lines, format ledger-state version 1: a header line (format, version, "
         "genesis, genesis_hash, head height and hash; node_key only with --include-node-key), one line per block "
         "from height 1 (height, block and certificate: canonical encodings in hex), one line per account "
         "(address, balance, nonce), and a closing line (end, blocks, accounts, sha256) whose sha256 covers every "
         "line before it, uncompressed. See docs/protocol.md, \"State files\".",
)
app.add_typer(state_app, name="state")


@state_app.command("dump")
def state_dump(
    file: Path = typer.Argument(..., help="The file to write (must not exist)"),
    data_dir: Optional[Path] = DATA_DIR,
    db: Optional[str] = DB,
    genesis: Optional[Path] = typer.Option(None, "--genesis", help="Genesis JSON file [default: <data-dir>/genesis.json]"),
    include_node_key: bool = typer.Option(False, "--include-node-key", metavar="", help="Dev chain (solo): also write the data folder's node key, the chain's authority, so a node loaded from the file keeps sealing blocks. The file is then a secret"),
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Write a stopped node's whole chain (blocks, certificates, accounts) to FILE."""
    from node.state_file import StateFileError, authority_key, dump_state, open_chain

    config = _config({"data_dir": str(data_dir) if data_dir else None, "db": db,
                      "genesis": str(genesis) if genesis else None}, config_file)
    lock = _lock_data_dir(config.data_dir) if config.data_dir.is_dir() else None
    store = None
    try:
        store, chain_genesis = open_chain(config)
        key = authority_key(config, chain_genesis) if include_node_key else None
        summary = dump_state(store, chain_genesis, file, key)
    except (StateFileError, NodeKeyError) as exc:
        fail(str(exc))
    except (ChainStoreError, sa.exc.SQLAlchemyError) as exc:
        fail(f"cannot read {_shown_url(config.db_url)}: {_database_error(exc)}", EXIT_RUNTIME)
    finally:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()
    console.print(f"wrote {file}: chain {chain_genesis.chain_id}, head {summary.head_height} "
                  f"{summary.head_hash.hex()}, {summary.accounts} accounts, {summary.size:,} bytes"
                  + (" (it holds the node key: keep it private)" if include_node_key else ""), highlight=False)


@app.command()
def init(
    nodes: int = typer.Option(4, "--nodes", help="How many nodes"),
    out: Path = typer.Option(Path("testnet"), "--out", help="Folder to write genesis.json and node<i>/ into"),
    consensus: str = typer.Option("bft", "--consensus", help="bft (every node a validator), pos (every node a validator of equal stake), raft (every node a member), solo or pow"),
    api_port: int = typer.Option(8000, "--api-port", help="API port of node 0; node i gets api-port + i"),
    p2p_port: int = typer.Option(9000, "--p2p-port", help="Peer port of node 0; node i gets p2p-port + i"),
    db: str = typer.Option("sqlite", "--db", help="sqlite, or a postgresql:// server URL (one database per node)"),
    docker: bool = typer.Option(False, "--docker", help="Container paths and service names, for docker-compose", metavar=""),
) -> None:
    """Write keys, a shared genesis and one config per node, for any launcher."""
    from node.testnet import TestnetError, write_network

    _check_ports(api_port, p2p_port, nodes)
    try:
        layouts = write_network(out, nodes, consensus, api_port, p2p_port, db, docker)
    except TestnetError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    console.print(f"wrote {out}/genesis.json and {len(layouts)} node folders "
                  f"(start one with: ledger node --config {layouts[0].config})", highlight=False)


def _check_ports(api_port: int, p2p_port: int, nodes: int) -> None:
    for name, port in (("--api-port", api_port), ("--p2p-port", p2p_port)):
        if not 1 <= port or port + nodes - 1 > 65535:
            fail(f"{name} {port}: node ports must stay within 1-65535")
    if abs(api_port - p2p_port) < nodes:
        fail("--api-port and --p2p-port ranges overlap")


testnet_app = typer.Typer(
    help="Start N local nodes with one command (Ctrl-C stops them all); from another terminal, "
         "`ledger testnet status`, stop/start/kill a node, partition the network and heal it.",
)
app.add_typer(testnet_app, name="testnet")


@testnet_app.callback(invoke_without_command=True)
def testnet(
    ctx: typer.Context,
    nodes: int = typer.Option(4, "--nodes", help="How many nodes"),
    consensus: Optional[str] = typer.Option(None, "--consensus", help="bft (every node a validator), pos (every node a validator of equal stake), raft (every node a member), solo or pow [default: the existing network's, else bft]"),
    directory: Path = typer.Option(Path("testnet"), "--dir", help="Where the nodes keep their data (reused if present)"),
    api_port: int = typer.Option(8000, "--api-port", help="API port of node 0; node i gets api-port + i"),
    p2p_port: int = typer.Option(9000, "--p2p-port", help="Peer port of node 0; node i gets p2p-port + i"),
    db: str = typer.Option("sqlite", "--db", help="sqlite, or a postgresql:// server URL (one database per node, created when missing)"),
    # metavar "": the typer in use would show a flag as "--fresh <bool>", which reads as if it took a value.
    fresh: bool = typer.Option(False, "--fresh", help="Delete --dir first and start a new chain", metavar=""),
) -> None:
    """Start N local nodes with one command; Ctrl-C stops them all.  A node that exits or
    is killed shows as down and the others go on."""
    if ctx.invoked_subcommand is not None:
        return
    import shutil
    import signal as signals
    import time

    import httpx

    from node.fleet import Fleet, describe_exit
    from node.fleet_control import ControlError, ControlServer
    from node.testnet import TestnetError, add_nodes, check_request, ensure_databases, wait_until_connected, write_network

    _check_ports(api_port, p2p_port, nodes)
    try:  # every refusal comes before --fresh deletes anything
        consensus = check_request(directory, nodes, consensus, fresh, db, api_port, p2p_port)
    except TestnetError as exc:
        fail(str(exc))
    if fresh and directory.exists():
        shutil.rmtree(directory)
    try:
        if (directory / "genesis.json").exists():
            for index in add_nodes(directory, nodes, api_port, p2p_port, db):
                member = (f"`ledger raft add-member node{index} --dir {directory}` makes it a member"
                          if consensus == "raft" else "it validates nothing")
                console.print(f"added node{index}: a new node that follows the chain ({member})", highlight=False)
            layouts = _existing_layouts(directory, nodes, api_port, p2p_port)
        else:
            layouts = write_network(directory, nodes, consensus, api_port, p2p_port, db)
        ensure_databases(db, nodes)
    except TestnetError as exc:
        fail(str(exc))
    genesis = Genesis.load(directory / "genesis.json")
    stopping = False

    def request_stop(*_):
        nonlocal stopping
        stopping = True

    signals.signal(signals.SIGTERM, request_stop)
    signals.signal(signals.SIGINT, request_stop)
    started = time.monotonic()
    fleet = Fleet(layouts)
    try:
        control = ControlServer(fleet, directory, on_command=lambda message: console.print(
            f"\ncontrol: {message}", highlight=False))
    except ControlError as exc:
        fail(str(exc), EXIT_RUNTIME)
    fleet.start_all()
    try:
        try:
            statuses = wait_until_connected(layouts, [m.process for m in fleet.members], should_stop=lambda: stopping)
        except TestnetError as exc:
            fail(str(exc), EXIT_RUNTIME)
        if statuses is None:
            return  # stopped while the nodes were starting
        control.start()
        console.print(f"[bold]Testnet[/] {len(layouts)} nodes, chain [cyan]{genesis.chain_id}[/], engine "
                      f"[cyan]{genesis.engine}[/], data in {directory} (up in {time.monotonic() - started:.1f} s)",
                      highlight=False)
        for layout, status in zip(layouts, statuses):
            role = status.get("extra", {}).get("engine", {}).get("role", genesis.engine)
            console.print(f"  node{layout.index}  API {layout.api_url}/v1  explorer {layout.api_url}/explorer  "
                          f"p2p 127.0.0.1:{layout.p2p_port}  {role}  log {layout.directory / 'node.log'}", highlight=False)
        with httpx.Client(timeout=5) as client:
            _print_dev_accounts(genesis, lambda account: _balance(client, layouts[0].api_url, genesis, account))
        console.print(f"Ctrl-C stops every node. From another terminal: ledger testnet status --dir {directory} "
                      "(and stop, start, kill, pause, resume NODE; partition 0,1 2,3; heal; delay NODE MS; loss NODE %)",
                      style="dim", highlight=False)
        while not stopping:
            fleet.lay_faults()  # on nodes that (re)started since a partition, delay or loss was set
            cells = [status_cell(row) for row in fleet.status()]
            console.print("  " + " | ".join(cells), end="\r" if console.is_terminal else "\n", highlight=False)
            for _ in range(10 if console.is_terminal else 50):
                if stopping:
                    break
                for member in fleet.reap():  # said at once, not with the next status line
                    errors.print(f"\n{member.name} is down ({describe_exit(member.exit_code)}); the others go on. "
                                 f"`ledger testnet start {member.name} --dir {directory}` brings it back; "
                                 f"log {member.log}", highlight=False)
                control.serve_pending()
                time.sleep(0.1)
    finally:
        control.close()
        console.print("\nstopping the nodes...", highlight=False)
        fleet.stop_all()
        if sys.exc_info()[0] is None:  # a stop, not a failure
            console.print("all nodes stopped")


def status_cell(row: dict) -> str:
    """One node in the testnet's live status line, from a `Fleet.status()` row."""
    if row["state"] == "down":
        return f"{row['node']} down ({row['exit']})"
    if row["height"] is None:
        return f"{row['node']} {row['state']}"
    # f=: the finalized height, where finality trails the head (pow, pos)
    final = f" f={row['finalized']}" if row["finalized"] not in (None, row["height"]) else ""
    # Raft: who leads, so that a failover shows as it happens
    leading = " leader" if row["role"] == "leader" else ""
    paused = " paused" if row["state"] == "paused" else ""
    return f"{row['node']} h={row['height']}{final} p={row['peers']}{leading}{paused}"


def _control(directory: Path, command: str, *args: str) -> dict:
    from node.fleet_control import ControlError, send

    try:
        answer = send(directory, command, list(args))
    except ControlError as exc:
        fail(str(exc), EXIT_RUNTIME)
    if not answer.get("ok"):
        fail(answer.get("message", "the launcher refused the command"))
    return answer


TESTNET_DIR = typer.Option(Path("testnet"), "--dir", help="The running testnet's folder")


@testnet_app.command("status")
def testnet_status(directory: Path = TESTNET_DIR) -> None:
    """Each node of the running testnet: state, height, finalized height, peers, role, faults."""
    rows = _control(directory, "status")["rows"]
    header = ("node", "state", "height", "finalized", "peers", "role", "pid/exit", "faults")
    lines = [header]
    for row in rows:
        faults = row["faults"]
        laid = ", ".join(part for part in (
            f"cut off from {len(faults['blocked'])}" if faults["blocked"] else "",
            f"delay {faults['delay_ms']} ms" if faults["delay_ms"] else "",
            f"loss {faults['loss_percent']:g}%" if faults["loss_percent"] else "") if part) or "-"
        lines.append((row["node"], row["state"], *("-" if row[k] is None else str(row[k]) for k in ("height", "finalized", "peers", "role")),
                      str(row["pid"]) if row["state"] != "down" else row["exit"], laid))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:  # plain columns: whole in any terminal width, and easy to grep
        console.print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(), highlight=False)
    for row in rows:
        if row["state"] == "down":
            console.print(f"{row['node']} log: {row['log']}", highlight=False)


def _node_command(name: str, doc: str) -> None:
    def command(node: str = typer.Argument(..., help="node0, node1, ... (or 0, 1, ...)"), directory: Path = TESTNET_DIR) -> None:
        console.print(_control(directory, name, node)["message"], highlight=False)

    command.__doc__ = doc
    testnet_app.command(name)(command)


for _name, _doc in (
    ("start", "Start a node that is down."),
    ("stop", "Stop a node (SIGTERM: it finishes its block and exits)."),
    ("restart", "Stop a node and start it again."),
    ("kill", "Kill a node (SIGKILL: the crash case)."),
    ("pause", "Freeze a node (SIGSTOP: a stalled process its peers still hold connections to)."),
    ("resume", "Unfreeze a paused node (SIGCONT)."),
):
    _node_command(_name, _doc)


@testnet_app.command("partition")
def testnet_partition(
    groups: list[str] = typer.Argument(..., help="Two groups or more of node numbers, e.g. 0,1 2,3"),
    directory: Path = TESTNET_DIR,
) -> None:
    """Split the network: each node talks only to the nodes of its own group until `heal`."""
    console.print(_control(directory, "partition", *groups)["message"], highlight=False)


@testnet_app.command("heal")
def testnet_heal(directory: Path = TESTNET_DIR) -> None:
    """Undo partitions, delay and loss on every node."""
    console.print(_control(directory, "heal")["message"], highlight=False)


@testnet_app.command("delay")
def testnet_delay(node: str = typer.Argument(...), milliseconds: str = typer.Argument(..., metavar="MS"),
                  directory: Path = TESTNET_DIR) -> None:
    """Hold every message a node sends its peers for MS milliseconds (0 removes it)."""
    console.print(_control(directory, "delay", node, milliseconds)["message"], highlight=False)


@testnet_app.command("loss")
def testnet_loss(node: str = typer.Argument(...), percent: str = typer.Argument(..., metavar="PERCENT"),
                 directory: Path = TESTNET_DIR) -> None:
    """Drop PERCENT of the messages a node sends its peers, at random (0 removes it)."""
    console.print(_control(directory, "loss", node, percent)["message"], highlight=False)


def _balance(client, api_url: str, genesis: Genesis, account: bytes) -> int:
    """An account's balance now, as node 0 serves it (a second start shows what was spent);
    the genesis allocation if node 0 does not answer."""
    import httpx

    try:
        answer = client.get(f"{api_url}/v1/accounts/{genesis.address(account)}")
        if answer.status_code == 200:
            return int(answer.json()["balance"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return genesis.allocations.get(account, 0)


def _existing_layouts(directory: Path, nodes: int, api_port: int, p2p_port: int):
    from node.testnet import NodeLayout, TestnetError

    layouts = []
    for i in range(nodes):
        config = directory / f"node{i}" / "config.toml"
        if not config.exists():
            raise TestnetError(f"{directory} holds another network ({config} is missing); use --fresh or another --dir")
        layouts.append(NodeLayout(i, config.parent, config, f"http://127.0.0.1:{api_port + i}", p2p_port + i))
    return layouts


@app.command()
def version() -> None:
    """Print the node version."""
    console.print(__version__)


add_raft_commands(app, fail, lambda line: console.print(line, highlight=False), EXIT_RUNTIME)
add_compare_command(app, fail)


# Usage mistakes (an unknown flag, a value of the wrong type) come from the click that
# typer runs on, its own vendored copy in recent typer: found through a public subclass.
_UsageError = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            context = getattr(exc, "ctx", None)
            print_error(exc.format_message() + (f" (see '{context.command_path} --help')" if context else ""))
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

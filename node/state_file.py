"""A chain's whole state as one portable file: `ledger state dump` and `ledger node --load-state`.

The file is gzip-compressed JSON Lines (docs/protocol.md, "State files"): a header line
(format, version, genesis, head), one line per block with its certificate, one line per
account, and a closing line with the counts and the SHA-256 of every line before it.
Lines rather than one JSON document so that neither side holds the chain in memory: a
100,000-block chain is written and read a block at a time, and only the accounts and
the engine's window of recent headers stay in memory while loading.

Loading replays every block from genesis with the node's own block-validity rule
(ledger/validate.py and the engine's header and certificate checks) while the blocks go
into the store inside ONE database transaction (ChainStore.load_chain).  Any fault, be it
a bad block, a truncated file, a wrong checksum, or accounts that differ from the
file's, raises before that transaction commits, so nothing stays written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

import migrations
from consensus.registry import create_engine
from ledger.address import InvalidAddress, decode_address
from ledger.block import Block
from ledger.codec import DecodeError
from ledger.crypto import InvalidKey, PrivateKey
from ledger.evidence import EvidenceRecord
from ledger.genesis import Genesis, InvalidGenesis
from ledger.staking import Stake
from ledger.state import Account, BlockEffects, State
from ledger.store import ChainStore, parse_url
from ledger.validate import BLOCK_REFUSALS, BlockRules, validate_block
from node.config import NodeConfig
from node.keys import NODE_KEY_FILE, load_or_create_node_key, write_private_file

FORMAT = "ledger-state"
VERSION = 1
# Far above any block this chain makes (10,000 transfers of ~200 bytes, in hex), and low
# enough that a hostile file cannot make one line fill the memory.
MAX_LINE = 64 << 20
GZIP_MAGIC = b"\x1f\x8b"
DUMP_BATCH = 500


class StateFileError(ValueError):
    """A state file that cannot be written or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class StateHeader:
    genesis: Genesis
    head_height: int
    head_hash: bytes
    node_key: PrivateKey | None  # a dev chain's authority key, only when dumped with --include-node-key


@dataclass(frozen=True)
class DumpSummary:
    head_height: int
    head_hash: bytes
    accounts: int
    size: int


# --- writing -----------------------------------------------------------------------------------


def _account_json(genesis: Genesis, address: bytes, account: Account) -> dict[str, Any]:
    balance, nonce, stake = account
    line: dict[str, Any] = {"address": genesis.address(address), "balance": balance, "nonce": nonce}
    if stake is not None:
        line["stake"] = list(stake)
    return line


def dump_state(store: ChainStore, genesis: Genesis, path: Path, node_key: PrivateKey | None = None) -> DumpSummary:
    """Write the chain in `store` to `path` (a new file: written beside it, renamed at the end)."""
    head = store.head()
    if head is None:
        raise StateFileError("the database holds no chain")
    stored_genesis = store.block_header(0)
    if stored_genesis is None or stored_genesis.hash != genesis.block().hash:
        raise StateFileError(f"the database holds another chain than the genesis {genesis.chain_id} "
                             f"({genesis.hash.hex()[:16]}...): check --genesis, --data-dir and --db")
    if path.exists():
        raise StateFileError(f"{path} exists already; choose another name or remove it")
    temporary = path.with_name(f".{path.name}.tmp")
    digest = hashlib.sha256()
    try:
        with open(temporary, "xb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
            def line(document: dict[str, Any]) -> None:
                data = json.dumps(document, separators=(",", ":")).encode() + b"\n"
                digest.update(data)
                out.write(data)

            header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "genesis": genesis.to_json(),
                                      "genesis_hash": genesis.hash.hex(),
                                      "head": {"height": head.height, "hash": head.hash.hex()}}
            if node_key is not None:
                header["node_key"] = node_key.secret.hex()
            line(header)
            height = 1
            while height <= head.height:
                encoded = store.encoded_blocks(height, min(DUMP_BATCH, head.height - height + 1), 1 << 62)
                for block in encoded:
                    line({"height": height, "block": block.hex(), "certificate": store.certificate(height).hex()})
                    height += 1
            accounts = store.load_accounts()
            for address in sorted(accounts):
                line(_account_json(genesis, address, accounts[address]))
            closing = {"end": FORMAT, "blocks": head.height, "accounts": len(accounts), "sha256": digest.hexdigest()}
            out.write(json.dumps(closing, separators=(",", ":")).encode() + b"\n")
            out.flush()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, path)
    except FileExistsError:
        raise StateFileError(f"{temporary} exists (a dump that was cut short?): remove it and try again") from None
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StateFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return DumpSummary(head.height, head.hash, len(accounts), path.stat().st_size)


# --- reading -----------------------------------------------------------------------------------


class _Lines:
    """The file's lines as JSON objects; every fault a StateFileError."""

    def __init__(self, path: Path):
        self.path = path
        self.number = 0
        # Every line before the current one: at the closing line, what its sha256 covers.
        self.digest = hashlib.sha256()
        self._current = b""
        try:
            raw = open(path, "rb")
        except FileNotFoundError:
            raise StateFileError(f"no state file {path}") from None
        except OSError as exc:
            raise StateFileError(f"cannot read {path}: {exc.strerror}") from None
        self._raw = raw
        self._stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if raw.read(2) == GZIP_MAGIC else raw
        raw.seek(0)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def fail(self, message: str) -> StateFileError:
        return StateFileError(f"{self.path} line {self.number}: {message}")

    def next(self) -> dict[str, Any] | None:
        """The next line's object, or None at the end of the file."""
        try:
            data = self._stream.readline(MAX_LINE + 1)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise StateFileError(f"{self.path} is truncated or corrupt ({exc}); nothing was loaded") from None
        if not data:
            return None
        self.number += 1
        if len(data) > MAX_LINE:
            raise self.fail(f"longer than {MAX_LINE} bytes: not a state file")
        if not data.endswith(b"\n"):
            raise StateFileError(f"{self.path} is truncated (its last line is cut short); nothing was loaded")
        self.digest.update(self._current)
        self._current = data
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise self.fail("not JSON: the file is damaged or not a state file") from None
        if not isinstance(document, dict):
            raise self.fail("not a JSON object: not a state file")
        return document


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    try:
        data = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not hex") from None
    if size is not None and len(data) != size:
        raise ValueError(f"{what} is not {size} bytes")
    return data


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{what} is not a non-negative integer")
    return value


def _read_header(lines: _Lines) -> StateHeader:
    document = lines.next()
    if document is None:
        raise StateFileError(f"{lines.path} is empty: not a state file")
    if document.get("format") != FORMAT:
        raise lines.fail(f"not a {FORMAT} file (format {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise lines.fail(f"{FORMAT} version {document.get('version')!r}; this node reads version {VERSION}")
    try:
        genesis = Genesis.from_json(document.get("genesis"))
        if genesis.hash.hex() != document.get("genesis_hash"):
            raise ValueError("its genesis does not hash to its genesis_hash")
        head = document["head"]
        key = document.get("node_key")
        return StateHeader(genesis, _int(head["height"], "head height"), _hex(head["hash"], "head hash", 32),
                           PrivateKey.from_hex(key) if key is not None else None)
    except (InvalidGenesis, InvalidKey, ValueError, KeyError, TypeError) as exc:
        raise lines.fail(f"bad header: {exc}") from None


def read_header(path: Path) -> StateHeader:
    """The header alone: what a loader checks before it touches anything."""
    lines = _Lines(path)
    try:
        return _read_header(lines)
    finally:
        lines.close()


def _account_line(document: dict[str, Any], genesis: Genesis) -> tuple[bytes, Account]:
    address = decode_address(document["address"], genesis.address_prefix)
    stake = document.get("stake")
    if stake is not None:
        if not isinstance(stake, list) or len(stake) != 4:
            raise ValueError("stake is not four integers")
        stake = Stake(*(_int(v, "stake") for v in stake))
    return address, (_int(document["balance"], "balance"), _int(document["nonce"], "nonce"), stake)


def replay(path: Path) -> tuple[StateHeader, Iterator[tuple[Block, BlockEffects, bytes, list[EvidenceRecord]]]]:
    """The file's header, and its blocks checked one by one from genesis, each with its effects,
    certificate and evidence, for ChainStore.load_chain.  The iterator raises StateFileError at
    the first fault; its last step checks the closing line and the accounts."""
    lines = _Lines(path)
    try:
        header = _read_header(lines)
    except BaseException:
        lines.close()
        raise
    return header, _blocks(lines, header)


def _blocks(lines: _Lines, header: StateHeader) -> Iterator[tuple[Block, BlockEffects, bytes, list[EvidenceRecord]]]:
    genesis = header.genesis
    engine = create_engine(genesis, None, mine=False)
    rules = BlockRules.of(genesis, engine)
    state = State.from_genesis(genesis)
    recent = deque([genesis.block().header], maxlen=max(1, engine.ancestors_needed))
    accounts: dict[bytes, Account] = {}
    try:
        document = lines.next()
        while document is not None and "block" in document:
            height = recent[-1].height + 1
            try:
                if document.get("height") != height:
                    raise ValueError(f"holds block {document.get('height')!r} where block {height} belongs")
                block = Block.decode(_hex(document["block"], "block"), genesis.max_block_transactions)
                certificate = _hex(document.get("certificate", ""), "certificate")
            except (DecodeError, ValueError, KeyError) as exc:
                raise lines.fail(str(exc)) from None
            try:
                # now_ms None: these blocks were accepted once, the clock does not judge them again.
                effects = validate_block(block, tuple(recent), state.accounts, rules, engine.verify_header, None)
                if engine.import_waits_for_certificate:
                    engine.verify_commit(block.header, certificate)
            except (*BLOCK_REFUSALS, ValueError) as exc:
                reason = getattr(exc, "reason", None)
                raise StateFileError(f"{lines.path}: block {height} is invalid"
                                     + (f" ({reason})" if reason else "") + f": {exc}; nothing was loaded") from None
            state.commit(effects)
            recent.append(block.header)
            yield block, effects, certificate, engine.block_evidence(block.header)
            document = lines.next()
        while document is not None and "address" in document:
            try:
                address, account = _account_line(document, genesis)
            except (InvalidAddress, ValueError, KeyError, TypeError) as exc:
                raise lines.fail(f"bad account: {exc}") from None
            accounts[address] = account
            document = lines.next()
        _check_end(lines, header, document, recent[-1], state, accounts)
    finally:
        lines.close()


def _check_end(lines: _Lines, header: StateHeader, document: dict | None, tip, state: State,
               accounts: dict[bytes, Account]) -> None:
    if document is None:
        raise StateFileError(f"{lines.path} is truncated: it ends after block {tip.height} and "
                             f"{len(accounts)} accounts without its closing line; nothing was loaded")
    if document.get("end") != FORMAT:
        raise lines.fail("neither a block, an account nor the closing line")
    if document.get("sha256") != lines.digest.hexdigest():
        raise StateFileError(f"{lines.path}: the SHA-256 checksum does not match its content "
                             "(the file was altered or damaged); nothing was loaded")
    if lines.next() is not None:
        raise lines.fail("the file goes on after its closing line")
    if tip.height != header.head_height or tip.hash != header.head_hash:
        raise StateFileError(f"{lines.path}: the blocks end at height {tip.height} ({tip.hash.hex()[:16]}...), the header "
                             f"names head {header.head_height} ({header.head_hash.hex()[:16]}...); nothing was loaded")
    if state.accounts != accounts:
        differ = sorted(set(state.accounts) ^ set(accounts) | {a for a in accounts if state.accounts.get(a) != accounts[a]})
        raise StateFileError(f"{lines.path}: the accounts after replaying the blocks differ from the file's "
                             f"({len(differ)} differ, e.g. {header.genesis.address(differ[0])}); nothing was loaded")


# --- a node's data folder ----------------------------------------------------------------------


def _sqlite_file(db_url: str) -> Path | None:
    url = parse_url(db_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def open_chain(config: NodeConfig) -> tuple[ChainStore, Genesis]:
    """The store and genesis of a stopped node, for a dump; never creates a database."""
    sqlite_file = _sqlite_file(config.db_url)
    if sqlite_file is not None and not sqlite_file.exists():
        raise StateFileError(f"no chain database at {sqlite_file}: is --data-dir (or --db) the node's?")
    try:
        genesis = Genesis.load(config.genesis_path)
    except InvalidGenesis as exc:
        raise StateFileError(str(exc)) from None
    store = ChainStore(config.db_url)
    try:
        store.schema_revision()  # reaches the database now, so a bad URL fails here and not mid-dump
    except BaseException:
        store.close()
        raise
    return store, genesis


def load_into(path: Path, config: NodeConfig, header: StateHeader) -> int:
    """Fill the fresh data folder (and database) of `config` from a state file; its height.

    Refused, with nothing written, when the folder already holds a chain, a genesis of
    another chain or another node key than the file's.  On any fault of the file the
    database transaction rolls back and a SQLite file created here is removed again."""
    genesis = header.genesis
    if config.genesis is not None or config.genesis_path.exists():
        try:
            configured = Genesis.load(config.genesis_path)
        except InvalidGenesis as exc:
            raise StateFileError(str(exc)) from None
        if configured.hash != genesis.hash:
            raise StateFileError(
                f"{path} holds chain '{genesis.chain_id}' (genesis {genesis.hash.hex()[:16]}...), but "
                f"{config.genesis_path} is chain '{configured.chain_id}' ({configured.hash.hex()[:16]}...): "
                "load it into a fresh data folder, or name its genesis with --genesis")
    key_path = config.data_dir / NODE_KEY_FILE
    if header.node_key is not None and key_path.exists():
        if load_or_create_node_key(config.data_dir).secret != header.node_key.secret:
            raise StateFileError(f"{path} carries the chain's authority key, and {key_path} holds another node key: "
                                 "load it into a fresh data folder")
    sqlite_file = _sqlite_file(config.db_url)
    if sqlite_file is not None and sqlite_file.exists():
        raise StateFileError(f"{sqlite_file} exists already: --load-state fills a fresh data folder only "
                             "(use another --data-dir, or remove that folder to start over)")
    store = ChainStore(config.db_url)
    try:
        if sqlite_file is None:
            _refuse_existing_chain(store, path)
        migrations.upgrade(store)
        _, blocks = replay(path)
        height = store.load_chain(genesis, blocks)
    except BaseException:
        store.close()
        if sqlite_file is not None:
            for leftover in (sqlite_file, *(sqlite_file.with_name(sqlite_file.name + end) for end in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)
        raise
    store.close()
    if config.genesis is None and not config.genesis_path.exists():
        genesis.save(config.genesis_path)
    if header.node_key is not None and not key_path.exists():
        write_private_file(key_path, header.node_key.secret.hex() + "\n")
    return height


def _refuse_existing_chain(store: ChainStore, path: Path) -> None:
    try:
        head = store.head()
    except sa.exc.SQLAlchemyError:  # no tables yet: an empty database
        return
    if head is not None:
        raise StateFileError(f"the database {store.url.render_as_string(hide_password=True)} holds a chain already "
                             f"(height {head.height}): --load-state {path} fills an empty one only")


def authority_key(config: NodeConfig, genesis: Genesis) -> PrivateKey:
    """The data folder's node key, for a dump that lets the loaded node keep sealing: only a
    dev chain's (solo) authority key, since two nodes signing with one validator key of a
    network engine would sign twice."""
    key_path = config.data_dir / NODE_KEY_FILE
    if genesis.engine != "solo":
        raise StateFileError(f"--include-node-key is for a dev chain (solo); this chain runs {genesis.engine}, "
                             "where two nodes with one key would sign twice")
    if not key_path.exists():
        raise StateFileError(f"--include-node-key: no node key at {key_path}")
    key = load_or_create_node_key(config.data_dir)
    if key.public_key.hex() != genesis.engine_params.get("authority"):
        raise StateFileError(f"--include-node-key: {key_path} is not this chain's authority key, so it cannot seal its blocks")
    return key

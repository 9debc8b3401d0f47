"""The `wallet` command: keys that are safe at rest, transfers a person can follow to finality.

Every command takes --json (one JSON document on stdout, errors included) and ends
with a documented exit code (wallet.errors.ExitCode).  Expected failures are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from api.schemas import InvalidInput, TransactionStatusOut, decode_raw_transaction, transaction_to_json
from ledger.address import InvalidAddress, bech32m_decode, decode_address, encode_address, is_valid_prefix
from ledger.codec import MAX_AMOUNT
from ledger.crypto import InvalidKey, PrivateKey
from ledger.hdkeys import COIN_TYPE
from ledger.transaction import CHAIN_ID_PATTERN, InvalidTransaction, Transaction, new_transfer
from wallet import prompts
from wallet.amounts import format_amount, parse_amount
from wallet.errors import EXIT_CODE_HELP, BadInput, ExitCode, NotFound, WalletError
from wallet.keystore import (
    LIGHT_KDF,
    STANDARD_KDF,
    KeyEntry,
    Keystore,
    ScryptParams,
    check_name,
    default_keystore_dir,
    describe,
    open_sealed,
    reseal,
    write_private_file,
)
from wallet.mnemonics import check_index, key_from_mnemonic, new_mnemonic
from wallet.node import DEFAULT_NODE, Network, Rejected, connect, describe_status, follow, node_errors
from wallet.web3_keystore import decrypt_web3_keystore, is_web3_keystore

DEFAULT_PREFIX = "dev"
DEFAULT_TIMEOUT = 60.0
_MAX_IMPORT_FILE = 64 * 1024

# "\b" keeps click from re-wrapping the lines of the table.
_EXIT_CODES = "\b\n" + "\n".join(f"{int(code)}  {text}" for code, text in EXIT_CODE_HELP.items())

app = typer.Typer(
    name="wallet",
    help=(
        "Hold keys and move funds on a ledger network.\n\n"
        "Keys live encrypted (scrypt + AES-256-GCM) in a keystore folder, one file per key: "
        "--keystore or LEDGER_KEYSTORE, default ~/.local/share/ledger/keystore. "
        "Commands that talk to a node use --node or LEDGER_NODE, default " + DEFAULT_NODE + ". "
        "Passwords come from a prompt, --password-file or LEDGER_WALLET_PASSWORD, never from a flag."
    ),
    epilog="Exit codes:\n\n" + _EXIT_CODES + "\n\nSee docs/wallet.md.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# --- options shared by the commands ----------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (errors too).")]
KeystoreOpt = Annotated[
    Optional[Path],
    typer.Option("--keystore", envvar="LEDGER_KEYSTORE", help="Keystore folder [default: ~/.local/share/ledger/keystore]."),
]
NodeOpt = Annotated[str, typer.Option("--node", envvar="LEDGER_NODE", help="URL of the node's REST API.")]
ChainIdOpt = Annotated[
    Optional[str],
    typer.Option("--chain-id", envvar="LEDGER_CHAIN_ID", help="Refuse to sign unless the node serves this chain."),
]
PasswordFileOpt = Annotated[
    Optional[Path],
    typer.Option("--password-file", help="Read the key's password from the first line of this file ('-': stdin)."),
]
LightOpt = Annotated[
    bool,
    typer.Option("--light", envvar="LEDGER_WALLET_LIGHT_KDF", help="Cheap scrypt (n=2^12): tests and throwaway keys only."),
]
FromOpt = Annotated[
    Optional[str],
    typer.Option("--from", envvar="LEDGER_WALLET_FROM", help="Key name or address [default: the only key]."),
]
PrefixOpt = Annotated[
    Optional[str],
    typer.Option("--prefix", envvar="LEDGER_ADDRESS_PREFIX", help="Address prefix (network) to show addresses with."),
]
# Flag only, no LEDGER_NODE: listing keys must never need a node unless asked to.
LearnPrefixOpt = Annotated[
    Optional[str],
    typer.Option("--node", help="Show (or store) addresses with this node's network prefix, e.g. tst1... on a testnet."),
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.0, help="Seconds --wait waits for finality.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow the transaction until it is final (or --timeout).")]


# --- output ----------------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    # No markup: paths, names and the node's messages are shown as they are, brackets included.
    console = Console(stderr=stderr, highlight=False, markup=False)
    if not console.is_terminal:
        # Piped output: wide enough that ids and addresses are never cut.
        console = Console(stderr=stderr, highlight=False, markup=False, width=200)
    return console


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _emit(json_output: bool, document: dict[str, Any], human: Callable[[Console], None]) -> None:
    if json_output:
        _print_json(document)
    else:
        human(_console())


def _report(error: WalletError, json_output: bool) -> None:
    _console(stderr=True).print(f"error: {error}", markup=False, soft_wrap=True)
    if json_output:
        _print_json({"error": {"reason": error.reason, "message": str(error), "exit_code": int(error.code)}, **error.data})


def _note(message: str) -> None:
    _console(stderr=True).print(message, markup=False, soft_wrap=True)


def _command(function: Callable[..., None]) -> Callable[..., None]:
    """Run a command: expected failures become one line and their exit code, never a traceback."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> None:
        json_output = bool(kwargs.get("json_output"))
        try:
            function(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except WalletError as exc:
            _report(exc, json_output)
            raise typer.Exit(int(exc.code)) from None
        except KeyboardInterrupt:
            _report(WalletError("interrupted", "interrupted"), json_output)
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: still one line, and the way to see more
            if os.environ.get("LEDGER_WALLET_DEBUG"):
                raise
            _report(
                WalletError(f"unexpected failure: {type(exc).__name__}: {exc} (LEDGER_WALLET_DEBUG=1 shows more)",
                            "internal_error"),
                json_output,
            )
            raise typer.Exit(int(ExitCode.FAILURE)) from None

    return run


def _grid(rows: list[tuple[str, str]], title: str | None = None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    if title:
        table.title = title
        table.title_justify = "left"
    return table


# --- helpers -------------------------------------------------------------------------------------


def _keystore(folder: Path | None) -> Keystore:
    return Keystore(folder if folder is not None else default_keystore_dir())


def _kdf(light: bool) -> ScryptParams:
    return LIGHT_KDF if light else STANDARD_KDF


def _prefix(prefix: str | None) -> str:
    chosen = prefix if prefix is not None else DEFAULT_PREFIX
    if not is_valid_prefix(chosen):
        raise BadInput(f"'{chosen}' is not an address prefix (lower-case printable ASCII, 1 to 83 characters)", "bad_prefix")
    return chosen


def _shown_address(entry: KeyEntry, prefix: str | None) -> str:
    return entry.address(_prefix(prefix)) if prefix is not None else entry.stored_address


def _prefix_or_nodes(prefix: str | None, node: str | None) -> str | None:
    """The prefix to show or store addresses with: --prefix, or the one `node` serves (asked now)."""
    if node is None:
        return prefix
    if prefix is not None:
        raise BadInput("give --prefix or --node, not both: the node's prefix is the network's", "bad_option")
    with connect(node) as network:
        return network.prefix


def _entry_json(entry: KeyEntry, address: str) -> dict[str, Any]:
    return {
        "name": entry.name,
        "address": address,
        "public_key": entry.public_key.hex(),
        "path": entry.path,
        "created": entry.created,
        "file": str(entry.file),
    }


def _select_key(keystore: Keystore, wanted: str | None) -> KeyEntry:
    """The key named (or holding the address) `wanted`; without it, the only key there is."""
    if wanted:
        return keystore.find(wanted)
    entries = keystore.entries()
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise NotFound(
            f"the keystore {keystore.folder} holds no key: create one with `wallet new NAME` or `wallet import NAME`",
            "no_keys",
        )
    names = ", ".join(entry.name for entry in entries)
    raise BadInput(f"the keystore holds several keys ({names}): choose one with --from NAME", "which_key")


def _unlock(entry: KeyEntry, password_file: Path | None) -> PrivateKey:
    return open_sealed(entry, prompts.password(f"key '{entry.name}'", password_file))


def _resolve_account(text: str, prefix: str, keystore: Keystore, what: str, to_sign: bool = False) -> tuple[bytes, str | None]:
    """(account id, key name or None) of a key name or an address of the network `prefix`.

    An address under another prefix names the same 20 bytes, and a read (balance, history)
    takes it, as explorer search does.  A transfer refuses it and names this network's form:
    the prefix is what stops a payment meant for another network, and only the sender can
    tell whether that account is the one meant."""
    wanted = text.strip()
    if any(entry.name == wanted for entry in keystore.entries()):
        entry = keystore.find(wanted)
        return entry.account, entry.name
    try:
        return decode_address(wanted, prefix), None
    except InvalidAddress as exc:
        if exc.reason in ("bad_format", "bad_character") and "1" not in wanted:
            raise NotFound(f"{what} '{wanted}' is neither a key in {keystore.folder} nor an address", "key_not_found") from None
        if exc.reason != "wrong_network":
            raise BadInput(f"{what} '{wanted}': {exc}", exc.reason) from None
    account = bech32m_decode(wanted)[1]
    if len(account) != 20:
        raise BadInput(f"{what} '{wanted}': an address carries 20 bytes", "bad_length")
    if not to_sign:
        return account, None
    raise BadInput(f"{what} '{wanted}': address is for network '{bech32m_decode(wanted)[0]}', this network is "
                   f"'{prefix}'; the same account here is {encode_address(prefix, account)}: send to that if it is "
                   "the one you mean (nothing was signed)", "wrong_network")


def _check_chain_id(chain_id: str) -> str:
    if not CHAIN_ID_PATTERN.fullmatch(chain_id):
        raise BadInput(f"'{chain_id}' is not a chain id (lower-case letters, digits and '-', at most 64)", "bad_chain_id")
    return chain_id


def _amounts(amount_text: str, fee_text: str, decimals: int, denomination: str) -> tuple[int, int]:
    amount = parse_amount(amount_text, decimals, "amount", denomination)
    fee = parse_amount(fee_text, decimals, "fee", denomination)
    if amount == 0:
        raise BadInput("the amount must be more than zero", "zero_amount")
    if amount + fee > MAX_AMOUNT:
        raise BadInput(f"amount plus fee exceeds the maximum of {format_amount(MAX_AMOUNT, decimals)} {denomination}",
                       "amount_overflow")
    return amount, fee


def _money(units: int, network: Network) -> str:
    return f"{format_amount(units, network.info.decimals)} {network.info.denomination}"


def _submit(network: Network, tx: Transaction | str) -> tuple[str, bool]:
    with node_errors(network.url, submitting=True):
        answer = network.client.submit(tx)
    return answer.id, answer.duplicate


def _follow(network: Network, tx_id: str, timeout: float, json_output: bool) -> TransactionStatusOut:
    """Follow to finality, with a spinner on a terminal and a line per status otherwise."""
    if json_output:
        return follow(network, tx_id, timeout, lambda line: None)
    err = _console(stderr=True)
    if not err.is_terminal:
        return follow(network, tx_id, timeout, lambda line: err.print(f"  {line}", markup=False))
    with err.status(f"waiting for {tx_id[:16]}… to be final") as spinner:
        def show(line: str) -> None:
            err.print(f"  {line}", markup=False)
            spinner.update(f"{tx_id[:16]}…: {line}")

        return follow(network, tx_id, timeout, show)


def _status_json(record: TransactionStatusOut | None) -> dict[str, Any]:
    if record is None:
        return {}
    return {"status": record.status, "block_height": record.block_height, "block_hash": record.block_hash,
            "confirmations": record.confirmations}


# --- keys ------------------------------------------------------------------------------------------


@app.command()
@_command
def new(
    name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, '_', '.', '-').")],
    words: Annotated[int, typer.Option("--words", help="Mnemonic length: 12, 15, 18, 21 or 24 words.")] = 24,
    prefix: PrefixOpt = None,
    node: LearnPrefixOpt = None,
    light: LightOpt = False,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create a key from a new BIP-39 mnemonic (shown once: write it down)."""
    keystore = _keystore(keystore_dir)
    check_name(name)
    address_prefix = _prefix(_prefix_or_nodes(prefix, node))
    _refuse_taken_name(keystore, name)
    phrase = new_mnemonic(words)
    password = prompts.password(f"key '{name}'", password_file, new=True)
    key, path = key_from_mnemonic(phrase, 0)
    if not json_output:
        out = _console()
        numbered = "  ".join(f"{i + 1}. {word}" for i, word in enumerate(phrase.split()))
        out.print(Panel(numbered, title="Your recovery phrase", subtitle=path, expand=False), markup=False)
        out.print(
            "Write these words down on paper, in order, and keep them offline. They are shown only now; "
            "anyone who has them controls this key, and without them (or the keystore file and its "
            "password) the funds are lost.",
            soft_wrap=True,
        )
        if prompts.interactive() and prompts.ask_line("Type 'yes' once you have written them down: ").lower() != "yes":
            raise prompts.Aborted("aborted: the key was not saved")
    entry = keystore.add(key, name, password, address_prefix, _kdf(light), path)
    document = _entry_json(entry, entry.stored_address)
    document["mnemonic"] = phrase
    _emit(json_output, document, lambda out: out.print(f"Saved key '{name}' {entry.stored_address} in {entry.file}", soft_wrap=True))


def _refuse_taken_name(keystore: Keystore, name: str) -> None:
    if any(entry.name == name for entry in keystore.entries()) or (keystore.folder / f"{name}.json").exists():
        raise BadInput(f"a key named '{name}' already exists in {keystore.folder}", "key_exists")


def _read_import_file(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_IMPORT_FILE:
            raise BadInput(f"{path} is too large to be a keystore file", "not_a_keystore")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"no file {path}", "file_not_found") from None
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{path} is not a JSON keystore file", "not_a_keystore") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}", "bad_file") from None


def _key_from_keystore_file(path: Path, source_password_file: Path | None) -> tuple[PrivateKey, str | None]:
    document = _read_import_file(path)
    where = f"keystore file {path}"

    def source_password() -> str:
        return prompts.secret("source password", f"Password of {path}: ", source_password_file,
                              "--source-password-file", prompts.SOURCE_PASSWORD_ENV)

    if is_web3_keystore(document):
        return decrypt_web3_keystore(document, source_password(), where), None
    if isinstance(document, dict) and "format" in document:
        entry = describe(document, path)
        return open_sealed(entry, source_password()), entry.path
    raise BadInput(f"{path} is neither a Web3 Secret Storage v3 file nor a ledger keystore file", "not_a_keystore")


@app.command("import")
@_command
def import_key(
    name: Annotated[str, typer.Argument(help="A name for the key.")],
    mnemonic: Annotated[bool, typer.Option("--mnemonic", help="From a BIP-39 mnemonic, asked for without echo.")] = False,
    mnemonic_file: Annotated[Optional[Path], typer.Option("--mnemonic-file", help="Read the mnemonic from this file ('-': stdin).")] = None,
    index: Annotated[int, typer.Option("--index", help=f"Account index i of m/44'/{COIN_TYPE}'/0'/0/i.")] = 0,
    passphrase_file: Annotated[Optional[Path], typer.Option("--passphrase-file", help="BIP-39 passphrase (the '25th word') from this file; also LEDGER_WALLET_MNEMONIC_PASSPHRASE.")] = None,
    ask_passphrase: Annotated[bool, typer.Option("--ask-passphrase", help="Ask for a BIP-39 passphrase.")] = False,
    private_key: Annotated[bool, typer.Option("--private-key", help="A raw hex private key, asked for without echo.")] = False,
    key_file: Annotated[Optional[Path], typer.Option("--key-file", help="A raw hex private key from this file ('-': stdin).")] = None,
    keystore_file: Annotated[Optional[Path], typer.Option("--keystore-file", help="A Web3 Secret Storage v3 file (geth, MetaMask) or a ledger keystore file.")] = None,
    source_password_file: Annotated[Optional[Path], typer.Option("--source-password-file", help="Password of --keystore-file; also LEDGER_WALLET_SOURCE_PASSWORD.")] = None,
    prefix: PrefixOpt = None,
    node: LearnPrefixOpt = None,
    light: LightOpt = False,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Import a key: from a mnemonic, a raw hex key, or a keystore file."""
    keystore = _keystore(keystore_dir)
    check_name(name)
    address_prefix = _prefix(_prefix_or_nodes(prefix, node))
    from_mnemonic = mnemonic or mnemonic_file is not None
    sources = [from_mnemonic, private_key, key_file is not None, keystore_file is not None]
    if sum(sources) != 1:
        raise BadInput("choose exactly one source: --mnemonic (or --mnemonic-file), --private-key, --key-file or "
                       "--keystore-file", "which_source")
    if not from_mnemonic and (index != 0 or passphrase_file is not None or ask_passphrase):
        raise BadInput("--index and the passphrase options only apply to --mnemonic", "bad_option")
    _refuse_taken_name(keystore, name)

    path: str | None = None
    if from_mnemonic:
        check_index(index)
        phrase = prompts.secret("mnemonic", "Mnemonic (words separated by spaces): ", mnemonic_file, "--mnemonic-file")
        passphrase = ""
        if passphrase_file is not None or ask_passphrase or os.environ.get("LEDGER_WALLET_MNEMONIC_PASSPHRASE"):
            passphrase = prompts.secret("passphrase", "BIP-39 passphrase: ", passphrase_file, "--passphrase-file",
                                        "LEDGER_WALLET_MNEMONIC_PASSPHRASE")
        key, path = key_from_mnemonic(phrase, index, passphrase)
        source = "mnemonic"
    elif keystore_file is not None:
        key, path = _key_from_keystore_file(keystore_file, source_password_file)
        source = "keystore-file"
    else:
        text = prompts.secret("private key", "Private key (64 hex characters): ", key_file, "--key-file")
        try:
            key = PrivateKey.from_hex(text.strip())
        except InvalidKey as exc:
            where = f"the private key in {key_file}" if key_file is not None else "the private key"
            raise BadInput(f"{where} is not valid: {exc}", "bad_private_key") from None
        source = "private-key"

    password = prompts.password(f"key '{name}'", password_file, new=True)
    entry = keystore.add(key, name, password, address_prefix, _kdf(light), path)
    document = _entry_json(entry, entry.stored_address)
    document["source"] = source
    _emit(json_output, document, lambda out: out.print(f"Imported key '{name}' {entry.stored_address} into {entry.file}", soft_wrap=True))


@app.command("list")
@_command
def list_keys(
    prefix: PrefixOpt = None,
    node: LearnPrefixOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the keys in the keystore (no password needed)."""
    keystore = _keystore(keystore_dir)
    prefix = _prefix_or_nodes(prefix, node)
    entries, problems = keystore.scan()
    document = {
        "keystore": str(keystore.folder),
        "keys": [_entry_json(entry, _shown_address(entry, prefix)) for entry in entries],
        "unreadable": [{"file": str(file), "problem": problem} for file, problem in problems],
    }

    def human(out: Console) -> None:
        if not entries:
            out.print(f"No keys in {keystore.folder}. Create one with `wallet new NAME` or `wallet import NAME`.")
        else:
            table = Table(title=f"Keys in {keystore.folder}", title_justify="left")
            table.add_column("name", no_wrap=True)
            table.add_column("address", no_wrap=True)
            table.add_column("path")
            table.add_column("created")
            for entry in entries:
                table.add_row(entry.name, _shown_address(entry, prefix), entry.path or "imported key", entry.created)
            out.print(table)
        for file, problem in problems:
            _note(f"warning: skipped {file}: {problem}")

    _emit(json_output, document, human)


@app.command()
@_command
def address(
    name: Annotated[Optional[str], typer.Argument(help="Key name [default: the only key].")] = None,
    prefix: PrefixOpt = None,
    node: LearnPrefixOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Print a key's address (no password needed)."""
    entry = _select_key(_keystore(keystore_dir), name)
    shown = _shown_address(entry, _prefix_or_nodes(prefix, node))
    _emit(json_output, _entry_json(entry, shown), lambda out: out.print(shown, soft_wrap=True))


@app.command()
@_command
def export(
    name: Annotated[Optional[str], typer.Argument(help="Key name [default: the only key].")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the hex key to this new file (mode 0600) instead of stdout.")] = None,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Reveal a private key as hex (warns, and asks twice)."""
    entry = _select_key(_keystore(keystore_dir), name)
    _note(
        f"WARNING: the private key controls every coin of {entry.stored_address}. Anyone who sees it can "
        "spend them: never paste it into a website, a chat or a ticket. To back a key up, copy its keystore "
        f"file ({entry.file}) instead."
    )
    if not prompts.confirm(f"Export the private key of '{entry.name}'?"):
        raise prompts.Aborted()
    if prompts.ask_line(f"Type the key's name ({entry.name}) to confirm: ") != entry.name:
        raise prompts.Aborted("aborted: the name did not match")
    key = _unlock(entry, password_file)
    if out_file is not None:
        try:
            write_private_file(out_file, (key.secret.hex() + "\n").encode(), replace=False)
        except FileExistsError:
            raise BadInput(f"{out_file} already exists; the key was not written", "file_exists") from None
        except OSError as exc:
            raise BadInput(f"cannot write {out_file}: {exc.strerror}", "bad_file") from None
        document = {"name": entry.name, "address": entry.stored_address, "file": str(out_file)}
        _emit(json_output, document, lambda out: out.print(f"Wrote the private key of '{entry.name}' to {out_file}", soft_wrap=True))
        return
    document = {"name": entry.name, "address": entry.stored_address, "private_key": key.secret.hex()}
    _emit(json_output, document, lambda out: out.print(key.secret.hex()))


@app.command()
@_command
def passwd(
    name: Annotated[Optional[str], typer.Argument(help="Key name [default: the only key].")] = None,
    new_password_file: Annotated[Optional[Path], typer.Option("--new-password-file", help="The new password from this file; also LEDGER_WALLET_NEW_PASSWORD.")] = None,
    light: LightOpt = False,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Change a key's password (the file is rewritten atomically)."""
    keystore = _keystore(keystore_dir)
    entry = _select_key(keystore, name)
    key = _unlock(entry, password_file)
    new_password = prompts.secret("new password", f"New password for key '{entry.name}': ", new_password_file,
                                  "--new-password-file", prompts.NEW_PASSWORD_ENV, confirm=True)
    updated = keystore.replace(entry, reseal(entry, key, new_password, _kdf(light)))
    _emit(json_output, _entry_json(updated, updated.stored_address),
          lambda out: out.print(f"Changed the password of '{entry.name}' ({entry.file})", soft_wrap=True))


# --- the node ------------------------------------------------------------------------------------


@app.command()
@_command
def balance(
    target: Annotated[Optional[str], typer.Argument(metavar="[ADDRESS|NAME]", help="An address or key name [default: the only key].")] = None,
    node: NodeOpt = DEFAULT_NODE,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Show the balance and nonce of an address or key."""
    keystore = _keystore(keystore_dir)
    with connect(node) as network:
        if target is None:
            entry = _select_key(keystore, None)
            account, name = entry.account, entry.name
        else:
            account, name = _resolve_account(target, network.prefix, keystore, "address")
        with node_errors(network.url):
            state = network.client.account(network.address(account))
    document = state.model_dump(mode="json")
    document.update(name=name, denomination=network.info.denomination, decimals=network.info.decimals,
                    balance_text=format_amount(state.balance, network.info.decimals))

    def human(out: Console) -> None:
        rows = [("address", state.address)]
        if name:
            rows.insert(0, ("key", name))
        rows += [("balance", _money(state.balance, network)), ("nonce", str(state.nonce))]
        if state.bonded or state.unbonding:
            rows.append(("staked", f"{_money(state.bonded, network)} bonded"
                         + (f", {_money(state.unbonding, network)} unbonding until epoch {state.release_epoch}"
                            if state.unbonding else "")))
        if state.pending_count:
            rows.append(("pending", f"{state.pending_count} transaction(s), next nonce {state.pending_nonce}"))
        out.print(_grid(rows))

    _emit(json_output, document, human)


@app.command()
@_command
def send(
    to: Annotated[str, typer.Option("--to", help="Recipient address, or the name of a key of yours.")],
    amount: Annotated[str, typer.Option("--amount", help="In units of the network's denomination, e.g. 1.5.")],
    fee: Annotated[str, typer.Option("--fee", help="Fee for the block producer, same units as --amount.")] = "0",
    nonce: Annotated[Optional[int], typer.Option("--nonce", min=0, max=MAX_AMOUNT, help="[default: the account's next pending nonce]")] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    sender: FromOpt = None,
    chain_id: ChainIdOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Sign a transfer and submit it; with --wait, follow it to finality."""
    keystore = _keystore(keystore_dir)
    entry = _select_key(keystore, sender)
    with connect(node, chain_id) as network:
        info = network.info
        value, fee_units = _amounts(amount, fee, info.decimals, info.denomination)
        recipient, _ = _resolve_account(to, network.prefix, keystore, "recipient", to_sign=True)
        sender_address = network.address(entry.account)
        with node_errors(network.url):
            account = network.client.account(sender_address)
        if account.balance < value + fee_units:
            raise Rejected(
                f"insufficient balance: {sender_address} holds {_money(account.balance, network)}; sending "
                f"{_money(value, network)} with a fee of {_money(fee_units, network)} needs "
                f"{_money(value + fee_units, network)} (nothing was signed)",
                "insufficient_balance",
            )
        tx_nonce = account.pending_nonce if nonce is None else nonce
        key = _unlock(entry, password_file)
        tx = new_transfer(key, info.chain_id, tx_nonce, recipient, value, fee_units)
        tx_id, duplicate = _submit(network, tx)
        document: dict[str, Any] = {
            "id": tx_id, "status": "pending", "duplicate": duplicate, "chain_id": info.chain_id,
            "from": sender_address, "to": network.address(recipient), "amount": value, "fee": fee_units,
            "nonce": tx_nonce, "denomination": info.denomination, "decimals": info.decimals,
        }
        if not json_output:
            _note(f"Sent {_money(value, network)} from {sender_address} to {network.address(recipient)} "
                  f"(nonce {tx_nonce}, fee {_money(fee_units, network)})")
        record = _follow(network, tx_id, timeout, json_output) if wait else None
    document.update(_status_json(record))
    _emit(json_output, document, lambda out: out.print(tx_id))


@app.command()
@_command
def tx(
    tx_id: Annotated[str, typer.Argument(metavar="ID", help="Transaction id (64 hex characters).")],
    node: NodeOpt = DEFAULT_NODE,
    json_output: JsonOpt = False,
) -> None:
    """Show a transaction and its status (pending, included, final)."""
    wanted = tx_id.strip().lower().removeprefix("0x")
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise BadInput(f"'{tx_id}' is not a transaction id (64 hex characters)", "bad_tx_id")
    with connect(node) as network:
        try:
            with node_errors(network.url):
                record = network.client.transaction(wanted)
        except NotFound:
            raise NotFound(f"the node at {network.url} knows no transaction {wanted}", "tx_not_found") from None
    document = record.model_dump(mode="json")

    def human(out: Console) -> None:
        rows = [
            ("id", record.id), ("status", describe_status(record)), ("from", record.sender_address),
            ("to", record.recipient), ("amount", _money(record.amount, network)), ("fee", _money(record.fee, network)),
            ("nonce", str(record.nonce)), ("chain", record.chain_id),
        ]
        if record.block_hash:
            rows.append(("block", f"{record.block_height} {record.block_hash}"))
        out.print(_grid(rows))

    _emit(json_output, document, human)


@app.command()
@_command
def history(
    target: Annotated[Optional[str], typer.Argument(metavar="[ADDRESS|NAME]", help="An address or key name [default: the only key].")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="Transactions per page (the API serves at most 100).")] = 20,
    before: Annotated[Optional[str], typer.Option("--before", help="Page cursor printed by the previous page.")] = None,
    node: NodeOpt = DEFAULT_NODE,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List the transactions an address sent or received, newest first, a page at a time."""
    keystore = _keystore(keystore_dir)
    with connect(node) as network:
        if target is None:
            entry = _select_key(keystore, None)
            account = entry.account
        else:
            account, _ = _resolve_account(target, network.prefix, keystore, "address")
        shown = network.address(account)
        with node_errors(network.url):
            page = network.client.account_transactions(shown, before=before, limit=limit)
    document = page.model_dump(mode="json")

    def human(out: Console) -> None:
        if not page.transactions:
            out.print(f"No transactions for {shown}" + (" before this cursor." if before else "."))
            return
        table = Table(title=f"Transactions of {shown}, newest first", title_justify="left")
        for column in ("block", "id", "", "counterparty", "amount", "fee", "status"):
            table.add_column(column, overflow="fold")
        for item in page.transactions:
            outgoing = item.sender_address == shown
            incoming = item.recipient == shown
            direction = "self" if outgoing and incoming else ("out" if outgoing else "in")
            other = item.recipient if outgoing else item.sender_address
            status = item.status if item.status != "included" else f"included ({item.confirmations})"
            table.add_row(str(item.block_height if item.block_height is not None else "-"), item.id, direction, other,
                          _money(item.amount, network), _money(item.fee, network), status)
        out.print(table)
        if page.next:
            out.print(f"Older transactions: wallet history {shown} --before {page.next}", soft_wrap=True)

    _emit(json_output, document, human)


# --- offline signing ---------------------------------------------------------------------------------


@app.command()
@_command
def sign(
    to: Annotated[str, typer.Option("--to", help="Recipient address (with the network's prefix).")],
    amount: Annotated[str, typer.Option("--amount", help="In units of the denomination, e.g. 1.5.")],
    nonce: Annotated[int, typer.Option("--nonce", min=0, max=MAX_AMOUNT, help="The sender account's next nonce.")],
    chain_id: Annotated[str, typer.Option("--chain-id", envvar="LEDGER_CHAIN_ID", help="The chain to sign for.")],
    prefix: Annotated[str, typer.Option("--prefix", envvar="LEDGER_ADDRESS_PREFIX", help="The network's address prefix.")],
    decimals: Annotated[int, typer.Option("--decimals", min=0, max=18, help="The denomination's decimals (9 on the dev chain).")],
    fee: Annotated[str, typer.Option("--fee", help="Fee, same units as --amount.")] = "0",
    sender: FromOpt = None,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Build and sign a transfer offline; print its hex for `wallet broadcast`."""
    entry = _select_key(_keystore(keystore_dir), sender)
    _check_chain_id(chain_id)
    network_prefix = _prefix(prefix)
    value, fee_units = _amounts(amount, fee, decimals, "")
    try:
        recipient = decode_address(to, network_prefix)
    except InvalidAddress as exc:
        raise BadInput(f"recipient '{to.strip()}': {exc}", exc.reason) from None
    if nonce > MAX_AMOUNT:
        raise BadInput(f"the nonce is at most {MAX_AMOUNT}", "bad_nonce")
    key = _unlock(entry, password_file)
    signed = new_transfer(key, chain_id, nonce, recipient, value, fee_units)
    signed.check_stateless(chain_id)
    raw = signed.encode().hex()
    document = {"id": signed.id.hex(), "raw": raw, "transaction": transaction_to_json(signed, network_prefix)}
    if not json_output:
        _note(f"Signed transfer {signed.id.hex()}: {format_amount(value, decimals)} ({value} base units) from "
              f"{entry.address(network_prefix)} to {to.strip()}, nonce {nonce}, chain {chain_id}")
    _emit(json_output, document, lambda out: out.print(raw, soft_wrap=True))


@app.command()
@_command
def broadcast(
    raw: Annotated[str, typer.Argument(metavar="HEX", help="A signed transaction from `wallet sign` ('-': read stdin).")],
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    chain_id: ChainIdOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    json_output: JsonOpt = False,
) -> None:
    """Submit a signed transaction; with --wait, follow it to finality."""
    text = sys.stdin.read(1 << 16) if raw == "-" else raw
    try:
        signed = decode_raw_transaction(text.strip().lower().removeprefix("0x"), "HEX")
        signed.check_stateless(signed.chain_id)
    except InvalidInput as exc:
        raise BadInput(f"not a signed transaction: {exc.message}", exc.reason) from None
    except InvalidTransaction as exc:
        raise BadInput(f"the transaction is not valid: {exc}", exc.reason) from None
    with connect(node, chain_id) as network:
        if signed.chain_id != network.info.chain_id:
            raise BadInput(f"the transaction is for chain '{signed.chain_id}', the node at {network.url} serves "
                           f"'{network.info.chain_id}'", "wrong_chain")
        tx_id, duplicate = _submit(network, signed)
        document: dict[str, Any] = {"id": tx_id, "status": "pending", "duplicate": duplicate,
                                    "transaction": transaction_to_json(signed, network.prefix)}
        record = _follow(network, tx_id, timeout, json_output) if wait else None
    document.update(_status_json(record))
    _emit(json_output, document, lambda out: out.print(tx_id))


# The proof-of-stake commands live in their own module and register on `app`.
from wallet import staking_cli  # noqa: E402,F401


def main() -> None:
    try:
        app(prog_name="wallet")
    except Exception as exc:  # anything the commands did not catch: one line, never a traceback
        if os.environ.get("LEDGER_WALLET_DEBUG"):
            raise
        sys.stderr.write(f"error: unexpected failure: {type(exc).__name__}: {exc}\n")
        sys.exit(int(ExitCode.FAILURE))


if __name__ == "__main__":
    # `python -m wallet.cli` runs this file as __main__; the commands of other modules
    # (wallet.staking_cli) register on the app of the module `wallet.cli`, so run that one.
    from wallet.cli import main as _main

    _main()

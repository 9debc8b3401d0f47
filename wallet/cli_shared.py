"""The `wallet` command's typer app and what its commands share: options, output, helpers.

The commands live in wallet/cli.py (the node: balances, transfers, offline signing),
wallet/keys_cli.py (the keystore) and wallet/staking_cli.py (proof of stake); each
registers on `app` here.  Every command takes --json (one JSON document on stdout, errors
included) and ends with a documented exit code (wallet.errors.ExitCode).  Expected
failures are one line on stderr, never a traceback.
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
from rich.table import Table

from api.schemas import TransactionStatusOut
from ledger.address import InvalidAddress, bech32m_decode, decode_address, encode_address, is_valid_prefix
from ledger.codec import MAX_AMOUNT
from ledger.crypto import PrivateKey
from ledger.transaction import CHAIN_ID_PATTERN, Transaction
from wallet import prompts
from wallet.amounts import format_amount, parse_amount
from wallet.errors import EXIT_CODE_HELP, BadInput, ExitCode, NotFound, WalletError
from wallet.keystore import (
    LIGHT_KDF,
    STANDARD_KDF,
    KeyEntry,
    Keystore,
    ScryptParams,
    default_keystore_dir,
    open_sealed,
)
from wallet.node import DEFAULT_NODE, Network, connect, follow, node_errors

DEFAULT_PREFIX = "dev"
DEFAULT_TIMEOUT = 60.0

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

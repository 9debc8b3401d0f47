"""`wallet new`, `import`, `list`, `address`, `export` and `passwd`: the keystore's commands.

Keys are created from a new mnemonic or imported (a mnemonic, a raw key, a web3 keystore
file), sealed with the owner's password, and never leave the keystore unsealed except by
`export`, which asks for the password again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ledger.crypto import InvalidKey, PrivateKey
from ledger.hdkeys import COIN_TYPE
from wallet import prompts
from wallet.errors import BadInput, NotFound
from wallet.keystore import Keystore, check_name, describe, open_sealed, reseal, write_private_file
from wallet.mnemonics import check_index, key_from_mnemonic, new_mnemonic
from wallet.web3_keystore import decrypt_web3_keystore, is_web3_keystore
from wallet.cli_shared import (
    JsonOpt,
    KeystoreOpt,
    LearnPrefixOpt,
    LightOpt,
    PasswordFileOpt,
    PrefixOpt,
    app,
    _command,
    _console,
    _emit,
    _entry_json,
    _kdf,
    _keystore,
    _note,
    _prefix,
    _prefix_or_nodes,
    _select_key,
    _shown_address,
    _unlock,
)

_MAX_IMPORT_FILE = 64 * 1024

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

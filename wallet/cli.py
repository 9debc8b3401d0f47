"""The `wallet` command: keys that are safe at rest, transfers a person can follow to finality.

This module holds the entry point and the commands that talk to a node (balance, send,
tx, history) or sign offline (sign, broadcast).  The app, its shared options and helpers
are in wallet/cli_shared.py; the keystore's commands in wallet/keys_cli.py, proof of
stake's in wallet/staking_cli.py.  Every command takes --json (one JSON document on
stdout, errors included) and ends with a documented exit code (wallet.errors.ExitCode).
Expected failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from api.schemas import InvalidInput, decode_raw_transaction, transaction_to_json
from ledger.address import InvalidAddress, decode_address
from ledger.codec import MAX_AMOUNT
from ledger.transaction import InvalidTransaction, new_transfer
from wallet.amounts import format_amount
from wallet.errors import BadInput, ExitCode, NotFound
from wallet.node import DEFAULT_NODE, Rejected, connect, describe_status, node_errors
from wallet.cli_shared import (
    ChainIdOpt,
    DEFAULT_TIMEOUT,
    FromOpt,
    JsonOpt,
    KeystoreOpt,
    NodeOpt,
    PasswordFileOpt,
    TimeoutOpt,
    WaitOpt,
    app,
    _amounts,
    _check_chain_id,
    _command,
    _emit,
    _follow,
    _grid,
    _keystore,
    _money,
    _note,
    _prefix,
    _resolve_account,
    _select_key,
    _status_json,
    _submit,
    _unlock,
)

# The keystore's commands register on `app` first: `wallet --help` lists them before these.
from wallet import keys_cli  # noqa: E402,F401

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
    # `python -m wallet.cli`: the app lives in wallet.cli_shared, so the commands defined
    # here as __main__ and those of the other modules all register on the same one.
    main()

"""`wallet stake`, `wallet unstake` and `wallet validator status`: proof-of-stake commands.

A stake bonds part of the balance to a validator key (default: the wallet key's own);
the engine activates it at an epoch boundary.  An unstake asks for part of the bond back:
it leaves the validator set at an epoch boundary and returns to the balance after the
chain's exit delay, slashable until then.  Both are refused, before anything is signed,
on a chain whose engine bonds no stake.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from api.schemas import AccountOut, ValidatorOut
from ledger.codec import MAX_AMOUNT
from ledger import crypto
from ledger.transaction import Transaction, new_stake, new_unstake
from wallet.errors import BadInput, NotFound
from wallet.node import DEFAULT_NODE, Network, Rejected, connect, node_errors

from wallet.cli_shared import (
    ChainIdOpt,
    FromOpt,
    JsonOpt,
    KeystoreOpt,
    NodeOpt,
    PasswordFileOpt,
    TimeoutOpt,
    WaitOpt,
    DEFAULT_TIMEOUT,
    _amounts,
    _command,
    _emit,
    _follow,
    _grid,
    _keystore,
    _money,
    _note,
    _resolve_account,
    _select_key,
    _status_json,
    _submit,
    _unlock,
    app,
)

STAKING_ENGINES = ("pos",)
NonceOpt = Annotated[Optional[int], typer.Option("--nonce", min=0, max=MAX_AMOUNT,
                                                 help="[default: the account's next pending nonce]")]
FeeOpt = Annotated[str, typer.Option("--fee", help="Fee for the block producer, same units as --amount.")]

validator_app = typer.Typer(help="Validators of a proof-of-stake chain.", no_args_is_help=True,
                            add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(validator_app, name="validator")


def _require_staking(network: Network) -> None:
    if network.info.engine not in STAKING_ENGINES:
        raise Rejected(f"this chain runs {network.info.engine}, which bonds no stake: stake and unstake are for "
                       "proof-of-stake chains (nothing was signed)", "staking_not_supported")


def _validator_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != crypto.PUBLIC_KEY_SIZE or not crypto.is_valid_public_key(key):
        raise BadInput(f"--validator-key '{text}' is not a compressed secp256k1 public key "
                       "(66 hex digits starting 02 or 03)", "bad_validator_key")
    return key


def _send_staking(network: Network, tx: Transaction, wait: bool, timeout: float, json_output: bool,
                  document: dict[str, Any]) -> None:
    tx_id, duplicate = _submit(network, tx)
    document.update(id=tx_id, status="pending", duplicate=duplicate, chain_id=network.info.chain_id,
                    nonce=tx.nonce, denomination=network.info.denomination, decimals=network.info.decimals)
    record = _follow(network, tx_id, timeout, json_output) if wait else None
    document.update(_status_json(record))
    _emit(json_output, document, lambda out: out.print(tx_id))


@app.command()
@_command
def stake(
    amount: Annotated[str, typer.Option("--amount", help="How much of the balance to bond, e.g. 32.")],
    validator_key: Annotated[Optional[str], typer.Option(
        "--validator-key", help="Public key (hex) the validator signs with [default: this wallet key's own].")] = None,
    fee: FeeOpt = "0",
    nonce: NonceOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    sender: FromOpt = None,
    chain_id: ChainIdOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Bond part of the balance as validator stake (active from a later epoch boundary)."""
    keystore = _keystore(keystore_dir)
    entry = _select_key(keystore, sender)
    payload = _validator_key(validator_key)
    with connect(node, chain_id) as network:
        _require_staking(network)
        value, fee_units = _amounts(amount, fee, network.info.decimals, network.info.denomination)
        owner = network.address(entry.account)
        with node_errors(network.url):
            account = network.client.account(owner)
        if account.balance < value + fee_units:
            raise Rejected(f"insufficient balance: {owner} holds {_money(account.balance, network)}; bonding "
                           f"{_money(value, network)} with a fee of {_money(fee_units, network)} needs "
                           f"{_money(value + fee_units, network)} (nothing was signed)", "insufficient_balance")
        key = _unlock(entry, password_file)
        tx = new_stake(key, network.info.chain_id, account.pending_nonce if nonce is None else nonce, value,
                       fee_units, payload)
        if not json_output:
            _note(f"Staking {_money(value, network)} from {owner} for validator key {tx.payload.hex()}")
        _send_staking(network, tx, wait, timeout, json_output, {
            "from": owner, "validator_key": tx.payload.hex(), "amount": value, "fee": fee_units})


@app.command()
@_command
def unstake(
    amount: Annotated[str, typer.Option("--amount", help="How much of the bonded stake to unbond.")],
    fee: FeeOpt = "0",
    nonce: NonceOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    sender: FromOpt = None,
    chain_id: ChainIdOpt = None,
    node: NodeOpt = DEFAULT_NODE,
    password_file: PasswordFileOpt = None,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Ask for bonded stake back: it unbonds at an epoch boundary and returns after the exit delay."""
    keystore = _keystore(keystore_dir)
    entry = _select_key(keystore, sender)
    with connect(node, chain_id) as network:
        _require_staking(network)
        value, fee_units = _amounts(amount, fee, network.info.decimals, network.info.denomination)
        owner = network.address(entry.account)
        with node_errors(network.url):
            account = network.client.account(owner)
        if account.bonded < value:
            raise Rejected(f"insufficient stake: {owner} has {_money(account.bonded, network)} bonded, not "
                           f"{_money(value, network)} (nothing was signed)", "insufficient_stake")
        if account.balance < fee_units:
            raise Rejected(f"insufficient balance for the fee: {owner} holds {_money(account.balance, network)} "
                           "(nothing was signed)", "insufficient_balance")
        key = _unlock(entry, password_file)
        tx = new_unstake(key, network.info.chain_id, account.pending_nonce if nonce is None else nonce, value, fee_units)
        if not json_output:
            _note(f"Unbonding {_money(value, network)} of {owner}'s stake")
        _send_staking(network, tx, wait, timeout, json_output, {"from": owner, "amount": value, "fee": fee_units})


def _participation(validator: ValidatorOut) -> str:
    def word(flag: bool | None) -> str:
        return "-" if flag is None else ("yes" if flag else "no")

    return f"previous epoch {word(validator.attested_previous_epoch)}, current epoch {word(validator.attested_current_epoch)}"


@validator_app.command("status")
@_command
def validator_status(
    target: Annotated[Optional[str], typer.Argument(
        metavar="[ADDRESS|NAME]", help="The validator's owner address or a key name [default: the only key].")] = None,
    node: NodeOpt = DEFAULT_NODE,
    keystore_dir: KeystoreOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Stake, status, participation and unbonding of a proof-of-stake validator."""
    keystore = _keystore(keystore_dir)
    with connect(node) as network:
        _require_staking(network)
        if target is None:
            account_id = _select_key(keystore, None).account
        else:
            account_id, _ = _resolve_account(target, network.prefix, keystore, "address")
        address = network.address(account_id)
        with node_errors(network.url):
            account: AccountOut = network.client.account(address)
            validators = network.client.validators()
    validator = next((v for v in validators.validators if v.address == address), None)
    if validator is None and not (account.bonded or account.unbonding):
        raise NotFound(f"{address} is no validator of this chain and has no stake", "not_a_validator")
    document: dict[str, Any] = {
        "address": address, "bonded": account.bonded, "unbonding": account.unbonding,
        "release_epoch": account.release_epoch, "slashed": account.slashed, "balance": account.balance,
        "validator": None if validator is None else validator.model_dump(mode="json"),
        "denomination": network.info.denomination, "decimals": network.info.decimals,
    }

    def human(out: Console) -> None:
        rows = [("address", address)]
        if validator is not None:
            rows += [("status", validator.status or "-"), ("validator key", validator.public_key),
                     ("stake", _money(validator.power, network)), ("attested", _participation(validator)),
                     ("blocks proposed", str(validator.blocks_proposed))]
        else:
            rows.append(("status", "not in the validator set"))
        rows.append(("bonded", _money(account.bonded, network)))
        if account.unbonding:
            rows.append(("unbonding", f"{_money(account.unbonding, network)}, back in the balance at epoch "
                                      f"{account.release_epoch}"))
        if account.slashed:
            rows.append(("slashed", _money(account.slashed, network)))
        out.print(_grid(rows))

    _emit(json_output, document, human)

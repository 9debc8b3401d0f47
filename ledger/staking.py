"""Stake money movements: what bonding, unbonding, rewards and slashing do to accounts.

The consensus engine decides them (consensus/pos: which validator is rewarded, penalised,
slashed, which exit is processed, which unbonding is released) and orders them for each
block as `StakeOp`s in the block's header; the ledger applies them before the block's
transactions, with the rules below, and refuses a block whose ops cannot apply.  A
block's STAKE and UNSTAKE transactions are summed up as `StakeChange`s, which the header
declares too (ledger/validate.py checks the two agree), so the engine can follow its
validator registry from headers alone.

Every amount stays accounted for: REWARD creates money (issuance), PENALTY and SLASH
destroy it (burns); UNBOND and RELEASE move it inside one account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from ledger import crypto
from ledger.codec import MAX_AMOUNT, DecodeError, Reader, Writer
from ledger.transaction import Transaction, TxKind

ADDRESS_SIZE = 20


class Stake(NamedTuple):
    """What an account holds for proof of stake, beside its spendable balance.

    An account without stake holds None, never Stake(): one value has one form, in
    memory, in the accounts table and in undo records."""

    bonded: int = 0  # locked as validator stake; still part of the supply
    unbonding: int = 0  # leaving the bond, part of the supply, spendable from release_epoch
    release_epoch: int = 0
    slashed: int = 0  # destroyed from this account's stake so far, in total


class BadStakeOp(ValueError):
    """An op the account it names cannot bear (ledger/state.py reports it as the
    StateError `bad_stake_op`: the block is invalid)."""


class StakeOpKind(IntEnum):
    REWARD = 1  # balance += amount (new money)
    PENALTY = 2  # bonded -= amount (burnt)
    SLASH = 3  # bonded, then unbonding, -= amount; slashed += amount (burnt)
    UNBOND = 4  # bonded -> unbonding, releasable from `epoch`
    RELEASE = 5  # unbonding -> balance


_KINDS = frozenset(int(kind) for kind in StakeOpKind)


@dataclass(frozen=True, slots=True)
class StakeOp:
    """An operation the consensus engine orders for a block, applied before its transactions."""

    kind: int
    address: bytes  # 20-byte account
    amount: int
    epoch: int = 0  # UNBOND: the epoch from which the amount may be released

    def write(self, writer: Writer) -> None:
        writer.u8(self.kind).fixed(self.address, ADDRESS_SIZE).u64(self.amount).u64(self.epoch)

    @classmethod
    def read(cls, reader: Reader) -> StakeOp:
        kind = reader.u8("op.kind")
        if kind not in _KINDS:
            raise DecodeError("op.kind", f"unknown stake operation {kind}")
        return cls(kind, reader.fixed(ADDRESS_SIZE, "op.address"), reader.amount("op.amount"), reader.amount("op.epoch"))


@dataclass(frozen=True, slots=True)
class StakeChange:
    """What one STAKE or UNSTAKE transaction of a block did, in block order."""

    owner: bytes  # 20-byte sender account
    validator_key: bytes  # the 33-byte key a stake names; b"" for an unstake
    amount: int
    bond: bool  # True: stake, False: unstake request

    def write(self, writer: Writer) -> None:
        writer.u8(1 if self.bond else 0).fixed(self.owner, ADDRESS_SIZE).var_bytes(self.validator_key).u64(self.amount)

    @classmethod
    def read(cls, reader: Reader) -> StakeChange:
        flag = reader.u8("change.bond")
        if flag not in (0, 1):
            raise DecodeError("change.bond", f"flag {flag} is not 0 or 1")
        owner = reader.fixed(ADDRESS_SIZE, "change.owner")
        key = reader.var_bytes("change.validator_key", crypto.PUBLIC_KEY_SIZE)
        if len(key) != (crypto.PUBLIC_KEY_SIZE if flag else 0):
            raise DecodeError("change.validator_key", "a stake names a 33-byte key, an unstake none")
        return cls(owner, key, reader.amount("change.amount"), bool(flag))


def stake_changes_of(transactions: Iterable[Transaction]) -> tuple[StakeChange, ...]:
    """The StakeChanges of a block's transactions (pure: a valid block's stakes all applied)."""
    changes = []
    for tx in transactions:
        if tx.kind == TxKind.STAKE:
            changes.append(StakeChange(tx.sender_address, tx.payload, tx.amount, True))
        elif tx.kind == TxKind.UNSTAKE:
            changes.append(StakeChange(tx.sender_address, b"", tx.amount, False))
    return tuple(changes)


def stake_of(bonded: int, unbonding: int, release_epoch: int, slashed: int) -> Stake | None:
    """An account's stake, None when it holds none (one value, one form: never Stake())."""
    if bonded or unbonding or release_epoch or slashed:
        return Stake(bonded, unbonding, release_epoch, slashed)
    return None


def apply_op(load: Callable[[bytes], tuple], op: StakeOp) -> tuple[bytes, tuple, int, int]:
    """The account `op` changes, its new value (ledger.state.Account), and the money it issued
    and burnt.  Raises BadStakeOp if the account cannot bear it."""
    balance, nonce, stake = load(op.address)
    bonded, unbonding, release, slashed = stake if stake is not None else (0, 0, 0, 0)
    amount, issued, burned = op.amount, 0, 0

    def refuse(why: str) -> BadStakeOp:
        return BadStakeOp(f"{StakeOpKind(op.kind).name.lower()} of {amount} on {op.address.hex()}: {why}")

    if op.kind == StakeOpKind.REWARD:
        if balance + amount > MAX_AMOUNT:
            raise refuse("the balance would overflow")
        balance, issued = balance + amount, amount
    elif op.kind == StakeOpKind.PENALTY:
        if amount > bonded:
            raise refuse(f"only {bonded} bonded")
        bonded, burned = bonded - amount, amount
    elif op.kind == StakeOpKind.SLASH:
        if amount > bonded + unbonding:
            raise refuse(f"only {bonded + unbonding} at stake")
        from_bonded = min(bonded, amount)
        bonded, unbonding = bonded - from_bonded, unbonding - (amount - from_bonded)
        if slashed + amount > MAX_AMOUNT:
            raise refuse("the slashed total would overflow")
        slashed, burned = slashed + amount, amount
    elif op.kind == StakeOpKind.UNBOND:
        if amount > bonded:
            raise refuse(f"only {bonded} bonded")
        bonded, unbonding, release = bonded - amount, unbonding + amount, op.epoch
    elif op.kind == StakeOpKind.RELEASE:
        if amount > unbonding:
            raise refuse(f"only {unbonding} unbonding")
        if balance + amount > MAX_AMOUNT:
            raise refuse("the balance would overflow")
        unbonding, balance = unbonding - amount, balance + amount
        if not unbonding:
            release = 0
    else:  # decoding refuses unknown kinds; an op built in code must be one of them
        raise refuse("unknown operation")
    return op.address, (balance, nonce, stake_of(bonded, unbonding, release, slashed)), issued, burned


def money_moved(ops: Iterable[StakeOp]) -> tuple[int, int]:
    """(issued, burnt) by `ops`: rewards are new money, penalties and slashings destroy it;
    unbonding and release only move it within an account."""
    issued = sum(op.amount for op in ops if op.kind == StakeOpKind.REWARD)
    burnt = sum(op.amount for op in ops if op.kind in (StakeOpKind.PENALTY, StakeOpKind.SLASH))
    return issued, burnt

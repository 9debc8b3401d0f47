"""The account state machine: apply a block's transactions, undo a block.

Accounts hold a balance and a nonce.  A transfer moves `amount` from sender to
recipient and `fee` from sender to the block's proposer; the proposer also gets the
genesis block reward.  Nothing else creates or destroys value, so the total supply
after height h is the genesis allocation plus h rewards (`expected_supply`).

Applying a block computes its effects (new account values and the undo record)
without touching the state; `commit` then installs them.  This lets the runtime
write a block to the database before the in-memory state moves, and lets the
engine validate a proposed block without committing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ledger.codec import MAX_AMOUNT, DecodeError, Reader, Writer
from ledger.transaction import Transaction

Account = tuple[int, int]  # (balance, nonce)
EMPTY_ACCOUNT: Account = (0, 0)


class StateError(ValueError):
    """A transaction that cannot apply to the state; `reason` is a stable code."""

    def __init__(self, reason: str, message: str, index: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.index = index


@dataclass(frozen=True, slots=True)
class ValidatorUpdate:
    """A change to the validator set that executing a block decided (as ABCI's EndBlock
    returns them): the key's power becomes `power`; 0 removes it.  The engine receives
    them with the block's commit (BlockCommitted) and applies them to later heights."""

    public_key: bytes
    power: int


@dataclass(frozen=True, slots=True)
class BlockEffects:
    changes: dict[bytes, Account]  # new value of every touched account
    undo: dict[bytes, Account | None]  # its value before the block; None: it did not exist
    fees: int
    reward: int
    # Transfers change no validator; staking transactions will (proof of stake).
    validator_updates: tuple[ValidatorUpdate, ...] = ()


def apply_transactions(
    accounts: Mapping[bytes, Account], transactions: Iterable[Transaction], proposer: bytes, reward: int
) -> BlockEffects:
    """The effects of a block on `accounts`; raises StateError naming the first bad transaction."""
    changes: dict[bytes, Account] = {}
    undo: dict[bytes, Account | None] = {}

    def load(address: bytes) -> Account:
        value = changes.get(address)
        if value is not None:
            return value
        before = accounts.get(address)
        undo[address] = before
        return before if before is not None else EMPTY_ACCOUNT

    fees = 0
    for index, tx in enumerate(transactions):
        sender = tx.sender_address
        balance, nonce = load(sender)
        if tx.nonce != nonce:
            raise StateError("bad_nonce", f"nonce {tx.nonce} does not follow the account nonce {nonce}", index)
        cost = tx.amount + tx.fee
        if cost > balance:
            raise StateError("insufficient_balance", f"balance {balance} does not cover {cost}", index)
        changes[sender] = (balance - cost, nonce + 1)
        recipient_balance, recipient_nonce = load(tx.recipient)
        if recipient_balance + tx.amount > MAX_AMOUNT:
            raise StateError("balance_overflow", "recipient balance would overflow", index)
        changes[tx.recipient] = (recipient_balance + tx.amount, recipient_nonce)
        fees += tx.fee
    if fees or reward:
        proposer_balance, proposer_nonce = load(proposer)
        if proposer_balance + fees + reward > MAX_AMOUNT:
            raise StateError("balance_overflow", "proposer balance would overflow")
        changes[proposer] = (proposer_balance + fees + reward, proposer_nonce)
    return BlockEffects(changes, undo, fees, reward)


class Overlay:
    """Account values layered over a base mapping without touching it: a branch of blocks is
    checked against the state it would produce before anything changes (reorgs)."""

    _GONE = object()

    def __init__(self, base: Mapping[bytes, Account]):
        self.base = base
        self.changes: dict[bytes, object] = {}

    def get(self, address: bytes, default: Account | None = None) -> Account | None:
        value = self.changes.get(address, None)
        if value is None:
            return self.base.get(address, default)
        return default if value is self._GONE else value  # type: ignore[return-value]

    def revert(self, undo: Mapping[bytes, Account | None]) -> None:
        for address, before in undo.items():
            self.changes[address] = self._GONE if before is None else before

    def commit(self, effects: BlockEffects) -> None:
        self.changes.update(effects.changes)


class State:
    """Every account in memory; the chain store keeps the durable copy."""

    def __init__(self, accounts: dict[bytes, Account] | None = None):
        self.accounts: dict[bytes, Account] = accounts if accounts is not None else {}

    def get(self, address: bytes) -> Account:
        return self.accounts.get(address, EMPTY_ACCOUNT)

    def apply(self, transactions: Iterable[Transaction], proposer: bytes, reward: int) -> BlockEffects:
        return apply_transactions(self.accounts, transactions, proposer, reward)

    def commit(self, effects: BlockEffects) -> None:
        self.accounts.update(effects.changes)

    def revert(self, undo: Mapping[bytes, Account | None]) -> None:
        for address, before in undo.items():
            if before is None:
                self.accounts.pop(address, None)
            else:
                self.accounts[address] = before

    def total_supply(self) -> int:
        return sum(balance for balance, _ in self.accounts.values())


def encode_undo(undo: Mapping[bytes, Account | None]) -> bytes:
    """Undo records in canonical form, sorted by address: the store keeps one per block."""
    writer = Writer().u32(len(undo))
    for address in sorted(undo):
        before = undo[address]
        if before is None:
            writer.fixed(address, 20).u8(0)
        else:
            writer.fixed(address, 20).u8(1).u64(before[0]).u64(before[1])
    return writer.bytes()


def decode_undo(data: bytes) -> dict[bytes, Account | None]:
    reader = Reader(data)
    undo: dict[bytes, Account | None] = {}
    previous = b""
    for _ in range(reader.u32("undo.count")):
        address = reader.fixed(20, "undo.address")
        # Strictly increasing addresses and a 0/1 flag: the encoding of a record is unique.
        if address <= previous:
            raise DecodeError("undo.address", "addresses must be sorted and distinct")
        previous = address
        exists = reader.u8("undo.exists")
        if exists == 1:
            undo[address] = (reader.amount("undo.balance"), reader.amount("undo.nonce"))
        elif exists == 0:
            undo[address] = None
        else:
            raise DecodeError("undo.exists", f"flag {exists} is neither 0 nor 1")
    reader.finish()
    return undo

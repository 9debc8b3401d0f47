"""The account state machine: apply a block's transactions, undo a block.

Accounts hold a balance, a nonce and, for proof of stake, an optional `Stake`.  A
transfer moves `amount` from sender to recipient and `fee` from sender to the block's
proposer; the proposer also gets the genesis block reward.  Nothing else creates or
destroys value, so the total supply (balances plus bonded and unbonding stake) after
height h is the genesis allocation and stakes plus h rewards, plus what stake ops issued,
minus what they burnt (`Genesis.expected_supply`).  Slashing destroys stake:
`Stake.slashed` keeps each account's total.

Applying a block computes its effects (new account values and the undo record)
without touching the state; `commit` then installs them.  This lets the runtime
write a block to the database before the in-memory state moves, and lets the
engine validate a proposed block without committing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ledger import staking
from ledger.codec import MAX_AMOUNT, DecodeError, Reader, Writer
from ledger.staking import Stake
from ledger.transaction import Transaction, TxKind

# (balance, nonce, stake): a plain tuple, not a NamedTuple, because the transfer path
# builds two per transaction and a tuple subclass made apply_transactions 1.3-1.7x slower
# (construction through tuple.__new__, and unpacking leaves the interpreter's fast path).
Account = tuple[int, int, Stake | None]
EMPTY_ACCOUNT: Account = (0, 0, None)
_NO_STAKE = Stake()


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
    # Transfers change no validator set; an engine that decides one from the state says so.
    validator_updates: tuple[ValidatorUpdate, ...] = ()
    # What the block's stake and unstake transactions did (ledger/staking.py), in order.
    stake_changes: tuple[staking.StakeChange, ...] = ()
    issued: int = 0  # money the block's stake ops created (rewards), beside the block reward
    burned: int = 0  # money its stake ops destroyed (penalties, slashings)


def apply_transactions(
    accounts: Mapping[bytes, Account], transactions: Iterable[Transaction], proposer: bytes, reward: int,
    ops: Iterable[staking.StakeOp] = (),
) -> BlockEffects:
    """The effects of a block on `accounts`: first the stake `ops` its header orders (in
    order), then its transactions, then fees and reward to the proposer.  Raises StateError
    naming the first bad transaction (or op)."""
    changes: dict[bytes, Account] = {}
    undo: dict[bytes, Account | None] = {}

    def load(address: bytes) -> Account:
        value = changes.get(address)
        if value is not None:
            return value
        before = accounts.get(address)
        undo[address] = before
        return before if before is not None else EMPTY_ACCOUNT

    issued = burned = 0
    for op in ops:
        try:
            address, value, created, destroyed = staking.apply_op(load, op)
        except staking.BadStakeOp as exc:
            raise StateError("bad_stake_op", str(exc)) from None
        changes[address] = value
        issued += created
        burned += destroyed
    fees = 0
    stakes = False
    for index, tx in enumerate(transactions):
        sender = tx.sender_address
        balance, nonce, stake = load(sender)
        if tx.nonce != nonce:
            raise StateError("bad_nonce", f"nonce {tx.nonce} does not follow the account nonce {nonce}", index)
        if tx.kind != TxKind.TRANSFER:
            changes[sender] = _apply_staking(tx, balance, nonce, stake, index)
            fees += tx.fee
            stakes = True
            continue
        cost = tx.amount + tx.fee
        if cost > balance:
            raise StateError("insufficient_balance", f"balance {balance} does not cover {cost}", index)
        changes[sender] = (balance - cost, nonce + 1, stake)
        recipient_balance, recipient_nonce, recipient_stake = load(tx.recipient)
        if recipient_balance + tx.amount > MAX_AMOUNT:
            raise StateError("balance_overflow", "recipient balance would overflow", index)
        changes[tx.recipient] = (recipient_balance + tx.amount, recipient_nonce, recipient_stake)
        fees += tx.fee
    if fees or reward:
        proposer_balance, proposer_nonce, proposer_stake = load(proposer)
        if proposer_balance + fees + reward > MAX_AMOUNT:
            raise StateError("balance_overflow", "proposer balance would overflow")
        changes[proposer] = (proposer_balance + fees + reward, proposer_nonce, proposer_stake)
    changed = staking.stake_changes_of(transactions) if stakes else ()
    return BlockEffects(changes, undo, fees, reward, stake_changes=changed, issued=issued, burned=burned)


def _apply_staking(tx: Transaction, balance: int, nonce: int, stake: Stake | None, index: int) -> Account:
    """A stake bonds its amount from the balance; an unstake is a request the engine carries
    out at an epoch boundary (a StakeOp), so here it only needs the stake to exist."""
    bonded, unbonding, release, slashed = stake if stake is not None else (0, 0, 0, 0)
    if tx.kind == TxKind.STAKE:
        if tx.amount + tx.fee > balance:
            raise StateError("insufficient_balance", f"balance {balance} does not cover {tx.amount + tx.fee}", index)
        if bonded + tx.amount > MAX_AMOUNT:
            raise StateError("balance_overflow", "bonded stake would overflow", index)
        return (balance - tx.amount - tx.fee, nonce + 1, Stake(bonded + tx.amount, unbonding, release, slashed))
    if tx.fee > balance:
        raise StateError("insufficient_balance", f"balance {balance} does not cover the fee {tx.fee}", index)
    if tx.amount > bonded:
        raise StateError("insufficient_stake", f"only {bonded} is bonded, not {tx.amount}", index)
    return (balance - tx.fee, nonce + 1, stake)


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

    @classmethod
    def from_genesis(cls, genesis) -> State:
        """The state at genesis (ledger.genesis.Genesis): allocations, and the stakes bonded."""
        return cls(genesis.initial_accounts())

    @classmethod
    def from_allocations(cls, allocations: Mapping[bytes, int]) -> State:
        """The state at genesis: each allocation a fresh account without stake."""
        return cls({address: (balance, 0, None) for address, balance in allocations.items()})

    def get(self, address: bytes) -> Account:
        return self.accounts.get(address, EMPTY_ACCOUNT)

    def apply(self, transactions: Iterable[Transaction], proposer: bytes, reward: int,
              ops: Iterable[staking.StakeOp] = ()) -> BlockEffects:
        return apply_transactions(self.accounts, transactions, proposer, reward, ops)

    def commit(self, effects: BlockEffects) -> None:
        self.accounts.update(effects.changes)

    def revert(self, undo: Mapping[bytes, Account | None]) -> None:
        for address, before in undo.items():
            if before is None:
                self.accounts.pop(address, None)
            else:
                self.accounts[address] = before

    def total_supply(self) -> int:
        """Balances plus stake still held (bonded or unbonding); slashed stake is gone."""
        total = 0
        for balance, _, stake in self.accounts.values():
            total += balance if stake is None else balance + stake.bonded + stake.unbonding
        return total


# The u8 flag of an undo entry.  Accounts without stake keep the two-amount form that
# predates stake, so old records still decode and stake costs nothing until it exists.
_UNDO_ABSENT = 0
_UNDO_ACCOUNT = 1
_UNDO_STAKED = 2


def encode_undo(undo: Mapping[bytes, Account | None]) -> bytes:
    """Undo records in canonical form, sorted by address: the store keeps one per block."""
    writer = Writer().u32(len(undo))
    for address in sorted(undo):
        before = undo[address]
        writer.fixed(address, 20)
        if before is None:
            writer.u8(_UNDO_ABSENT)
            continue
        balance, nonce, stake = before
        if stake is None:
            writer.u8(_UNDO_ACCOUNT).u64(balance).u64(nonce)
        elif stake == _NO_STAKE:
            # Would decode as None: the in-memory state and a restarted node would differ.
            raise ValueError(f"account {address.hex()} holds Stake() instead of None")
        else:
            writer.u8(_UNDO_STAKED).u64(balance).u64(nonce)
            writer.u64(stake.bonded).u64(stake.unbonding).u64(stake.release_epoch).u64(stake.slashed)
    return writer.bytes()


def decode_undo(data: bytes) -> dict[bytes, Account | None]:
    reader = Reader(data)
    undo: dict[bytes, Account | None] = {}
    previous = b""
    for _ in range(reader.u32("undo.count")):
        address = reader.fixed(20, "undo.address")
        # Strictly increasing addresses, known flags and no all-zero stake: the encoding
        # of a record is unique.
        if address <= previous:
            raise DecodeError("undo.address", "addresses must be sorted and distinct")
        previous = address
        flag = reader.u8("undo.exists")
        if flag == _UNDO_ABSENT:
            undo[address] = None
        elif flag == _UNDO_ACCOUNT:
            undo[address] = (reader.amount("undo.balance"), reader.amount("undo.nonce"), None)
        elif flag == _UNDO_STAKED:
            balance, nonce = reader.amount("undo.balance"), reader.amount("undo.nonce")
            stake = Stake(
                reader.amount("undo.bonded"), reader.amount("undo.unbonding"),
                reader.amount("undo.release_epoch"), reader.amount("undo.slashed"),
            )
            if stake == _NO_STAKE:
                raise DecodeError("undo.stake", "an account without stake is written with flag 1")
            undo[address] = (balance, nonce, stake)
        else:
            raise DecodeError("undo.exists", f"flag {flag} is not 0, 1 or 2")
    reader.finish()
    return undo

"""Transactions: what a sender signs, how it is encoded, and its id.

A transaction is valid on its own (stateless checks: sizes, ranges, chain id,
signature) before the state decides whether it can apply (nonce, balance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

from ledger import crypto
from ledger.address import ADDRESS_SIZE, address_of
from ledger.codec import MAX_AMOUNT, DecodeError, Reader, Writer

TX_FORMAT = 1
MAX_CHAIN_ID = 64
MAX_PAYLOAD = 256
# format + chain id + nonce + sender + recipient + amount + fee + kind + payload + signature
MAX_TX_SIZE = 1 + 4 + MAX_CHAIN_ID + 8 + 33 + 20 + 8 + 8 + 1 + 4 + MAX_PAYLOAD + 64

CHAIN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\Z")  # \Z: "$" would let a trailing newline through


class TxKind(IntEnum):
    TRANSFER = 0
    STAKE = 1  # bond `amount` of the sender's balance; payload: the validator key it signs with
    UNSTAKE = 2  # ask to unbond `amount` of the sender's bonded stake (proof of stake moves it later)


_STAKING_KINDS = (TxKind.STAKE, TxKind.UNSTAKE)


def accepted_kinds(staking: bool) -> tuple[TxKind, ...]:
    """The kinds a chain takes: stake and unstake only where its engine bonds stake."""
    return tuple(kind for kind in TxKind if staking or kind not in _STAKING_KINDS)


class InvalidTransaction(ValueError):
    """A transaction that fails a stateless check; `reason` is a stable code, `field` the culprit."""

    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.field = field


@dataclass(frozen=True, slots=True)
class Transaction:
    chain_id: str
    nonce: int
    sender: bytes  # compressed public key, 33 bytes
    recipient: bytes  # account id, 20 bytes
    amount: int
    fee: int
    kind: int = TxKind.TRANSFER
    payload: bytes = b""
    signature: bytes = b""
    # Derived once and kept: a transaction is hashed, verified and stored many times over.
    # Not init fields, so dataclasses.replace() never carries a stale cache into a copy.
    _encoded: bytes = field(default=b"", init=False, compare=False, repr=False)
    _id: bytes = field(default=b"", init=False, compare=False, repr=False)
    _sender_address: bytes = field(default=b"", init=False, compare=False, repr=False)

    # --- encoding -------------------------------------------------------------------------
    def unsigned_bytes(self) -> bytes:
        if self._encoded:
            return self._encoded[: -crypto.SIGNATURE_SIZE]
        return (
            Writer()
            .u8(TX_FORMAT)
            .text(self.chain_id)
            .u64(self.nonce)
            .fixed(self.sender, crypto.PUBLIC_KEY_SIZE)
            .fixed(self.recipient, ADDRESS_SIZE)
            .u64(self.amount)
            .u64(self.fee)
            .u8(self.kind)
            .var_bytes(self.payload)
            .bytes()
        )

    def encode(self) -> bytes:
        if not self._encoded:
            if len(self.signature) != crypto.SIGNATURE_SIZE:
                raise ValueError("transaction is not signed")
            object.__setattr__(self, "_encoded", self.unsigned_bytes() + self.signature)
        return self._encoded

    @property
    def id(self) -> bytes:
        if not self._id:
            object.__setattr__(self, "_id", crypto.sha256(self.encode()))
        return self._id

    @property
    def sender_address(self) -> bytes:
        if not self._sender_address:
            object.__setattr__(self, "_sender_address", address_of(self.sender))
        return self._sender_address

    @property
    def cost(self) -> int:
        """What it takes from the sender's balance: an unstake request spends only its fee."""
        return self.fee if self.kind == TxKind.UNSTAKE else self.amount + self.fee

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        if len(data) > MAX_TX_SIZE:
            raise DecodeError("transaction", f"{len(data)} bytes exceeds the limit of {MAX_TX_SIZE}")
        reader = Reader(data)
        tx = cls.read(reader)
        reader.finish()
        return tx

    @classmethod
    def read(cls, reader: Reader) -> Transaction:
        start = reader.pos
        version = reader.u8("format")
        if version != TX_FORMAT:
            raise DecodeError("format", f"unknown transaction format {version}")
        chain_id = reader.text("chain_id", MAX_CHAIN_ID)
        nonce = reader.amount("nonce")
        sender = reader.fixed(crypto.PUBLIC_KEY_SIZE, "sender")
        recipient = reader.fixed(ADDRESS_SIZE, "recipient")
        amount = reader.amount("amount")
        fee = reader.amount("fee")
        kind = reader.u8("kind")
        payload = reader.var_bytes("payload", MAX_PAYLOAD)
        signature = reader.fixed(crypto.SIGNATURE_SIZE, "signature")
        tx = cls(chain_id, nonce, sender, recipient, amount, fee, kind, payload, signature)
        object.__setattr__(tx, "_encoded", bytes(reader.data[start : reader.pos]))
        return tx

    # --- signing --------------------------------------------------------------------------
    def signed(self, key: crypto.PrivateKey) -> Transaction:
        if key.public_key != self.sender:
            raise ValueError("the signing key is not the sender's")
        signature = key.sign(crypto.DOMAIN_TX, self.unsigned_bytes())
        return Transaction(
            self.chain_id, self.nonce, self.sender, self.recipient, self.amount, self.fee,
            self.kind, self.payload, signature,
        )

    def signature_valid(self) -> bool:
        return crypto.verify(self.sender, crypto.DOMAIN_TX, self.unsigned_bytes(), self.signature)

    # --- stateless validity ----------------------------------------------------------------
    def check_stateless(self, chain_id: str, verify_signature: bool = True, staking: bool = False) -> None:
        """Raise InvalidTransaction unless the transaction could be valid on `chain_id`
        (`staking`: the chain's engine bonds stake, so STAKE and UNSTAKE are allowed)."""
        if self.chain_id != chain_id:
            raise InvalidTransaction(
                "wrong_chain", f"transaction is for chain '{self.chain_id}', this is '{chain_id}'", "chain_id"
            )
        if self.kind != TxKind.TRANSFER:
            self._check_staking(staking)
        if self.amount <= 0:
            raise InvalidTransaction("zero_amount", "amount must be positive", "amount")
        if not (0 <= self.amount <= MAX_AMOUNT and 0 <= self.fee <= MAX_AMOUNT):
            raise InvalidTransaction("amount_overflow", f"amount and fee are at most {MAX_AMOUNT}", "amount")
        if self.amount + self.fee > MAX_AMOUNT:
            raise InvalidTransaction("amount_overflow", "amount plus fee overflows 63 bits", "amount")
        if not crypto.is_valid_public_key(self.sender):
            raise InvalidTransaction("bad_public_key", "sender is not a valid compressed public key", "sender")
        if verify_signature:
            if not crypto.is_low_s(self.signature):
                raise InvalidTransaction("high_s_signature", "signature is not in low-S form", "signature")
            if not self.signature_valid():
                raise InvalidTransaction("bad_signature", "signature does not verify for the sender", "signature")

    def _check_staking(self, staking: bool) -> None:
        if self.kind not in _STAKING_KINDS:
            raise InvalidTransaction("unknown_kind", f"unknown transaction kind {self.kind}", "kind")
        if not staking:
            raise InvalidTransaction("staking_not_supported",
                                     "this chain's consensus engine bonds no stake: stake and unstake are refused", "kind")
        if self.recipient != self.sender_address:
            raise InvalidTransaction("bad_recipient", "a stake or unstake names the sender's own address as recipient",
                                     "recipient")
        if self.kind == TxKind.STAKE:
            if len(self.payload) != crypto.PUBLIC_KEY_SIZE or not crypto.is_valid_public_key(self.payload):
                raise InvalidTransaction("bad_validator_key", "a stake's payload is the 33-byte compressed validator key",
                                         "payload")
        elif self.payload:
            raise InvalidTransaction("bad_payload", "an unstake carries no payload", "payload")


def new_stake(
    key: crypto.PrivateKey, chain_id: str, nonce: int, amount: int, fee: int = 0, validator_key: bytes | None = None,
) -> Transaction:
    """Build and sign a stake: bond `amount` for the validator key (default: the sender's own)."""
    payload = validator_key if validator_key is not None else key.public_key
    return Transaction(chain_id, nonce, key.public_key, address_of(key.public_key), amount, fee, TxKind.STAKE,
                       payload).signed(key)


def new_unstake(key: crypto.PrivateKey, chain_id: str, nonce: int, amount: int, fee: int = 0) -> Transaction:
    """Build and sign a request to unbond `amount` of the sender's stake."""
    return Transaction(chain_id, nonce, key.public_key, address_of(key.public_key), amount, fee,
                       TxKind.UNSTAKE).signed(key)


def new_transfer(
    key: crypto.PrivateKey, chain_id: str, nonce: int, recipient: bytes, amount: int, fee: int = 0,
    payload: bytes = b"",
) -> Transaction:
    """Build and sign a transfer."""
    return Transaction(chain_id, nonce, key.public_key, recipient, amount, fee, TxKind.TRANSFER, payload).signed(key)

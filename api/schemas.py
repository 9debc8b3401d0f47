"""The JSON shapes of the REST API, shared by the server and the client.

Every model here describes bytes on the wire: hashes, ids, keys, signatures and
payloads are lower-case hex strings, addresses are bech32m strings, amounts are
JSON integers.  Request models refuse unknown fields; response models ignore them,
so an older client keeps working against a newer node.

The converters at the bottom (`transaction_to_json`, `transaction_from_json`,
`transaction_out`, `decode_raw_transaction`) are the one place where a ledger
`Transaction` meets its JSON form; the server, the wallet and the tests all use them.
`engine_status_json` (with `validator_json` and `evidence_json`) is the same for a
consensus engine's `EngineStatus`: the API and the node's `extra.engine` share it.

This module imports no web framework: the client (and the wallet through it) uses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError
from pydantic_core import PydanticCustomError

from ledger import crypto
from ledger.address import InvalidAddress, decode_address, encode_address
from ledger.codec import MAX_AMOUNT, DecodeError
from ledger.engine_status import Checkpoint, EngineStatus, Finality, ValidatorStatus
from ledger.evidence import EvidenceRecord
from ledger.transaction import MAX_CHAIN_ID, MAX_PAYLOAD, MAX_TX_SIZE, Transaction, TxKind

MAX_ADDRESS_LENGTH = 90

TxStatus = Literal["pending", "included", "final", "unknown"]

KIND_BY_NAME: dict[str, int] = {kind.name.lower(): int(kind) for kind in TxKind}
NAME_BY_KIND: dict[int, str] = {value: name for name, value in KIND_BY_NAME.items()}

_HEX = re.compile(r"[0-9a-fA-F]*")

# The OpenAPI document states each constraint the server enforces (as JSON Schema, which
# the server's own checks do not use: they answer with the precise reasons of docs/api.md).
HEX_BYTES_PATTERN = "^(?:[0-9a-fA-F]{2})*$"
# The smallest canonical transaction: a one-character chain id and no payload.
MIN_TX_SIZE = 152
# An address field; api/openapi.py replaces the mark with the network's bech32m pattern.
ADDRESS_MARK = "x-ledger-address"


def hex_pattern(size: int) -> str:
    return f"^[0-9a-fA-F]{{{2 * size}}}$"


class InvalidInput(ValueError):
    """Input that cannot become a ledger value; `reason` is the stable problem code,
    `field` the offending JSON field (``transactions[3].nonce`` style)."""

    def __init__(self, reason: str, message: str, field: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field


# --- field types ---------------------------------------------------------------------------


def _hex_field(size: int | None = None, max_size: int | None = None, min_size: int = 0, pattern: str | None = None) -> Any:
    """A hex string (either case, normalised to lower case) of exactly `size` bytes
    or at most `max_size` bytes.  Errors carry the reasons `bad_hex` and `bad_length`."""

    def check(value: str) -> str:
        if len(value) % 2 or not _HEX.fullmatch(value):
            raise PydanticCustomError("bad_hex", "not an even-length hex string")
        if size is not None and len(value) != 2 * size:
            raise PydanticCustomError(
                "bad_length", "expected {expected} hex characters, got {actual}",
                {"expected": 2 * size, "actual": len(value)},
            )
        if max_size is not None and len(value) > 2 * max_size:
            raise PydanticCustomError(
                "bad_length", "at most {expected} hex characters, got {actual}",
                {"expected": 2 * max_size, "actual": len(value)},
            )
        return value.lower()

    if pattern is None:
        pattern = hex_pattern(size) if size is not None else HEX_BYTES_PATTERN
    schema: dict[str, Any] = {"pattern": pattern}
    if max_size is not None:
        schema.update(minLength=2 * min_size, maxLength=2 * max_size)
    return Annotated[str, Strict(), AfterValidator(check), Field(json_schema_extra=schema)]


def _below_max_amount(value: int) -> int:
    if value > MAX_AMOUNT:
        raise PydanticCustomError("amount_overflow", "at most {maximum}", {"maximum": MAX_AMOUNT})
    return value


def _known_kind(value: str) -> str:
    if value not in KIND_BY_NAME:
        raise PydanticCustomError(
            "unknown_kind", "unknown transaction kind; known: {known}", {"known": ", ".join(KIND_BY_NAME)}
        )
    return value


# A compressed key starts 02 or 03; other prefixes are refused as bad_public_key.
PublicKeyHex = _hex_field(size=crypto.PUBLIC_KEY_SIZE, pattern=f"^0[23][0-9a-fA-F]{{{2 * crypto.PUBLIC_KEY_SIZE - 2}}}$")
SignatureHex = _hex_field(size=crypto.SIGNATURE_SIZE)
PayloadHex = _hex_field(max_size=MAX_PAYLOAD)
RawHex = _hex_field(max_size=MAX_TX_SIZE, min_size=MIN_TX_SIZE)
Amount = Annotated[
    int, Strict(), Field(ge=0, json_schema_extra={"maximum": MAX_AMOUNT}), AfterValidator(_below_max_amount)
]
Count = Annotated[int, Strict(), Field(ge=0, le=MAX_AMOUNT)]
AddressText = Annotated[
    str, Strict(), Field(min_length=1, max_length=MAX_ADDRESS_LENGTH, json_schema_extra={ADDRESS_MARK: True})
]
KindName = Annotated[str, Strict(), AfterValidator(_known_kind), Field(json_schema_extra={"enum": list(KIND_BY_NAME)})]
ChainId = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_CHAIN_ID)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests ------------------------------------------------------------------------------


class TransactionFields(BaseModel):
    """The signed fields of a transaction, as JSON."""

    chain_id: ChainId
    nonce: Count
    sender: PublicKeyHex = Field(description="compressed secp256k1 public key, 33 bytes hex")
    recipient: AddressText = Field(description="bech32m address with the network's prefix")
    amount: Amount = Field(json_schema_extra={"minimum": 1})
    fee: Amount
    kind: KindName = Field(description="transaction kind: " + ", ".join(KIND_BY_NAME))
    payload: PayloadHex = ""
    signature: SignatureHex = Field(description="compact r||s low-S ECDSA signature, 64 bytes hex")


class TransactionJson(TransactionFields, _Request):
    """A signed transaction submitted field by field."""


class RawTransaction(_Request):
    """A signed transaction submitted as the hex of its canonical encoding."""

    raw: RawHex


SubmitItem = RawTransaction | TransactionJson


class BatchRequest(_Request):
    transactions: list[SubmitItem]


# --- responses -----------------------------------------------------------------------------


class ProblemOut(_Response):
    """RFC 9457 problem details, with the extension members `reason` and `field`."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str = ""
    reason: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


class SubmitOut(_Response):
    id: str
    status: TxStatus
    duplicate: bool = False
    timed_out: bool = False


class BatchItemOut(_Response):
    index: int
    accepted: bool
    id: str | None = None
    duplicate: bool = False
    status: TxStatus | None = None  # only with wait=final
    problem: ProblemOut | None = None


class BatchOut(_Response):
    results: list[BatchItemOut]
    accepted: int
    rejected: int
    timed_out: bool = False


class TransactionOut(TransactionFields, _Response):
    # Any kind name: a client older than the node can still read blocks holding new kinds.
    kind: str
    id: str
    sender_address: str


class TransactionStatusOut(TransactionOut):
    status: TxStatus
    block_height: int | None = None
    block_hash: str | None = None
    index: int | None = None
    confirmations: int = 0
    timestamp: int | None = Field(default=None, description="of the including block, ms since the epoch")


class BlockHeaderOut(_Response):
    height: int
    hash: str
    parent: str
    chain_id: str
    version: int
    timestamp: int = Field(description="ms since the epoch")
    tx_root: str
    tx_count: int
    proposer: str
    extra: str
    seal: str
    status: TxStatus
    confirmations: int
    size: int = 0


class EvidenceOut(_Response):
    validator: str = Field(description="the validator that misbehaved")
    kind: str = Field(description="`duplicate_vote` or `duplicate_proposal`")
    height: int = Field(description="where it misbehaved")
    round: int
    evidence: str = Field(description="hex of the proof (docs/protocol.md, Evidence): two conflicting signed messages")


class RecordedEvidenceOut(EvidenceOut):
    recorded_at: int = Field(description="height of the block that records it")


class EvidenceListOut(_Response):
    engine: str
    evidence: list[EvidenceOut] = Field(description="what this node's engine has seen (in memory, newest 1000)")
    recorded: list[RecordedEvidenceOut] = Field(description="what the chain records, newest block first")
    next: str | None = Field(default=None, description="`height:index`, pass as `before`; null at the end")


class ValidatorOut(_Response):
    address: str = Field(description="bech32m address of the validator's key")
    public_key: str
    power: int = Field(description="voting power, or stake")
    blocks_proposed: int = Field(description="blocks of this node's chain it proposed")
    last_signed_height: int | None = Field(description="the newest height it signed; null: none this node saw")
    jailed: bool = False
    slashed: int = Field(default=0, description="amount taken for misbehaviour")
    status: str | None = Field(default=None, description=(
        "proof of stake: pending, active, exiting, exited or slashed; null where the set is fixed"))
    attested_previous_epoch: bool | None = Field(default=None, description=(
        "proof of stake: its vote for the previous epoch is on the chain; null under other engines"))
    attested_current_epoch: bool | None = Field(default=None, description=(
        "proof of stake: its vote for the current epoch is on the chain"))


class CheckpointOut(_Response):
    epoch: int
    block_hash: str


class EngineStatusOut(_Response):
    """What the consensus engine reports, in one schema for every engine: a field the
    engine has no notion of is null (proof of work has no round, BFT no epoch)."""

    engine: str
    finality: Finality = Field(description="how a block becomes final under this engine")
    role: str = Field(description="what this node does: producer, follower, validator, miner, ...")
    phase: str = Field(description="what the engine waits for now")
    height: int | None = Field(default=None, description="the height the engine works on")
    round: int | None = None
    step: str | None = None
    term: int | None = None
    slot: int | None = Field(default=None, description="proof of stake: the current slot")
    epoch: int | None = None
    justified: CheckpointOut | None = None
    finalized: CheckpointOut | None = None
    validators: list[ValidatorOut] | None = Field(default=None, description="null: the engine has no validator set")
    total_power: int | None = None
    quorum_power: int | None = None
    evidence: list[EvidenceOut] = Field(default_factory=list, description="misbehaviour the engine saw")
    details: dict[str, Any] = Field(default_factory=dict, description="engine-specific state, for debugging")


class ConsensusOut(_Response):
    engine: str
    height: int = Field(description="this node's head height")
    state: EngineStatusOut


class ValidatorsOut(_Response):
    engine: str
    finality: Finality
    validators: list[ValidatorOut] = Field(description="empty when the engine has no validator set")
    total_power: int | None = None
    quorum_power: int | None = None
    note: str | None = Field(default=None, description="why the list is empty")


class BlockOut(BlockHeaderOut):
    certificate: str = ""
    labels: dict[str, str] = Field(default_factory=dict, description=(
        "what the engine says of the block, in order (proof of stake: slot, epoch, missed slots, checkpoint, ...)"))
    evidence: list[EvidenceOut] = Field(default_factory=list, description="misbehaviour this block records")
    transactions: list[TransactionOut] | None = None


class BlocksOut(_Response):
    blocks: list[BlockHeaderOut]
    next: int | None = Field(default=None, description="pass as `before` for the next page; null at the end")


class AccountOut(_Response):
    address: str
    balance: int
    nonce: int
    pending_nonce: int
    pending_count: int
    bonded: int = Field(default=0, description="proof of stake: bonded as validator stake (part of the supply, not spendable)")
    unbonding: int = Field(default=0, description="proof of stake: leaving the bond, spendable from `release_epoch`")
    release_epoch: int = Field(default=0, description="the epoch `unbonding` returns to the balance at")
    slashed: int = Field(default=0, description="taken from this account's stake for misbehaviour, in total")


class AccountTransactionsOut(_Response):
    address: str
    transactions: list[TransactionStatusOut]
    next: str | None = Field(default=None, description="`height:index`, pass as `before`; null at the end")


class MempoolOut(_Response):
    size: int
    capacity: int
    senders: int
    transactions: list[TransactionOut]


class NodeInfoOut(_Response):
    chain_id: str
    genesis_hash: str
    engine: str
    height: int
    head_hash: str
    head_timestamp: int
    finalized_height: int
    version: str
    address_prefix: str
    denomination: str
    decimals: int
    node_id: str
    syncing: bool = False
    node_key: str = Field(default="", description="the node key's public key (hex): a validator's key to stake for")
    sync_progress: float = 1.0
    peers: int = 0
    mempool_size: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)


class HealthOut(_Response):
    status: str
    height: int


class EventOut(_Response):
    kind: str
    data: dict[str, Any]


# --- validation errors as (reason, field, detail) -------------------------------------------

_TYPE_REASONS = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "json_invalid": "bad_json",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "string_too_short": "out_of_range",
    "string_too_long": "out_of_range",
    "too_short": "out_of_range",
    "too_long": "out_of_range",
    "finite_number": "out_of_range",
}
_CUSTOM_REASONS = {"bad_hex", "bad_length", "amount_overflow", "unknown_kind"}


def field_path(location: Sequence[str | int], prefix: str = "") -> str | None:
    """('transactions', 3, 'nonce') -> 'transactions[3].nonce' (after `prefix`)."""
    path = prefix
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or None


def validation_reason(error_type: str) -> str:
    if error_type in _CUSTOM_REASONS:
        return error_type
    reason = _TYPE_REASONS.get(error_type)
    if reason is not None:
        return reason
    if error_type.endswith(("_type", "_parsing")) or error_type.startswith("model_"):
        return "wrong_type"
    return "invalid_field"


def describe_errors(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> list[InvalidInput]:
    """Pydantic error dicts as InvalidInput values naming their field."""
    described = []
    for error in errors:
        reason = validation_reason(str(error.get("type", "")))
        described.append(InvalidInput(reason, str(error.get("msg", "invalid")), field_path(error.get("loc", ()), prefix)))
    return described


# --- converters ----------------------------------------------------------------------------


def kind_name(kind: int) -> str:
    return NAME_BY_KIND.get(kind, f"kind-{kind}")


def transaction_to_json(tx: Transaction, prefix: str) -> dict[str, Any]:
    """The submission JSON of a signed transaction (the TransactionJson shape)."""
    return {
        "chain_id": tx.chain_id,
        "nonce": tx.nonce,
        "sender": tx.sender.hex(),
        "recipient": encode_address(prefix, tx.recipient),
        "amount": tx.amount,
        "fee": tx.fee,
        "kind": kind_name(tx.kind),
        "payload": tx.payload.hex(),
        "signature": tx.signature.hex(),
    }


def transaction_out(tx: Transaction, prefix: str) -> dict[str, Any]:
    """The JSON the node shows for a transaction (the TransactionOut shape)."""
    shown = transaction_to_json(tx, prefix)
    shown["id"] = tx.id.hex()
    shown["sender_address"] = encode_address(prefix, tx.sender_address)
    return shown


def transaction_from_json(data: TransactionFields | Mapping[str, Any], prefix: str, field_prefix: str = "") -> Transaction:
    """A Transaction from its JSON form (a mapping, a TransactionJson or a TransactionOut).

    Raises InvalidInput naming the field: a schema error, an address of the wrong
    network or with a bad checksum, or (for a TransactionOut) an id that does not
    match the fields.
    """
    if not isinstance(data, TransactionFields):
        try:
            data = TransactionJson.model_validate(data)
        except ValidationError as exc:
            raise describe_errors(exc.errors(), field_prefix)[0] from None
    kind = KIND_BY_NAME.get(data.kind)
    if kind is None:
        raise InvalidInput("unknown_kind", f"unknown transaction kind {data.kind!r}", field_path(["kind"], field_prefix))
    try:
        recipient = decode_address(data.recipient, prefix)
    except InvalidAddress as exc:
        raise InvalidInput(exc.reason, str(exc), field_path(["recipient"], field_prefix)) from None
    tx = Transaction(
        chain_id=data.chain_id,
        nonce=data.nonce,
        sender=bytes.fromhex(data.sender),
        recipient=recipient,
        amount=data.amount,
        fee=data.fee,
        kind=kind,
        payload=bytes.fromhex(data.payload),
        signature=bytes.fromhex(data.signature),
    )
    if isinstance(data, TransactionOut) and tx.id.hex() != data.id:
        raise InvalidInput("id_mismatch", "the transaction fields do not hash to its id", field_path(["id"], field_prefix))
    return tx


def decode_raw_transaction(raw: Any, field: str = "raw") -> Transaction:
    """A Transaction from the hex of its canonical encoding; InvalidInput otherwise."""
    if not isinstance(raw, str):
        raise InvalidInput("wrong_type", "raw must be a hex string", field)
    if len(raw) > 2 * MAX_TX_SIZE:
        raise InvalidInput("bad_length", f"a transaction is at most {MAX_TX_SIZE} bytes", field)
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise InvalidInput("bad_hex", "raw is not a hex string", field) from None
    if 2 * len(data) != len(raw):  # bytes.fromhex skips whitespace; hex on the wire has none
        raise InvalidInput("bad_hex", "raw is not a hex string (it holds whitespace)", field)
    try:
        return Transaction.decode(data)
    except DecodeError as exc:
        raise InvalidInput("decode_error", f"not a canonical transaction encoding: {exc}", field) from None


def parse_hex(text: str, field: str, size: int | None = None) -> bytes:
    """Bytes from a hex string of exactly `size` bytes when given; InvalidInput otherwise."""
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise InvalidInput("bad_hex", f"{field} is not a hex string", field)
    if size is not None and len(text) != 2 * size:
        raise InvalidInput("bad_length", f"{field} is {2 * size} hex characters, got {len(text)}", field)
    return bytes.fromhex(text)


def parse_address(text: str, prefix: str, field: str = "address") -> bytes:
    try:
        return decode_address(text, prefix)
    except InvalidAddress as exc:
        raise InvalidInput(exc.reason, str(exc), field) from None


def evidence_json(record: EvidenceRecord, prefix: str) -> dict[str, Any]:
    """Evidence of misbehaviour as JSON (the EvidenceOut shape), whatever the engine."""
    return {
        "validator": encode_address(prefix, record.validator),
        "kind": record.kind,
        "height": record.height,
        "round": record.round,
        "evidence": record.data.hex(),
    }


def validator_json(validator: ValidatorStatus, prefix: str) -> dict[str, Any]:
    """One member of the validator set as JSON (the ValidatorOut shape)."""
    return {
        "address": encode_address(prefix, validator.address),
        "public_key": validator.public_key.hex(),
        "power": validator.power,
        "blocks_proposed": validator.blocks_proposed,
        "last_signed_height": validator.last_signed_height,
        "jailed": validator.jailed,
        "slashed": validator.slashed,
        "status": validator.status,
        "attested_previous_epoch": validator.attested_previous_epoch,
        "attested_current_epoch": validator.attested_current_epoch,
    }


def _checkpoint_json(checkpoint: Checkpoint | None) -> dict[str, Any] | None:
    return None if checkpoint is None else {"epoch": checkpoint.epoch, "block_hash": checkpoint.block_hash.hex()}


def engine_status_json(status: EngineStatus, prefix: str) -> dict[str, Any]:
    """An engine's status as JSON (the EngineStatusOut shape): GET /v1/consensus shows it,
    and the node puts it in GET /v1/node's `extra.engine`."""
    return {
        "engine": status.engine,
        "finality": status.finality.value,
        "role": status.role,
        "phase": status.phase,
        "height": status.height,
        "round": status.round,
        "step": status.step,
        "term": status.term,
        "slot": status.slot,
        "epoch": status.epoch,
        "justified": _checkpoint_json(status.justified),
        "finalized": _checkpoint_json(status.finalized),
        "validators": (
            None if status.validators is None else [validator_json(v, prefix) for v in status.validators]
        ),
        "total_power": status.total_power,
        "quorum_power": status.quorum_power,
        "evidence": [evidence_json(record, prefix) for record in status.evidence],
        "details": dict(status.details),
    }

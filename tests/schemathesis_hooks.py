"""schemathesis hooks for tests/test_api_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

The node's OpenAPI document states every constraint JSON Schema can express; three it
cannot: an address's bech32m checksum, a transaction's signature (and its sender being a
point on the curve, as a node key added to a Raft cluster must be), and the canonical
binary encoding behind `raw`.  A generator that
only follows the schema therefore draws addresses that fail their checksum and
transactions nobody signed, and `positive_data_acceptance` would blame the schema for
rules no schema can state.  So, for positive cases only, these hooks do what any real
client does with the generated values: checksum the address, and sign the transaction
with a funded dev key.  Every other generated value (nonces, amounts, fees, payloads,
page sizes, cursors, ...) reaches the server untouched, and negative cases are never
touched, so `negative_data_rejection` still sees exactly what the schema forbids.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import schemathesis
from schemathesis import GenerationMode

from ledger.address import encode_address
from ledger.codec import MAX_AMOUNT
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction, TxKind

PREFIX = os.environ.get("LEDGER_TEST_ADDRESS_PREFIX", "dev")
CHAIN_ID = os.environ.get("LEDGER_TEST_CHAIN_ID", "ledger-dev")
KEYS = dev_keys(3)
# A transaction that does go in is final within a block or two on the solo chain; one that
# waits on an earlier nonce must not hold the run for the whole (up to 60 s) timeout.
MAX_WAIT_SECONDS = 2.0
_ADDRESS = re.compile(f"(?i:{re.escape(PREFIX)})1[0-9a-zA-Z]{{38}}")


def _digest(value: Any) -> bytes:
    return hashlib.sha256(repr(value).encode()).digest()


def _checksummed(text: Any) -> Any:
    """A valid address of the network standing for a generated one (same case)."""
    if not isinstance(text, str) or not _ADDRESS.fullmatch(text):
        return text
    address = encode_address(PREFIX, _digest(text)[:20])
    return address.upper() if text.isupper() else address


def _signed(fields: dict[str, Any]) -> Transaction:
    # Numbers may come as integral floats (335.0), which the server reads as integers.
    key = KEYS[_digest(fields.get("sender"))[0] % len(KEYS)]
    amount = int(fields["amount"])
    return Transaction(
        CHAIN_ID, int(fields["nonce"]), key.public_key, _digest(fields.get("recipient"))[:20], amount,
        min(int(fields["fee"]), MAX_AMOUNT - amount), TxKind.TRANSFER, bytes.fromhex(fields.get("payload", "")),
    ).signed(key)


def _sign_body(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    if set(body) == {"raw"}:
        seed = _digest(body["raw"])
        fields = {"sender": seed, "recipient": seed, "nonce": seed[0] % 4, "amount": 1 + seed[1], "fee": seed[2] % 8}
        return {"raw": _signed(fields).encode().hex()}
    if {"nonce", "amount", "fee", "recipient"} <= set(body):
        tx = _signed(body)
        signed = {**body, "recipient": _checksummed(body["recipient"]), "sender": tx.sender.hex(),
                  "signature": tx.signature.hex()}
        if tx.fee != body["fee"]:  # amount + fee within 63 bits: a rule between two fields
            signed["fee"] = tx.fee
        return signed
    return body


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Any) -> Any:
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    for name, value in list((case.path_parameters or {}).items()):
        case.path_parameters[name] = _checksummed(value)
    if case.query and "validator" in case.query:
        case.query["validator"] = _checksummed(case.query["validator"])
    if case.method.upper() == "POST" and case.path == "/v1/admin/leadership" and isinstance(case.body, dict) \
            and isinstance(case.body.get("to"), str):
        case.body = {**case.body, "to": _checksummed(case.body["to"])}
    if case.method.upper() == "POST" and case.path == "/v1/admin/members" and isinstance(case.body, dict):
        if isinstance(case.body.get("remove"), str):
            case.body = {**case.body, "remove": _checksummed(case.body["remove"])}
        elif isinstance(case.body.get("add"), str):  # a point on the curve, as a node key is
            case.body = {**case.body, "add": KEYS[_digest(case.body["add"])[0] % len(KEYS)].public_key.hex()}
    if case.method.upper() == "POST" and case.path == "/v1/transactions":
        case.body = _sign_body(case.body)
    if case.query and case.query.get("wait") == "final":
        timeout = case.query.get("timeout")
        if not isinstance(timeout, (int, float)) or timeout > MAX_WAIT_SECONDS:
            case.query["timeout"] = MAX_WAIT_SECONDS
    return case

"""RFC 9457 problem details: every error the API answers, with one stable type per reason.

A problem is `application/problem+json` with `type` = ``urn:ledger:problem:<reason>``,
`title`, `status`, `detail`, and the extension members `reason` (the same code, easy
to switch on) and `field` (the offending input field, or null).  `docs/api.md` lists
every reason; a reason the node adds later that is not in this table is answered
with status 422 and a title made from its name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response

from api.schemas import InvalidInput

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ledger:problem:"
DEFAULT_REJECTION_STATUS = 422

# reason -> (HTTP status, title)
REASONS: dict[str, tuple[int, str]] = {
    # the request itself
    "bad_json": (400, "Body is not valid JSON"),
    "unsupported_charset": (415, "Body is not UTF-8"),
    "header_timeout": (408, "Request headers took too long"),
    "body_timeout": (408, "Request body took too long"),
    "body_too_large": (413, "Request body too large"),
    "bad_content_length": (400, "Content-Length is not a number"),
    "batch_too_large": (413, "Too many transactions in one batch"),
    "missing_field": (422, "A required field is missing"),
    "unknown_field": (422, "Unknown field"),
    "wrong_type": (422, "Field has the wrong type"),
    "out_of_range": (422, "Value out of range"),
    "invalid_value": (422, "Value not allowed"),
    "invalid_field": (422, "Invalid field"),
    "bad_hex": (400, "Not a hex string"),
    "bad_length": (400, "Wrong length"),
    "decode_error": (400, "Not a canonical encoding"),
    "bad_cursor": (400, "Bad pagination cursor"),
    "bad_block_ref": (400, "Not a block height or hash"),
    # addresses (ledger.address.InvalidAddress reasons)
    "bad_checksum": (400, "Address checksum does not match"),
    "wrong_network": (400, "Address is for another network"),
    "bad_character": (400, "Address has a character outside its alphabet"),
    "mixed_case": (400, "Address mixes upper and lower case"),
    "bad_format": (400, "Not an address"),
    "bad_padding": (400, "Address data has invalid padding"),
    # transactions that cannot be valid anywhere (ledger.transaction.InvalidTransaction)
    "wrong_chain": (422, "Transaction is for another chain"),
    "unknown_kind": (422, "Unknown transaction kind"),
    "zero_amount": (422, "Amount must be positive"),
    "amount_overflow": (422, "Amount out of range"),
    "bad_public_key": (422, "Sender is not a valid public key"),
    "high_s_signature": (422, "Signature is not in low-S form"),
    "bad_signature": (422, "Signature does not verify"),
    "staking_not_supported": (422, "This chain's engine bonds no stake"),
    "bad_recipient": (422, "A stake or unstake names the sender as recipient"),
    "bad_validator_key": (422, "A stake's payload is not a validator key"),
    "bad_payload": (422, "Payload not allowed for this kind"),
    # transactions that conflict with the node's state or mempool
    "nonce_too_low": (409, "Nonce already used"),
    "nonce_too_far": (409, "Nonce too far ahead of the account"),
    "bad_nonce": (409, "Nonce does not follow the account nonce"),
    "insufficient_balance": (409, "Balance does not cover amount plus fee"),
    "insufficient_stake": (409, "Unstake exceeds the bonded stake"),
    "balance_overflow": (409, "Recipient balance would overflow"),
    "replacement_underpriced": (409, "Replacement fee too low"),
    "sender_limit": (429, "Too many pending transactions from this sender"),
    "mempool_full": (503, "Mempool is full, retry later"),
    "shutting_down": (503, "Node is shutting down"),
    "syncing": (503, "Node is still syncing"),
    "unhealthy": (503, "Node is not making or importing blocks"),
    # the admin endpoint (api/admin.py)
    "unauthorized": (401, "Admin token missing or wrong"),
    "forbidden": (403, "Admin endpoint answers on loopback only"),
    "no_peer_network": (409, "This node has no peer network to lay faults on"),
    "no_leader_to_move": (409, "This engine has no leader to move"),
    "not_leader": (409, "This node is not the leader"),
    "not_a_member": (422, "Not a member of the cluster"),
    "already_leader": (409, "That member leads already"),
    "no_membership": (409, "This engine has no membership to change"),
    "change_pending": (409, "A membership change is under way"),
    "is_leader": (409, "The leader does not remove itself"),
    "already_member": (422, "Already a member of the cluster"),
    "too_many_members": (409, "The cluster has as many members as a block can name"),
    # linearizable reads (Raft's ReadIndex)
    "no_linearizable_reads": (409, "This engine has no leader to confirm reads with"),
    "leader_unavailable": (503, "No leader confirmed the read"),
    "read_timeout": (503, "The read was not confirmed in time"),
    # dev-chain controls (api/dev.py)
    "not_a_dev_chain": (409, "Not a dev chain"),
    "unknown_snapshot": (404, "No such snapshot"),
    "peers_connected": (409, "Cannot rewind a node with peers"),
    "mine_timeout": (504, "Blocks were not sealed in time"),
    # routing and the server
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "http_error": (400, "HTTP error"),
    "internal_error": (500, "Internal server error"),
    "too_many_connections": (503, "Too many connections"),
}

# Reasons whose answer tells the client to come back shortly.
RETRY_AFTER_SECONDS = {"mempool_full": 1, "shutting_down": 5, "syncing": 5, "too_many_connections": 1,
                       "leader_unavailable": 1, "read_timeout": 1}

# Starlette HTTPException status -> reason, for errors raised by routing.
REASON_BY_STATUS = {
    400: "http_error",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
}


class ProblemException(HTTPException):
    """Raised by a route to answer with a problem document.  An HTTPException, so that
    the framework passes it through unchanged wherever it is raised."""

    def __init__(self, document: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(document["status"], document["detail"], headers)
        self.document = document


def status_of(reason: str) -> int:
    return REASONS.get(reason, (DEFAULT_REJECTION_STATUS, ""))[0]


def title_of(reason: str) -> str:
    known = REASONS.get(reason)
    if known is not None:
        return known[1]
    return reason.replace("_", " ").capitalize() or "Error"


def problem(
    reason: str, detail: str = "", field: str | None = None, status: int | None = None, **extensions: Any
) -> dict[str, Any]:
    """The problem document (a dict) for `reason`."""
    document: dict[str, Any] = {
        "type": TYPE_PREFIX + reason,
        "title": title_of(reason),
        "status": status if status is not None else status_of(reason),
        "detail": detail,
        "reason": reason,
        "field": field,
    }
    document.update(extensions)
    return document


def problem_of(error: InvalidInput, field_prefix: str = "") -> dict[str, Any]:
    field = error.field
    if field_prefix:
        field = f"{field_prefix}.{field}" if field else field_prefix
    return problem(error.reason, error.message, field)


def problem_from_errors(errors: Iterable[InvalidInput]) -> dict[str, Any]:
    """One problem for several field errors: the first names the reason, all are listed."""
    errors = list(errors)
    first = errors[0]
    document = problem(first.reason, first.message, first.field)
    if len(errors) > 1:
        document["detail"] = f"{first.message} (and {len(errors) - 1} more errors)"
        document["errors"] = [{"reason": e.reason, "field": e.field, "detail": e.message} for e in errors]
    return document


def problem_response(document: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    retry = RETRY_AFTER_SECONDS.get(document["reason"])
    if retry is not None:
        headers.setdefault("Retry-After", str(retry))
    return Response(
        problem_bytes(document),
        status_code=document["status"],
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def problem_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()

"""The OpenAPI document of a node's API.

It states every constraint the server enforces that JSON Schema can say, so a client
generated from it sends only what the node can accept: hex ids with their length,
addresses in the bech32m form of this network's prefix, block references, cursors,
this chain's id, the transaction kinds.  What JSON Schema cannot say (an address's
checksum, a signature, a point on the curve, a canonical encoding, amount + fee within
63 bits, the account's nonce and balance) the server checks and answers with the
problems of docs/api.md.

The routes that parse their own bodies still document them: the request and problem
models are added to the components.  The batch endpoint documents only what it enforces
on the envelope (an object with `transactions`, an array of at most `max_batch` items):
each item is judged on its own and answered in its `results` entry, so an item that is
not a transaction is a 200 with a per-item problem, not a refused request.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas import (
    ADDRESS_MARK,
    ProblemOut,
    RawTransaction,
    TransactionJson,
    hex_pattern,
)
from ledger.codec import MAX_AMOUNT

SCHEMA_REF = "#/components/schemas/{model}"
BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
# 20 bytes in 5-bit words (32) and the 6-word checksum.
ADDRESS_DATA_LENGTH = 38
_HEIGHT_DIGITS = len(str(MAX_AMOUNT))
CURSOR_PATTERN = f"^[0-9]{{1,{_HEIGHT_DIGITS}}}:[0-9]{{1,{_HEIGHT_DIGITS}}}$"
BLOCK_REF_PATTERN = f"^(?:[0-9]{{1,{_HEIGHT_DIGITS}}}|[0-9a-fA-F]{{64}})$"


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model.__name__)}


def body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _regex_literal(text: str) -> str:
    # ECMA-262 and Python agree on backslash-escaping these; a prefix is printable ASCII.
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}/" else c for c in text)


def address_pattern(prefix: str) -> str:
    """bech32m addresses of this network: its prefix, '1', 38 data characters, all in one
    case (the checksum itself is beyond a pattern)."""
    lower = f"{_regex_literal(prefix.lower())}1[{BECH32_CHARSET}]{{{ADDRESS_DATA_LENGTH}}}"
    upper = f"{_regex_literal(prefix.upper())}1[{BECH32_CHARSET.upper()}]{{{ADDRESS_DATA_LENGTH}}}"
    return f"^(?:{lower}|{upper})$"


def address_schema(prefix: str) -> dict[str, Any]:
    length = len(prefix) + 1 + ADDRESS_DATA_LENGTH
    return {"type": "string", "pattern": address_pattern(prefix), "minLength": length, "maxLength": length}


def _parameter_schemas(prefix: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(path, parameter) -> the string schema the route's own parsing enforces."""
    address = address_schema(prefix)
    cursor = {"type": "string", "pattern": CURSOR_PATTERN}
    return {
        ("/v1/transactions/{tx_id}", "tx_id"): {"type": "string", "pattern": hex_pattern(32)},
        ("/v1/blocks/{ref}", "ref"): {"type": "string", "pattern": BLOCK_REF_PATTERN},
        ("/v1/accounts/{address}", "address"): address,
        ("/v1/accounts/{address}/transactions", "address"): address,
        ("/v1/accounts/{address}/transactions", "before"): cursor,
        ("/v1/evidence", "validator"): address,
        ("/v1/evidence", "before"): cursor,
    }


def _constrain_parameters(schema: dict[str, Any], prefix: str) -> None:
    known = _parameter_schemas(prefix)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                shown = parameter["schema"]
                constrained = known.get((path, parameter["name"]))
                if constrained is None:
                    # `X | None` in Python is an optional parameter: left out when unused,
                    # never sent as null, so its schema is X's.
                    options = shown.get("anyOf", ())
                    kept = [option for option in options if option != {"type": "null"}]
                    if len(options) != 2 or len(kept) != 1:
                        continue
                    constrained = kept[0]
                keep = {key: shown[key] for key in ("title", "description", "default") if key in shown}
                parameter["schema"] = {**constrained, **keep}


def _mark_addresses(node: Any, address: dict[str, Any]) -> None:
    """Replace every field marked as an address with this network's address schema."""
    if isinstance(node, dict):
        if node.pop(ADDRESS_MARK, False):
            node.pop("minLength", None)
            node.pop("maxLength", None)
            node.update(address)
        for value in node.values():
            _mark_addresses(value, address)
    elif isinstance(node, list):
        for value in node:
            _mark_addresses(value, address)


def _batch_request(max_batch: int) -> dict[str, Any]:
    return {
        "title": "BatchRequest",
        "type": "object",
        "additionalProperties": False,
        "required": ["transactions"],
        "properties": {
            "transactions": {
                "type": "array",
                "maxItems": max_batch,
                "description": (
                    "Signed transactions, each a RawTransaction or a TransactionJson. Each item is judged "
                    "on its own: one that is not a valid transaction is refused in its `results` entry "
                    "(with its problem), not by refusing the request."
                ),
                "items": {"description": "a RawTransaction or a TransactionJson"},
            }
        },
    }


def install_openapi(app: FastAPI, *, prefix: str, chain_id: str, max_batch: int, kinds: list[str]) -> None:
    """`kinds`: the transaction kinds this chain accepts (stake and unstake only where the
    engine bonds stake), so a generated client never sends one the node must refuse."""
    def generate() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, definitions = models_json_schema(
            [(model, "validation") for model in (RawTransaction, TransactionJson, ProblemOut)],
            ref_template=SCHEMA_REF,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definitions.get("$defs", {}))
        components["BatchRequest"] = _batch_request(max_batch)
        # A transaction for another chain is refused (wrong_chain): the only id is this one.
        components["TransactionJson"]["properties"]["chain_id"]["const"] = chain_id
        components["TransactionJson"]["properties"]["kind"]["enum"] = kinds
        _constrain_parameters(schema, prefix)
        _mark_addresses(schema, address_schema(prefix))
        app.openapi_schema = schema
        return schema

    app.openapi = generate  # type: ignore[method-assign]

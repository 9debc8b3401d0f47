"""The OpenAPI document states the constraints the server enforces (api/openapi.py), for
the network it serves: tests/test_api_schemathesis.py checks it against a live node with
every schemathesis check; these check its shape, and that each pattern agrees with the
server on values either side of it."""

from __future__ import annotations

import re

import pytest

from api.app import create_app
from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from tests.test_api_unit import CHAIN, PREFIX, FakeService, call

ACCOUNT = address_of(PrivateKey(b"\x05" * 32).public_key)


@pytest.fixture
def document():
    return call(create_app(FakeService(), max_batch=7), "GET", "/openapi.json").json()


def parameter(document: dict, path: str, name: str, method: str = "get") -> dict:
    return next(p["schema"] for p in document["paths"][path][method]["parameters"] if p["name"] == name)


def matches(schema: dict, value: str) -> bool:
    return re.fullmatch(schema["pattern"].removeprefix("^").removesuffix("$"), value) is not None


def test_addresses_are_this_networks_bech32m_form(document):
    schema = parameter(document, "/v1/accounts/{address}", "address")
    good = encode_address(PREFIX, ACCOUNT)
    assert matches(schema, good) and matches(schema, good.upper())
    assert not matches(schema, encode_address("dev", ACCOUNT))  # another network
    assert not matches(schema, good[:-1]) and not matches(schema, good[:5] + good[5:].upper())
    assert not matches(schema, "0") and not matches(schema, good.replace(good[6], "b"))  # b is not bech32
    for shown in (parameter(document, "/v1/evidence", "validator"),
                  document["components"]["schemas"]["TransactionJson"]["properties"]["recipient"]):
        assert shown["pattern"] == schema["pattern"]


def test_ids_refs_and_cursors_carry_their_form(document):
    tx_id = parameter(document, "/v1/transactions/{tx_id}", "tx_id")
    assert matches(tx_id, "ab" * 32) and not matches(tx_id, "0") and not matches(tx_id, "zz" * 32)
    ref = parameter(document, "/v1/blocks/{ref}", "ref")
    assert matches(ref, "0") and matches(ref, "9" * 19) and matches(ref, "AB" * 32)
    assert not matches(ref, "9" * 20) and not matches(ref, "-1") and not matches(ref, "latest!")
    cursor = parameter(document, "/v1/accounts/{address}/transactions", "before")
    assert matches(cursor, "12:0") and not matches(cursor, "12") and not matches(cursor, "a:1")


def test_optional_parameters_are_never_null(document):
    assert parameter(document, "/v1/blocks", "before")["type"] == "integer"
    assert parameter(document, "/v1/transactions", "wait", "post") == {
        "const": "final", "type": "string", "title": "Wait",
        "description": parameter(document, "/v1/transactions", "wait", "post")["description"],
    }


def test_transaction_fields_state_what_the_server_checks(document):
    fields = document["components"]["schemas"]["TransactionJson"]["properties"]
    assert fields["chain_id"]["const"] == CHAIN
    assert fields["kind"]["enum"] == ["transfer"]  # FakeService's chain bonds no stake
    assert fields["amount"]["minimum"] == 1 and fields["fee"]["minimum"] == 0
    assert fields["amount"]["maximum"] == fields["nonce"]["maximum"] == 2**63 - 1
    assert matches(fields["sender"], "02" + "ab" * 32) and not matches(fields["sender"], "04" + "ab" * 32)
    assert matches(fields["signature"], "ab" * 64) and not matches(fields["signature"], "ab" * 63)
    raw = document["components"]["schemas"]["RawTransaction"]["properties"]["raw"]
    assert raw["minLength"] > 0 and raw["maxLength"] > raw["minLength"] and not matches(raw, "abc")


def test_stake_kinds_are_listed_only_where_the_engine_bonds_stake():
    service = FakeService()
    service.staking = True
    document = call(create_app(service), "GET", "/openapi.json").json()
    kinds = document["components"]["schemas"]["TransactionJson"]["properties"]["kind"]["enum"]
    assert kinds == ["transfer", "stake", "unstake"]


def test_the_batch_schema_constrains_only_the_envelope(document):
    batch = document["components"]["schemas"]["BatchRequest"]
    assert batch["required"] == ["transactions"] and batch["additionalProperties"] is False
    items = batch["properties"]["transactions"]
    assert items["maxItems"] == 7
    assert set(items["items"]) == {"description"}  # any item: each is judged in its results entry
    request = document["paths"]["/v1/transactions/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert request["schema"] == {"$ref": "#/components/schemas/BatchRequest"}


def test_get_on_the_batch_resource_is_405(document):
    response = call(create_app(FakeService()), "GET", "/v1/transactions/batch")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["reason"] == "method_not_allowed"

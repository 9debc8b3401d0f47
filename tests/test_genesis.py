"""Genesis: JSON in and out, the hash that commits to every field, and refusal of bad files."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from ledger import crypto
from ledger.address import address_of, encode_address
from ledger.block import ZERO_HASH
from ledger.codec import MAX_AMOUNT
from ledger.genesis import MAX_GENESIS_FILE, Denomination, Genesis, InvalidGenesis, dev_genesis
from ledger.hdkeys import dev_keys
from ledger.merkle import EMPTY_ROOT

AUTHORITY = crypto.PrivateKey(bytes([9]) * 32).public_key


def sample() -> Genesis:
    return dataclasses.replace(dev_genesis(AUTHORITY, accounts=3), block_reward=5, max_block_transactions=500)


def sample_json() -> dict:
    return sample().to_json()


# --- round trip and hash --------------------------------------------------------------------


def test_json_round_trip_keeps_every_field_and_the_hash():
    genesis = sample()
    again = Genesis.from_json(json.loads(json.dumps(genesis.to_json())))
    assert again == genesis
    assert again.hash == genesis.hash
    assert again.encode() == genesis.encode()


def test_file_round_trip(tmp_path):
    genesis = sample()
    path = tmp_path / "genesis.json"
    genesis.save(path)
    assert Genesis.load(path).hash == genesis.hash


def test_hash_is_sha256_of_the_encoding():
    genesis = sample()
    assert genesis.hash == crypto.sha256(genesis.encode())


@pytest.mark.parametrize(
    "change",
    [
        {"chain_id": "other-chain"},
        {"address_prefix": "tst"},
        {"timestamp": 1},
        {"engine": "pow"},
        {"engine_params": {"authority": "00"}},
        {"denomination": Denomination("COIN", 9)},
        {"denomination": Denomination("LED", 6)},
        {"block_reward": 6},
        {"max_block_transactions": 501},
    ],
    ids=lambda change: next(iter(change)),
)
def test_hash_commits_to_every_field(change):
    genesis = sample()
    assert dataclasses.replace(genesis, **change).hash != genesis.hash


def test_hash_commits_to_allocations():
    genesis = sample()
    first = next(iter(genesis.allocations))
    richer = dict(genesis.allocations, **{})
    richer[first] += 1
    assert dataclasses.replace(genesis, allocations=richer).hash != genesis.hash
    fewer = dict(list(genesis.allocations.items())[1:])
    assert dataclasses.replace(genesis, allocations=fewer).hash != genesis.hash


def test_hash_ignores_json_order():
    data = sample_json()
    shuffled = dict(reversed(list(data.items())))
    shuffled["allocations"] = list(reversed(data["allocations"]))
    shuffled["engine"]["params"] = dict(reversed(list(data["engine"]["params"].items())))
    assert Genesis.from_json(shuffled).hash == sample().hash


def test_genesis_block_carries_the_hash():
    genesis = sample()
    block = genesis.block()
    assert block.height == 0
    assert block.header.parent == ZERO_HASH
    assert block.header.extra == genesis.hash
    assert block.header.tx_root == EMPTY_ROOT and block.transactions == ()
    assert block.header.timestamp == genesis.timestamp
    block.check_structure(genesis.chain_id, genesis.max_block_transactions)
    assert dataclasses.replace(genesis, block_reward=1).block().hash != block.hash


def test_dev_genesis_funds_the_dev_keys():
    genesis = dev_genesis(AUTHORITY, accounts=4, balance=123)
    assert genesis.allocations == {address_of(key.public_key): 123 for key in dev_keys(4)}
    assert genesis.engine == "solo"
    assert genesis.engine_params["authority"] == AUTHORITY.hex()


def test_expected_supply():
    genesis = sample()
    assert genesis.total_allocated == sum(genesis.allocations.values())
    assert genesis.expected_supply(0) == genesis.total_allocated
    assert genesis.expected_supply(10) == genesis.total_allocated + 10 * 5


def test_defaults_for_optional_fields():
    data = sample_json()
    for optional in ("denomination", "timestamp", "block_reward", "max_block_transactions"):
        del data[optional]
    genesis = Genesis.from_json(data)
    assert (genesis.denomination, genesis.timestamp, genesis.block_reward, genesis.max_block_transactions) == (
        Denomination(), 0, 0, 10_000,
    )


# --- refusals ---------------------------------------------------------------------------------


def _mutated(edit) -> dict:
    data = copy.deepcopy(sample_json())
    edit(data)
    return data


def _set(path: str, value):
    def edit(data):
        target = data
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        target[keys[-1]] = value

    return edit


def _drop(key: str):
    return lambda data: data.pop(key)


OTHER_NETWORK_ADDRESS = encode_address("tst", bytes(20))
BAD_CHECKSUM_ADDRESS = encode_address("dev", bytes(20))[:-1] + "q"
if BAD_CHECKSUM_ADDRESS == encode_address("dev", bytes(20)):
    BAD_CHECKSUM_ADDRESS = BAD_CHECKSUM_ADDRESS[:-1] + "p"

BAD_FIELDS = [
    ("unknown_field", _set("chain_idd", "x"), "unknown genesis fields: chain_idd"),
    ("chain_id_upper", _set("chain_id", "Ledger"), "chain_id"),
    ("chain_id_space", _set("chain_id", "ledger dev"), "chain_id"),
    ("chain_id_empty", _set("chain_id", ""), "chain_id"),
    ("chain_id_dash_first", _set("chain_id", "-ledger"), "chain_id"),
    ("chain_id_too_long", _set("chain_id", "a" * 65), "chain_id"),
    ("chain_id_newline", _set("chain_id", "ledger-dev\n"), "chain_id"),
    ("chain_id_number", _set("chain_id", 7), "chain_id"),
    ("chain_id_missing", _drop("chain_id"), "chain_id"),
    ("prefix_upper", _set("address_prefix", "DEV"), "address_prefix"),
    ("prefix_empty", _set("address_prefix", ""), "address_prefix"),
    ("prefix_too_long", _set("address_prefix", "d" * 21), "address_prefix"),
    ("prefix_space", _set("address_prefix", "d v"), "address_prefix"),
    ("prefix_number", _set("address_prefix", 1), "address_prefix"),
    ("allocation_other_network", _set("allocations.0.address", OTHER_NETWORK_ADDRESS), "allocations[0].address"),
    ("allocation_bad_checksum", _set("allocations.1.address", BAD_CHECKSUM_ADDRESS), "allocations[1].address"),
    ("allocation_garbage", _set("allocations.0.address", "not an address"), "allocations[0].address"),
    ("allocation_not_text", _set("allocations.0.address", 12), "allocations"),
    ("allocation_missing_balance", lambda d: d["allocations"][0].pop("balance"), "balance"),
    ("allocation_negative", _set("allocations.0.balance", -1), "allocations[0].balance"),
    ("allocation_overflow", _set("allocations.2.balance", MAX_AMOUNT + 1), "allocations[2].balance"),
    ("allocation_float", _set("allocations.0.balance", 1.5), "allocations[0].balance"),
    ("allocation_text", _set("allocations.0.balance", "100"), "allocations[0].balance"),
    ("allocation_bool", _set("allocations.0.balance", True), "allocations[0].balance"),
    (
        "allocation_duplicate",
        lambda d: d["allocations"].append(dict(d["allocations"][0], balance=1)),
        "allocations[3]: address allocated twice",
    ),
    (
        "allocation_duplicate_upper_case",
        lambda d: d["allocations"].append(dict(d["allocations"][0], address=d["allocations"][0]["address"].upper())),
        "allocated twice",
    ),
    (
        "allocations_sum_overflow",
        lambda d: [entry.update(balance=MAX_AMOUNT // 2) for entry in d["allocations"]],
        "maximum supply",
    ),
    ("allocations_not_a_list", _set("allocations", {"a": 1}), "allocations"),
    ("engine_unknown", _set("engine.name", "proof-of-luck"), "engine.name"),
    ("engine_missing_name", lambda d: d["engine"].pop("name"), "engine.name"),
    ("engine_not_object", _set("engine", "solo"), "engine.name"),
    ("engine_params_not_object", _set("engine.params", [1, 2]), "engine.params"),
    ("timestamp_negative", _set("timestamp", -5), "timestamp"),
    ("timestamp_overflow", _set("timestamp", MAX_AMOUNT + 1), "timestamp"),
    ("reward_negative", _set("block_reward", -1), "block_reward"),
    ("reward_overflow", _set("block_reward", MAX_AMOUNT + 1), "block_reward"),
    ("max_block_transactions_zero", _set("max_block_transactions", 0), "max_block_transactions"),
    ("decimals_too_many", _set("denomination.decimals", 19), "decimals"),
    ("denomination_not_object", _set("denomination", "LED"), "denomination"),
]


@pytest.mark.parametrize(("edit", "message"), [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS])
def test_bad_fields_are_refused_with_a_clear_message(edit, message):
    data = _mutated(edit)
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.from_json(data)
    assert message in str(caught.value)


def test_the_unmodified_sample_is_accepted():
    # Guards the refusal table: its base document must itself be valid.
    assert Genesis.from_json(sample_json()).hash == sample().hash


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("engine", lambda d: d["engine"].update(parms={"authority": "00"})),
        ("denomination", lambda d: d["denomination"].update(decimal=6)),
        ("allocations[0]", lambda d: d["allocations"][0].update(lock_until=5)),
    ],
)
def test_unknown_nested_fields_are_refused(where, edit):
    # A misspelt nested key (`parms` for `params`) must not silently fall back to a default.
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.from_json(_mutated(edit))
    assert where in str(caught.value)


@pytest.mark.parametrize("document", [[], "genesis", 5, None])
def test_non_object_documents_are_refused(document):
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.from_json(document)
    assert "JSON object" in str(caught.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.load(path)
    assert "cannot read genesis file" in str(caught.value) and str(path) in str(caught.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.load(tmp_path)
    assert "cannot read genesis file" in str(caught.value)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00garbage", b'{"chain_id": "a",}'])
def test_non_json_file(tmp_path, content):
    path = tmp_path / "genesis.json"
    path.write_bytes(content)
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.load(path)
    assert "not valid JSON" in str(caught.value)


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_GENESIS_FILE + 1)  # sparse: no real 16 MiB written
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.load(path)
    assert "larger than" in str(caught.value)


def test_bad_file_content_is_refused_like_bad_json(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(_mutated(_set("engine.name", "nope"))), encoding="utf-8")
    with pytest.raises(InvalidGenesis) as caught:
        Genesis.load(path)
    assert "engine.name" in str(caught.value)

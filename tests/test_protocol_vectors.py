"""The test vectors of docs/protocol.md, checked byte for byte against the code.

docs/vectors.json holds each vector's inputs and expected outputs; docs/protocol.md
shows the same values.  The tests below

* recompute every output from its inputs with the ledger code and compare;
* recompute the central ones a second way, from hashlib, struct and the independent
  `ecdsa` package, following the rules as the document states them;
* check that every output value in vectors.json appears verbatim in protocol.md, so the
  document cannot drift from what is tested.

After a deliberate protocol change, edit the inputs in vectors.json if needed, run
`python tests/test_protocol_vectors.py --regenerate`, review the diff, and update the
values shown in protocol.md (the mirror test lists any that are missing).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import ecdsa
import pytest
from ecdsa.util import sigencode_string

from ledger import crypto
from ledger.address import address_of, decode_address, encode_address
from ledger.block import Block, BlockHeader
from ledger.genesis import Genesis
from ledger.hdkeys import ExtendedKey, mnemonic_to_seed
from ledger.merkle import merkle_root
from ledger.staking import Stake
from ledger.state import decode_undo, encode_undo
from ledger.transaction import Transaction

DOCS = Path(__file__).resolve().parent.parent / "docs"
VECTORS_FILE = DOCS / "vectors.json"
PROTOCOL_FILE = DOCS / "protocol.md"
DOMAINS = {
    "ledger/tx/v1": crypto.DOMAIN_TX,
    "ledger/block/v1": crypto.DOMAIN_BLOCK,
    "ledger/handshake/v1": crypto.DOMAIN_HANDSHAKE,
    "ledger/vote/v1": crypto.DOMAIN_VOTE,
    "ledger/proposal/v1": crypto.DOMAIN_PROPOSAL,
}


def load_vectors() -> dict:
    return json.loads(VECTORS_FILE.read_text(encoding="utf-8"))


# --- outputs computed by the ledger code ---------------------------------------------------


def private_key_of(entry: dict) -> crypto.PrivateKey:
    if "private_key" in entry["inputs"]:
        return crypto.PrivateKey.from_hex(entry["inputs"]["private_key"])
    seed = mnemonic_to_seed(entry["inputs"]["mnemonic"], entry["inputs"].get("passphrase", ""))
    return ExtendedKey.from_seed(seed).derive(entry["inputs"]["path"]).private_key()


def compute_key(entry: dict, prefix: str) -> dict:
    key = private_key_of(entry)
    account = address_of(key.public_key)
    return {
        "private_key": key.secret.hex(),
        "public_key": key.public_key.hex(),
        "account": account.hex(),
        "address": encode_address(prefix, account),
    }


def keys_by_name(vectors: dict) -> dict[str, crypto.PrivateKey]:
    return {entry["name"]: private_key_of(entry) for entry in vectors["keys"]}


def compute_digest(entry: dict) -> dict:
    inputs = entry["inputs"]
    return {"digest": crypto.signing_digest(DOMAINS[inputs["domain"]], bytes.fromhex(inputs["payload_hex"])).hex()}


def transaction_of(entry: dict, vectors: dict) -> Transaction:
    inputs = entry["inputs"]
    key = keys_by_name(vectors)[inputs["sender_key"]]
    return Transaction(
        chain_id=inputs["chain_id"],
        nonce=inputs["nonce"],
        sender=key.public_key,
        recipient=decode_address(inputs["recipient"], vectors["address_prefix"]),
        amount=inputs["amount"],
        fee=inputs["fee"],
        kind=inputs["kind"],
        payload=bytes.fromhex(inputs["payload_hex"]),
    ).signed(key)


def compute_transaction(entry: dict, vectors: dict) -> dict:
    tx = transaction_of(entry, vectors)
    return {
        "unsigned_hex": tx.unsigned_bytes().hex(),
        "signing_digest": crypto.signing_digest(crypto.DOMAIN_TX, tx.unsigned_bytes()).hex(),
        "signature": tx.signature.hex(),
        "encoded_hex": tx.encode().hex(),
        "id": tx.id.hex(),
    }


def compute_merkle(entry: dict, vectors: dict) -> dict:
    ids = [transaction_of(vectors["transactions"][index], vectors).id for index in entry["inputs"]["transactions"]]
    return {"leaves": [leaf.hex() for leaf in ids], "root": merkle_root(ids).hex()}


def genesis_of(vectors: dict) -> Genesis:
    return Genesis.from_json(vectors["genesis"]["inputs"]["json"])


def compute_genesis(vectors: dict) -> dict:
    genesis = genesis_of(vectors)
    return {
        "encoded_hex": genesis.encode().hex(),
        "hash": genesis.hash.hex(),
        "block_header_hex": genesis.block().header.encode().hex(),
        "block_hash": genesis.block().hash.hex(),
    }


def block_of(vectors: dict) -> Block:
    inputs = vectors["block"]["inputs"]
    transactions = tuple(transaction_of(vectors["transactions"][i], vectors) for i in inputs["transactions"])
    header = BlockHeader(
        chain_id=inputs["chain_id"],
        height=inputs["height"],
        parent=genesis_of(vectors).block().hash,
        timestamp=inputs["timestamp"],
        tx_root=merkle_root([tx.id for tx in transactions]),
        tx_count=len(transactions),
        proposer=address_of(keys_by_name(vectors)[inputs["proposer_key"]].public_key),
        extra=bytes.fromhex(inputs["extra_hex"]),
    )
    seal = keys_by_name(vectors)[inputs["proposer_key"]].sign_digest(header.sealing_digest())
    return Block(header.with_seal(seal), transactions)


def compute_block(vectors: dict) -> dict:
    block = block_of(vectors)
    header = block.header
    return {
        "parent": header.parent.hex(),
        "tx_root": header.tx_root.hex(),
        "proposer": header.proposer.hex(),
        "unsealed_hex": header.unsealed_bytes().hex(),
        "sealing_digest": header.sealing_digest().hex(),
        "seal": header.seal.hex(),
        "header_hex": header.encode().hex(),
        "hash": header.hash.hex(),
        "block_hex": block.encode().hex(),
    }


def undo_of(entry: dict) -> dict:
    """Records are null, [balance, nonce] or [balance, nonce, [bonded, unbonding, release_epoch, slashed]]."""
    return {
        bytes.fromhex(address): None if value is None else (value[0], value[1], Stake(*value[2]) if value[2:] else None)
        for address, value in entry["inputs"]["records"].items()
    }


def compute_undo(entry: dict) -> dict:
    return {"encoded_hex": encode_undo(undo_of(entry)).hex()}


def compute_all(vectors: dict) -> dict:
    """Every vector with its outputs recomputed: equal to `vectors` when code and document agree."""
    prefix = vectors["address_prefix"]
    result = json.loads(json.dumps(vectors))
    for entry in result["keys"]:
        entry["outputs"] = compute_key(entry, prefix)
    for entry in result["signing_digests"]:
        entry["outputs"] = compute_digest(entry)
    for entry in result["transactions"]:
        entry["outputs"] = compute_transaction(entry, vectors)
    result["merkle"]["outputs"] = compute_merkle(result["merkle"], vectors)
    result["genesis"]["outputs"] = compute_genesis(vectors)
    result["block"]["outputs"] = compute_block(vectors)
    result["undo"]["outputs"] = compute_undo(result["undo"])
    result["undo_with_stake"]["outputs"] = compute_undo(result["undo_with_stake"])
    return result


# --- the code reproduces the document ------------------------------------------------------

VECTORS = load_vectors()


@pytest.mark.parametrize("index", range(len(VECTORS["keys"])), ids=[k["name"] for k in VECTORS["keys"]])
def test_key_vectors(index):
    entry = VECTORS["keys"][index]
    assert compute_key(entry, VECTORS["address_prefix"]) == entry["outputs"]


@pytest.mark.parametrize("index", range(len(VECTORS["signing_digests"])))
def test_signing_digest_vectors(index):
    entry = VECTORS["signing_digests"][index]
    assert compute_digest(entry) == entry["outputs"]


@pytest.mark.parametrize("index", range(len(VECTORS["transactions"])))
def test_transaction_vectors(index):
    entry = VECTORS["transactions"][index]
    assert compute_transaction(entry, VECTORS) == entry["outputs"]
    decoded = Transaction.decode(bytes.fromhex(entry["outputs"]["encoded_hex"]))
    assert decoded == transaction_of(entry, VECTORS)
    decoded.check_stateless(entry["inputs"]["chain_id"])


def test_merkle_vector():
    assert compute_merkle(VECTORS["merkle"], VECTORS) == VECTORS["merkle"]["outputs"]


def test_genesis_vector():
    assert compute_genesis(VECTORS) == VECTORS["genesis"]["outputs"]


def test_block_vector():
    outputs = VECTORS["block"]["outputs"]
    assert compute_block(VECTORS) == outputs
    decoded = Block.decode(bytes.fromhex(outputs["block_hex"]), max_transactions=10)
    assert decoded == block_of(VECTORS)
    decoded.check_structure(VECTORS["block"]["inputs"]["chain_id"], max_transactions=10)


@pytest.mark.parametrize("name", ["undo", "undo_with_stake"])
def test_undo_vector(name):
    entry = VECTORS[name]
    assert compute_undo(entry) == entry["outputs"]
    assert decode_undo(bytes.fromhex(entry["outputs"]["encoded_hex"])) == undo_of(entry)


def test_every_vector_is_checked():
    # A section added to vectors.json without a check above would pass silently.
    assert compute_all(VECTORS) == VECTORS


# --- the rules as the document states them, computed without the ledger code ---------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


@pytest.mark.parametrize("index", range(len(VECTORS["transactions"])))
def test_transaction_vectors_follow_the_documented_rules(index):
    entry = VECTORS["transactions"][index]
    inputs, outputs = entry["inputs"], entry["outputs"]
    key_entry = next(k for k in VECTORS["keys"] if k["name"] == inputs["sender_key"])
    secret = bytes.fromhex(key_entry["outputs"]["private_key"])
    signing_key = ecdsa.SigningKey.from_string(secret, curve=ecdsa.SECP256k1)
    public_key = signing_key.get_verifying_key().to_string("compressed")
    recipient_entry = next(k for k in VECTORS["keys"] if k["outputs"]["address"] == inputs["recipient"])
    payload = bytes.fromhex(inputs["payload_hex"])

    unsigned = (
        struct.pack(">B", 1)
        + _text(inputs["chain_id"])
        + struct.pack(">Q", inputs["nonce"])
        + public_key
        + bytes.fromhex(recipient_entry["outputs"]["account"])
        + struct.pack(">QQB", inputs["amount"], inputs["fee"], inputs["kind"])
        + struct.pack(">I", len(payload)) + payload
    )
    assert unsigned.hex() == outputs["unsigned_hex"]
    tag = b"ledger/tx/v1"
    digest = _sha(bytes([len(tag)]) + tag + unsigned)
    assert digest.hex() == outputs["signing_digest"]

    raw = signing_key.sign_digest_deterministic(digest, hashfunc=hashlib.sha256, sigencode=sigencode_string)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    s = min(s, crypto.CURVE_ORDER - s)  # low-S
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert signature.hex() == outputs["signature"]
    assert (unsigned + signature).hex() == outputs["encoded_hex"]
    assert _sha(unsigned + signature).hex() == outputs["id"]


def test_key_vectors_follow_the_documented_rules():
    for entry in VECTORS["keys"]:
        outputs = entry["outputs"]
        signing_key = ecdsa.SigningKey.from_string(bytes.fromhex(outputs["private_key"]), curve=ecdsa.SECP256k1)
        public_key = signing_key.get_verifying_key().to_string("compressed")
        assert public_key.hex() == outputs["public_key"]
        assert _sha(public_key)[:20].hex() == outputs["account"]
        assert outputs["address"].startswith(VECTORS["address_prefix"] + "1")


def test_signing_digests_follow_the_documented_rules():
    tags = set()
    for entry in VECTORS["signing_digests"]:
        tag = entry["inputs"]["domain"].encode("ascii")
        tags.add(entry["inputs"]["domain"])
        expected = _sha(bytes([len(tag)]) + tag + bytes.fromhex(entry["inputs"]["payload_hex"]))
        assert expected.hex() == entry["outputs"]["digest"]
    assert tags == set(DOMAINS)  # every domain tag of the code has a vector


def test_merkle_vector_follows_the_documented_rule():
    leaves = [bytes.fromhex(leaf) for leaf in VECTORS["merkle"]["outputs"]["leaves"]]
    assert len(leaves) == 3
    left = _sha(b"\x01" + _sha(b"\x00" + leaves[0]) + _sha(b"\x00" + leaves[1]))
    root = _sha(b"\x01" + left + _sha(b"\x00" + leaves[2]))  # the odd third leaf is promoted
    assert root.hex() == VECTORS["merkle"]["outputs"]["root"]


def test_block_vector_follows_the_documented_rules():
    inputs, outputs = VECTORS["block"]["inputs"], VECTORS["block"]["outputs"]
    extra = bytes.fromhex(inputs["extra_hex"])
    unsealed = (
        struct.pack(">I", 1)
        + _text(inputs["chain_id"])
        + struct.pack(">Q", inputs["height"])
        + bytes.fromhex(outputs["parent"])
        + struct.pack(">Q", inputs["timestamp"])
        + bytes.fromhex(outputs["tx_root"])
        + struct.pack(">I", len(inputs["transactions"]))
        + bytes.fromhex(outputs["proposer"])
        + struct.pack(">I", len(extra)) + extra
    )
    assert unsealed.hex() == outputs["unsealed_hex"]
    tag = b"ledger/block/v1"
    assert _sha(bytes([len(tag)]) + tag + unsealed).hex() == outputs["sealing_digest"]
    seal = bytes.fromhex(outputs["seal"])
    header = unsealed + struct.pack(">I", len(seal)) + seal
    assert header.hex() == outputs["header_hex"]
    assert _sha(header).hex() == outputs["hash"]
    assert outputs["parent"] == VECTORS["genesis"]["outputs"]["block_hash"]
    assert outputs["tx_root"] == VECTORS["merkle"]["outputs"]["root"]
    body = struct.pack(">I", len(header)) + header
    for index in inputs["transactions"]:
        tx = bytes.fromhex(VECTORS["transactions"][index]["outputs"]["encoded_hex"])
        body += struct.pack(">I", len(tx)) + tx
    assert body.hex() == outputs["block_hex"]


def test_genesis_vector_follows_the_documented_rules():
    document = VECTORS["genesis"]["inputs"]["json"]
    params = json.dumps(document["engine"]["params"], sort_keys=True, separators=(",", ":"))
    encoded = (
        struct.pack(">I", 1)
        + _text(document["chain_id"])
        + _text(document["address_prefix"])
        + _text(document["denomination"]["name"])
        + struct.pack(">BQ", document["denomination"]["decimals"], document["timestamp"])
        + _text(document["engine"]["name"])
        + _text(params)
        + struct.pack(">QII", document["block_reward"], document["max_block_transactions"], len(document["allocations"]))
    )
    allocations = sorted(
        (decode_address(entry["address"], document["address_prefix"]), entry["balance"])
        for entry in document["allocations"]
    )
    for account, balance in allocations:
        encoded += account + struct.pack(">Q", balance)
    outputs = VECTORS["genesis"]["outputs"]
    assert encoded.hex() == outputs["encoded_hex"]
    assert _sha(encoded).hex() == outputs["hash"]
    header = (
        struct.pack(">I", 1) + _text(document["chain_id"]) + struct.pack(">Q", 0) + bytes(32)
        + struct.pack(">Q", document["timestamp"]) + _sha(b"") + struct.pack(">I", 0) + bytes(20)
        + struct.pack(">I", 32) + _sha(encoded) + struct.pack(">I", 0)
    )
    assert header.hex() == outputs["block_header_hex"]
    assert _sha(header).hex() == outputs["block_hash"]


@pytest.mark.parametrize("name", ["undo", "undo_with_stake"])
def test_undo_vector_follows_the_documented_rule(name):
    records = VECTORS[name]["inputs"]["records"]
    encoded = struct.pack(">I", len(records))
    for address in sorted(records):
        value = records[address]
        encoded += bytes.fromhex(address)
        if value is None:
            encoded += b"\x00"
        elif len(value) == 2:
            encoded += b"\x01" + struct.pack(">QQ", *value)
        else:
            encoded += b"\x02" + struct.pack(">QQ", *value[:2]) + struct.pack(">QQQQ", *value[2])
    assert encoded.hex() == VECTORS[name]["outputs"]["encoded_hex"]


# --- the document mirrors the vectors ------------------------------------------------------


def _output_strings(node) -> list[str]:
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key == "outputs":
                found += [v for v in _flatten(value) if isinstance(v, str)]
            else:
                found += _output_strings(value)
        return found
    if isinstance(node, list):
        return [s for item in node for s in _output_strings(item)]
    return []


def _flatten(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _flatten(value)
    elif isinstance(node, list):
        for value in node:
            yield from _flatten(value)
    else:
        yield node


def test_protocol_document_shows_every_vector_output():
    document = "".join(PROTOCOL_FILE.read_text(encoding="utf-8").split())  # hex may wrap across lines
    missing = [value for value in _output_strings(VECTORS) if value not in document]
    assert not missing, f"docs/protocol.md lacks these vector values: {missing}"


def test_protocol_document_lists_every_domain_tag():
    document = PROTOCOL_FILE.read_text(encoding="utf-8")
    for tag in DOMAINS:
        assert f"`{tag}`" in document


def test_documented_limits_match_the_code():
    from ledger.block import MAX_EXTRA, MAX_HEADER_SIZE, MAX_SEAL
    from ledger.codec import MAX_AMOUNT
    from ledger.genesis import MAX_GENESIS_FILE
    from ledger.transaction import MAX_CHAIN_ID, MAX_PAYLOAD, MAX_TX_SIZE

    document = PROTOCOL_FILE.read_text(encoding="utf-8")
    stated = {
        "`text(64)`": MAX_CHAIN_ID == 64,
        "`var_bytes(256)`": MAX_PAYLOAD == 256,
        "at most 471 bytes": MAX_TX_SIZE == 471,
        "`var_bytes(65536)`": MAX_EXTRA == 65536,
        "`var_bytes(1024)`": MAX_SEAL == 1024,
        "at most 66744 bytes": MAX_HEADER_SIZE == 66744,
        "2^63 − 1 = 9223372036854775807": MAX_AMOUNT == 9223372036854775807,
        "16 MiB": MAX_GENESIS_FILE == 16 * 1024 * 1024,
        f"`{crypto.CURVE_ORDER:064x}`": True,
    }
    for phrase, matches_code in stated.items():
        assert phrase in document, phrase
        assert matches_code, phrase


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_protocol_vectors.py --regenerate")
    VECTORS_FILE.write_text(json.dumps(compute_all(load_vectors()), indent=2) + "\n", encoding="utf-8")
    print(f"rewrote the outputs in {VECTORS_FILE}; review the diff and update docs/protocol.md")

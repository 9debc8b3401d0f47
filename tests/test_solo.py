"""The solo engine's typed status: the one authority as the validator set, with the blocks
it sealed and the last height it signed, as the API and the explorer render it."""

from __future__ import annotations

from consensus.engine import BlockCommitted, Started
from consensus.solo import SoloEngine
from ledger.address import address_of
from ledger.block import build_header
from ledger.crypto import PrivateKey
from ledger.engine_status import Finality
from ledger.genesis import dev_genesis

AUTHORITY = PrivateKey(bytes(31) + b"\x05")
GENESIS = dev_genesis(AUTHORITY.public_key)
PARAMS = {"authority": AUTHORITY.public_key.hex(), "block_interval_ms": 250}


def started(signer: PrivateKey | None) -> SoloEngine:
    engine = SoloEngine(PARAMS, signer)
    engine.handle(Started(GENESIS.block().header.timestamp, GENESIS.block().header, None))
    return engine


def test_before_start_the_engine_works_on_no_height_and_has_signed_nothing():
    status = SoloEngine(PARAMS, AUTHORITY).status()
    assert status.height is None
    [authority] = status.validators
    assert (authority.blocks_proposed, authority.last_signed_height) == (0, None)


def test_at_genesis_the_authority_has_proposed_nothing_and_signed_nothing():
    status = started(AUTHORITY).status()
    # On start a producer asks for a block at once (it would hold any waiting transactions).
    assert (status.engine, status.finality, status.role, status.phase) == (
        "solo", Finality.AT_COMMIT, "producer", "building"
    )
    assert (status.height, status.round, status.step, status.total_power, status.quorum_power) == (1, None, None, 1, 1)
    [authority] = status.validators
    assert (authority.address, authority.public_key, authority.power) == (
        address_of(AUTHORITY.public_key), AUTHORITY.public_key, 1
    )
    assert (authority.blocks_proposed, authority.last_signed_height) == (0, None)
    assert status.details == {"authority": AUTHORITY.public_key.hex(), "block_interval_ms": 250}
    assert status.evidence == ()


def test_the_authority_sealed_every_block_up_to_the_head():
    engine = started(None)
    assert (engine.status().role, engine.status().phase) == ("follower", "idle")
    head = GENESIS.block().header
    for _ in range(3):
        head = build_header(GENESIS.chain_id, head, head.timestamp + 1, [], address_of(AUTHORITY.public_key))
        engine.handle(BlockCommitted(head.timestamp, head))
    [authority] = engine.status().validators
    assert (authority.blocks_proposed, authority.last_signed_height) == (3, 3)
    assert engine.status().height == 4


"""The solo engine's typed status: the one authority as the validator set, with the blocks
it sealed and the last height it signed, as the API and the explorer render it."""

from __future__ import annotations

from consensus.engine import BlockBuilt, BlockCommitted, BuildBlock, Commit, SealRequested, SetTimer, Started, Tick, TxsAvailable
from consensus.solo import SoloEngine
from ledger.address import address_of
from ledger.block import Block, build_header
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
    assert status.details == {"authority": AUTHORITY.public_key.hex(), "block_interval_ms": 250, "on_demand": True}
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



def _build_and_commit(engine: SoloEngine, request: BuildBlock, now: int) -> list:
    """Answer a BuildBlock with an empty block and the Commit with BlockCommitted."""
    head = engine.head
    unsealed = build_header(GENESIS.chain_id, head, request.timestamp, [], request.proposer)
    [commit] = engine.handle(BlockBuilt(now, Block(unsealed)))
    assert isinstance(commit, Commit)
    return engine.handle(BlockCommitted(now, commit.block.header))


def test_with_a_block_time_transactions_wait_for_the_cadence():
    genesis_time = GENESIS.block().header.timestamp
    engine = SoloEngine(PARAMS, AUTHORITY, block_time_ms=1000)
    # The block time replaces the genesis interval and sealing on demand.
    assert engine.handle(Started(genesis_time, GENESIS.block().header, None)) == [SetTimer(genesis_time + 1000)]
    assert engine.handle(TxsAvailable(genesis_time + 10, 5)) == []
    assert engine.handle(Tick(genesis_time + 999)) == [SetTimer(genesis_time + 1000)]
    [build] = engine.handle(Tick(genesis_time + 1000))
    assert isinstance(build, BuildBlock) and build.height == 1
    # Sealed even when empty, and the next one is due a block time after it.
    assert _build_and_commit(engine, build, genesis_time + 1001) == [SetTimer(genesis_time + 2000)]
    assert engine.status().details["on_demand"] is False


def test_seal_requested_seals_that_many_blocks_empty_or_not():
    now = GENESIS.block().header.timestamp
    engine = SoloEngine({"authority": AUTHORITY.public_key.hex()}, AUTHORITY)
    [build] = engine.handle(Started(now, GENESIS.block().header, None))  # on demand: it looks for transactions
    # A request while that build is under way: the build counts, as it is sealed after it.
    assert engine.handle(SealRequested(now, 2)) == []
    [again] = _build_and_commit(engine, build, now)
    assert isinstance(again, BuildBlock) and again.height == 2
    assert _build_and_commit(engine, again, now) == []
    assert engine.head.height == 2 and engine.requested == 0
    # A follower has nothing to seal and no dev controls.
    follower = started(None)
    assert follower.handle(SealRequested(now, 3)) == [] and not follower.dev_controls and engine.dev_controls


def test_a_bad_block_time_is_refused():
    import pytest

    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="block time"):
            SoloEngine(PARAMS, AUTHORITY, block_time_ms=bad)

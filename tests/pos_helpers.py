"""Proof-of-stake test fixtures: validators with deterministic keys and a builder of valid
blocks straight from the pure rules (consensus/pos/beacon.py), no engine involved."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import replace

from bft_helpers import key
from consensus.pos import beacon
from consensus.pos.beacon import BeaconState, Chain
from consensus.pos.messages import DOMAIN_RANDAO, Attestation, Checkpoint, PosExtra, randao_payload
from consensus.pos.params import PosParams
from ledger import crypto
from ledger.address import address_of
from ledger.block import ZERO_HASH, BlockHeader, build_header
from ledger.merkle import EMPTY_ROOT

CHAIN_ID = "pos-test"
T0 = 1_700_000_000_000
UNIT = 10**9
KEYS = [key(f"pos-validator-{i}") for i in range(8)]
# Duck-typed like ledger.genesis.GenesisStake: the pure rules read these three fields.
Stake = namedtuple("Stake", "owner validator_key amount")


def owner(index: int) -> bytes:
    return address_of(KEYS[index].public_key)


def genesis_header() -> BlockHeader:
    return BlockHeader(CHAIN_ID, 0, ZERO_HASH, T0, EMPTY_ROOT, 0, bytes(20), b"genesis")


def setup(count: int = 4, stakes: list[int] | None = None, **params) -> tuple[Chain, BlockHeader, BeaconState]:
    params.setdefault("slots_per_epoch", 4)
    pos = PosParams.from_genesis(params)
    amounts = stakes or [32 * UNIT] * count
    genesis = genesis_header()
    state = beacon.genesis_state(genesis.hash, [Stake(owner(i), KEYS[i].public_key, a) for i, a in enumerate(amounts)], pos)
    return Chain(CHAIN_ID, T0, crypto.sha256(b"test-seed"), pos), genesis, state


def key_of(state: BeaconState, index: int):
    wanted = state.validators[index].key
    return next(k for k in KEYS if k.public_key == wanted)


def make_block(chain: Chain, parent: BlockHeader, state: BeaconState, slot: int, attestations=(),
               proposer_slashings=(), attester_slashings=(), stake_changes=(), tamper=None
               ) -> tuple[BlockHeader, BeaconState]:
    """A valid block at `slot` on `parent` (whose state is `state`), and the state after it.
    `tamper(extra) -> extra` changes the contents after the ops are computed (to build invalid ones)."""
    prepared = beacon.prepare(state, slot, chain)
    index = prepared.proposer
    signer = key_of(prepared.state, index)
    validator = prepared.state.validators[index]
    epoch = slot // chain.params.slots_per_epoch
    reveal = signer.sign(DOMAIN_RANDAO, randao_payload(chain.chain_id, epoch))
    extra = PosExtra(reveal, tuple(attestations), tuple(proposer_slashings), tuple(attester_slashings))
    _, ops = beacon.apply_body(prepared, slot, extra, validator.owner, chain)
    extra = replace(extra, ops=tuple(ops), stake_changes=tuple(stake_changes))
    if tamper is not None:
        extra = tamper(extra)
    header = build_header(chain.chain_id, parent, chain.slot_time(slot), [], validator.owner, extra.encode())
    header = replace(header, seal=beacon.sign_block(signer, header, slot, chain.chain_id))
    return header, beacon.apply_block(state, header, chain)


def attest(chain: Chain, state: BeaconState, index: int, slot: int, head: bytes) -> Attestation:
    """What validator `index` signs at `slot` seeing `head` whose state is `state`."""
    processed, _ = beacon.process_slots(state, slot, chain.params)
    epoch = slot // chain.params.slots_per_epoch
    return Attestation(index, slot, head, processed.justified, Checkpoint(epoch, processed.target_root)).signed(
        key_of(state, index), chain.chain_id)


def run_chain(chain: Chain, genesis: BlockHeader, state: BeaconState, slots: int, voters=None, skip=()
              ) -> list[tuple[BlockHeader, BeaconState]]:
    """A block every slot (but `skip`), each carrying the previous slot's attestations of
    `voters` (default: every validator active then)."""
    out = [(genesis, state)]
    pending: list[Attestation] = []
    for slot in range(1, slots + 1):
        parent, parent_state = out[-1]
        if slot in skip:
            continue
        processed, _ = beacon.process_slots(parent_state, slot, chain.params)
        usable = [a for a in pending if beacon.check_attestation(processed, a, slot, chain) is None]
        header, after = make_block(chain, parent, parent_state, slot, attestations=usable)
        out.append((header, after))
        who = voters if voters is not None else [i for i, w in enumerate(after.epoch_stake) if w]
        pending = [attest(chain, after, i, slot, header.hash) for i in who]
    return out


def pos_genesis(count: int, stake: int = 32 * UNIT, **params):
    """A chain whose first `count` KEYS are validators of equal stake, each its own owner."""
    from ledger.genesis import Genesis, GenesisStake

    params.setdefault("slots_per_epoch", 4)
    return Genesis(
        chain_id=CHAIN_ID, address_prefix="dev", timestamp=T0, engine="pos", engine_params=params,
        allocations={owner(i): 10**15 for i in range(count)},
        stakes=tuple(GenesisStake(owner(i), KEYS[i].public_key, stake) for i in range(count)),
    )

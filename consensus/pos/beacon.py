"""The consensus state of one block and its pure transition (after Gasper and the phase-0
beacon chain, written for this chain).

A `BeaconState` is what every node derives from a chain of headers alone: the validator
registry (stake mirrored from the ledger, activation and exit epochs, unbonding, slashed),
the RANDAO mix, the FFG checkpoints (justified, previous justified, finalized) and the
votes counted this epoch and the last.  `apply_block(state, header)` is a pure function:
every node and the simulator compute the same proposers, the same checkpoints and the
same money movements (`StakeOp`s), and a block must carry exactly those ops.

Names follow the paper and the specification where they exist:
- `process_slots` / `process_epoch`: crossing epoch boundaries, where
  `weigh_justification` (Casper FFG: a checkpoint is justified by a supermajority link from
  a justified source, finalized when its child checkpoint is justified from it) and
  `epoch_ops` (rewards, penalties, inactivity leak, releases, exits, activations) run;
- `proposer_index`: the slot's proposer, sampled by stake from the RANDAO mix of the
  epoch before last;
- `process_attestation`, `process_proposer_slashing`, `process_attester_slashing`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from ledger import crypto
from ledger.block import BlockHeader, InvalidSeal
from ledger.codec import DecodeError, Reader, Writer
from ledger.staking import StakeChange, StakeOp, StakeOpKind

from consensus.pos.messages import (
    Attestation,
    AttesterSlashing,
    Checkpoint,
    PosExtra,
    ProposerSlashing,
    SealedDigest,
    randao_payload,
    seal_payload,
    slashable_votes,
    DOMAIN_RANDAO,
    DOMAIN_POS_BLOCK,
)
from consensus.pos.params import PosParams, bps

FAR = 2**63 - 1  # "never": an epoch no chain reaches


class Validator(NamedTuple):
    key: bytes  # 33-byte public key it signs with
    owner: bytes  # 20-byte account whose bonded stake it is
    stake: int  # bonded, as the ledger holds it
    activation_epoch: int = FAR  # FAR: pending
    exit_epoch: int = FAR  # the first epoch it is no longer active
    unbonding: int = 0
    release_epoch: int = 0
    slashed: bool = False
    exit_requested: int = 0  # unstake requests not yet processed
    key_taken: bool = False  # its key belongs to another validator: never activated
    slashed_amount: int = 0

    def active_at(self, epoch: int) -> bool:
        return self.activation_epoch <= epoch < self.exit_epoch and not self.slashed

    def status(self, epoch: int) -> str:
        if self.slashed:
            return "slashed"
        if self.active_at(epoch):
            return "exiting" if self.exit_epoch != FAR or self.exit_requested else "active"
        if self.activation_epoch == FAR or self.activation_epoch > epoch:
            return "pending"
        return "exited"


@dataclass(frozen=True, slots=True)
class BeaconState:
    slot: int
    block_root: bytes  # the block this state is after
    validators: tuple[Validator, ...]
    # Each validator's stake as the epoch began, 0 if not active: the weights of the epoch.
    epoch_stake: tuple[int, ...]
    previous_epoch_stake: tuple[int, ...]
    randao_mix: bytes
    mixes: tuple[tuple[int, bytes], ...]  # (epoch, mix at its end), the last three epochs
    justified: Checkpoint
    previous_justified: Checkpoint
    finalized: Checkpoint
    justification_bits: int  # bit 0: the current epoch justified, bit 1: the previous, ...
    target_root: bytes  # the current epoch's checkpoint block on this chain
    previous_target_root: bytes
    votes: frozenset[int]  # validators whose vote for the current target is counted
    previous_votes: frozenset[int]
    included: frozenset[tuple[int, int]]  # (validator, slot) attestations already in blocks
    proposer_rewards: tuple[tuple[bytes, int], ...]  # owner -> reward, paid at the epoch's end
    missed: int = 0  # slots without a block since genesis (for display)
    # Epochs that had blocks since the finalized checkpoint last moved (the inactivity leak's clock).
    unfinalized_epochs: int = 0
    epoch_blocks: int = 0  # blocks of this chain in the current epoch
    previous_epoch_blocks: int = 0
    # (root, height) of the blocks named above (this block, targets, checkpoints): what the
    # node needs to say which height is final without looking a hash up anywhere.
    heights: tuple[tuple[bytes, int], ...] = ()

    def height_of(self, root: bytes) -> int:
        for known, height in self.heights:
            if known == root:
                return height
        raise AssertionError(f"the state lost the height of {root.hex()[:12]}")

    @property
    def finalized_height(self) -> int:
        return self.height_of(self.finalized.root)

    def epoch(self, params: PosParams) -> int:
        return self.slot // params.slots_per_epoch

    def owner_index(self) -> dict[bytes, int]:
        return {validator.owner: index for index, validator in enumerate(self.validators)}


def genesis_state(genesis_hash: bytes, stakes, params: PosParams) -> BeaconState:
    """The state of block 0 (`genesis_hash`: its block hash): genesis stakes active from
    epoch 0 (`stakes`: ledger.genesis.GenesisStake items)."""
    validators: list[Validator] = []
    keys: set[bytes] = set()
    for stake in stakes:
        if stake.validator_key in keys:
            raise ValueError("pos engine: two genesis stakes name one validator key")
        keys.add(stake.validator_key)
        validators.append(Validator(stake.validator_key, stake.owner, stake.amount, activation_epoch=0))
    if not validators:
        raise ValueError("pos engine: genesis must name at least one stake (genesis `stakes`)")
    weights = tuple(v.stake for v in validators)
    root = Checkpoint(0, genesis_hash)
    return BeaconState(
        slot=0, block_root=genesis_hash, validators=tuple(validators), epoch_stake=weights,
        previous_epoch_stake=weights, randao_mix=crypto.sha256(b"randao" + genesis_hash), mixes=(),
        justified=root, previous_justified=root, finalized=root, justification_bits=0,
        target_root=genesis_hash, previous_target_root=genesis_hash, votes=frozenset(), previous_votes=frozenset(),
        included=frozenset(), proposer_rewards=(), heights=((genesis_hash, 0),),
    )


# ----------------------------------------------------------------------------- epochs


def process_slots(state: BeaconState, slot: int, params: PosParams) -> tuple[BeaconState, list[StakeOp]]:
    """The state at the start of `slot` (no block in between): every epoch boundary crossed
    is processed in turn.  Returns it with the ops those boundaries order."""
    ops: list[StakeOp] = []
    spe = params.slots_per_epoch
    while state.slot // spe < slot // spe:
        state, epoch_ops = process_epoch(state, params)
        ops.extend(epoch_ops)
    return state, ops


def process_epoch(state: BeaconState, params: PosParams) -> tuple[BeaconState, list[StakeOp]]:
    """End epoch E = state's epoch; the result is at the first slot of E + 1."""
    epoch = state.epoch(params)
    before = state.finalized
    state = weigh_justification(state, epoch)
    if state.finalized != before:
        state = replace(state, unfinalized_epochs=0)
    elif state.epoch_blocks:
        state = replace(state, unfinalized_epochs=state.unfinalized_epochs + 1)
    ops = epoch_ops(state, epoch, params)
    validators = mirror_ops(state.validators, ops)
    validators, unbond_ops = process_registry(validators, epoch, params)
    ops.extend(unbond_ops)
    next_epoch = epoch + 1
    weights = tuple(v.stake if v.active_at(next_epoch) else 0 for v in validators)
    first_slot = next_epoch * params.slots_per_epoch
    keep_from = (next_epoch - 1) * params.slots_per_epoch
    return _keep_heights(replace(
        state, slot=first_slot, validators=validators, previous_epoch_stake=state.epoch_stake, epoch_stake=weights,
        mixes=(state.mixes + ((epoch, state.randao_mix),))[-3:],
        previous_target_root=state.target_root, target_root=state.block_root,  # until a block at first_slot
        previous_votes=state.votes, votes=frozenset(), proposer_rewards=(),
        previous_epoch_blocks=state.epoch_blocks, epoch_blocks=0,
        included=frozenset(item for item in state.included if item[1] >= keep_from),
    )), ops


def weigh_justification(state: BeaconState, epoch: int) -> BeaconState:
    """Casper FFG at the end of `epoch` (the phase-0 rules, k = 1 and 2): justify the previous
    and the current checkpoint when at least 2/3 of the epoch's stake voted for it from the
    justified source; finalize a justified checkpoint whose child checkpoint (or, across one
    gap, grandchild) became justified from it."""
    old_previous, old_current = state.previous_justified, state.justified
    justified = state.justified
    bits = (state.justification_bits << 1) & 0b1111
    if epoch >= 1 and supermajority(state.previous_votes, state.previous_epoch_stake):
        justified = Checkpoint(epoch - 1, state.previous_target_root)
        bits |= 0b10
    if supermajority(state.votes, state.epoch_stake):
        justified = Checkpoint(epoch, state.target_root)
        bits |= 0b01
    finalized = state.finalized
    if bits & 0b1110 == 0b1110 and old_previous.epoch + 3 == epoch:
        finalized = old_previous
    if bits & 0b0110 == 0b0110 and old_previous.epoch + 2 == epoch:
        finalized = old_previous
    if bits & 0b0111 == 0b0111 and old_current.epoch + 2 == epoch:
        finalized = old_current
    if bits & 0b0011 == 0b0011 and old_current.epoch + 1 == epoch:
        finalized = old_current
    if justified.epoch < state.justified.epoch:
        justified = state.justified
    if finalized.epoch < state.finalized.epoch:
        finalized = state.finalized
    return replace(state, previous_justified=old_current, justified=justified, finalized=finalized,
                   justification_bits=bits)


def supermajority(voters: frozenset[int], weights: tuple[int, ...]) -> bool:
    total = sum(weights)
    voted = sum(weights[index] for index in voters if index < len(weights))
    return total > 0 and 3 * voted >= 2 * total


def in_leak(state: BeaconState, params: PosParams) -> bool:
    """More than `inactivity_leak_after` epochs in which votes could be made (the chain had
    blocks) went by without finality."""
    return state.unfinalized_epochs > params.inactivity_leak_after


def epoch_ops(state: BeaconState, epoch: int, params: PosParams) -> list[StakeOp]:
    """Rewards and penalties for the previous epoch (its votes are all in by now), the
    proposers' rewards, and the releases that fall due."""
    ops: list[StakeOp] = []
    # Votes for the previous epoch could go into its blocks or this epoch's.  With no block
    # in either, nobody could vote on this chain: an outage is not charged to anyone, so a
    # chain that stood still a long time does not wake with every validator drained.
    could_vote = state.previous_epoch_blocks + state.epoch_blocks > 0
    if epoch >= 1 and could_vote:
        weights = state.previous_epoch_stake
        total = sum(weights)
        pool = params.issuance_per_epoch * 7 // 8
        leak = in_leak(state, params)
        for index, validator in enumerate(state.validators):
            weight = weights[index] if index < len(weights) else 0
            if weight == 0 or validator.slashed or total == 0:
                continue
            base = pool * weight // total
            if index in state.previous_votes:
                if not leak and base:
                    ops.append(StakeOp(StakeOpKind.REWARD, validator.owner, base))
            else:
                penalty = min(validator.stake, base + (bps(validator.stake, params.inactivity_leak_bps) if leak else 0))
                if penalty:
                    ops.append(StakeOp(StakeOpKind.PENALTY, validator.owner, penalty))
    for owner, amount in state.proposer_rewards:
        ops.append(StakeOp(StakeOpKind.REWARD, owner, amount))
    for validator in state.validators:
        if validator.unbonding and validator.release_epoch <= epoch + 1:
            ops.append(StakeOp(StakeOpKind.RELEASE, validator.owner, validator.unbonding))
    return ops


def mirror_ops(validators: tuple[Validator, ...], ops: list[StakeOp]) -> tuple[Validator, ...]:
    """The registry after the ledger applies `ops` (ledger/staking.py: the same rules)."""
    if not ops:
        return validators
    by_owner = {v.owner: i for i, v in enumerate(validators)}
    out = list(validators)
    for op in ops:
        index = by_owner.get(op.address)
        if index is None or op.kind == StakeOpKind.REWARD:
            continue
        v = out[index]
        if op.kind == StakeOpKind.PENALTY:
            v = v._replace(stake=v.stake - op.amount)
        elif op.kind == StakeOpKind.SLASH:
            from_stake = min(v.stake, op.amount)
            v = v._replace(stake=v.stake - from_stake, unbonding=v.unbonding - (op.amount - from_stake))
        elif op.kind == StakeOpKind.UNBOND:
            v = v._replace(stake=v.stake - op.amount, unbonding=v.unbonding + op.amount, release_epoch=op.epoch)
        elif op.kind == StakeOpKind.RELEASE:
            unbonding = v.unbonding - op.amount
            v = v._replace(unbonding=unbonding, release_epoch=v.release_epoch if unbonding else 0)
        assert v.stake >= 0 and v.unbonding >= 0, f"an op took more than validator {index} holds"
        out[index] = v
    return tuple(out)


def process_registry(validators: tuple[Validator, ...], epoch: int, params: PosParams
                     ) -> tuple[tuple[Validator, ...], list[StakeOp]]:
    """Exits (requests and stake fallen below the minimum) and activations at the end of
    `epoch`, at most `churn_limit` of each; effective from epoch + 1."""
    out = list(validators)
    ops: list[StakeOp] = []
    next_epoch = epoch + 1
    release = next_epoch + params.exit_delay_epochs
    exits = 0
    for index, v in enumerate(out):
        if exits >= params.churn_limit:
            break
        if not v.exit_requested and not (v.active_at(next_epoch) and v.stake < params.min_stake):
            continue
        amount = min(v.exit_requested, v.stake) if v.exit_requested else v.stake
        leaves = v.stake - amount < params.min_stake
        if leaves:
            amount = v.stake
        if amount:
            ops.append(StakeOp(StakeOpKind.UNBOND, v.owner, amount, release))
        out[index] = v._replace(
            stake=v.stake - amount, unbonding=v.unbonding + amount,
            release_epoch=release if amount else v.release_epoch, exit_requested=0,
            exit_epoch=min(v.exit_epoch, next_epoch) if leaves and v.activation_epoch != FAR else v.exit_epoch,
            activation_epoch=v.activation_epoch if not leaves or v.activation_epoch <= epoch else FAR,
        )
        exits += 1
    activations = 0
    for index, v in enumerate(out):
        if activations >= params.churn_limit:
            break
        if v.activation_epoch == FAR and not v.slashed and not v.key_taken and v.stake >= params.min_stake:
            out[index] = v._replace(activation_epoch=next_epoch, exit_epoch=FAR)
            activations += 1
    return tuple(out), ops


# ----------------------------------------------------------------------------- proposers


def proposer_index(state: BeaconState, slot: int, params: PosParams, genesis_seed: bytes) -> int | None:
    """The validator that proposes at `slot` (state processed to the slot's epoch): sampled
    by this epoch's stake from the seed.  None when no stake is active."""
    epoch = slot // params.slots_per_epoch
    seed = _seed(state, epoch, genesis_seed)
    weights = [(i, w) for i, w in enumerate(state.epoch_stake) if w and not state.validators[i].slashed]
    total = sum(w for _, w in weights)
    if total == 0:
        return None
    pick = int.from_bytes(crypto.sha256(seed + slot.to_bytes(8, "big")), "big") % total
    for index, weight in weights:
        if pick < weight:
            return index
        pick -= weight
    raise AssertionError("unreachable: the pick is below the total")


def _seed(state: BeaconState, epoch: int, genesis_seed: bytes) -> bytes:
    if epoch >= 2:
        for mix_epoch, mix in state.mixes:
            if mix_epoch == epoch - 2:
                return mix
    return genesis_seed


def attests_at(state: BeaconState, index: int, slot: int, params: PosParams, genesis_seed: bytes) -> bool:
    """Whether validator `index` has an attestation duty at `slot`."""
    epoch = slot // params.slots_per_epoch
    if index >= len(state.epoch_stake) or not state.epoch_stake[index] or state.validators[index].slashed:
        return False
    if params.attest_every_slot:
        return True
    seed = _seed(state, epoch, genesis_seed)
    order = sorted((crypto.sha256(seed + i.to_bytes(4, "big")), i) for i, w in enumerate(state.epoch_stake) if w)
    position = next(p for p, (_, i) in enumerate(order) if i == index)
    return epoch * params.slots_per_epoch + position % params.slots_per_epoch == slot


# ----------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Chain:
    """What the pure rules need beside the state: the chain id, genesis time and seed."""

    chain_id: str
    genesis_time: int
    genesis_seed: bytes
    params: PosParams

    def slot_of(self, timestamp: int) -> int | None:
        offset = timestamp - self.genesis_time
        if offset <= 0 or offset % self.params.slot_ms:
            return None
        return offset // self.params.slot_ms

    def slot_time(self, slot: int) -> int:
        return self.genesis_time + slot * self.params.slot_ms


def check_attestation(state: BeaconState, att: Attestation, slot: int, chain: Chain) -> str | None:
    """Why `att` cannot go into a block at `slot` on this state (processed to the slot), or None."""
    params = chain.params
    epoch = slot // params.slots_per_epoch
    target_epoch = att.target.epoch
    if not att.slot < slot <= att.slot + params.slots_per_epoch:
        return "attestation slot outside the inclusion window"
    if target_epoch != att.slot // params.slots_per_epoch or target_epoch not in (epoch, epoch - 1):
        return "attestation target epoch is not its slot's, or too old"
    if att.validator >= len(state.validators):
        return "attestation names no validator"
    validator = state.validators[att.validator]
    weights = state.epoch_stake if target_epoch == epoch else state.previous_epoch_stake
    if att.validator >= len(weights) or not weights[att.validator] or validator.slashed:
        return "attester is not active in the target epoch"
    source = state.justified if target_epoch == epoch else state.previous_justified
    if att.source != source:
        return "attestation source is not the justified checkpoint"
    if (att.validator, att.slot) in state.included:
        return "attestation already included"
    if not att.signature_valid(validator.key, chain.chain_id):
        return "attestation signature does not verify"
    return None


def process_attestation(state: BeaconState, att: Attestation, slot: int, proposer_owner: bytes,
                        chain: Chain) -> BeaconState:
    """Count a checked attestation: its target vote (if its target is this chain's checkpoint)
    and the proposer's share for including a new vote."""
    params = chain.params
    current = att.target.epoch == slot // params.slots_per_epoch
    root = state.target_root if current else state.previous_target_root
    votes = state.votes if current else state.previous_votes
    included = state.included | {(att.validator, att.slot)}
    if att.target.root != root or att.validator in votes:
        return replace(state, included=included)
    weights = state.epoch_stake if current else state.previous_epoch_stake
    pool = params.issuance_per_epoch - params.issuance_per_epoch * 7 // 8
    reward = pool * weights[att.validator] // max(1, sum(weights))
    rewards = dict(state.proposer_rewards)
    if reward:
        rewards[proposer_owner] = rewards.get(proposer_owner, 0) + reward
    votes = votes | {att.validator}
    changes = {"votes": votes} if current else {"previous_votes": votes}
    return replace(state, included=included, proposer_rewards=tuple(sorted(rewards.items())), **changes)


def check_proposer_slashing(state: BeaconState, evidence: ProposerSlashing, chain: Chain) -> str | None:
    if evidence.validator >= len(state.validators):
        return "slashing names no validator"
    validator = state.validators[evidence.validator]
    first, second = evidence.first, evidence.second
    if validator.slashed or not (validator.stake + validator.unbonding):
        return "validator already slashed or holds no stake"
    if first.slot != second.slot or first.digest == second.digest:
        return "not two different blocks for one slot"
    if first.digest > second.digest:
        return "the two blocks are not in canonical order"
    if not (first.valid_for(validator.key, chain.chain_id) and second.valid_for(validator.key, chain.chain_id)):
        return "a block signature does not verify"
    return None


def check_attester_slashing(state: BeaconState, evidence: AttesterSlashing, chain: Chain) -> str | None:
    first, second = evidence.first, evidence.second
    if first.validator != second.validator or first.validator >= len(state.validators):
        return "slashing names no single validator"
    validator = state.validators[first.validator]
    if validator.slashed or not (validator.stake + validator.unbonding):
        return "validator already slashed or holds no stake"
    if slashable_votes(first, second) is None:
        return "the two attestations are not slashable"
    if evidence_key(first) >= evidence_key(second):
        return "the two attestations are not in canonical order"
    if not (first.signature_valid(validator.key, chain.chain_id) and second.signature_valid(validator.key, chain.chain_id)):
        return "an attestation signature does not verify"
    return None


def evidence_key(att: Attestation) -> bytes:
    writer = Writer()
    att.write(writer)
    return writer.bytes()


def slash(state: BeaconState, index: int, epoch: int, whistleblower: bytes, chain: Chain
          ) -> tuple[BeaconState, list[StakeOp]]:
    """The offender loses `slash_bps` of its stake, is ejected, and its remaining stake unbonds;
    the including proposer is paid `whistleblower_bps` of what was taken."""
    params = chain.params
    v = state.validators[index]
    penalty = max(1, bps(v.stake + v.unbonding, params.slash_bps))
    ops = [StakeOp(StakeOpKind.SLASH, v.owner, penalty)]
    validators = mirror_ops(state.validators, ops)
    v = validators[index]
    release = epoch + 1 + params.exit_delay_epochs
    if v.stake:
        ops.append(StakeOp(StakeOpKind.UNBOND, v.owner, v.stake, release))
    reward = bps(penalty, params.whistleblower_bps)
    if reward:
        ops.append(StakeOp(StakeOpKind.REWARD, whistleblower, reward))
    validators = list(mirror_ops(state.validators, ops))
    validators[index] = validators[index]._replace(slashed=True, slashed_amount=v.slashed_amount + penalty, exit_epoch=min(validators[index].exit_epoch, epoch + 1),
                                                   exit_requested=0)
    return replace(state, validators=tuple(validators)), ops


def apply_stake_changes(state: BeaconState, changes: tuple[StakeChange, ...], epoch: int) -> BeaconState:
    if not changes:
        return state
    validators = list(state.validators)
    by_owner = {v.owner: i for i, v in enumerate(validators)}
    keys = {v.key for v in validators}
    for change in changes:
        index = by_owner.get(change.owner)
        if change.bond:
            if index is None:
                validators.append(Validator(change.validator_key, change.owner, change.amount,
                                            key_taken=change.validator_key in keys))
                keys.add(change.validator_key)
                by_owner[change.owner] = len(validators) - 1
                continue
            v = validators[index]
            if v.exit_epoch <= epoch and not v.slashed:
                v = v._replace(activation_epoch=FAR, exit_epoch=FAR)  # back in the queue
            validators[index] = v._replace(stake=v.stake + change.amount)
        elif index is not None:
            v = validators[index]
            validators[index] = v._replace(exit_requested=min(v.stake, v.exit_requested + change.amount))
    weights = state.epoch_stake + (0,) * (len(validators) - len(state.epoch_stake))
    previous = state.previous_epoch_stake + (0,) * (len(validators) - len(state.previous_epoch_stake))
    return replace(state, validators=tuple(validators), epoch_stake=weights, previous_epoch_stake=previous)


class Prepared(NamedTuple):
    """The state at a slot before its block, and what a block there must contain."""

    state: BeaconState
    ops: list[StakeOp]  # ordered by the epoch boundaries crossed
    proposer: int | None


def prepare(state: BeaconState, slot: int, chain: Chain) -> Prepared:
    processed, ops = process_slots(state, slot, chain.params)
    return Prepared(processed, ops, proposer_index(processed, slot, chain.params, chain.genesis_seed))


def apply_body(prepared: Prepared, slot: int, extra: PosExtra, proposer_owner: bytes, chain: Chain
               ) -> tuple[BeaconState, list[StakeOp]]:
    """The block's own contents on the prepared state: the RANDAO reveal, slashings,
    attestations and stake changes.  Returns the state and the complete ops the block must
    carry; raises InvalidSeal naming the first thing wrong."""
    params = chain.params
    state, ops = prepared.state, list(prepared.ops)
    epoch = slot // params.slots_per_epoch
    state = replace(state, randao_mix=crypto.sha256(state.randao_mix + crypto.sha256(extra.randao_reveal)))
    if len(extra.proposer_slashings) + len(extra.attester_slashings) > params.max_slashings_per_block:
        raise InvalidSeal("too many slashings in one block")
    for evidence in extra.proposer_slashings:
        problem = check_proposer_slashing(state, evidence, chain)
        if problem:
            raise InvalidSeal(f"proposer slashing: {problem}")
        state, more = slash(state, evidence.validator, epoch, proposer_owner, chain)
        ops.extend(more)
    for evidence in extra.attester_slashings:
        problem = check_attester_slashing(state, evidence, chain)
        if problem:
            raise InvalidSeal(f"attester slashing: {problem}")
        state, more = slash(state, evidence.validator, epoch, proposer_owner, chain)
        ops.extend(more)
    if len(extra.attestations) > params.max_attestations_per_block:
        raise InvalidSeal("too many attestations in one block")
    for att in extra.attestations:
        problem = check_attestation(state, att, slot, chain)
        if problem:
            raise InvalidSeal(problem)
        state = process_attestation(state, att, slot, proposer_owner, chain)
    return state, ops


def apply_block(parent: BeaconState, header: BlockHeader, chain: Chain) -> BeaconState:
    """The state after `header` on `parent`'s state; raises InvalidSeal unless the header is
    a valid proof-of-stake block there (slot, proposer, seal, reveal, contents, ops)."""
    slot = chain.slot_of(header.timestamp)
    if slot is None:
        raise InvalidSeal("block timestamp is not the start of a slot")
    assert parent.block_root == header.parent, "apply_block was handed another block's state"
    if slot <= parent.slot:
        raise InvalidSeal(f"block slot {slot} is not after its parent's {parent.slot}")
    try:
        extra = PosExtra.decode(header.extra)
    except DecodeError as exc:
        raise InvalidSeal(f"malformed proof-of-stake extra: {exc}") from None
    prepared = prepare(parent, slot, chain)
    if prepared.proposer is None:
        raise InvalidSeal("no stake is active: nobody may propose")
    validator = prepared.state.validators[prepared.proposer]
    if header.proposer != validator.owner:
        raise InvalidSeal(f"slot {slot} belongs to validator {prepared.proposer}, not this proposer")
    if not SealedDigest(slot, crypto.sha256(header.unsealed_bytes()), header.seal).valid_for(validator.key, chain.chain_id):
        raise InvalidSeal("block seal is not the slot proposer's signature")
    epoch = slot // chain.params.slots_per_epoch
    if not crypto.verify(validator.key, DOMAIN_RANDAO, randao_payload(chain.chain_id, epoch), extra.randao_reveal):
        raise InvalidSeal("RANDAO reveal is not the proposer's signature of the epoch")
    state, ops = apply_body(prepared, slot, extra, validator.owner, chain)
    if list(extra.ops) != ops:
        raise InvalidSeal("block ops differ from what the consensus state orders")
    state = apply_stake_changes(state, extra.stake_changes, epoch)
    block_hash = header.hash
    first_of_epoch = slot == epoch * chain.params.slots_per_epoch
    state = replace(state, heights=state.heights + ((block_hash, header.height),))
    return _keep_heights(replace(state, slot=slot, block_root=block_hash,
                   target_root=block_hash if first_of_epoch else state.target_root,
                   missed=state.missed + (slot - parent.slot - 1), epoch_blocks=state.epoch_blocks + 1))


def _keep_heights(state: BeaconState) -> BeaconState:
    wanted = {state.block_root, state.target_root, state.previous_target_root, state.justified.root,
              state.previous_justified.root, state.finalized.root}
    kept = tuple(sorted({(root, height) for root, height in state.heights if root in wanted}))
    assert len(kept) == len(wanted), "a checkpoint's height is unknown"
    return replace(state, heights=kept)


def sign_block(key: crypto.PrivateKey, header: BlockHeader, slot: int, chain_id: str) -> bytes:
    return key.sign(DOMAIN_POS_BLOCK, seal_payload(chain_id, slot, header.unsealed_bytes()))


# ----------------------------------------------------------------------------- persistence


def encode_state(state: BeaconState) -> bytes:
    w = Writer().u64(state.slot).fixed(state.block_root, 32).u32(len(state.validators))
    for v in state.validators:
        w.fixed(v.key, 33).fixed(v.owner, 20).u64(v.stake).u64(v.activation_epoch).u64(v.exit_epoch)
        w.u64(v.unbonding).u64(v.release_epoch).u8(v.slashed).u64(v.exit_requested).u8(v.key_taken).u64(v.slashed_amount)
    for weights in (state.epoch_stake, state.previous_epoch_stake):
        for weight in weights:
            w.u64(weight)
    w.fixed(state.randao_mix, 32).u8(len(state.mixes))
    for epoch, mix in state.mixes:
        w.u64(epoch).fixed(mix, 32)
    for checkpoint in (state.justified, state.previous_justified, state.finalized):
        checkpoint.write(w)
    w.u8(state.justification_bits).fixed(state.target_root, 32).fixed(state.previous_target_root, 32)
    for votes in (state.votes, state.previous_votes):
        w.u32(len(votes))
        for index in sorted(votes):
            w.u32(index)
    w.u32(len(state.included))
    for index, slot in sorted(state.included):
        w.u32(index).u64(slot)
    w.u32(len(state.proposer_rewards))
    for owner, amount in state.proposer_rewards:
        w.fixed(owner, 20).u64(amount)
    w.u64(state.missed).u32(state.unfinalized_epochs).u32(state.epoch_blocks).u32(state.previous_epoch_blocks).u8(len(state.heights))
    for root, height in state.heights:
        w.fixed(root, 32).u64(height)
    return w.bytes()


def read_state(r: Reader) -> BeaconState:
    slot, root = r.u64("slot"), r.fixed(32, "root")
    count = r.u32("validators")
    validators = tuple(
        Validator(r.fixed(33, "key"), r.fixed(20, "owner"), r.u64("stake"), r.u64("activation"), r.u64("exit"),
                  r.u64("unbonding"), r.u64("release"), bool(r.u8("slashed")), r.u64("exit_requested"),
                  bool(r.u8("key_taken")), r.u64("slashed_amount"))
        for _ in range(count))
    weights = tuple(r.u64("weight") for _ in range(count))
    previous = tuple(r.u64("weight") for _ in range(count))
    mix = r.fixed(32, "mix")
    mixes = tuple((r.u64("mix_epoch"), r.fixed(32, "mix")) for _ in range(r.u8("mixes")))
    justified, previous_justified, finalized = (Checkpoint.read(r, "checkpoint") for _ in range(3))
    bits, target, previous_target = r.u8("bits"), r.fixed(32, "target"), r.fixed(32, "previous_target")
    votes = frozenset(r.u32("vote") for _ in range(r.u32("votes")))
    previous_votes = frozenset(r.u32("vote") for _ in range(r.u32("votes")))
    included = frozenset((r.u32("index"), r.u64("slot")) for _ in range(r.u32("included")))
    rewards = tuple((r.fixed(20, "owner"), r.u64("amount")) for _ in range(r.u32("rewards")))
    return BeaconState(slot, root, validators, weights, previous, mix, mixes, justified, previous_justified,
                       finalized, bits, target, previous_target, votes, previous_votes, included, rewards,
                       r.u64("missed"), r.u32("unfinalized_epochs"), r.u32("epoch_blocks"), r.u32("previous_epoch_blocks"),
                       tuple((r.fixed(32, "root"), r.u64("height")) for _ in range(r.u8("heights"))))

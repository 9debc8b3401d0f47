"""What a proof-of-stake block says about itself, for people: its slot and epoch, the
slots its proposer's predecessors missed, whether it opens an epoch (a checkpoint), and
what its extra carries.  Read from the header alone, so any node shows the same."""

from __future__ import annotations

from ledger.block import BlockHeader
from ledger.staking import StakeOpKind

from consensus.pos.beacon import Chain
from consensus.pos.messages import PosExtra


def block_labels(chain: Chain, header: BlockHeader, parent: BlockHeader | None) -> list[tuple[str, str]]:
    if header.height == 0:
        return [("slot", "0"), ("epoch", "0"), ("checkpoint", "genesis: the first justified and finalized checkpoint")]
    slot = chain.slot_of(header.timestamp)
    if slot is None:
        return []
    per_epoch = chain.params.slots_per_epoch
    labels = [("slot", str(slot)), ("epoch", str(slot // per_epoch))]
    if parent is not None:
        parent_slot = chain.slot_of(parent.timestamp) or 0
        missed = slot - parent_slot - 1
        labels.append(("missed slots before it", str(missed)))
        if parent_slot // per_epoch < slot // per_epoch:
            labels.append(("checkpoint", f"the first block of epoch {slot // per_epoch}: its checkpoint"))
    extra = PosExtra.decode(header.extra)
    labels.append(("attestations", str(len(extra.attestations))))
    labels.append(("RANDAO reveal", extra.randao_reveal.hex()))
    if extra.proposer_slashings or extra.attester_slashings:
        labels.append(("slashings", f"{len(extra.proposer_slashings)} proposer, {len(extra.attester_slashings)} attester"))
    if extra.ops:
        labels.append(("stake ops", ", ".join(f"{StakeOpKind(op.kind).name.lower()} {op.amount}" for op in extra.ops[:8])
                       + (f" and {len(extra.ops) - 8} more" if len(extra.ops) > 8 else "")))
    return labels

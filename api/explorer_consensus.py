"""What the explorer's validators page shows beside the set: the checkpoints a
checkpoint-finality engine (proof of stake) has justified and finalized, and the evidence
of misbehaviour (slashings under proof of stake, equivocations under BFT) that blocks
record or the node has seen.  Built from `EngineStatus` and the store; no engine names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from api.service import NodeService
from ledger.engine_status import Checkpoint, EngineStatus
from ledger.evidence import EvidenceRecord

RECORDED_SHOWN = 20

# How the page names an engine's kinds of evidence; an unknown kind shows as it is.
_KIND_TEXT = {
    "proposer_equivocation": "two blocks for one slot",
    "double_vote": "two votes for one target epoch",
    "surround_vote": "a vote surrounding another",
    "duplicate_vote": "two votes in one round",
    "duplicate_proposal": "two proposals in one round",
}


@dataclass(frozen=True)
class CheckpointRow:
    name: str  # "Justified", "Finalized"
    epoch: int
    root: str  # block hash, hex
    height: int | None  # of the root, when this node holds it
    note: str


@dataclass(frozen=True)
class EvidenceRow:
    validator: str  # bech32m
    kind: str
    what: str  # the kind in words
    at: int  # slot (PoS) or height (BFT) of the misbehaviour
    recorded_at: int | None  # height of the block that records it; None: seen, not yet in a block


def checkpoints(service: NodeService, status: EngineStatus) -> tuple[str, list[CheckpointRow]] | None:
    """The position (slot and epoch) and the justified and finalized checkpoints, or None when
    the engine finalizes some other way."""
    if status.justified is None or status.finalized is None:
        return None

    def row(name: str, checkpoint: Checkpoint, note: str) -> CheckpointRow:
        block = service.block(checkpoint.block_hash, with_transactions=False)
        return CheckpointRow(name, checkpoint.epoch, checkpoint.block_hash.hex(), block.header.height if block is not None else None, note)

    position = f"Slot {status.slot:,} of epoch {status.epoch:,}" if status.slot is not None else ""
    return position, [
        row("Justified", status.justified,
            "two thirds of the stake linked it to an earlier justified checkpoint; the fork choice starts here"),
        row("Finalized", status.finalized,
            "justified, and its child checkpoint justified by a link from it: never reverted"),
    ]


def evidence(service: NodeService, status: EngineStatus, address: Callable[[bytes], str]) -> list[EvidenceRow]:
    """Evidence the chain records (newest first), then what the node has seen and no block
    records yet."""
    recorded = service.recorded_evidence(None, None, RECORDED_SHOWN)
    rows = [_row(record, address, height) for height, _, record in recorded]
    in_blocks = {record.data for _, _, record in recorded}
    rows += [_row(record, address, None) for record in status.evidence if record.data not in in_blocks]
    return rows


def _row(record: EvidenceRecord, address: Callable[[bytes], str], recorded_at: int | None) -> EvidenceRow:
    return EvidenceRow(address(record.validator), record.kind, _KIND_TEXT.get(record.kind, record.kind.replace("_", " ")),
                       record.height, recorded_at)

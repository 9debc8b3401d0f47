"""The explorer's checkpoints and slashings (api/explorer_consensus.py), from an engine status
and the store: what a page shows when a proof-of-stake chain has slashed someone."""

from __future__ import annotations

from api import explorer_consensus
from ledger.engine_status import Checkpoint, EngineStatus, Finality
from ledger.evidence import EvidenceRecord

OFFENDER = bytes([7]) * 20
ROOT = bytes([1]) * 32


class Store:
    """What the rows read of a node: blocks by hash, and the evidence blocks record."""

    def __init__(self, recorded):
        self.recorded = recorded

    def block(self, ref, with_transactions=True):
        if ref != ROOT:
            return None
        header = type("Header", (), {"height": 16})()
        return type("Record", (), {"header": header})()

    def recorded_evidence(self, validator, before, limit):
        return self.recorded[:limit]


def status(**changes) -> EngineStatus:
    settings = dict(engine="pos", finality=Finality.CHECKPOINT, role="validator", phase="slot 40 of epoch 5",
                    slot=40, epoch=5, justified=Checkpoint(4, ROOT), finalized=Checkpoint(3, bytes(32)))
    settings.update(changes)
    return EngineStatus(**settings)


def test_checkpoints_link_the_blocks_the_node_holds():
    position, rows = explorer_consensus.checkpoints(Store([]), status())
    assert position == "Slot 40 of epoch 5"
    justified, finalized = rows
    assert (justified.name, justified.epoch, justified.root, justified.height) == ("Justified", 4, ROOT.hex(), 16)
    assert (finalized.name, finalized.epoch, finalized.height) == ("Finalized", 3, None)  # not held: no link


def test_engines_without_checkpoints_show_none():
    assert explorer_consensus.checkpoints(Store([]), status(engine="bft", finality=Finality.CERTIFICATE,
                                                           justified=None, finalized=None)) is None


def test_slashings_recorded_in_blocks_come_first_and_seen_ones_are_not_repeated():
    in_block = EvidenceRecord(OFFENDER, 33, 0, "double_vote", b"pair-1")
    seen_only = EvidenceRecord(OFFENDER, 41, 0, "proposer_equivocation", b"pair-2")
    rows = explorer_consensus.evidence(Store([(35, 0, in_block)]), status(evidence=(in_block, seen_only)),
                                       lambda account: "dev1" + account.hex())
    assert [(r.kind, r.at, r.recorded_at) for r in rows] == [("double_vote", 33, 35), ("proposer_equivocation", 41, None)]
    assert rows[0].what == "two votes for one target epoch" and rows[0].validator == "dev1" + OFFENDER.hex()
    assert rows[1].what == "two blocks for one slot"
    unknown = EvidenceRecord(OFFENDER, 2, 1, "odd_thing", b"x")
    assert explorer_consensus.evidence(Store([]), status(evidence=(unknown,)), str)[0].what == "odd thing"

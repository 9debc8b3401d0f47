"""BFT evidence and a block's extra: two conflicting messages one validator signed for the
same height and round (`Evidence`, checked by `verify_evidence`), and what a BFT block's
header `extra` carries, its parent's commit certificate and the evidence it records
(`BlockExtra`).  Built of the messages in consensus/bft_messages.py; the layouts are in
`docs/protocol.md` ("Evidence", "Block extra").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ledger.address import ADDRESS_SIZE
from ledger.block import HASH_SIZE
from ledger.codec import DecodeError, Reader, Writer

from consensus.bft_messages import MAX_CERTIFICATE_BYTES, SIGNATURE_SIZE, Certificate, SignedProposal, Vote
from consensus.validators import ValidatorSet

_VOTE_SIZE = 1 + 8 + 4 + 1 + HASH_SIZE + ADDRESS_SIZE + SIGNATURE_SIZE  # the largest (non-nil) vote
_SIGNED_PROPOSAL_SIZE = 8 + 4 + 1 + 4 + HASH_SIZE + ADDRESS_SIZE + SIGNATURE_SIZE
MAX_EVIDENCE_BYTES = 1 + 2 * (4 + max(_VOTE_SIZE, _SIGNED_PROPOSAL_SIZE))
MAX_BLOCK_EVIDENCE = 16  # pieces of evidence one block records; the rest wait for later blocks


class EvidenceType(IntEnum):
    DUPLICATE_VOTE = 1
    DUPLICATE_PROPOSAL = 2


class InvalidEvidence(ValueError):
    pass


# ----------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two conflicting messages signed by one validator for the same height and round:
    two votes of one type for different values, or two different proposals.  The pair
    is stored in byte order, so the same misbehaviour always encodes the same way."""

    kind: EvidenceType
    first: Vote | SignedProposal
    second: Vote | SignedProposal

    @classmethod
    def of(cls, a: Vote | SignedProposal, b: Vote | SignedProposal) -> Evidence:
        kind = EvidenceType.DUPLICATE_VOTE if isinstance(a, Vote) else EvidenceType.DUPLICATE_PROPOSAL
        first, second = sorted((a, b), key=lambda item: item.encode())
        return cls(kind, first, second)

    @property
    def validator(self) -> bytes:
        return self.first.validator if isinstance(self.first, Vote) else self.first.proposer

    @property
    def height(self) -> int:
        return self.first.height

    @property
    def round(self) -> int:
        return self.first.round

    @property
    def key(self) -> tuple[bytes, int, int, int]:
        """What one misbehaviour is: whoever reports it, with whichever pair of messages."""
        first = self.first
        return (self.validator, self.height, self.round, int(first.kind) if isinstance(first, Vote) else 0)

    @property
    def kind_name(self) -> str:
        return "duplicate_vote" if self.kind == EvidenceType.DUPLICATE_VOTE else "duplicate_proposal"

    def encode(self) -> bytes:
        first, second = self.first.encode(), self.second.encode()
        return Writer().u8(int(self.kind)).var_bytes(first).var_bytes(second).bytes()

    @classmethod
    def decode(cls, data: bytes) -> Evidence:
        if len(data) > MAX_EVIDENCE_BYTES:
            raise DecodeError("evidence", f"{len(data)} bytes exceeds the limit of {MAX_EVIDENCE_BYTES}")
        reader = Reader(data)
        kind = reader.u8("evidence.kind")
        parts = []
        for field in ("evidence.first", "evidence.second"):
            raw = reader.var_bytes(field, MAX_EVIDENCE_BYTES)
            item_reader = Reader(raw)
            if kind == EvidenceType.DUPLICATE_VOTE:
                parts.append(Vote.read(item_reader))
            elif kind == EvidenceType.DUPLICATE_PROPOSAL:
                parts.append(SignedProposal.read(item_reader))
            else:
                raise DecodeError("evidence.kind", f"unknown evidence kind {kind}")
            item_reader.finish()
        reader.finish()
        if parts[0].encode() >= parts[1].encode():
            raise DecodeError("evidence", "the two messages must differ and come in byte order")
        return cls(EvidenceType(kind), parts[0], parts[1])

    def to_json(self) -> dict:
        first = self.first
        return {
            "kind": self.kind_name,
            "validator": self.validator.hex(),
            "height": self.height,
            "round": self.round,
            "vote_type": first.kind.name.lower() if isinstance(first, Vote) else None,
            "values": [_value_hex(self.first), _value_hex(self.second)],
            "evidence": self.encode().hex(),
        }


def _value_hex(item: Vote | SignedProposal) -> str | None:
    if isinstance(item, Vote):
        return item.block_hash.hex() if item.block_hash is not None else None
    return f"{item.block_hash.hex()}/pol:{item.pol_round}"


def verify_evidence(evidence: bytes | Evidence, validators: ValidatorSet, chain_id: str) -> Evidence:
    """Raise InvalidEvidence unless both messages are validly signed by the same validator
    for the same height and round (and vote type) and say different things."""
    if isinstance(evidence, bytes):
        try:
            evidence = Evidence.decode(evidence)
        except DecodeError as exc:
            raise InvalidEvidence(f"evidence does not decode: {exc}") from None
    a, b = evidence.first, evidence.second
    if isinstance(a, Vote) and isinstance(b, Vote):
        if (a.kind, a.height, a.round, a.validator) != (b.kind, b.height, b.round, b.validator):
            raise InvalidEvidence("the two votes are not from one validator at one height, round and type")
        if a.block_hash == b.block_hash:
            raise InvalidEvidence("the two votes are for the same value")
    elif isinstance(a, SignedProposal) and isinstance(b, SignedProposal):
        if (a.height, a.round, a.proposer) != (b.height, b.round, b.proposer):
            raise InvalidEvidence("the two proposals are not from one proposer at one height and round")
        if a.proposes_the_same(b):
            raise InvalidEvidence("the two proposals are the same")
    else:
        raise InvalidEvidence("evidence mixes a vote and a proposal")
    member = validators.get(evidence.validator)
    if member is None:
        raise InvalidEvidence(f"{evidence.validator.hex()} is not a validator")
    for item in (a, b):
        if not item.verify(chain_id, member.public_key):
            raise InvalidEvidence("a signature of the evidence is invalid")
    return evidence


# ----------------------------------------------------------------------------- a block's extra


@dataclass(frozen=True, slots=True)
class BlockExtra:
    """What a BFT block's header `extra` carries: the commit certificate of its parent
    (none in block 1: genesis needs none) and evidence of misbehaviour seen since, which
    the block records for good.  Empty extra is block 1 without evidence; any other has
    one encoding (`docs/protocol.md`, "Block extra")."""

    certificate: Certificate | None = None
    evidence: tuple[Evidence, ...] = ()

    def encode(self) -> bytes:
        if self.certificate is None and not self.evidence:
            return b""
        writer = Writer().var_bytes(self.certificate.encode() if self.certificate is not None else b"")
        writer.u32(len(self.evidence))
        for item in self.evidence:
            writer.var_bytes(item.encode())
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> BlockExtra:
        if not data:
            return cls()
        reader = Reader(data)
        raw_certificate = reader.var_bytes("extra.certificate", MAX_CERTIFICATE_BYTES)
        certificate = Certificate.decode(raw_certificate) if raw_certificate else None
        count = reader.u32("extra.evidence")
        if count > MAX_BLOCK_EVIDENCE:
            raise DecodeError("extra.evidence", f"{count} pieces of evidence exceeds the limit of {MAX_BLOCK_EVIDENCE}")
        evidence = tuple(
            Evidence.decode(reader.var_bytes(f"extra.evidence[{index}]", MAX_EVIDENCE_BYTES)) for index in range(count)
        )
        reader.finish()
        if certificate is None and not evidence:
            raise DecodeError("extra", "an extra with neither certificate nor evidence is encoded empty")
        return cls(certificate, evidence)

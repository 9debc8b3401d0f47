"""What every header of a BFT chain must satisfy, checked without running the engine (block
import and sync call these on the engine, between its events): the proposer's seal, the
parent's commit certificate in `extra` (CometBFT's LastCommit), and the evidence a block
records.  Mixed into BftEngine (consensus/bft.py), whose validator schedule they read.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from ledger import crypto
from ledger.block import BlockHeader, InvalidSeal
from ledger.codec import DecodeError
from ledger.evidence import EvidenceRecord

from consensus.bft_evidence import BlockExtra, Evidence, InvalidEvidence, verify_evidence
from consensus.bft_messages import Certificate, verify_certificate
from consensus.bft_state import BftParams
from consensus.validators import ValidatorSchedule


class HeaderRules:
    """Mixed into BftEngine: the chain's header rules, over its validator schedule."""

    chain_id: str
    params: BftParams
    schedule: ValidatorSchedule

    def verify_header(self, header: BlockHeader, ancestors: Sequence[BlockHeader], now_ms: int | None = None) -> None:
        """A block's header on top of `ancestors[-1]`: it extends it, its proposer is a
        validator whose key sealed it, and its `extra` is a valid certificate of the parent
        (empty on block 1: genesis is final by definition).  This proves the PARENT final;
        the block itself is final once a certificate of it is seen (the next header's
        extra, or the one its Commit or a DECISION carries): see `verify_commit`."""
        if not ancestors:
            raise ValueError("verify_header needs at least the parent header")
        parent = ancestors[-1]
        if header.parent != parent.hash or header.height != parent.height + 1:
            raise InvalidSeal(f"block {header.height} does not extend the given parent")
        if header.timestamp < parent.timestamp:
            raise InvalidSeal("block timestamp is before its parent's")
        member = self.schedule.at(header.height).get(header.proposer)
        if member is None:
            raise InvalidSeal(f"block proposer {header.proposer.hex()} is not a validator")
        if not crypto.verify_digest(member.public_key, header.sealing_digest(), header.seal):
            raise InvalidSeal("block seal is not its proposer's signature")
        try:
            extra = BlockExtra.decode(header.extra)
        except DecodeError as exc:
            raise InvalidSeal(f"block extra does not decode: {exc}") from None
        if header.height == 1:
            if extra.certificate is not None:
                raise InvalidSeal("block 1 carries no certificate (genesis needs none)")
        elif extra.certificate is None:
            raise InvalidSeal(f"block {header.height} lacks the commit certificate of its parent")
        else:
            verify_certificate(extra.certificate, parent, self.schedule.at(parent.height))
        if extra.evidence:
            self._check_evidence(header, extra.evidence, ancestors)

    def _check_evidence(self, header: BlockHeader, evidence: tuple[Evidence, ...], ancestors: Sequence[BlockHeader]) -> None:
        """Each piece valid, of a height before the block and at most `evidence_max_age` before
        it, recorded once: not twice in the block, not in a block among `ancestors`."""
        oldest = header.height - self.params.evidence_max_age
        earlier = set()
        for ancestor in ancestors[-self.params.evidence_max_age:]:
            earlier.update(_recorded_keys(ancestor.extra))
        seen = set()
        for index, item in enumerate(evidence):
            try:
                verify_evidence(item, self.schedule.at(item.height), self.chain_id)
            except InvalidEvidence as exc:
                raise InvalidSeal(f"block evidence {index}: {exc}") from None
            if not oldest <= item.height < header.height:
                raise InvalidSeal(
                    f"block evidence {index} is for height {item.height}: a block at {header.height} records "
                    f"evidence from heights {max(1, oldest)} to {header.height - 1}"
                )
            if item.key in seen or item.key in earlier:
                raise InvalidSeal(f"block evidence {index} is already recorded")
            seen.add(item.key)

    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        self.verify_header(header, (parent,))

    def parent_certificate(self, header: BlockHeader) -> bytes:
        try:
            certificate = BlockExtra.decode(header.extra).certificate
        except DecodeError:
            return b""
        return certificate.encode() if certificate is not None else b""

    def certificate_signers(self, certificate: bytes) -> list[tuple[bytes, int]]:
        try:
            decoded = Certificate.decode(certificate) if certificate else None
        except DecodeError:
            return []
        if decoded is None:
            return []
        validators = self.schedule.at(decoded.height)
        return [(address, validators.power_of([address])) for address in decoded.signers]

    def block_evidence(self, header: BlockHeader) -> list[EvidenceRecord]:
        try:
            evidence = BlockExtra.decode(header.extra).evidence
        except DecodeError:
            return []
        return [evidence_record(item) for item in evidence]

    def verify_commit(self, header: BlockHeader, certificate: bytes) -> Certificate:
        """Raise InvalidCertificate unless `certificate` proves `header` final."""
        return verify_certificate(certificate, header, self.schedule.at(header.height))


def evidence_record(evidence: Evidence) -> EvidenceRecord:
    """Evidence as the chain records it (and as the API shows it, whatever the engine)."""
    return EvidenceRecord(evidence.validator, evidence.height, evidence.round, evidence.kind_name, evidence.encode())


@lru_cache(maxsize=256)
def _recorded_keys(extra: bytes) -> frozenset[tuple[bytes, int, int, int]]:
    """The evidence keys a (verified, committed) header's extra records; cached because
    each new block with evidence checks them against the recent headers."""
    try:
        return frozenset(item.key for item in BlockExtra.decode(extra).evidence)
    except DecodeError:
        return frozenset()

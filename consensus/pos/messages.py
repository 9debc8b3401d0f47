"""Proof-of-stake messages and the header's `extra`, in the canonical encoding.

Everything a validator signs is domain-separated and names the chain:
- an attestation (Gasper's vote): the head it sees (the LMD-GHOST part) and the FFG link
  source -> target, both checkpoints (epoch, block hash);
- a block seal: (slot, SHA-256 of the unsealed header), so evidence of two blocks for one
  slot is two digests and two signatures, not two whole headers;
- a RANDAO reveal: the epoch number.  RFC 6979 makes it unique, so it cannot be ground.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import crypto
from ledger.block import HASH_SIZE
from ledger.codec import DecodeError, Reader, Writer
from ledger.staking import StakeChange, StakeOp

DOMAIN_ATTESTATION = b"ledger/pos-attestation/v1"
DOMAIN_POS_BLOCK = b"ledger/pos-block/v1"
DOMAIN_RANDAO = b"ledger/pos-randao/v1"

SIG = crypto.SIGNATURE_SIZE
MAX_EXTRA_ITEMS = 4096


@dataclass(frozen=True, slots=True, order=True)
class Checkpoint:
    epoch: int
    root: bytes

    def write(self, writer: Writer) -> None:
        writer.u64(self.epoch).fixed(self.root, HASH_SIZE)

    @classmethod
    def read(cls, reader: Reader, field: str) -> Checkpoint:
        return cls(reader.u64(f"{field}.epoch"), reader.fixed(HASH_SIZE, f"{field}.root"))


@dataclass(frozen=True, slots=True)
class Attestation:
    validator: int  # index in the registry
    slot: int
    head: bytes  # the block the validator sees as head
    source: Checkpoint
    target: Checkpoint
    signature: bytes = b""

    def signing_payload(self, chain_id: str) -> bytes:
        writer = Writer().text(chain_id).u32(self.validator).u64(self.slot).fixed(self.head, HASH_SIZE)
        self.source.write(writer)
        self.target.write(writer)
        return writer.bytes()

    def signed(self, key: crypto.PrivateKey, chain_id: str) -> Attestation:
        signature = key.sign(DOMAIN_ATTESTATION, self.signing_payload(chain_id))
        return Attestation(self.validator, self.slot, self.head, self.source, self.target, signature)

    def signature_valid(self, public_key: bytes, chain_id: str) -> bool:
        return crypto.is_low_s(self.signature) and crypto.verify(
            public_key, DOMAIN_ATTESTATION, self.signing_payload(chain_id), self.signature)

    @property
    def vote(self) -> tuple[Checkpoint, Checkpoint]:
        """The FFG part: what the slashing rules compare."""
        return (self.source, self.target)

    def write(self, writer: Writer) -> None:
        writer.u32(self.validator).u64(self.slot).fixed(self.head, HASH_SIZE)
        self.source.write(writer)
        self.target.write(writer)
        writer.fixed(self.signature, SIG)

    @classmethod
    def read(cls, reader: Reader) -> Attestation:
        return cls(reader.u32("attestation.validator"), reader.u64("attestation.slot"),
                   reader.fixed(HASH_SIZE, "attestation.head"), Checkpoint.read(reader, "attestation.source"),
                   Checkpoint.read(reader, "attestation.target"), reader.fixed(SIG, "attestation.signature"))


def seal_payload(chain_id: str, slot: int, unsealed: bytes) -> bytes:
    return Writer().text(chain_id).u64(slot).fixed(crypto.sha256(unsealed), HASH_SIZE).bytes()


def randao_payload(chain_id: str, epoch: int) -> bytes:
    return Writer().text(chain_id).u64(epoch).bytes()


@dataclass(frozen=True, slots=True)
class SealedDigest:
    """One block as its seal signed it: (slot, digest of the unsealed header, signature)."""

    slot: int
    digest: bytes
    signature: bytes

    def valid_for(self, public_key: bytes, chain_id: str) -> bool:
        payload = Writer().text(chain_id).u64(self.slot).fixed(self.digest, HASH_SIZE).bytes()
        return crypto.is_low_s(self.signature) and crypto.verify(public_key, DOMAIN_POS_BLOCK, payload, self.signature)

    def write(self, writer: Writer) -> None:
        writer.u64(self.slot).fixed(self.digest, HASH_SIZE).fixed(self.signature, SIG)

    @classmethod
    def read(cls, reader: Reader) -> SealedDigest:
        return cls(reader.u64("sealed.slot"), reader.fixed(HASH_SIZE, "sealed.digest"), reader.fixed(SIG, "sealed.signature"))


@dataclass(frozen=True, slots=True)
class ProposerSlashing:
    validator: int
    first: SealedDigest
    second: SealedDigest

    def write(self, writer: Writer) -> None:
        writer.u32(self.validator)
        self.first.write(writer)
        self.second.write(writer)

    @classmethod
    def read(cls, reader: Reader) -> ProposerSlashing:
        return cls(reader.u32("proposer_slashing.validator"), SealedDigest.read(reader), SealedDigest.read(reader))


@dataclass(frozen=True, slots=True)
class AttesterSlashing:
    first: Attestation
    second: Attestation

    @property
    def validator(self) -> int:
        return self.first.validator

    def write(self, writer: Writer) -> None:
        self.first.write(writer)
        self.second.write(writer)

    @classmethod
    def read(cls, reader: Reader) -> AttesterSlashing:
        return cls(Attestation.read(reader), Attestation.read(reader))


def slashable_votes(first: Attestation, second: Attestation) -> str | None:
    """Casper FFG's two commandments, on the (source, target) votes of one validator: the kind
    of offence, or None.  A validator may attest in several slots of an epoch with the same
    vote; what it may not do is sign two different votes for one target epoch, or a vote whose
    span surrounds another's."""
    if first.validator != second.validator:
        return None
    if first.target.epoch == second.target.epoch and first.vote != second.vote:
        return "double_vote"
    if (first.source.epoch < second.source.epoch and second.target.epoch < first.target.epoch) or (
            second.source.epoch < first.source.epoch and first.target.epoch < second.target.epoch):
        return "surround_vote"
    return None


@dataclass(frozen=True, slots=True)
class PosExtra:
    """What a proof-of-stake block header carries in `extra`, covered by its seal."""

    randao_reveal: bytes
    attestations: tuple[Attestation, ...] = ()
    proposer_slashings: tuple[ProposerSlashing, ...] = ()
    attester_slashings: tuple[AttesterSlashing, ...] = ()
    # What the block's stake transactions did (checked against them by ledger/validate.py), so
    # the registry replays from headers alone.
    stake_changes: tuple[StakeChange, ...] = ()
    # The money movements the consensus state orders in this block (rewards, penalties,
    # slashings, exits, releases): exactly `beacon.block_ops`, applied by the ledger first.
    ops: tuple[StakeOp, ...] = ()

    def encode(self) -> bytes:
        writer = Writer().u8(1).fixed(self.randao_reveal, SIG)
        for items in (self.attestations, self.proposer_slashings, self.attester_slashings,
                      self.stake_changes, self.ops):
            writer.u32(len(items))
            for item in items:
                item.write(writer)
        return writer.bytes()

    @classmethod
    def decode(cls, data: bytes) -> PosExtra:
        reader = Reader(data)
        version = reader.u8("extra.version")
        if version != 1:
            raise DecodeError("extra.version", f"unknown proof-of-stake extra version {version}")
        reveal = reader.fixed(SIG, "extra.randao_reveal")
        lists = []
        for name, kind in (("attestations", Attestation), ("proposer_slashings", ProposerSlashing),
                           ("attester_slashings", AttesterSlashing), ("stake_changes", StakeChange),
                           ("ops", StakeOp)):
            count = reader.u32(f"extra.{name}")
            if count > MAX_EXTRA_ITEMS:
                raise DecodeError(f"extra.{name}", f"{count} items is more than {MAX_EXTRA_ITEMS}")
            lists.append(tuple(kind.read(reader) for _ in range(count)))
        reader.finish()
        return cls(reveal, *lists)


# ----------------------------------------------------------------------------- gossip

TAG_ATTESTATION = 1
TAG_PROPOSER_SLASHING = 2
TAG_ATTESTER_SLASHING = 3
MAX_MESSAGE = 4096

GossipMessage = Attestation | ProposerSlashing | AttesterSlashing
_TAGS = {Attestation: TAG_ATTESTATION, ProposerSlashing: TAG_PROPOSER_SLASHING, AttesterSlashing: TAG_ATTESTER_SLASHING}
_KINDS = {tag: kind for kind, tag in _TAGS.items()}


def encode_message(message: GossipMessage) -> bytes:
    writer = Writer().u8(_TAGS[type(message)])
    message.write(writer)
    return writer.bytes()


def decode_message(data: bytes) -> GossipMessage:
    if len(data) > MAX_MESSAGE:
        raise DecodeError("message", f"{len(data)} bytes is more than {MAX_MESSAGE}")
    reader = Reader(data)
    kind = _KINDS.get(reader.u8("message.tag"))
    if kind is None:
        raise DecodeError("message.tag", "unknown proof-of-stake message")
    message = kind.read(reader)
    reader.finish()
    return message

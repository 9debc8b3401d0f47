"""BFT consensus messages: proposals, votes, commit certificates, decisions and status, in
the canonical encoding (`ledger.codec`), signed under their own domains.  Evidence of
equivocation and a block's extra, built of these, are in consensus/bft_evidence.py.

Every signed payload starts with the chain id, so a vote or a proposal can never be
replayed on another chain, and is signed under its own domain tag (`DOMAIN_VOTE`,
`DOMAIN_PROPOSAL`), so neither can pass for a transaction, a block seal or the other.
The chain id is not on the wire: a receiver rebuilds the payload with its own.

`docs/protocol.md` ("Consensus messages") gives the layouts with test vectors.

Decoding checks format only (sizes, limits, canonical order, that a proposal's block
is the one its signature names); whether a signer is a validator, whether signatures
verify and whether a height or round makes sense is for `verify_certificate`,
`verify_evidence` (consensus/bft_evidence.py) and the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from ledger import crypto
from ledger.address import ADDRESS_SIZE, address_of
from ledger.block import HASH_SIZE, Block, BlockHeader
from ledger.codec import DecodeError, Reader, Writer

from consensus.engine import InvalidSeal
from consensus.validators import MAX_VALIDATORS, ValidatorSet

KnownBlocks = Callable[[bytes], "Block | None"]  # a block hash -> the block, if the receiver holds it
SIGNATURE_SIZE = crypto.SIGNATURE_SIZE
MAX_ROUND = 0xFFFFFFFF  # rounds are u32 on the wire
MAX_BLOCK_BYTES = 32 * 1024 * 1024  # as the peer protocol's NEW_BLOCK
_SIGNATURE_ENTRY = ADDRESS_SIZE + SIGNATURE_SIZE
MAX_CERTIFICATE_BYTES = 8 + 4 + HASH_SIZE + 4 + MAX_VALIDATORS * _SIGNATURE_ENTRY


class MessageType(IntEnum):
    PROPOSAL = 1
    VOTE = 2
    DECISION = 3
    STATUS = 4


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


class InvalidCertificate(InvalidSeal):
    """A commit certificate that does not prove its block final."""


# ----------------------------------------------------------------------------- helpers


def _write_optional_hash(writer: Writer, value: bytes | None) -> None:
    if value is None:
        writer.u8(0)
    else:
        writer.u8(1).fixed(value, HASH_SIZE)


def _read_optional_hash(reader: Reader, field: str) -> bytes | None:
    flag = reader.u8(field)
    if flag == 0:
        return None
    if flag != 1:
        raise DecodeError(field, f"presence flag must be 0 or 1, got {flag}")
    return reader.fixed(HASH_SIZE, field)


def _read_flag(reader: Reader, field: str) -> bool:
    flag = reader.u8(field)
    if flag not in (0, 1):
        raise DecodeError(field, f"a flag is 0 or 1, got {flag}")
    return flag == 1


def _check_height(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"{field}: a height is an integer from 0 to 2**63-1")


def _check_round(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ROUND:
        raise ValueError(f"{field}: a round is an integer from 0 to {MAX_ROUND}")


# ----------------------------------------------------------------------------- votes


@dataclass(frozen=True, slots=True)
class Vote:
    """A prevote or precommit; `block_hash` None is a vote for nil."""

    kind: VoteType
    height: int
    round: int
    block_hash: bytes | None
    validator: bytes  # address
    signature: bytes

    def __post_init__(self) -> None:
        if self.kind not in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            raise ValueError(f"vote.kind: {self.kind!r} is not a vote type")
        object.__setattr__(self, "kind", VoteType(self.kind))
        _check_height(self.height, "vote.height")
        _check_round(self.round, "vote.round")
        if self.block_hash is not None and len(self.block_hash) != HASH_SIZE:
            raise ValueError("vote.block_hash is 32 bytes or None (nil)")
        if len(self.validator) != ADDRESS_SIZE or len(self.signature) != SIGNATURE_SIZE:
            raise ValueError("vote: a 20-byte validator address and a 64-byte signature")

    @staticmethod
    def signing_payload(
        chain_id: str, kind: VoteType, height: int, round: int, block_hash: bytes | None, validator: bytes
    ) -> bytes:
        writer = Writer().u8(int(kind)).text(chain_id).u64(height).u32(round)
        _write_optional_hash(writer, block_hash)
        return writer.fixed(validator, ADDRESS_SIZE).bytes()

    def payload(self, chain_id: str) -> bytes:
        return self.signing_payload(chain_id, self.kind, self.height, self.round, self.block_hash, self.validator)

    @classmethod
    def sign(
        cls, key: crypto.PrivateKey, chain_id: str, kind: VoteType, height: int, round: int,
        block_hash: bytes | None, validator: bytes | None = None,
    ) -> Vote:
        address = validator if validator is not None else address_of(key.public_key)
        payload = cls.signing_payload(chain_id, kind, height, round, block_hash, address)
        return cls(kind, height, round, block_hash, address, key.sign(crypto.DOMAIN_VOTE, payload))

    def verify(self, chain_id: str, public_key: bytes) -> bool:
        return crypto.verify(public_key, crypto.DOMAIN_VOTE, self.payload(chain_id), self.signature)

    def write(self, writer: Writer) -> Writer:
        writer.u8(int(self.kind)).u64(self.height).u32(self.round)
        _write_optional_hash(writer, self.block_hash)
        return writer.fixed(self.validator, ADDRESS_SIZE).fixed(self.signature, SIGNATURE_SIZE)

    def encode(self) -> bytes:
        return self.write(Writer()).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Vote:
        kind = reader.u8("vote.kind")
        if kind not in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            raise DecodeError("vote.kind", f"unknown vote type {kind}")
        return cls(
            kind=VoteType(kind),
            height=reader.amount("vote.height"),
            round=reader.u32("vote.round"),
            block_hash=_read_optional_hash(reader, "vote.block_hash"),
            validator=reader.fixed(ADDRESS_SIZE, "vote.validator"),
            signature=reader.fixed(SIGNATURE_SIZE, "vote.signature"),
        )

    @classmethod
    def decode(cls, data: bytes) -> Vote:
        reader = Reader(data)
        vote = cls.read(reader)
        reader.finish()
        return vote


# ----------------------------------------------------------------------------- proposals


@dataclass(frozen=True, slots=True)
class SignedProposal:
    """What a proposer signs: the block hash for (height, round), with the round of its
    proof of lock (`pol_round`, the paper's validRound) or -1.  Small enough to keep as
    evidence without the block."""

    height: int
    round: int
    pol_round: int
    block_hash: bytes
    proposer: bytes  # address
    signature: bytes

    def __post_init__(self) -> None:
        _check_height(self.height, "proposal.height")
        _check_round(self.round, "proposal.round")
        if self.pol_round != -1:
            _check_round(self.pol_round, "proposal.pol_round")
        if len(self.block_hash) != HASH_SIZE or len(self.proposer) != ADDRESS_SIZE:
            raise ValueError("proposal: a 32-byte block hash and a 20-byte proposer address")
        if len(self.signature) != SIGNATURE_SIZE:
            raise ValueError("proposal.signature is 64 bytes")

    @staticmethod
    def signing_payload(chain_id: str, height: int, round: int, pol_round: int, block_hash: bytes, proposer: bytes) -> bytes:
        writer = Writer().text(chain_id).u64(height).u32(round)
        if pol_round < 0:
            writer.u8(0)
        else:
            writer.u8(1).u32(pol_round)
        return writer.fixed(block_hash, HASH_SIZE).fixed(proposer, ADDRESS_SIZE).bytes()

    def payload(self, chain_id: str) -> bytes:
        return self.signing_payload(chain_id, self.height, self.round, self.pol_round, self.block_hash, self.proposer)

    @classmethod
    def sign(
        cls, key: crypto.PrivateKey, chain_id: str, height: int, round: int, pol_round: int, block_hash: bytes,
    ) -> SignedProposal:
        proposer = address_of(key.public_key)
        payload = cls.signing_payload(chain_id, height, round, pol_round, block_hash, proposer)
        return cls(height, round, pol_round, block_hash, proposer, key.sign(crypto.DOMAIN_PROPOSAL, payload))

    def verify(self, chain_id: str, public_key: bytes) -> bool:
        return crypto.verify(public_key, crypto.DOMAIN_PROPOSAL, self.payload(chain_id), self.signature)

    def proposes_the_same(self, other: SignedProposal) -> bool:
        """Same block and POL round: one proposal, whatever its signature (ECDSA can sign one
        payload many ways), so never evidence of equivocation."""
        return (self.block_hash, self.pol_round) == (other.block_hash, other.pol_round)

    def write(self, writer: Writer) -> Writer:
        writer.u64(self.height).u32(self.round)
        if self.pol_round < 0:
            writer.u8(0)
        else:
            writer.u8(1).u32(self.pol_round)
        return (writer.fixed(self.block_hash, HASH_SIZE).fixed(self.proposer, ADDRESS_SIZE)
                .fixed(self.signature, SIGNATURE_SIZE))

    def encode(self) -> bytes:
        return self.write(Writer()).bytes()

    @classmethod
    def read(cls, reader: Reader) -> SignedProposal:
        height = reader.amount("proposal.height")
        round = reader.u32("proposal.round")
        pol_round = reader.u32("proposal.pol_round") if _read_flag(reader, "proposal.has_pol") else -1
        return cls(
            height=height,
            round=round,
            pol_round=pol_round,
            block_hash=reader.fixed(HASH_SIZE, "proposal.block_hash"),
            proposer=reader.fixed(ADDRESS_SIZE, "proposal.proposer"),
            signature=reader.fixed(SIGNATURE_SIZE, "proposal.signature"),
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """The PROPOSAL message: the signed proposal, the full block, and for a re-proposal
    (pol_round >= 0) the prevotes of pol_round that make its proof of lock, so a
    validator that missed them can still accept it (paper line 28)."""

    signed: SignedProposal
    block: Block
    pol_votes: tuple[Vote, ...] = ()

    @property
    def height(self) -> int:
        return self.signed.height

    @property
    def round(self) -> int:
        return self.signed.round

    @property
    def pol_round(self) -> int:
        return self.signed.pol_round

    @property
    def block_hash(self) -> bytes:
        return self.signed.block_hash

    def write(self, writer: Writer) -> Writer:
        if len(self.pol_votes) > MAX_VALIDATORS:
            raise ValueError(f"proposal.pol_votes: more than {MAX_VALIDATORS}")
        block = self.block.encode()
        if len(block) > MAX_BLOCK_BYTES:
            raise ValueError(f"proposal.block: larger than {MAX_BLOCK_BYTES} bytes")
        self.signed.write(writer).var_bytes(block).u32(len(self.pol_votes))
        for vote in self.pol_votes:
            vote.write(writer)
        return writer

    @classmethod
    def read(cls, reader: Reader, max_transactions: int, known: KnownBlocks | None = None) -> Proposal:
        signed = SignedProposal.read(reader)
        raw = reader.var_bytes("proposal.block", MAX_BLOCK_BYTES)
        block = known(signed.block_hash) if known is not None else None
        if block is None:
            block = Block.decode(raw, max_transactions)
            if block.hash != signed.block_hash:
                raise DecodeError("proposal.block", "the block is not the one the proposal signs")
        count = reader.u32("proposal.pol_votes")
        if count > MAX_VALIDATORS:
            raise DecodeError("proposal.pol_votes", f"{count} votes exceeds the limit of {MAX_VALIDATORS}")
        votes = tuple(Vote.read(reader) for _ in range(count))
        return cls(signed, block, votes)


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True, slots=True)
class Certificate:
    """The precommits that committed a block: more than two thirds of the power for
    `block_hash` at (height, round).  Signatures are ordered by validator address,
    each validator once, so a set of precommits has exactly one encoding."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]  # (validator address, precommit signature)

    def __post_init__(self) -> None:
        _check_height(self.height, "certificate.height")
        _check_round(self.round, "certificate.round")
        if len(self.block_hash) != HASH_SIZE:
            raise ValueError("certificate.block_hash is 32 bytes")
        if not 1 <= len(self.signatures) <= MAX_VALIDATORS:
            raise ValueError(f"certificate: from 1 to {MAX_VALIDATORS} signatures")
        for address, signature in self.signatures:
            if len(address) != ADDRESS_SIZE or len(signature) != SIGNATURE_SIZE:
                raise ValueError("certificate: 20-byte addresses and 64-byte signatures")
        addresses = [address for address, _ in self.signatures]
        if any(a >= b for a, b in zip(addresses, addresses[1:])):
            raise ValueError("certificate: signers must be in strictly increasing address order")

    @classmethod
    def from_votes(cls, votes: list[Vote]) -> Certificate:
        if not votes:
            raise ValueError("a certificate needs at least one precommit")
        first = votes[0]
        for vote in votes:
            if (vote.kind, vote.height, vote.round, vote.block_hash) != (
                VoteType.PRECOMMIT, first.height, first.round, first.block_hash
            ) or vote.block_hash is None:
                raise ValueError("a certificate is made of precommits for one block at one height and round")
        unique = {vote.validator: vote.signature for vote in votes}
        assert first.block_hash is not None
        return cls(first.height, first.round, first.block_hash, tuple(sorted(unique.items())))

    def votes(self) -> list[Vote]:
        return [
            Vote(VoteType.PRECOMMIT, self.height, self.round, self.block_hash, address, signature)
            for address, signature in self.signatures
        ]

    @property
    def signers(self) -> list[bytes]:
        return [address for address, _ in self.signatures]

    def write(self, writer: Writer) -> Writer:
        writer.u64(self.height).u32(self.round).fixed(self.block_hash, HASH_SIZE).u32(len(self.signatures))
        for address, signature in self.signatures:
            writer.fixed(address, ADDRESS_SIZE).fixed(signature, SIGNATURE_SIZE)
        return writer

    def encode(self) -> bytes:
        return self.write(Writer()).bytes()

    @classmethod
    def read(cls, reader: Reader) -> Certificate:
        height = reader.amount("certificate.height")
        round = reader.u32("certificate.round")
        block_hash = reader.fixed(HASH_SIZE, "certificate.block_hash")
        count = reader.u32("certificate.signatures")
        if not 1 <= count <= MAX_VALIDATORS:
            raise DecodeError("certificate.signatures", f"{count} signatures; from 1 to {MAX_VALIDATORS}")
        signatures = []
        for index in range(count):
            address = reader.fixed(ADDRESS_SIZE, f"certificate.signatures[{index}].validator")
            if signatures and address <= signatures[-1][0]:
                raise DecodeError(f"certificate.signatures[{index}]", "signers out of address order or repeated")
            signatures.append((address, reader.fixed(SIGNATURE_SIZE, f"certificate.signatures[{index}].signature")))
        return cls(height, round, block_hash, tuple(signatures))

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        if len(data) > MAX_CERTIFICATE_BYTES:
            raise DecodeError("certificate", f"{len(data)} bytes exceeds the limit of {MAX_CERTIFICATE_BYTES}")
        reader = Reader(data)
        certificate = cls.read(reader)
        reader.finish()
        return certificate


def verify_certificate(certificate: bytes | Certificate, header: BlockHeader, validators: ValidatorSet) -> Certificate:
    """Raise InvalidCertificate unless `certificate` proves `header` committed: precommits
    for its hash at its height, each a valid signature (under the header's chain id) of a
    distinct validator, together more than two thirds of the power.  Pure; returns the
    decoded certificate."""
    if isinstance(certificate, bytes):
        try:
            certificate = Certificate.decode(certificate)
        except DecodeError as exc:
            raise InvalidCertificate(f"commit certificate does not decode: {exc}") from None
    if certificate.height != header.height:
        raise InvalidCertificate(
            f"commit certificate is for height {certificate.height}, the block is at {header.height}"
        )
    if certificate.block_hash != header.hash:
        raise InvalidCertificate(
            f"commit certificate is for block {certificate.block_hash.hex()[:16]}, not {header.hash.hex()[:16]}"
        )
    power = 0
    for vote in certificate.votes():
        member = validators.get(vote.validator)
        if member is None:
            raise InvalidCertificate(f"commit certificate signer {vote.validator.hex()} is not a validator")
        if not vote.verify(header.chain_id, member.public_key):
            raise InvalidCertificate(f"commit certificate signature of {vote.validator.hex()} is invalid")
        power += member.power
    if not validators.is_quorum(power):
        raise InvalidCertificate(
            f"commit certificate holds {power} of {validators.total_power} voting power; "
            f"more than two thirds ({validators.quorum_power}) is needed"
        )
    return certificate


# ----------------------------------------------------------------------------- decision and status


@dataclass(frozen=True, slots=True)
class Decision:
    """A commit certificate, with its block when the sender has it at hand (empty
    otherwise: the receiver mostly holds it from the proposal), sent to a peer that is a
    height behind, or that lacks the certificate of its head."""

    certificate: Certificate
    block: Block | None = None

    def write(self, writer: Writer) -> Writer:
        block = self.block.encode() if self.block is not None else b""
        if len(block) > MAX_BLOCK_BYTES:
            raise ValueError(f"decision.block: larger than {MAX_BLOCK_BYTES} bytes")
        return writer.var_bytes(self.certificate.encode()).var_bytes(block)

    @classmethod
    def read(cls, reader: Reader, max_transactions: int, known: KnownBlocks | None = None) -> Decision:
        certificate = Certificate.decode(reader.var_bytes("decision.certificate", MAX_CERTIFICATE_BYTES))
        raw = reader.var_bytes("decision.block", MAX_BLOCK_BYTES)
        if not raw:
            return cls(certificate, None)
        block = known(certificate.block_hash) if known is not None else None
        if block is None:
            block = Block.decode(raw, max_transactions)
        if block.hash != certificate.block_hash or block.height != certificate.height:
            raise DecodeError("decision.block", "the block is not the one the certificate commits")
        return cls(certificate, block)


@dataclass(frozen=True, slots=True)
class Status:
    """Where a node's consensus is: the height it is deciding and its round.  Sent when it
    has no vote of its own to repeat (followers, validators waiting for transactions), so
    peers ahead of it can answer with a DECISION."""

    height: int
    round: int
    wants_last_commit: bool = False  # it holds its head without the head's certificate

    def __post_init__(self) -> None:
        _check_height(self.height, "status.height")
        _check_round(self.round, "status.round")

    def write(self, writer: Writer) -> Writer:
        return writer.u64(self.height).u32(self.round).u8(1 if self.wants_last_commit else 0)

    @classmethod
    def read(cls, reader: Reader) -> Status:
        return cls(reader.amount("status.height"), reader.u32("status.round"), _read_flag(reader, "status.wants_last_commit"))


# ----------------------------------------------------------------------------- envelope

Message = Proposal | Vote | Decision | Status


def encode_message(message: Message) -> bytes:
    """u8 message type || body."""
    if isinstance(message, Proposal):
        return message.write(Writer().u8(MessageType.PROPOSAL)).bytes()
    if isinstance(message, Vote):
        return message.write(Writer().u8(MessageType.VOTE)).bytes()
    if isinstance(message, Decision):
        return message.write(Writer().u8(MessageType.DECISION)).bytes()
    if isinstance(message, Status):
        return message.write(Writer().u8(MessageType.STATUS)).bytes()
    raise TypeError(f"not a consensus message: {type(message).__name__}")


def decode_message(data: bytes, max_transactions: int, known: KnownBlocks | None = None) -> Message:
    """Decode one consensus message; DecodeError (never another exception) when malformed.

    `known(hash)` gives a block the receiver holds already, or None: a proposal or decision
    for such a block takes it instead of decoding the copy inside (the signature or the
    certificate names the hash, so the content is the same).  Under load validators repeat
    proposals and answer decisions, and decoding every copy of a big block was most of
    their event loop's time."""
    reader = Reader(data)
    kind = reader.u8("message.type")
    try:
        if kind == MessageType.PROPOSAL:
            message: Message = Proposal.read(reader, max_transactions, known)
        elif kind == MessageType.VOTE:
            message = Vote.read(reader)
        elif kind == MessageType.DECISION:
            message = Decision.read(reader, max_transactions, known)
        elif kind == MessageType.STATUS:
            message = Status.read(reader)
        else:
            raise DecodeError("message.type", f"unknown consensus message type {kind}")
    except ValueError as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError("message", str(exc)) from None
    reader.finish()
    return message

"""Raft's parameters, its messages and its block `extra`, in the canonical encoding.

The first members are the genesis keys (`engine.params.members`: a list of compressed
public keys in hex); later ones join through the log (consensus/raft/membership.py, which
also encodes a block's `extra`).  A member's public key names it in every message, and each
message is signed by that key (domain `ledger/raft/v2`, bound to the chain), so a peer
that is not a member cannot speak for one, and the engine learns which peer is which
member from what verifies.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from ledger import crypto
from ledger.block import Block
from ledger.codec import DecodeError, Reader, Writer

from consensus.raft.membership import MAX_MEMBERS

DOMAIN_RAFT = b"ledger/raft/v2"
MAX_ENTRIES = 64  # blocks in one AppendEntries
MAX_APPEND_BYTES = 8 * 1024 * 1024  # entries beyond the first stop here (a peer frame is 32 MiB)
MAX_MESSAGE = 64 * 1024 * 1024
KEY = crypto.PUBLIC_KEY_SIZE

TAG_PRE_VOTE = 1
TAG_VOTE = 2
TAG_VOTE_RESPONSE = 3
TAG_APPEND = 4
TAG_APPEND_RESPONSE = 5
TAG_TIMEOUT_NOW = 6
TAG_READ_INDEX = 7
TAG_READ_INDEX_RESPONSE = 8


@dataclass(frozen=True, slots=True)
class RaftParams:
    members: tuple[bytes, ...]  # compressed public keys; the index names a member
    election_timeout_ms: int = 1000  # the shortest; each draw is in [T, 2T)
    heartbeat_ms: int = 100

    @property
    def majority(self) -> int:
        return len(self.members) // 2 + 1

    @classmethod
    def from_genesis(cls, params: Any) -> RaftParams:
        """Validate genesis `engine.params`; a misspelt key is an error, not a default."""
        if not isinstance(params, dict):
            raise ValueError("raft engine: genesis engine.params must be an object")
        known = {"members", "election_timeout_ms", "heartbeat_ms"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"raft engine: unknown engine.params {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        listed = params.get("members")
        if not isinstance(listed, list) or not 1 <= len(listed) <= MAX_MEMBERS:
            raise ValueError(f"raft engine: engine.params.members must list 1 to {MAX_MEMBERS} public keys (hex)")
        members = []
        for item in listed:
            try:
                public_key = bytes.fromhex(item) if isinstance(item, str) else b""
            except ValueError:
                public_key = b""
            if not crypto.is_valid_public_key(public_key):
                raise ValueError(f"raft engine: member {item!r} is not a compressed secp256k1 public key in hex")
            if public_key in members:
                raise ValueError(f"raft engine: member {item} is listed twice")
            members.append(public_key)
        defaults = cls(())
        election = _int_param(params, "election_timeout_ms", defaults.election_timeout_ms)
        heartbeat = _int_param(params, "heartbeat_ms", defaults.heartbeat_ms)
        if heartbeat * 2 > election:
            raise ValueError("raft engine: heartbeat_ms must be at most half of election_timeout_ms "
                             "(followers would start elections between heartbeats)")
        return cls(tuple(members), election, heartbeat)


def _int_param(params: dict, name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3_600_000:
        raise ValueError(f"raft engine: engine.params.{name} must be an integer of milliseconds, 1 to 3600000")
    return value


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote (Figure 2), or a pre-vote (dissertation 9.6): `term` is the term the
    candidate campaigns for; a pre-vote changes nobody's term.  `transfer` marks an election
    a leader asked for (leadership transfer): voters then ignore their leader lease."""

    pre_vote: bool
    term: int
    candidate: bytes  # the sender's public key
    last_index: int
    last_term: int
    transfer: bool = False

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.candidate, KEY).u64(self.last_index).u64(self.last_term).u8(self.transfer)

    @classmethod
    def read(cls, reader: Reader, pre_vote: bool) -> VoteRequest:
        return cls(pre_vote, reader.u64("vote.term"), reader.fixed(KEY, "vote.candidate"), reader.u64("vote.last_index"),
                   reader.u64("vote.last_term"), _flag(reader, "vote.transfer"))

    @property
    def sender(self) -> bytes:
        return self.candidate


@dataclass(frozen=True, slots=True)
class VoteResponse:
    pre_vote: bool
    term: int  # the voter's term, or for a granted pre-vote the term it was asked about
    voter: bytes  # the sender's public key
    granted: bool

    def write(self, writer: Writer) -> None:
        writer.u8(self.pre_vote).u64(self.term).fixed(self.voter, KEY).u8(self.granted)

    @classmethod
    def read(cls, reader: Reader) -> VoteResponse:
        return cls(_flag(reader, "vote_response.pre_vote"), reader.u64("vote_response.term"),
                   reader.fixed(KEY, "vote_response.voter"), _flag(reader, "vote_response.granted"))

    @property
    def sender(self) -> bytes:
        return self.voter


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries (Figure 2): the entries are blocks, each naming its term in `extra`;
    with none it is a heartbeat."""

    term: int
    leader: bytes  # the sender's public key
    prev_index: int
    prev_term: int
    commit: int
    entries: tuple[Block, ...] = ()
    round: int = 0  # the leader's heartbeat round, echoed in the answer (ReadIndex confirmation)

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.leader, KEY).u64(self.prev_index).u64(self.prev_term).u64(self.commit)
        writer.u64(self.round).u32(len(self.entries))
        for block in self.entries:
            writer.var_bytes(block.encode())

    @classmethod
    def read(cls, reader: Reader, max_block_transactions: int) -> AppendEntries:
        term, leader = reader.u64("append.term"), reader.fixed(KEY, "append.leader")
        prev_index, prev_term, commit = reader.u64("append.prev_index"), reader.u64("append.prev_term"), reader.u64("append.commit")
        round_ = reader.u64("append.round")
        count = reader.u32("append.entries")
        if count > MAX_ENTRIES:
            raise DecodeError("append.entries", f"{count} entries is more than {MAX_ENTRIES}")
        entries = tuple(Block.decode(reader.var_bytes("append.entry", MAX_MESSAGE), max_block_transactions)
                        for _ in range(count))
        return cls(term, leader, prev_index, prev_term, commit, entries, round_)

    @property
    def sender(self) -> bytes:
        return self.leader


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """`index`: on success the last index known to match the leader's log; on failure the
    follower's last index (where the leader may try next)."""

    term: int
    follower: bytes  # the sender's public key
    success: bool
    index: int
    round: int = 0  # the round of the append entries it answers

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.follower, KEY).u8(self.success).u64(self.index).u64(self.round)

    @classmethod
    def read(cls, reader: Reader) -> AppendResponse:
        return cls(reader.u64("append_response.term"), reader.fixed(KEY, "append_response.follower"),
                   _flag(reader, "append_response.success"), reader.u64("append_response.index"),
                   reader.u64("append_response.round"))

    @property
    def sender(self) -> bytes:
        return self.follower


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer (dissertation 3.10): the leader tells a member whose log is as
    long as its own to start an election now, without a pre-vote."""

    term: int
    leader: bytes  # the sender's public key

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.leader, KEY)

    @classmethod
    def read(cls, reader: Reader) -> TimeoutNow:
        return cls(reader.u64("timeout_now.term"), reader.fixed(KEY, "timeout_now.leader"))

    @property
    def sender(self) -> bytes:
        return self.leader


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """A follower asks the leader for a read index on behalf of its client (etcd's ReadIndex)."""

    term: int
    member: bytes  # the sender's public key
    request: int

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.member, KEY).u64(self.request)

    @classmethod
    def read(cls, reader: Reader) -> ReadIndex:
        return cls(reader.u64("read_index.term"), reader.fixed(KEY, "read_index.member"), reader.u64("read_index.request"))

    @property
    def sender(self) -> bytes:
        return self.member


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """The leader's answer: `index` once a heartbeat round confirmed it still leads."""

    term: int
    leader: bytes  # the sender's public key
    request: int
    ok: bool
    index: int

    def write(self, writer: Writer) -> None:
        writer.u64(self.term).fixed(self.leader, KEY).u64(self.request).u8(self.ok).u64(self.index)

    @classmethod
    def read(cls, reader: Reader) -> ReadIndexResponse:
        return cls(reader.u64("read_index_response.term"), reader.fixed(KEY, "read_index_response.leader"),
                   reader.u64("read_index_response.request"), _flag(reader, "read_index_response.ok"),
                   reader.u64("read_index_response.index"))

    @property
    def sender(self) -> bytes:
        return self.leader


Message = (VoteRequest | VoteResponse | AppendEntries | AppendResponse | TimeoutNow | ReadIndex
           | ReadIndexResponse)


def _flag(reader: Reader, field: str) -> bool:
    value = reader.u8(field)
    if value > 1:
        raise DecodeError(field, "a flag is 0 or 1")
    return bool(value)


def _tag(message: Message) -> int:
    if isinstance(message, VoteRequest):
        return TAG_PRE_VOTE if message.pre_vote else TAG_VOTE
    if isinstance(message, VoteResponse):
        return TAG_VOTE_RESPONSE
    if isinstance(message, AppendEntries):
        return TAG_APPEND
    if isinstance(message, TimeoutNow):
        return TAG_TIMEOUT_NOW
    if isinstance(message, ReadIndex):
        return TAG_READ_INDEX
    if isinstance(message, ReadIndexResponse):
        return TAG_READ_INDEX_RESPONSE
    return TAG_APPEND_RESPONSE


def _body(message: Message) -> bytes:
    writer = Writer().u8(_tag(message))
    message.write(writer)
    return writer.bytes()


def _signed_payload(chain_id: str, body: bytes) -> bytes:
    return Writer().text(chain_id).bytes() + body


def encode_message(message: Message, key: crypto.PrivateKey, chain_id: str) -> bytes:
    body = _body(message)
    return body + key.sign(DOMAIN_RAFT, _signed_payload(chain_id, body))


def decode_message(data: bytes, members: Container[bytes], chain_id: str, max_block_transactions: int) -> Message:
    """The message, if it decodes canonically, its sender is one of `members` (the keys of
    the receiver's membership) and signed it; else DecodeError."""
    if len(data) > MAX_MESSAGE:
        raise DecodeError("message", f"{len(data)} bytes is more than {MAX_MESSAGE}")
    if len(data) < 1 + crypto.SIGNATURE_SIZE:
        raise DecodeError("message", "too short")
    body, signature = data[:-crypto.SIGNATURE_SIZE], data[-crypto.SIGNATURE_SIZE:]
    reader = Reader(body)
    tag = reader.u8("message.tag")
    message: Message
    if tag in (TAG_PRE_VOTE, TAG_VOTE):
        message = VoteRequest.read(reader, tag == TAG_PRE_VOTE)
    elif tag == TAG_VOTE_RESPONSE:
        message = VoteResponse.read(reader)
    elif tag == TAG_APPEND:
        message = AppendEntries.read(reader, max_block_transactions)
    elif tag == TAG_APPEND_RESPONSE:
        message = AppendResponse.read(reader)
    elif tag == TAG_TIMEOUT_NOW:
        message = TimeoutNow.read(reader)
    elif tag == TAG_READ_INDEX:
        message = ReadIndex.read(reader)
    elif tag == TAG_READ_INDEX_RESPONSE:
        message = ReadIndexResponse.read(reader)
    else:
        raise DecodeError("message.tag", "unknown Raft message")
    reader.finish()
    if message.sender not in members:
        raise DecodeError("message.sender", "names no member")
    if not (crypto.is_low_s(signature)
            and crypto.verify(message.sender, DOMAIN_RAFT, _signed_payload(chain_id, body), signature)):
        raise DecodeError("message.signature", "not the named member's signature")
    return message

"""Raft's membership (dissertation chapter 4): who votes, who only learns, and how it
changes one server at a time.

Every block carries the membership it leaves in force, in its `extra` beside its term:
a block of the genesis membership carries the term alone (version 1), any other carries
its voters and learners too (version 2).  So any header says who the members are after
it, a node that synced a thousand blocks knows the membership from its head alone, and a
configuration entry is simply a block whose membership differs from its parent's.  A
server uses the membership of the last entry of its log, committed or not (4.1), and
drops back to the earlier one when that entry is truncated.

A change is one step (4.2, single-server changes: any two majorities of the old and the
new set of voters overlap): add a learner, promote a learner to voter, or remove a voter
or a learner.  Learners (4.2.1) receive the log and answer, but neither campaign nor
count toward a majority (their votes count only for a candidate whose log already makes
them voters); the leader promotes one once it has caught up.  The leader never
removes itself (it hands the lead over first), so a block's proposer is always a voter of
both its parent's membership and its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import crypto
from ledger.address import address_of
from ledger.block import BlockHeader, InvalidSeal
from ledger.codec import DecodeError, Reader, Writer

EXTRA_TERM_ONLY = 1  # the genesis membership
EXTRA_WITH_MEMBERSHIP = 2
MAX_MEMBERS = 64  # voters and learners together


@dataclass(frozen=True, slots=True)
class Membership:
    voters: tuple[bytes, ...]  # compressed public keys, in the order they joined
    learners: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        assert self.voters, "a membership without voters could never commit again"
        assert len(self.everyone) <= MAX_MEMBERS, "more members than a block's extra can name"
        assert len(set(self.everyone)) == len(self.everyone), "a key is a voter or a learner, once"

    @property
    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    @property
    def everyone(self) -> tuple[bytes, ...]:
        return self.voters + self.learners

    @property
    def full(self) -> bool:
        return len(self.everyone) >= MAX_MEMBERS

    def __contains__(self, key: object) -> bool:
        return key in self.voters or key in self.learners

    # ------------------------------------------------------------------ single-server steps
    def adding_learner(self, key: bytes) -> Membership:
        assert key not in self and not self.full
        return Membership(self.voters, self.learners + (key,))

    def promoting(self, key: bytes) -> Membership:
        assert key in self.learners
        return Membership(self.voters + (key,), tuple(k for k in self.learners if k != key))

    def removing(self, key: bytes) -> Membership:
        assert key in self
        return Membership(tuple(k for k in self.voters if k != key), tuple(k for k in self.learners if k != key))

    def step_to(self, new: Membership) -> str | None:
        """What one step turns this membership into `new` ("add learner", "promote",
        "remove voter", "remove learner"; None when equal), or ValueError when it takes more."""
        if new == self:
            return None
        for key in new.learners:
            if key not in self and not self.full and new == self.adding_learner(key):
                return "add learner"
        for key in self.learners:
            if new == self.promoting(key):
                return "promote"
        for key in self.everyone:
            if len(self.voters) > 1 or key not in self.voters:
                if new == self.removing(key):
                    return "remove voter" if key in self.voters else "remove learner"
        raise ValueError("a membership changes one server at a time (add a learner, promote it, or remove one)")


class Memberships:
    """The membership each header names, remembered by block hash (a node asks for its last
    entry's at every message), and the address of each key met."""

    REMEMBERED = 256

    def __init__(self, genesis: Membership):
        self.genesis = genesis
        self._by_hash: dict[bytes, Membership] = {}
        self._addresses: dict[bytes, bytes] = {}

    def of(self, header: BlockHeader) -> Membership:
        """The membership in force after `header` (a header of the store or of a checked
        block: one whose extra does not decode is not Raft's, and names the genesis one)."""
        known = self._by_hash.get(header.hash)
        if known is not None:
            return known
        membership = self.genesis
        if header.height > 0:
            try:
                membership = decode_extra(header.extra, self.genesis)[1] or self.genesis
            except DecodeError:
                pass
        if len(self._by_hash) >= self.REMEMBERED:
            self._by_hash.clear()
        self._by_hash[header.hash] = membership
        return membership

    def address(self, key: bytes) -> bytes:
        address = self._addresses.get(key)
        if address is None:
            address = self._addresses[key] = address_of(key)
        return address

    def sealer(self, header: BlockHeader, parent: BlockHeader) -> bytes:
        """The key that must have sealed `header` on `parent`: a voter of the parent's
        membership that the block keeps a voter, in a block whose term does not go back and
        whose membership is at most one step from its parent's.  InvalidSeal otherwise."""
        try:
            term, after = decode_extra(header.extra, self.genesis)
            parent_term = term_of_extra(parent.extra) if parent.height > 0 else 0
        except DecodeError as exc:
            raise InvalidSeal(f"raft block extra: {exc}") from None
        assert after is not None
        if term < 1 or term < parent_term:
            raise InvalidSeal(f"raft block of term {term} follows a block of term {parent_term}")
        before = self.of(parent)
        try:
            before.step_to(after)
        except ValueError as exc:
            raise InvalidSeal(f"raft block membership: {exc}") from None
        key = next((k for k in before.voters if self.address(k) == header.proposer), None)
        if key is None:
            raise InvalidSeal("raft block appended by no voter")
        if key not in after.voters:
            raise InvalidSeal("raft block removes its own leader (a leader hands the lead over first)")
        return key

    def change(self, header: BlockHeader, parent: BlockHeader) -> tuple[str, bytes] | None:
        """What `header` changed in its parent's membership: (step, the key it concerns)."""
        before, after = self.of(parent), self.of(header)
        if before == after:
            return None
        try:
            step = before.step_to(after)
        except ValueError:
            return None
        assert step is not None
        changed = set(before.everyone) ^ set(after.everyone) or set(after.voters) - set(before.voters)
        return step, next(iter(changed))


def encode_extra(term: int, membership: Membership, genesis: Membership) -> bytes:
    if membership == genesis:
        return Writer().u8(EXTRA_TERM_ONLY).u64(term).bytes()
    writer = Writer().u8(EXTRA_WITH_MEMBERSHIP).u64(term).u8(len(membership.voters)).u8(len(membership.learners))
    for key in membership.everyone:
        writer.fixed(key, crypto.PUBLIC_KEY_SIZE)
    return writer.bytes()


def decode_extra(extra: bytes, genesis: Membership | None) -> tuple[int, Membership | None]:
    """(term, membership) a block's `extra` names; the membership is `genesis` for a block
    of version 1.  DecodeError when it is not a canonical Raft extra."""
    reader = Reader(extra)
    version = reader.u8("extra.version")
    if version not in (EXTRA_TERM_ONLY, EXTRA_WITH_MEMBERSHIP):
        raise DecodeError("extra.version", "not a Raft block extra")
    term = reader.u64("extra.term")
    membership = genesis
    if version == EXTRA_WITH_MEMBERSHIP:
        voters, learners = reader.u8("extra.voters"), reader.u8("extra.learners")
        if not 1 <= voters or voters + learners > MAX_MEMBERS:
            raise DecodeError("extra.voters", f"1 to {MAX_MEMBERS} members, at least one a voter")
        keys = [reader.fixed(crypto.PUBLIC_KEY_SIZE, "extra.member") for _ in range(voters + learners)]
        if len(set(keys)) != len(keys) or not all(crypto.is_valid_public_key(k) for k in keys):
            raise DecodeError("extra.member", "members are distinct compressed public keys")
        membership = Membership(tuple(keys[:voters]), tuple(keys[voters:]))
        if membership == genesis:
            raise DecodeError("extra.version", "the genesis membership is written as version 1")
    reader.finish()
    return term, membership


def term_of_extra(extra: bytes) -> int:
    """The term a block's `extra` names (DecodeError when it does not start as Raft's).  Reads
    only the term: the log asks for it often, and verify_seal checks the whole extra."""
    reader = Reader(extra[:9])
    if reader.u8("extra.version") not in (EXTRA_TERM_ONLY, EXTRA_WITH_MEMBERSHIP):
        raise DecodeError("extra.version", "not a Raft block extra")
    return reader.u64("extra.term")

"""The engine boundary: events in, actions out.

An engine is a deterministic state machine.  The node runtime feeds it events (each
carrying the current time in ms, so the engine never reads a clock) and performs the
actions it returns, in order.  The engine owns no socket, no database and no
randomness except a seeded source it is given; signing is a capability handed over
at construction (RFC 6979 signatures are deterministic).  This is the shape of etcd's
raft `Ready` loop and of CometBFT's ABCI split: the engine decides *what* happens, the
runtime decides *how* (SQL, TCP, threads).  The in-process simulator feeds the same
engine code under virtual time.

Request/answer pairs:
  BuildBlock  -> the runtime fills a block from the mempool and answers BlockBuilt
  ExecuteBlock-> the runtime applies it without committing and answers BlockExecuted
  Mine        -> a worker searches a nonce and the runtime answers Mined (or nothing after StopMining)
  Commit      -> the runtime writes the block in one database transaction and answers BlockCommitted
  SetTimer    -> the runtime answers with a Tick at (or after) that time
  Persist     -> durable before any later action's message leaves the node
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.block import Block, BlockHeader, InvalidSeal
from ledger.engine_status import EngineStatus, Finality
from ledger.evidence import EvidenceRecord
from ledger.staking import StakeChange, StakeOp
from ledger.state import ValidatorUpdate

# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Started:
    now: int
    head: BlockHeader
    persisted: bytes | None  # the engine's last Persist, or None on a fresh node
    # The last `engine.ancestors_needed` headers of the chain, oldest first, ending with
    # `head` (fewer only when the chain is shorter).  Engines that need only the head
    # (ancestors_needed == 1) accept it empty.
    recent: tuple[BlockHeader, ...] = ()
    # The head block and the certificate stored with it (b"" if none): what a BFT engine
    # hands a peer still deciding that height, and needs to build the next block, when
    # its memory of them went with a restart.
    head_block: Block | None = None
    head_certificate: bytes = b""


@dataclass(frozen=True, slots=True)
class Tick:
    now: int


@dataclass(frozen=True, slots=True)
class TxsAvailable:
    """The mempool holds transactions ready for a block."""

    now: int
    count: int


@dataclass(frozen=True, slots=True)
class BlockBuilt:
    now: int
    block: Block  # unsealed: the engine seals it


@dataclass(frozen=True, slots=True)
class BlockExecuted:
    now: int
    block_hash: bytes
    valid: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BlockCommitted:
    """The head moved to `header`: a block the engine asked to commit, or one imported from
    a peer, or the new head after a reorg."""

    now: int
    header: BlockHeader
    # Needed only when `header` is not a child of the previous head (a reorg, or a jump):
    # then the new head's recent headers, as in Started.  A child of the previous head
    # may come without them; the engine extends its own window.
    recent: tuple[BlockHeader, ...] = ()
    # The validator-set changes executing this block decided (ledger.state.ValidatorUpdate).
    validator_updates: tuple[ValidatorUpdate, ...] = ()
    # How many transactions the mempool holds ready, counted when the engine takes the event
    # (as TxsAvailable.count), for a block this node stored (its own or an import); None
    # where the head moved without one (a dropped block, a reorg to an ancestor, a dev
    # revert).  An engine that builds on each commit (Raft) builds the next block at once
    # instead of waiting for a TxsAvailable.
    txs_ready: int | None = None


@dataclass(frozen=True, slots=True)
class BlockReceived:
    """A block from a peer that passed the stateless checks (structure, size, decoding)."""

    now: int
    block: Block
    peer: str


@dataclass(frozen=True, slots=True)
class PeerMessage:
    now: int
    peer: str
    message: bytes


@dataclass(frozen=True, slots=True)
class PeerConnected:
    now: int
    peer: str


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    now: int
    peer: str


@dataclass(frozen=True, slots=True)
class Mined:
    now: int
    header: BlockHeader


@dataclass(frozen=True, slots=True)
class SealRequested:
    """A dev chain's operator asks for `blocks` more blocks now, empty or not (POST
    /v1/dev/mine).  Only an engine that declares `dev_controls` is ever sent one."""

    now: int
    blocks: int


@dataclass(frozen=True, slots=True)
class LeadershipTransferRequested:
    """An operator asks the leader to hand its role to the member with address `to`, for
    maintenance (the admin endpoint).  Only an engine that declares `transfers_leadership`
    is ever sent one, and only while its status says it leads."""

    now: int
    to: bytes


@dataclass(frozen=True, slots=True)
class MembershipChangeRequested:
    """An operator asks the leader to add the member with public key `key` (as a learner,
    which the leader promotes to voter once it has caught up), or to remove it (the admin
    endpoint).  Only an engine that declares `changes_membership` is ever sent one, and only
    while its status says it leads; the engine refuses silently what it cannot do now (a
    change still uncommitted), and its status shows what it did."""

    now: int
    key: bytes
    add: bool


@dataclass(frozen=True, slots=True)
class ReadIndexRequested:
    """A client wants a linearizable read: the engine answers ReadIndexReady with a height
    such that the node's state once its head reaches it reflects every write committed
    before the request (Raft's ReadIndex), or ReadIndexFailed.  Only an engine that declares
    `reads_linearizable` is ever sent one."""

    now: int
    request: int  # the runtime's id for it, echoed in the answer


Event = (
    Started | Tick | TxsAvailable | BlockBuilt | BlockExecuted | BlockCommitted | BlockReceived
    | PeerMessage | PeerConnected | PeerDisconnected | Mined | SealRequested | LeadershipTransferRequested
    | MembershipChangeRequested | ReadIndexRequested
)

# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class BuildBlock:
    parent: bytes  # hash of the parent block
    height: int
    timestamp: int
    proposer: bytes  # account id that receives fees and reward
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class ExecuteBlock:
    block: Block


@dataclass(frozen=True, slots=True)
class Commit:
    block: Block
    certificate: bytes = b""


@dataclass(frozen=True, slots=True)
class SetTimer:
    at: int


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: bytes


@dataclass(frozen=True, slots=True)
class Send:
    peer: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Mine:
    header: BlockHeader
    target: int


@dataclass(frozen=True, slots=True)
class StopMining:
    pass


@dataclass(frozen=True, slots=True)
class SetHead:
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    state: bytes


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    evidence: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexReady:
    """Answer to ReadIndexRequested: serve the read once the head is at `index` or above."""

    request: int
    index: int


@dataclass(frozen=True, slots=True)
class ReadIndexFailed:
    request: int
    reason: str  # for the client: no leader known, leadership not confirmed in time, ...


Action = (
    BuildBlock | ExecuteBlock | Commit | SetTimer | Broadcast | Send | Mine | StopMining | SetHead
    | Persist | ReportEvidence | ReadIndexReady | ReadIndexFailed
)


class Engine(ABC):
    """One consensus engine.  Subclasses implement `handle` and the pure seal check.

    Everything the runtime, the simulator, the API or the explorer needs to know about an
    engine is declared here, with a default where one makes sense; nothing outside
    `consensus/` asks which engine it runs."""

    name: str
    # How a block becomes final (the kind: the height is `finalized_height`).
    finality: Finality = Finality.AT_COMMIT
    # How many recent headers, oldest first and ending with the parent, `verify_header`
    # needs to check a block (and the state machine needs in Started.recent).
    ancestors_needed: int = 1
    # True when a block from a peer may be imported only with a certificate that proves it
    # final (BFT: the next block's header carries it), so a node imports one block behind
    # the best peer it hears of and never keeps an orphan for later.
    import_waits_for_certificate: bool = False
    # True when the runtime pushes each block this node's engine commits to its peers
    # (NewBlock); False when the engine's own messages carry its blocks (a BFT proposal).
    pushes_own_blocks: bool = True
    # The deepest reorg the node accepts: a branch forking further below the head is refused
    # whatever its weight, even where finality does not already forbid it.
    max_reorg_depth: int = 100
    # How far ahead of the receiver's clock a block's timestamp may be (ledger/validate.py).
    max_future_ms: int = 15_000
    # True when this node alone decides the chain, so an operator may seal blocks on request
    # (SealRequested) and rewind it (the /v1/dev routes): solo's authority, never a network engine.
    dev_controls: bool = False
    # True when one node leads and may hand that role to another on request
    # (LeadershipTransferRequested): Raft.
    transfers_leadership: bool = False
    # True when members join and leave one at a time through the chain on request
    # (MembershipChangeRequested): Raft.
    changes_membership: bool = False
    # How long the node waits before fetching blocks a peer says it has, when the engine's
    # own messages normally bring them (Raft's append entries and commit index): without it
    # a follower that hears of each commit a moment before the leader's next message would
    # start a block request for every block.
    sync_grace_ms: int = 0
    # True when the engine answers ReadIndexRequested (Raft's ReadIndex reads).
    reads_linearizable: bool = False
    # True when the chain bonds stake (proof of stake): stake and unstake transactions are
    # admitted, and headers order stake ops and declare stake changes (below).
    staking: bool = False

    @abstractmethod
    def handle(self, event: Event) -> list[Action]:
        """Advance the state machine by one event; return the actions to perform, in order."""

    @abstractmethod
    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        """Raise InvalidSeal unless `header` is properly sealed on top of `parent`.
        Pure: used by sync and import without running the state machine."""

    def verify_header(self, header: BlockHeader, ancestors: Sequence[BlockHeader], now_ms: int | None = None) -> None:
        """Raise InvalidSeal unless `header` is properly sealed on top of `ancestors[-1]`.

        `ancestors` are the last `ancestors_needed` headers of the branch the block extends,
        oldest first (fewer only near genesis); `now_ms` is the receiver's clock for rules
        such as "not too far in the future" (None skips them, for blocks already accepted
        once).  Engines whose check needs only the parent keep this default."""
        if not ancestors:
            raise ValueError("verify_header needs at least the parent header")
        self.verify_seal(header, ancestors[-1])

    @abstractmethod
    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        """The highest height that can no longer be reverted, given the head (its hash too,
        for engines whose finality depends on the branch: proof of stake)."""

    def parent_certificate(self, header: BlockHeader) -> bytes:
        """The certificate that `header` carries of its parent (engines whose blocks are final
        only with one, BFT); b"" when it carries none."""
        return b""

    def certificate_signers(self, certificate: bytes) -> list[tuple[bytes, int]]:
        """Who signed a stored commit certificate, with their voting power (for display)."""
        return []

    def block_labels(self, header: BlockHeader, parent: BlockHeader | None) -> list[tuple[str, str]]:
        """What the engine can say about a block for people, as (name, value) pairs in the
        order shown (proof of stake: slot, epoch, missed slots, checkpoint); from the header
        and its parent alone.  The API and the explorer show them as they are."""
        return []

    def block_evidence(self, header: BlockHeader) -> list[EvidenceRecord]:
        """The evidence of misbehaviour a header records (already checked by `verify_header`)."""
        return []

    def stake_ops(self, extra: bytes) -> tuple[StakeOp, ...]:
        """The stake operations a header's `extra` orders, applied before its transactions
        (called only on an `extra` that passed `verify_header` or that this engine built)."""
        return ()

    def declared_stake_changes(self, extra: bytes) -> tuple[StakeChange, ...]:
        """What a header's `extra` says its stake transactions did (checked against them)."""
        return ()

    def block_work(self, header: BlockHeader) -> int:
        """The weight of a block in the default fork choice.  1 a block: the longest chain."""
        return 1

    def fork_choice(self, branches: Sequence[Sequence[BlockHeader]]) -> int:
        """Which branch the node follows: `branches` each hold the headers after one common
        fork point, oldest first, checked already; the first is the current chain's.  Returns
        the index of the winner.  Pure.  The default: the most summed `block_work`, ties
        keeping the earlier branch (the current chain, then the first seen)."""
        if not branches:
            raise ValueError("fork_choice needs at least one branch")
        weights = [sum(self.block_work(header) for header in branch) for branch in branches]
        return weights.index(max(weights))

    def verify_commit(self, header: BlockHeader, certificate: bytes) -> object:
        """Raise InvalidSeal unless `certificate` proves `header` final.  Called only when
        `import_waits_for_certificate`; engines that set it implement this."""
        raise NotImplementedError(f"the {self.name} engine does not certify blocks")

    @abstractmethod
    def status(self) -> EngineStatus:
        """What the engine does now, in the schema every engine shares (GET /v1/consensus,
        GET /v1/validators and the explorer render it without knowing the engine)."""

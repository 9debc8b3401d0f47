"""The narrow service the API needs from a node.  The node runtime implements it;
the API imports nothing from `node` (DESIGN.md: nothing imports node).

Reads are plain methods (the API calls them from worker threads, they may touch
the database); writes and waits are coroutines on the node's event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ledger.block import Block, BlockHeader
from ledger.engine_status import EngineStatus
from ledger.evidence import EvidenceRecord
from ledger.genesis import Genesis
from ledger.transaction import Transaction

if TYPE_CHECKING:
    from api.dev import DevChain

TxStatusName = Literal["pending", "included", "final", "unknown"]


@dataclass(frozen=True)
class Rejection:
    """Why the node refused an input; `reason` is a stable code (the problem+json type)."""

    reason: str
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Accepted:
    tx_id: bytes
    duplicate: bool = False  # already pending or known: accepted idempotently


SubmitResult = Accepted | Rejection


@dataclass(frozen=True)
class TxRecord:
    tx: Transaction
    status: TxStatusName
    block_height: int | None = None
    block_hash: bytes | None = None
    index: int | None = None
    confirmations: int = 0
    timestamp: int | None = None  # of the including block


@dataclass(frozen=True)
class BlockRecord:
    header: BlockHeader
    transactions: tuple[Transaction, ...] | None  # None when only the header was asked for
    status: TxStatusName
    confirmations: int
    certificate: bytes = b""
    size: int = 0
    evidence: tuple[EvidenceRecord, ...] = ()  # misbehaviour this block records
    signers: tuple[tuple[bytes, int], ...] = ()  # the certificate's signers and their voting power
    labels: tuple[tuple[str, str], ...] = ()  # what the engine says of the block (Engine.block_labels)

    @property
    def block(self) -> Block:
        return Block(self.header, self.transactions or ())


@dataclass(frozen=True)
class AccountRecord:
    address: bytes
    balance: int
    nonce: int
    pending_nonce: int
    pending_count: int
    # Proof of stake: bonded, unbonding (spendable from release_epoch) and slashed in total.
    bonded: int = 0
    unbonding: int = 0
    release_epoch: int = 0
    slashed: int = 0


@dataclass(frozen=True)
class MempoolRecord:
    size: int
    capacity: int
    senders: int
    transactions: list[Transaction]


@dataclass(frozen=True)
class NodeInfo:
    chain_id: str
    genesis_hash: bytes
    engine: str
    height: int
    head_hash: bytes
    head_timestamp: int
    finalized_height: int
    version: str
    address_prefix: str
    denomination: str
    decimals: int
    node_id: str
    syncing: bool = False
    node_key: str = ""  # the node key's public key, hex: what a validator stakes for (`wallet stake --validator-key`)
    sync_progress: float = 1.0
    peers: int = 0
    mempool_size: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One item of the live stream: kind 'block', 'tx' (admitted to the mempool) or 'reorg'."""

    kind: str
    data: dict


class ReadRefused(Exception):
    """A linearizable read the node cannot serve: `reason` is the problem code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class NodeService(Protocol):
    genesis: Genesis
    staking: bool  # the chain's engine bonds stake: stake and unstake transactions are accepted
    dev: DevChain  # the /v1/dev routes; it refuses on any node but a dev chain's sealing one

    def node_info(self) -> NodeInfo: ...

    def link_faults(self) -> dict:
        """The operator's faults on this node's peer links ({blocked, delay_ms, loss_percent});
        LookupError when the node has no peer network."""
        ...

    def set_link_faults(self, blocked: frozenset[str], delay_ms: int, loss_percent: float) -> dict:
        """Lay faults (all zero/empty heals); ValueError with a `field` when a setting is invalid."""
        ...

    async def read_barrier(self) -> int:
        """Wait until this node's state reflects every write committed before the call (Raft's
        ReadIndex) and return that height; ReadRefused when it cannot."""
        ...

    def transfer_leadership(self, to: bytes) -> dict:
        """Ask the leader to hand its role to member `to` ({from, to, term}, addresses in
        hex); api.admin.AdminRefused (with a problem `reason`) when it will not."""
        ...

    def change_membership(self, add: bytes | None, remove: bytes | None) -> dict:
        """Ask the leader to add the member with node key `add` or remove the one with
        address `remove` ({change, member, term}, the member's address in hex);
        api.admin.AdminRefused when it will not."""
        ...

    def health(self) -> str | None:
        """Why the node is not doing its job (stalled, stopping), or None when it is."""
        ...

    def consensus_status(self) -> EngineStatus:
        """What the consensus engine reports now (role, phase, validators, evidence, ...)."""
        ...

    async def submit(self, transactions: list[Transaction]) -> list[SubmitResult]: ...

    async def wait_final(self, tx_ids: list[bytes], timeout: float) -> dict[bytes, TxStatusName]:
        """Return when every id is final, or at `timeout` seconds, with each id's status then."""
        ...

    def transaction(self, tx_id: bytes) -> TxRecord | None: ...

    def block(self, ref: int | bytes, with_transactions: bool = True) -> BlockRecord | None:
        """A block by height (int) or hash (32 bytes)."""
        ...

    def blocks(self, before_height: int | None, limit: int) -> list[BlockRecord]:
        """Headers of the newest blocks below `before_height` (None: from the head), newest first."""
        ...

    def account(self, address: bytes) -> AccountRecord: ...

    def account_transactions(
        self, address: bytes, before: tuple[int, int] | None, limit: int
    ) -> list[TxRecord]:
        """Transactions sent or received by `address`, newest first, strictly before the
        (height, index) cursor when given; pending ones are not included."""
        ...

    def mempool(self, limit: int) -> MempoolRecord: ...

    def recorded_evidence(
        self, validator: bytes | None, before: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, int, EvidenceRecord]]:
        """Evidence the chain records, newest first, each with the height of the block that
        records it and its position there; only `validator`'s when given, only before the
        (height, position) cursor when given."""
        ...

    def subscribe(self) -> asyncio.Queue[Event | None]:
        """A queue of live events; None in it means the node is stopping and the stream ends."""
        ...

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None: ...

    def metrics_text(self) -> bytes:
        """Prometheus exposition text of the node's registry."""
        ...

"""The solo engine: one authority named in genesis seals every block (a dev chain,
like anvil's automine or geth's dev mode).

It builds a block as soon as transactions are ready, with everything the mempool
offers up to the block limit; while a block is being built or committed, arriving
transactions wait for the next one, so blocks grow with the load.  With
`block_interval_ms` > 0 it also seals an empty block when that long has passed
since the head.  A block is final the moment it commits.

With a block time (`ledger node --block-time S`, a choice of the node that seals, not of
the chain, so it is not in genesis) it seals on a fixed cadence instead, like anvil's
`--block-time`: a block S seconds after the head, with whatever is waiting, empty or
not, and transactions no longer wake it.  In either mode `SealRequested` (POST
/v1/dev/mine) seals that many blocks at once, empty or not.

A node whose key is not the authority's follows: it only checks seals.
"""

from __future__ import annotations

from enum import Enum

from ledger import crypto
from ledger.address import address_of
from ledger.block import BlockHeader
from ledger.engine_status import EngineStatus, ValidatorStatus

from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BuildBlock,
    Commit,
    Engine,
    Event,
    InvalidSeal,
    SetTimer,
    SealRequested,
    Started,
    Tick,
    TxsAvailable,
)


class _Phase(Enum):
    IDLE = "idle"
    BUILDING = "building"  # BuildBlock sent, waiting for BlockBuilt
    COMMITTING = "committing"  # Commit sent, waiting for BlockCommitted


class SoloEngine(Engine):
    name = "solo"

    def __init__(self, params: dict, signer: crypto.PrivateKey | None, block_time_ms: int = 0):
        try:
            self.authority = bytes.fromhex(params["authority"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("solo engine: genesis engine.params.authority must be a hex public key") from None
        if not crypto.is_valid_public_key(self.authority):
            raise ValueError("solo engine: genesis engine.params.authority is not a valid public key")
        interval = params.get("block_interval_ms", 0)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError("solo engine: block_interval_ms must be a non-negative integer")
        if isinstance(block_time_ms, bool) or not isinstance(block_time_ms, int) or block_time_ms < 0:
            raise ValueError("solo engine: the block time must be a non-negative integer of ms")
        # A block time replaces the genesis interval and stops sealing on demand.
        self.block_interval_ms = block_time_ms or interval
        self.on_demand = block_time_ms == 0
        self.authority_address = address_of(self.authority)
        self.signer = signer if signer is not None and signer.public_key == self.authority else None
        self.head: BlockHeader | None = None
        self.phase = _Phase.IDLE
        self.building_empty_allowed = False
        self.requested = 0  # blocks SealRequested still wants sealed

    @property
    def is_producer(self) -> bool:
        return self.signer is not None

    @property
    def dev_controls(self) -> bool:  # type: ignore[override]
        return self.is_producer

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Started):
            self.head = event.head
            return self._schedule() + (self._maybe_build(event.now, empty_allowed=False) if self.on_demand else [])
        if isinstance(event, TxsAvailable):
            return self._maybe_build(event.now, empty_allowed=False) if event.count > 0 and self.on_demand else []
        if isinstance(event, SealRequested):
            if not self.is_producer or event.blocks < 1:
                return []
            # A block being built now is sealed after this request, so it counts towards it.
            self.requested += event.blocks
            return self._maybe_build(event.now, empty_allowed=True)
        if isinstance(event, Tick):
            due = self.head is not None and self.block_interval_ms and event.now >= self._next_empty_at()
            return self._maybe_build(event.now, empty_allowed=True) if due else self._schedule()
        if isinstance(event, BlockBuilt):
            return self._seal(event)
        if isinstance(event, BlockCommitted):
            self.head = event.header
            self.phase = _Phase.IDLE
            if self.requested:
                return self._maybe_build(event.now, empty_allowed=True)
            return self._schedule()
        return []

    def _next_empty_at(self) -> int:
        assert self.head is not None
        return self.head.timestamp + self.block_interval_ms

    def _schedule(self) -> list[Action]:
        if self.is_producer and self.block_interval_ms and self.head is not None:
            return [SetTimer(self._next_empty_at())]
        return []

    def _maybe_build(self, now: int, empty_allowed: bool) -> list[Action]:
        if not self.is_producer or self.phase is not _Phase.IDLE or self.head is None:
            return []
        self.phase = _Phase.BUILDING
        self.building_empty_allowed = empty_allowed
        # Timestamps never go backwards, even if the clock does.
        timestamp = max(now, self.head.timestamp)
        return [BuildBlock(self.head.hash, self.head.height + 1, timestamp, self.authority_address)]

    def _seal(self, event: BlockBuilt) -> list[Action]:
        if self.phase is not _Phase.BUILDING or self.signer is None:
            return []
        header = event.block.header
        if header.tx_count == 0 and not (self.building_empty_allowed or self.requested):
            # The transactions that woke us were taken by the previous block.
            self.phase = _Phase.IDLE
            return self._schedule()
        sealed = header.with_seal(self.signer.sign_digest(header.sealing_digest()))
        self.phase = _Phase.COMMITTING
        self.requested = max(0, self.requested - 1)
        return [Commit(type(event.block)(sealed, event.block.transactions))]

    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        if header.proposer != self.authority_address:
            raise InvalidSeal("block proposer is not the solo authority")
        if header.timestamp < parent.timestamp:
            raise InvalidSeal("block timestamp is before its parent's")
        if not crypto.verify_digest(self.authority, header.sealing_digest(), header.seal):
            raise InvalidSeal("block seal is not the authority's signature")

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        return head_height

    def status(self) -> EngineStatus:
        head_height = self.head.height if self.head is not None else 0
        # The authority seals every block after genesis, so the head's height is both how
        # many it proposed and the last one it signed (none yet on a chain of genesis only).
        authority = ValidatorStatus(
            address=self.authority_address, public_key=self.authority, power=1,
            blocks_proposed=head_height, last_signed_height=head_height if head_height > 0 else None,
        )
        return EngineStatus(
            engine=self.name,
            finality=self.finality,
            role="producer" if self.is_producer else "follower",
            phase=self.phase.value,
            height=self.head.height + 1 if self.head is not None else None,
            validators=(authority,),
            total_power=1,
            quorum_power=1,
            details={"authority": self.authority.hex(), "block_interval_ms": self.block_interval_ms,
                     "on_demand": self.on_demand},
        )

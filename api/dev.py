"""Dev-chain routes, like anvil's `evm_mine`, `evm_snapshot` and `evm_revert`: under /v1/dev.

Only a dev chain's sealing node (solo's authority) performs them; any other node answers
409 `not_a_dev_chain`.  The node side is `NodeService.dev`, node/dev.py's DevControls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api.problems import PROBLEM_CONTENT_TYPE, ProblemException, problem
from ledger.block import BlockHeader

MAX_MINE_BLOCKS = 1000
MAX_SNAPSHOT_ID = 2**63 - 1


class DevRefused(Exception):
    """Why a dev control was not performed; `reason` is a problem type (api/problems.py)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Sealed:
    blocks: tuple[BlockHeader, ...]
    head: BlockHeader


@dataclass(frozen=True)
class Snapshot:
    id: int
    height: int
    hash: bytes


@dataclass(frozen=True)
class Reverted:
    id: int
    height: int
    hash: bytes
    reverted_blocks: int
    dropped_transactions: int


class DevChain(Protocol):
    """What the dev routes need from the node.  Each raises DevRefused instead of acting."""

    async def mine(self, blocks: int) -> Sealed: ...

    async def snapshot(self) -> Snapshot: ...

    async def revert(self, snapshot_id: int) -> Reverted: ...


class BlockRef(BaseModel):
    height: int
    hash: str


class MineOut(BaseModel):
    blocks: list[BlockRef] = Field(description="the blocks sealed for this request, oldest first")
    height: int = Field(description="the head's height after them")
    hash: str


class SnapshotOut(BaseModel):
    id: int = Field(description="give it to POST /v1/dev/revert/{id}")
    height: int
    hash: str


class RevertOut(BaseModel):
    id: int
    height: int = Field(description="the head's height now: the snapshot's")
    hash: str
    reverted_blocks: int = Field(description="blocks undone")
    dropped_transactions: int = Field(description="pending transactions dropped from the mempool")


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}}}


_NOT_DEV = {409: _problem("`not_a_dev_chain`: the node is not a dev chain's sealing node (a network engine, "
                          "or a solo follower); `peers_connected` (revert only)"),
            503: _problem("`shutting_down`")}


async def _perform(call) -> Any:
    try:
        return await call
    except DevRefused as exc:
        raise ProblemException(problem(exc.reason, exc.message)) from None


class WithDevChain(Protocol):
    """What dev_router takes: api.service.NodeService is one (named so to spare the two
    modules a circle)."""

    dev: DevChain


def dev_router(service: WithDevChain) -> APIRouter:
    """The /v1/dev routes over `service.dev`, looked up at each request."""
    router = APIRouter(prefix="/v1/dev", tags=["dev"])

    @router.post(
        "/mine", response_model=MineOut, summary="Seal blocks now (dev chain only)",
        description="Seals `blocks` blocks at once, each with whatever transactions wait (empty or not), "
                    "and answers when they are on the chain. A block being built when the request "
                    "arrives counts as the first. Only on a dev chain's sealing node (solo authority).",
        responses={**_NOT_DEV, 504: _problem("`mine_timeout`: the blocks were not sealed within 60 s")},
    )
    async def mine(blocks: int = Query(1, ge=1, le=MAX_MINE_BLOCKS, description="how many blocks")) -> Any:
        sealed: Sealed = await _perform(service.dev.mine(blocks))
        return {"blocks": [{"height": h.height, "hash": h.hash.hex()} for h in sealed.blocks],
                "height": sealed.head.height, "hash": sealed.head.hash.hex()}

    @router.post(
        "/snapshot", response_model=SnapshotOut, summary="Remember the chain's head (dev chain only)",
        description="Records the head; POST /v1/dev/revert/{id} brings the chain and its state back to it. "
                    "Snapshots live in the node's memory: a restart forgets them.",
        responses=_NOT_DEV,
    )
    async def snapshot() -> Any:
        taken: Snapshot = await _perform(service.dev.snapshot())
        return {"id": taken.id, "height": taken.height, "hash": taken.hash.hex()}

    @router.post(
        "/revert/{snapshot_id}", response_model=RevertOut, summary="Rewind to a snapshot (dev chain only)",
        description="Undoes every block above the snapshot's (blocks, transactions and account state), "
                    "empties the mempool, answers pending `wait=final` requests and sends a `reorg` event "
                    "with `cause: dev_revert`. Uses up this snapshot and every later one, as anvil does. "
                    "Refused while peers are connected.",
        responses={**_NOT_DEV, 404: _problem("`unknown_snapshot`: never taken, used up, or no longer on the chain")},
    )
    async def revert(snapshot_id: int = Path(ge=1, le=MAX_SNAPSHOT_ID, description="an id from POST /v1/dev/snapshot")) -> Any:
        done: Reverted = await _perform(service.dev.revert(snapshot_id))
        return {"id": done.id, "height": done.height, "hash": done.hash.hex(),
                "reverted_blocks": done.reverted_blocks, "dropped_transactions": done.dropped_transactions}

    return router

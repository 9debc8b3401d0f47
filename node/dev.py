"""Dev-chain controls, like anvil's: seal blocks on request, snapshot the chain and revert to
a snapshot.  The runtime side of the /v1/dev routes (api/dev.py).

They exist only where the node alone decides the chain (`engine.dev_controls`: solo's
authority).  A network would not follow a node that rewinds itself, so revert is also
refused while peers are connected.

Every change runs inside the engine loop (`InLoop`), between two engine steps: a revert
never interleaves with a block being committed or imported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from api.dev import DevRefused, Reverted, Sealed, Snapshot
from consensus import engine as ev
from ledger.block import BlockHeader

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger("ledger.node")

MINE_TIMEOUT_SECONDS = 60.0


@dataclass
class InLoop:
    """Work the engine loop runs between two events, with its outcome set on `done`."""

    work: Callable[[], Awaitable[object]]
    done: asyncio.Future

    async def run(self) -> None:
        try:
            result = await self.work()
        except BaseException as exc:  # the caller awaits `done`; the loop must go on
            if not self.done.done():
                self.done.set_exception(exc)
            return
        if not self.done.done():
            self.done.set_result(result)


class DevControls:
    """The dev routes' service (api.dev.DevChain) over one node."""

    def __init__(self, node: Node):
        self.node = node
        self.snapshots: dict[int, tuple[int, bytes]] = {}  # id -> (height, hash)
        self._next_id = 1

    def refusal(self) -> str | None:
        if not self.node.engine.dev_controls:
            return (f"this node runs the {self.node.engine.name} engine as a "
                    f"{self.node.engine.status().role}: dev controls exist only on a dev chain's "
                    "sealing node (the solo engine's authority, e.g. `ledger node`)")
        return None

    async def _in_loop(self, work: Callable[[], Awaitable[object]]) -> object:
        reason = self.refusal()
        if reason is not None:
            raise DevRefused("not_a_dev_chain", reason)
        if self.node.failure is not None or self.node._stopping:
            raise DevRefused("shutting_down", "the node is shutting down")
        done = asyncio.get_running_loop().create_future()
        self.node.feed(InLoop(work, done))
        return await done

    async def mine(self, blocks: int) -> Sealed:
        node = self.node
        queue = node.subscribe()
        try:
            async def request() -> int:
                # The head the engine sees while it handles the request: a block it is
                # building now is sealed after the request and counts towards it.
                target = node.head.height + blocks
                await node.step(ev.SealRequested(node.now_ms(), blocks))
                return target

            target = await self._in_loop(request)
            assert isinstance(target, int)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + MINE_TIMEOUT_SECONDS
            while node.head.height < target:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DevRefused("mine_timeout", f"only {blocks - (target - node.head.height)} of {blocks} "
                                     f"blocks were sealed in {MINE_TIMEOUT_SECONDS:.0f} s")
                if await asyncio.wait_for(queue.get(), remaining) is None:
                    raise DevRefused("shutting_down", "the node is shutting down")
        except TimeoutError:
            raise DevRefused("mine_timeout", f"the blocks were not sealed in {MINE_TIMEOUT_SECONDS:.0f} s") from None
        finally:
            node.unsubscribe(queue)
        first = target - blocks + 1
        headers = await node.reading(lambda: [node.store.block_header(h) for h in range(first, target + 1)])
        return Sealed(tuple(h for h in headers if h is not None), node.head)

    async def snapshot(self) -> Snapshot:
        async def take() -> Snapshot:
            head = self.node.head
            snapshot_id, self._next_id = self._next_id, self._next_id + 1
            self.snapshots[snapshot_id] = (head.height, head.hash)
            return Snapshot(snapshot_id, head.height, head.hash)

        result = await self._in_loop(take)
        assert isinstance(result, Snapshot)
        return result

    async def revert(self, snapshot_id: int) -> Reverted:
        async def rewind() -> Reverted:
            return await self._revert(snapshot_id)

        result = await self._in_loop(rewind)
        assert isinstance(result, Reverted)
        return result

    async def _revert(self, snapshot_id: int) -> Reverted:
        node = self.node
        if snapshot_id not in self.snapshots:
            raise DevRefused("unknown_snapshot", f"no snapshot {snapshot_id}: ids come from POST /v1/dev/snapshot, "
                             "and a revert uses up its snapshot and every later one")
        if node.network is not None and node.network.peers():
            raise DevRefused("peers_connected", "a node with peers cannot rewind its chain: they hold its blocks "
                             "and would not follow; revert on a dev node without peers")
        height, block_hash = self.snapshots[snapshot_id]
        target: BlockHeader | None = await node.blocking(node.store.block_header, height)
        if target is None or target.hash != block_hash:
            del self.snapshots[snapshot_id]
            raise DevRefused("unknown_snapshot", f"snapshot {snapshot_id} (height {height}) is no longer on this chain")
        old_head = node.head
        # One database transaction: a crash leaves the old chain or the snapshot's, never a mix.
        reverted = await node.blocking(node.store.reorganize, height, [])
        with node.lock:
            for _, undo in reverted:
                node.state.revert(undo)
            node.head = target
            # The snapshot's state, not one with later transfers waiting to be sealed again.
            dropped = node.pool.clear()
        node.load_recent()
        node.finality.reverted_above(height)
        node.finalized_height = node.engine.finalized_height(height, target.hash)
        node.finality.dropped([tx.id for tx in dropped] + [tx.id for block, _ in reverted for tx in block.transactions])
        node.work_since_ms = None
        # Anvil's rule: reverting to a snapshot uses it up, and later ones name blocks that are gone.
        for later in [i for i in self.snapshots if i >= snapshot_id]:
            del self.snapshots[later]
        await node.step(ev.BlockCommitted(node.now_ms(), target, tuple(node.recent)))
        if node.network is not None:
            node.network.update_status(target.height, target.hash, node.finalized_height)
        node._update_gauges()
        log.warning("dev revert to snapshot %d: %d blocks undone (head %d -> %d), %d pending transactions dropped",
                    snapshot_id, len(reverted), old_head.height, target.height, len(dropped))
        node.publish("reorg", {
            "fork_height": height, "depth": len(reverted), "old_head": old_head.hash.hex(),
            "new_head": target.hash.hex(), "height": target.height, "returned_to_mempool": 0,
            "at": node.now_ms(), "cause": "dev_revert",
        })
        return Reverted(snapshot_id, target.height, target.hash, len(reverted), len(dropped))

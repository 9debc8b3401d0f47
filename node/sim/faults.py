"""The simulation's faults: drawn from the seed, laid by a test's script, and healed.

Network faults (delay, drop, duplicate, reorder) change the hub's settings; partitions
split the nodes in two (under a bound for the engines that need one, see
SimConfig.partition_limit); crashes drop a node's runtime and keep its store.  Every
fault applied is traced, so a seed replays the same faults.  Simulation mixes this in.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import TYPE_CHECKING

from node.sim.config import FAULT_KINDS, SimConfig, Trace
from node.sim.network import Faults, SimHub

if TYPE_CHECKING:
    from node.sim.harness import Slot
    from node.sim.raft_checks import MembershipChurn


class FaultInjection:
    config: SimConfig
    hub: SimHub
    slots: list[Slot]
    loop: asyncio.AbstractEventLoop
    trace: Trace
    fault_rng: random.Random
    membership_rng: random.Random
    churn: MembershipChurn | None
    faults_applied: Counter
    _partitions: int
    _whole_since: float
    _heal_time: float

    def _fault_menu(self) -> list[str]:
        enabled = self.config.faults
        menu = [kind for kind in FAULT_KINDS if kind in enabled]
        if enabled & {"delay", "drop", "duplicate", "reorder"}:
            menu.append("calm")
        if "partition" in enabled:
            menu.append("heal")
        if "crash" in enabled:
            menu.append("restart")
        return menu

    async def _inject_faults(self) -> None:
        rng = self.fault_rng
        menu = self._fault_menu()
        if not menu:
            return
        while True:
            await asyncio.sleep(rng.uniform(*self.config.fault_gap))
            kind = rng.choice(menu)
            applied = self._apply_fault(kind)
            if applied is not None:
                self.faults_applied[kind] += 1
                self.trace(f"fault {kind}: {applied}")

    async def _churn_membership(self) -> None:
        assert self.churn is not None
        while True:
            await asyncio.sleep(self.membership_rng.uniform(1.0, 4.0))
            self.churn.step([slot.node for slot in self.slots])

    def _apply_fault(self, kind: str) -> str | None:
        rng = self.fault_rng
        hub = self.hub
        faults = hub.faults
        if kind == "delay":
            low = rng.uniform(1, 30)
            faults.delay_ms = (low, low + rng.uniform(0, 400))
            return faults.describe()
        if kind == "drop":
            faults.drop = rng.uniform(0.02, 0.3)
            return faults.describe()
        if kind == "duplicate":
            faults.duplicate = rng.uniform(0.02, 0.3)
            return faults.describe()
        if kind == "reorder":
            faults.reorder = not faults.reorder
            return faults.describe()
        if kind == "calm":
            hub.faults = Faults()
            return hub.faults.describe()
        if kind == "partition":
            limit = self.config.partition_limit
            if len(self.slots) < 2:
                return None
            if limit is not None and (hub.partitioned or self.loop.time() - self._whole_since < limit):
                # Under a bound, splits do not follow each other back to back (that would
                # isolate a node for longer than the bound): the network stays whole as long.
                return None
            ids = [slot.node_id for slot in self.slots]
            rng.shuffle(ids)
            cut = rng.randint(1, len(ids) - 1)
            groups = [ids[:cut], ids[cut:]]
            hub.partition(groups)
            self._partitions += 1
            if limit is not None:
                self.loop.call_later(limit, self._end_partition, self._partitions)
            return " | ".join(",".join(sorted(hub.label(n) for n in group)) for group in groups)
        if kind == "heal":
            if hub.partitioned:
                self._whole_since = self.loop.time()
            hub.heal()
            return "one network again"
        if kind == "crash":
            live = self._live()
            if len(live) < 2:
                return None  # keep one node up to take transactions
            if self.config.max_down is not None and len(self.slots) - len(live) >= self.config.max_down:
                return None
            victim = rng.choice(live)
            self._crash(victim)
            return victim.label
        if kind == "restart":
            down = [slot for slot in self.slots if slot.node is None]
            if not down:
                return None
            slot = rng.choice(down)
            self._start(slot)
            return slot.label
        raise ValueError(f"unknown fault {kind}")

    def _scripted_partition(self, side: tuple[int, ...]) -> None:
        ids = [slot.node_id for slot in self.slots]
        groups = [[ids[i] for i in side], [ids[i] for i in range(len(ids)) if i not in side]]
        self.hub.partition(groups)
        self._partitions += 1
        self.faults_applied["partition"] += 1
        self.trace("fault partition: " + " | ".join(",".join(sorted(self.hub.label(n) for n in group)) for group in groups))

    def _scripted_heal(self) -> None:
        self._whole_since = self.loop.time()
        self.hub.heal()
        self.faults_applied["heal"] += 1
        self.trace("fault heal: scripted")

    def _scripted_crash(self, slot: Slot) -> None:
        if slot.running:
            self._crash(slot)
            self.faults_applied["crash"] += 1
            self.trace(f"fault crash: {slot.label} (scripted)")

    def _scripted_restart(self, slot: Slot) -> None:
        if slot.node is None and self.loop.time() < self._heal_time:
            self._start(slot)
            self.faults_applied["restart"] += 1
            self.trace(f"fault restart: {slot.label} (scripted)")

    def _end_partition(self, number: int) -> None:
        if number == self._partitions and self.hub.partitioned and self.loop.time() < self._heal_time:
            self._whole_since = self.loop.time()
            self.hub.heal()
            self.faults_applied["heal"] += 1
            self.trace(f"fault heal: partition {number} ended after {self.config.partition_limit:g}s")

    def _heal_everything(self) -> None:
        self.hub.faults = Faults()
        self.hub.heal()
        for slot in self.slots:
            if slot.node is None:
                self._start(slot)
        self.trace("all faults healed, every node running")

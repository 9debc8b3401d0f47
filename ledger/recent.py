"""A memory of recent keys whose size does not grow with the chain.

Caches keyed by transaction id (the mempool's verdicts of stateless checks, gossip's ids
already seen) must forget: a node that keeps an entry for every transfer it ever saw
grows by a hundred bytes or more a transfer, hundreds of MiB over a million.  RecentMap
keeps two generations of plain dicts: keys go into the young one; when it holds half the
capacity it becomes the old one and the previous old one is dropped whole.  So it holds
between capacity/2 and capacity of the newest keys, every operation is O(1), and an
entry costs a dict slot, not an OrderedDict's linked-list node.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class RecentMap(Generic[K, V]):
    def __init__(self, capacity: int):
        if capacity < 2:
            raise ValueError("capacity must be at least 2")
        self.capacity = capacity
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._young or key in self._old

    def __len__(self) -> int:
        return len(self._young) + sum(1 for key in self._old if key not in self._young)

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._young.get(key, _MISSING)
        if value is _MISSING:
            value = self._old.get(key, _MISSING)
        return default if value is _MISSING else value  # type: ignore[return-value]

    def __setitem__(self, key: K, value: V) -> None:
        young = self._young
        young[key] = value
        if len(young) >= self.capacity // 2:
            self._old = young
            self._young = {}
        assert len(self._young) + len(self._old) <= self.capacity


class RecentSet:
    """The keys of a RecentMap: recently seen ids, the oldest forgotten first."""

    def __init__(self, capacity: int):
        self._map: RecentMap[Hashable, None] = RecentMap(capacity)

    @property
    def capacity(self) -> int:
        return self._map.capacity

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __len__(self) -> int:
        return len(self._map)

    def add(self, key: Hashable) -> None:
        self._map[key] = None

"""Faults an operator lays on a node's peer links on purpose: the fault lab of `ledger testnet`.

A partition is a set of node ids this node will not talk to: their connections close,
their handshakes are refused and nothing is sent to them, until the partition heals.
Delay holds every outgoing message for a fixed time before it is queued (in order while
the delay stays the same; lowering it lets new messages overtake held ones); loss drops a share of outgoing messages at random.  The handshake
is never delayed or dropped: a link that cannot even connect is a partition, not loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NODE_ID = re.compile(r"[0-9a-f]{40}")
MAX_DELAY_MS = 60_000


class InvalidFaults(ValueError):
    """A fault setting that cannot be applied; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LinkFaults:
    blocked: frozenset[str] = field(default_factory=frozenset)  # node ids (hex) cut off from this node
    delay_ms: int = 0
    loss_percent: float = 0.0

    def __post_init__(self) -> None:
        for node_id in self.blocked:
            if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
                raise InvalidFaults("blocked", f"{node_id!r} is not a node id (40 lowercase hex digits)")
        if isinstance(self.delay_ms, bool) or not isinstance(self.delay_ms, int) or not 0 <= self.delay_ms <= MAX_DELAY_MS:
            raise InvalidFaults("delay_ms", f"delay_ms is a whole number of milliseconds from 0 to {MAX_DELAY_MS}")
        if isinstance(self.loss_percent, bool) or not isinstance(self.loss_percent, int | float) \
                or not 0 <= self.loss_percent <= 100:
            raise InvalidFaults("loss_percent", "loss_percent is a number from 0 to 100")

    @property
    def none(self) -> bool:
        return not self.blocked and not self.delay_ms and not self.loss_percent

    def describe(self) -> str:
        """One line for logs and the events stream."""
        if self.none:
            return "no faults: every link healed"
        parts = []
        if self.blocked:
            parts.append(f"cut off from {', '.join(sorted(node_id[:12] for node_id in self.blocked))}")
        if self.delay_ms:
            parts.append(f"outgoing messages delayed {self.delay_ms} ms")
        if self.loss_percent:
            parts.append(f"{self.loss_percent:g}% of outgoing messages dropped")
        return "; ".join(parts)

    def as_json(self) -> dict:
        return {"blocked": sorted(self.blocked), "delay_ms": self.delay_ms, "loss_percent": self.loss_percent}

"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process
in tests and in the simulator)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily


class NodeMetrics:
    WINDOW_SECONDS = 10.0

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.height = Gauge("ledger_height", "Height of the head block", registry=self.registry)
        self.finalized_height = Gauge("ledger_finalized_height", "Highest final block", registry=self.registry)
        self.mempool_size = Gauge("ledger_mempool_size", "Transactions waiting in the mempool", registry=self.registry)
        self.tx_per_second = Gauge(
            "ledger_tx_per_second", "Transactions committed per second over the last 10 s", registry=self.registry
        )
        self.committed = Counter("ledger_transactions_committed", "Transactions committed", registry=self.registry)
        self.reorgs = Counter("ledger_reorgs", "Chain reorganisations", registry=self.registry)
        self.blocks = Counter("ledger_blocks_committed", "Blocks committed", registry=self.registry)
        self.admitted = Counter("ledger_transactions_admitted", "Transactions admitted to the mempool", registry=self.registry)
        self.rejected = Counter(
            "ledger_transactions_rejected", "Transactions refused, by reason", ["reason"], registry=self.registry
        )
        self.commit_seconds = Histogram(
            "ledger_block_commit_seconds",
            "Time to write one block to the database",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.hash_rate = Gauge("ledger_hash_rate", "Proof-of-work hashes per second of this node's miner", registry=self.registry)
        self.hashes = Counter("ledger_hashes", "Proof-of-work hashes tried", registry=self.registry)
        self._recent: deque[tuple[float, int]] = deque()
        # Kept beside the window: summing it on every block cost O(blocks in 10 s) per block,
        # 12% of a syncing node's time at 500 blocks/s.
        self._recent_total = 0

    def block_committed(self, tx_count: int, seconds: float) -> None:
        self.blocks.inc()
        self.committed.inc(tx_count)
        self.commit_seconds.observe(seconds)
        now = time.monotonic()
        self._recent.append((now, tx_count))
        self._recent_total += tx_count
        self._refresh_rate(now)

    def _refresh_rate(self, now: float) -> float:
        while self._recent and self._recent[0][0] < now - self.WINDOW_SECONDS:
            self._recent_total -= self._recent.popleft()[1]
        rate = self._recent_total / self.WINDOW_SECONDS
        self.tx_per_second.set(rate)
        return rate

    def mined(self, hashes: int, rate: float) -> None:
        self.hashes.inc(hashes)
        self.hash_rate.set(rate)

    def tx_rate(self) -> float:
        return self._refresh_rate(time.monotonic())

    def watch_peer_traffic(
        self, sent: Callable[[], Mapping[str, int]], received: Callable[[], Mapping[str, int]],
        announced_ids: Callable[[], int], bytes_sent: Callable[[], int],
    ) -> None:
        """Export the transport's message counters (it keeps them itself; read at scrape time)."""
        self.registry.register(_PeerTrafficCollector(sent, received, announced_ids, bytes_sent))

    def text(self) -> bytes:
        self._refresh_rate(time.monotonic())
        return generate_latest(self.registry)


class _PeerTrafficCollector:
    def __init__(self, sent, received, announced_ids, bytes_sent) -> None:
        self._sent = sent
        self._received = received
        self._announced_ids = announced_ids
        self._bytes_sent = bytes_sent

    def collect(self):
        for name, help_text, counts in (
            ("ledger_p2p_messages_sent", "Peer messages sent, by type (a broadcast counts once per peer)", self._sent()),
            ("ledger_p2p_messages_received", "Peer messages received, by type", self._received()),
        ):
            family = CounterMetricFamily(name, help_text, labels=["type"])
            for kind, count in sorted(counts.items()):
                family.add_metric([kind], count)
            yield family
        yield CounterMetricFamily(
            "ledger_gossip_announced_ids", "Transaction ids announced to peers (one per id per announce message)",
            value=self._announced_ids(),
        )
        yield CounterMetricFamily(
            "ledger_p2p_bytes_sent", "Bytes of peer messages sent, framed (what link faults let through)",
            value=self._bytes_sent(),
        )

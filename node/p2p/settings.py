"""The transport's timings and limits, with the reasoning behind each default.

The numbers answer two questions: what does an honest node ever need (so it never
meets a limit), and how fast does a hostile peer meet it (within a second of starting
a flood, so it is scored down, disconnected and banned within a few).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from node.p2p.frames import MAX_FRAME
from node.p2p.messages import MAX_TX_IDS

MiB = 1024 * 1024

PENALTY_UNDECODABLE = 20
PENALTY_OVERSIZED = 50
PENALTY_FLOOD = 5  # per message over a budget: 20 of them in a row ban the peer
PENALTY_UNEXPECTED = 20
PENALTY_SLOW_FRAME = 50  # a body that trickles in holds frame memory others need; twice bans


@dataclass
class P2PSettings:
    """Timings and limits; the defaults are the production values."""

    handshake_timeout: float = 5.0
    connect_timeout: float = 5.0
    ping_interval: float = 10.0
    idle_timeout: float = 30.0
    peer_exchange_interval: float = 30.0
    ban_seconds: float = 60.0
    ban_threshold: int = -100
    score_recovery_per_second: float = 0.1
    max_frame: int = MAX_FRAME
    send_queue_limit: int = 4096  # messages waiting for one peer
    send_queue_bytes: int = 64 * MiB  # and their bytes (one frame always fits an empty queue)
    dial_backoff_initial: float = 0.5
    dial_backoff_max: float = 30.0
    max_learnt_failures: int = 5  # a learnt address is forgotten after this many failed dials
    seed: int | None = None  # backoff jitter and ping nonces; None: from the OS

    # ---- connection slots (node.p2p.slots)
    # Unauthenticated inbound connections.  An honest handshake takes a few milliseconds,
    # so when the pool is full the oldest one is evicted rather than the newcomer refused:
    # to keep an honest peer out an attacker would have to open `max_handshaking`
    # connections within those milliseconds.
    max_handshaking: int = 64
    max_handshaking_per_ip: int = 8  # an IP's oldest goes first; a testnet dials from one IP
    # Authenticated inbound peers; None: as many as max_peers (the outbound slots), which
    # inbound peers never take.
    max_inbound: int | None = None
    protect_longest_connected: int = 4  # inbound peers eviction never picks, beside static peers

    # ---- frame memory (node.p2p.frames)
    # Bytes that unfinished frames above SMALL_FRAME may hold, across all connections.
    # An honest node's large frames are block ranges (at most 8 MiB an answer) and
    # proposals or blocks (a few MiB); two frames of the maximum size fit.
    frame_memory: int = 64 * MiB
    # A frame may wait this long for memory; then its body must arrive within this long
    # plus its size at frame_min_rate (1 MiB/s is 8 Mbit/s, well below CometBFT's default
    # 5 MB/s send rate; a 32 MiB frame gets 37 s).  A slower body is a drip, not a link.
    frame_timeout: float = 5.0
    frame_min_rate: float = 1.0 * MiB

    # ---- per-peer budgets (node.p2p.budgets): tokens per second and the bucket's size
    # Every message, whatever its kind.  Honest traffic is a few hundred a second: gossip
    # flushes every 10 ms, blocks, statuses and votes come per block.
    rate_per_second: float = 2000.0
    rate_burst: float = 4000.0
    # Transaction ids announced to us.  A peer announces what its mempool admits, each id
    # once per link, plus at most 4,096 pending ids every 10 s: bounded by its commit rate
    # (about 12,000 transfers/s) in the long run and by its mempool (40,000 by default; room
    # here for one configured five times larger) in a burst.  The measured flood sent
    # 555,000 ids/s, ten times the rate: it empties the bucket in under half a second.
    tx_announce_ids_per_second: float = 50_000.0
    tx_announce_ids_burst: float = 200_000.0
    # Transaction ids requested from us: a peer requests only ids we announced to it and it
    # has not seen, each from one announcer, so never more than we announce.
    tx_request_ids_per_second: float = 50_000.0
    tx_request_ids_burst: float = 200_000.0
    # Block range requests.  Sync keeps one request of up to 500 blocks outstanding, so
    # 2,000 blocks/s of catch-up is 4 a second; a follower asking block by block behind a
    # chain of 10 blocks/s is 10.  The measured flood sent 800 a second.
    get_blocks_per_second: float = 20.0
    get_blocks_burst: float = 100.0
    # Consensus (ENGINE) messages.  A BFT validator sends a proposal, two votes and a
    # status per round, and its catch-up help (the votes of two rounds, a decision) at most
    # once per gossip interval: a few dozen a second at 100 validators and fast rounds.
    consensus_per_second: float = 1_000.0
    consensus_burst: float = 2_000.0
    # Everything else (status, blocks pushed and answered, transaction batches answering
    # our requests, pings, peer exchange): a few per block and per gossip flush.
    other_per_second: float = 1_000.0
    other_burst: float = 2_000.0

    def check(self) -> None:
        """ValueError naming the first setting that cannot work."""
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("seed", "max_inbound") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"p2p setting {field.name}: a number, not {value!r}")
            if field.name == "ban_threshold":
                if value >= 0:
                    raise ValueError("p2p setting ban_threshold: below 0")
            elif field.name in ("protect_longest_connected", "score_recovery_per_second"):
                if value < 0:
                    raise ValueError(f"p2p setting {field.name}: 0 or more")
            elif value <= 0:
                raise ValueError(f"p2p setting {field.name}: above 0")
        if self.frame_memory < self.max_frame:
            raise ValueError(f"p2p setting frame_memory: at least max_frame ({self.max_frame}), "
                             "or a frame of the maximum size could never be read")
        for name in ("tx_announce_ids_burst", "tx_request_ids_burst"):
            if getattr(self, name) < MAX_TX_IDS:
                raise ValueError(f"p2p setting {name}: at least {MAX_TX_IDS}, one full message")
        for name in ("rate_burst", "get_blocks_burst", "consensus_burst", "other_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"p2p setting {name}: at least 1, one message")

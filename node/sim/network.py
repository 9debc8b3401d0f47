"""An in-memory `Network` with seeded faults, for the simulator.

`SimHub` is the wire between the simulated nodes; each node incarnation gets its own
`SimNetwork(hub, node_id)`, which implements `node.p2p.network.Network`.  Every message
is encoded to bytes when sent and decoded on delivery, so the codec runs as it does over
TCP.  Delivery happens after a random delay; the hub can drop, duplicate and reorder
messages, split the nodes into partitions that cannot reach each other, and heal them.
A crashed node's links go down, and its peers hear `on_peer_disconnected`.

Every random choice comes from the hub's one `random.Random`, and everything that
iterates over nodes goes in sorted order (never over a set), so a seed replays the
same run whatever PYTHONHASHSEED is.

A link is one connection between two nodes.  It carries a generation number that
changes whenever it goes down or comes up: messages still in flight on an older
generation are lost, as bytes in a closed TCP connection are.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from node.p2p.messages import Status, TxAnnounce, TxBatch, TxRequest, decode_message
from node.p2p.network import PeerHandler, PeerInfo

BAN_SCORE = -100  # a peer scored this low is disconnected and banned
BAN_SECONDS = 60.0  # as TcpNetwork's default
P2P_PORT = 9000


@dataclass
class Faults:
    """What the wire does to messages now; the harness changes it as the run goes."""

    drop: float = 0.0  # probability that a message is lost
    duplicate: float = 0.0  # probability that a message arrives twice
    delay_ms: tuple[float, float] = (1.0, 10.0)  # uniform delivery delay
    reorder: bool = False  # False: each link delivers in order (like TCP); True: delays overtake

    def describe(self) -> str:
        return (f"drop={self.drop:.2f} dup={self.duplicate:.2f} delay={self.delay_ms[0]:.0f}-{self.delay_ms[1]:.0f}ms "
                f"reorder={'on' if self.reorder else 'off'}")


@dataclass
class HubStats:
    sent: Counter = field(default_factory=Counter)  # messages by type name
    bytes_sent: int = 0
    delivered: int = 0
    dropped: int = 0  # lost to the drop fault
    duplicated: int = 0
    lost_in_flight: int = 0  # their link went down before they arrived
    unroutable: int = 0  # sent to a peer with no open link (or from a dead incarnation)
    announced_ids: int = 0  # transaction ids carried by TxAnnounce messages
    requested_ids: int = 0
    batched_txs: int = 0
    penalties: list[tuple[str, str, int, str]] = field(default_factory=list)  # (by, peer, points, reason)
    bans: int = 0
    connects: int = 0
    disconnects: int = 0

    def messages(self) -> int:
        return sum(self.sent.values())


@dataclass
class _Link:
    generation: int = 0
    up: bool = False  # the hub's view: the connection exists
    open: bool = False  # both ends were told (on_peer_connected)
    last_arrival: dict[str, float] = field(default_factory=dict)  # per destination, for in-order delivery


class SimHub:
    def __init__(self, seed: int, rng: random.Random | None = None, trace: Callable[[str], None] | None = None):
        self.seed = seed
        self.rng = rng if rng is not None else random.Random(seed)
        self.faults = Faults()
        self.stats = HubStats()
        self._trace = trace
        self.errors: list[str] = []
        self._labels: dict[str, str] = {}
        self._attached: dict[str, SimNetwork] = {}  # node id -> the running incarnation's network
        self._status: dict[str, tuple[int, bytes, int]] = {}
        self._group: dict[str, int] = {}  # partition group per node; missing = 0
        self._links: dict[tuple[str, str], _Link] = {}
        self._scores: dict[tuple[str, str], int] = {}  # (judge, peer) -> score
        self._banned_until: dict[tuple[str, str], float] = {}
        # The hub's own timers (handshakes, ban expiry) belong to no node: a node's crash
        # must not cancel them, whoever's call set them.
        self._context = contextvars.Context()

    # ------------------------------------------------------------------ naming and tracing
    def name(self, node_id: str, label: str) -> None:
        self._labels[node_id] = label

    def label(self, node_id: str) -> str:
        return self._labels.get(node_id, node_id[:8])

    def trace(self, text: str) -> None:
        if self._trace is not None:
            self._trace(text)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    # ------------------------------------------------------------------ faults (called by the harness)
    def partition(self, groups: list[list[str]]) -> None:
        """Split the nodes: nodes in different groups cannot reach each other; unlisted nodes join group 0."""
        self._group = {node_id: index for index, members in enumerate(groups) for node_id in members}
        self.trace("partition " + " | ".join(",".join(self.label(n) for n in sorted(g)) for g in groups))
        self._refresh()

    def heal(self) -> None:
        self._group = {}
        self.trace("heal")
        self._refresh()

    def crash(self, node_id: str) -> None:
        """The node's process dies: its links drop; only its peers hear of it."""
        network = self._attached.pop(node_id, None)
        if network is not None:
            network._alive = False
            network._stopped = True
            self.trace(f"crash {self.label(node_id)}")
            self._refresh()

    @property
    def partitioned(self) -> bool:
        return bool(self._group)

    def reachable(self, a: str, b: str) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def is_up(self, node_id: str) -> bool:
        return node_id in self._attached

    def link_open(self, a: str, b: str) -> bool:
        link = self._links.get(_pair(a, b))
        return link is not None and link.open

    # ------------------------------------------------------------------ links
    def _attach(self, network: SimNetwork) -> None:
        if network.node_id in self._attached:
            raise RuntimeError(f"node {self.label(network.node_id)} is already running on this hub")
        self._attached[network.node_id] = network
        self._status.setdefault(network.node_id, (0, b"", 0))
        self._refresh()

    def _detach(self, network: SimNetwork) -> None:
        if self._attached.get(network.node_id) is network:
            del self._attached[network.node_id]
            self._refresh()

    def _should_connect(self, a: str, b: str) -> bool:
        if a not in self._attached or b not in self._attached or not self.reachable(a, b):
            return False
        now = self.loop.time()
        return self._banned_until.get((a, b), 0.0) <= now and self._banned_until.get((b, a), 0.0) <= now

    def _refresh(self) -> None:
        """Bring every link in line with who is up, the partitions and the bans."""
        nodes = sorted(set(self._attached) | {n for pair in self._links for n in pair})
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                link = self._links.setdefault((a, b), _Link())
                wanted = self._should_connect(a, b)
                if wanted and not link.up:
                    link.up = True
                    link.generation += 1
                    link.last_arrival.clear()
                    # The handshake takes a round trip; both ends learn of the link together.
                    delay = 2 * self.rng.uniform(*self.faults.delay_ms) / 1000
                    self.loop.call_later(delay, self._open, a, b, link.generation, context=self._context)
                elif not wanted and link.up:
                    was_open = link.open
                    link.up = link.open = False
                    link.generation += 1
                    if was_open:
                        self.stats.disconnects += 1
                        self.trace(f"disconnect {self.label(a)}-{self.label(b)}")
                        for here, there in ((a, b), (b, a)):
                            network = self._attached.get(here)
                            if network is not None:
                                network._lose_peer(there)

    def _open(self, a: str, b: str, generation: int) -> None:
        link = self._links[(a, b)]
        if link.generation != generation or not link.up:
            return
        link.open = True
        self.stats.connects += 1
        self.trace(f"connect {self.label(a)}-{self.label(b)}")
        self._attached[a]._gain_peer(b, inbound=False)
        self._attached[b]._gain_peer(a, inbound=True)

    def _peer_info(self, peer_id: str, inbound: bool) -> PeerInfo:
        height, head_hash, finalized = self._status.get(peer_id, (0, b"", 0))
        return PeerInfo(peer_id, f"{self.label(peer_id)}:{P2P_PORT}", inbound, height, head_hash, finalized)

    # ------------------------------------------------------------------ messages
    def _transmit(self, source: SimNetwork, destination: str, message: object) -> None:
        if self._attached.get(source.node_id) is not source:
            self.stats.unroutable += 1  # a dead incarnation still talking
            return
        link = self._links.get(_pair(source.node_id, destination))
        if link is None or not link.open:
            self.stats.unroutable += 1
            return
        raw = message.encode()  # type: ignore[attr-defined]
        kind = type(message).__name__
        self.stats.sent[kind] += 1
        self.stats.bytes_sent += len(raw)
        if isinstance(message, TxAnnounce):
            self.stats.announced_ids += len(message.ids)
        elif isinstance(message, TxRequest):
            self.stats.requested_ids += len(message.ids)
        elif isinstance(message, TxBatch):
            self.stats.batched_txs += len(message.transactions)
        route = f"{self.label(source.node_id)}>{self.label(destination)} {kind} {len(raw)}B"
        faults = self.faults
        if faults.drop and self.rng.random() < faults.drop:
            self.stats.dropped += 1
            self.trace(f"drop {route}")
            return
        copies = 2 if faults.duplicate and self.rng.random() < faults.duplicate else 1
        if copies == 2:
            self.stats.duplicated += 1
        receiver = self._attached[destination]
        now = self.loop.time()
        for _ in range(copies):
            arrival = now + self.rng.uniform(*faults.delay_ms) / 1000
            if not faults.reorder:
                # A microsecond after the previous one: timers due at the same instant need
                # not run in the order they were set (asyncio keeps them in a heap).
                arrival = max(arrival, link.last_arrival.get(destination, -1.0) + 1e-6)
                link.last_arrival[destination] = arrival
            self.trace(f"send {route} @{arrival:.6f}")
            self.loop.call_at(arrival, self._deliver, source.node_id, receiver, link.generation, raw,
                              context=receiver.context)

    def _deliver(self, source: str, receiver: SimNetwork, generation: int, raw: bytes) -> None:
        link = self._links[_pair(source, receiver.node_id)]
        if link.generation != generation or not link.open or not receiver._alive:
            self.stats.lost_in_flight += 1
            return
        try:
            message = decode_message(raw)
        except Exception as exc:  # an honest node's message must decode: a codec bug
            self.errors.append(f"{self.label(source)}>{self.label(receiver.node_id)}: message does not decode: {exc}")
            return
        self.stats.delivered += 1
        receiver._receive(source, message)

    def _status_changed(self, source: SimNetwork, status: tuple[int, bytes, int]) -> None:
        if source._stopped:
            return
        # Before start too: the handshake of the links it is about to open carries it.
        self._status[source.node_id] = status
        for peer_id in source._peer_ids():
            self._transmit(source, peer_id, Status(*status))

    # ------------------------------------------------------------------ scores
    def _penalize(self, judge: str, peer_id: str, points: int, reason: str) -> None:
        self.stats.penalties.append((self.label(judge), self.label(peer_id), points, reason))
        self.trace(f"penalize {self.label(judge)}:{self.label(peer_id)} -{points} {reason}")
        key = (judge, peer_id)
        score = self._scores.get(key, 0) - points
        self._scores[key] = score
        if score <= BAN_SCORE:
            self.stats.bans += 1
            self._scores[key] = 0
            until = self.loop.time() + BAN_SECONDS
            self._banned_until[key] = until
            self.trace(f"ban {self.label(judge)}:{self.label(peer_id)} for {BAN_SECONDS:.0f}s")
            self.loop.call_at(until, self._refresh, context=self._context)
            self._refresh()

    def score(self, judge: str, peer_id: str) -> int:
        return self._scores.get((judge, peer_id), 0)


class SimNetwork:
    """One node incarnation's view of the hub: the `Network` the runtime is given."""

    def __init__(self, hub: SimHub, node_id: str):
        self.hub = hub
        self.node_id = node_id
        self.handler: PeerHandler | None = None
        self.context: contextvars.Context | None = None
        self._peers: dict[str, PeerInfo] = {}
        self._alive = False
        self._stopped = False  # stopped or crashed: an incarnation never comes back

    async def start(self, handler: PeerHandler) -> None:
        if self._alive or self._stopped:
            raise RuntimeError("a SimNetwork starts once; a restarted node gets a new one")
        self.handler = handler
        # Callbacks into the node run in the context it started in, so whatever they
        # spawn belongs to the node's actor and dies with it in a crash.
        self.context = contextvars.copy_context()
        self._alive = True
        self.hub._attach(self)

    async def stop(self) -> None:
        self._stopped = True
        if self._alive:
            self._alive = False
            self.hub.trace(f"stop {self.hub.label(self.node_id)}")
            self.hub._detach(self)
        self._peers.clear()

    def send(self, peer_id: str, message: object) -> None:
        self.hub._transmit(self, peer_id, message)

    def broadcast(self, message: object, exclude: frozenset[str] = frozenset()) -> None:
        for peer_id in self._peer_ids():
            if peer_id not in exclude:
                self.hub._transmit(self, peer_id, message)

    def peers(self) -> list[PeerInfo]:
        return [replace(self._peers[peer_id]) for peer_id in self._peer_ids()]  # copies, as TcpNetwork gives

    def penalize(self, peer_id: str, points: int, reason: str) -> None:
        if self._alive and peer_id in self._peers:
            self.hub._penalize(self.node_id, peer_id, points, reason)
            info = self._peers.get(peer_id)  # gone if that was a ban
            if info is not None:
                info.score = self.hub.score(self.node_id, peer_id)

    def update_status(self, head_height: int, head_hash: bytes, finalized_height: int) -> None:
        self.hub._status_changed(self, (head_height, head_hash, finalized_height))

    # ------------------------------------------------------------------ from the hub
    def _peer_ids(self) -> list[str]:
        return sorted(self._peers)

    def _gain_peer(self, peer_id: str, inbound: bool) -> None:
        info = self.hub._peer_info(peer_id, inbound)
        info.score = self.hub.score(self.node_id, peer_id)
        self._peers[peer_id] = info
        self._call(self._notify_connected, info)

    def _lose_peer(self, peer_id: str) -> None:
        if self._peers.pop(peer_id, None) is not None:
            self._call(self._notify_disconnected, peer_id)

    def _call(self, callback: Callable, *args) -> None:
        # Never call into the node from inside the hub's own call stack (it may be the
        # node's own penalize): queue it on the loop, in the node's context.
        self.hub.loop.call_soon(callback, *args, context=self.context)

    def _notify_connected(self, info: PeerInfo) -> None:
        if self._alive and self.handler is not None and self._peers.get(info.id) is info:
            self.handler.on_peer_connected(info)

    def _notify_disconnected(self, peer_id: str) -> None:
        if self._alive and self.handler is not None and peer_id not in self._peers:
            self.handler.on_peer_disconnected(peer_id)

    def _receive(self, source: str, message: object) -> None:
        info = self._peers.get(source)
        if info is None or self.handler is None:
            self.hub.stats.lost_in_flight += 1
            return
        if isinstance(message, Status):
            info.head_height = message.head_height
            info.head_hash = message.head_hash
            info.finalized_height = message.finalized_height
        self.handler.on_peer_message(source, message)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)

"""TcpNetwork over real sockets on 127.0.0.1: connecting, messaging, peer exchange,
duplicates, reconnects, handshake refusals, and hostile peers written here with raw
asyncio streams, each of which must be disconnected (and scored down or banned when it
has proven an identity) while the honest peers stay connected.

Timings are shortened through P2PSettings so the file runs in seconds.  Every test
stops everything it started: a check after each test fails on a leftover task, an
open socket or an unclosed-resource warning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import secrets
import struct
import time
import warnings
from collections.abc import Awaitable, Callable

import pytest

from ledger import crypto
from ledger.address import address_of
from ledger.crypto import PrivateKey
from node.p2p import messages as m
from node.p2p.frames import encode_frame, read_frame
from node.p2p.network import PeerInfo
from node.p2p.tcp import P2PSettings, TcpNetwork

CHAIN = "p2p-test"
GENESIS = crypto.sha256(b"p2p test genesis")
HEAD = (3, crypto.sha256(b"block 3"), 1)

FAST = P2PSettings(
    handshake_timeout=0.5,
    connect_timeout=1.0,
    ping_interval=0.15,
    idle_timeout=1.0,
    peer_exchange_interval=0.15,
    ban_seconds=30.0,
    dial_backoff_initial=0.05,
    dial_backoff_max=0.2,
    seed=7,
)


# ----------------------------------------------------------------------------- harness
class Recorder:
    """A PeerHandler that remembers every call."""

    def __init__(self) -> None:
        self.connected: list[PeerInfo] = []
        self.disconnected: list[str] = []
        self.messages: list[tuple[str, object]] = []

    def on_peer_connected(self, peer: PeerInfo) -> None:
        self.connected.append(peer)

    def on_peer_message(self, peer_id: str, message: object) -> None:
        self.messages.append((peer_id, message))

    def on_peer_disconnected(self, peer_id: str) -> None:
        self.disconnected.append(peer_id)

    def received(self, kind: type, sender: str | None = None) -> list:
        return [msg for peer, msg in self.messages if isinstance(msg, kind) and (sender is None or peer == sender)]


@dataclasses.dataclass
class Node:
    net: TcpNetwork
    handler: Recorder

    @property
    def id(self) -> str:
        return self.net.node_id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.net.listen_port}"

    def peer_ids(self) -> set[str]:
        return {peer.id for peer in self.net.peers()}

    def reasons(self, peer_id: str | None = None, address: str | None = None) -> list[str]:
        return [
            record.reason
            for record in self.net.disconnects()
            if (peer_id is None or record.peer_id == peer_id) and (address is None or record.address == address)
        ]


class Hostile:
    """A peer written by hand: raw frames on a raw asyncio stream."""

    def __init__(self, key: PrivateKey | None = None) -> None:
        self.key = key or PrivateKey.generate()
        self.id = address_of(self.key.public_key).hex()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.address = ""

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        host, local_port = self.writer.get_extra_info("sockname")[:2]
        self.address = f"{host}:{local_port}"

    def hello(self, chain: str = CHAIN, genesis: bytes = GENESIS, version: int = 1) -> m.Hello:
        return m.Hello(chain, genesis, version, self.key.public_key, 0, 0, bytes(32), 0, secrets.token_bytes(32))

    async def handshake(self, *, bad_signature: bool = False, **hello_fields) -> m.Hello:
        ours = self.hello(**hello_fields)
        await self.send(ours)
        theirs = m.decode_message(await read_frame(self.reader))
        assert isinstance(theirs, m.Hello)
        signed = b"not what the peer expects" if bad_signature else theirs.nonce + ours.encode()
        await self.send(m.Auth(self.key.sign(crypto.DOMAIN_HANDSHAKE, signed)))
        return theirs

    async def send(self, message) -> None:
        await self.send_raw(encode_frame(message.encode()))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def disconnect_reason(self, timeout: float = 3.0) -> str | None:
        """Read until a DISCONNECT (its reason) or the end of the stream (None)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = m.decode_message(await read_frame(self.reader))
                    if isinstance(message, m.Disconnect):
                        return message.reason
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def closed_by_peer(self, timeout: float = 3.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
            return True
        except ConnectionError:
            return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None


class Cluster:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.hostiles: list[Hostile] = []

    async def node(
        self,
        peers: tuple[str, ...] = (),
        key: PrivateKey | None = None,
        chain: str = CHAIN,
        genesis: bytes = GENESIS,
        version: int = 1,
        port: int = 0,
        max_peers: int = 16,
        **overrides,
    ) -> Node:
        net = TcpNetwork(
            key or PrivateKey.generate(), chain, genesis, "127.0.0.1", port, list(peers),
            max_peers=max_peers, protocol_version=version, head=HEAD,
            settings=dataclasses.replace(FAST, **overrides),
        )
        node = Node(net, Recorder())
        await net.start(node.handler)
        self.nodes.append(node)
        return node

    def hostile(self, key: PrivateKey | None = None) -> Hostile:
        hostile = Hostile(key)
        self.hostiles.append(hostile)
        return hostile

    async def close(self) -> None:
        for hostile in self.hostiles:
            await hostile.close()
        for node in self.nodes:
            await node.net.stop()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


async def connected(a: Node, b: Node) -> None:
    await eventually(lambda: b.id in a.peer_ids() and a.id in b.peer_ids(), f"{a.id[:8]} <-> {b.id[:8]}")


def run(scenario: Callable[[Cluster], Awaitable[None]], timeout: float = 30.0) -> None:
    async def main() -> None:
        cluster = Cluster()
        try:
            async with asyncio.timeout(timeout):
                await scenario(cluster)
        finally:
            await cluster.close()
        await asyncio.sleep(0)  # let closed transports run their connection_lost callbacks
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not leftovers, f"tasks left running: {leftovers}"

    asyncio.run(main())


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.fixture(autouse=True)
def nothing_left_open():
    before = open_sockets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        leaked_sockets = open_sockets() - before
        gc.collect()
    assert leaked_sockets <= 0, f"{leaked_sockets} sockets left open"
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed


async def honest_pair(cluster: Cluster, **overrides) -> tuple[Node, Node]:
    b = await cluster.node(**overrides)
    a = await cluster.node(peers=(b.address,), **overrides)
    await connected(a, b)
    return a, b


async def still_talking(a: Node, b: Node) -> None:
    """The honest link survived: same single connection, messages still flow both ways."""
    assert b.id in a.peer_ids() and a.id in b.peer_ids()
    marker = m.TxAnnounce((secrets.token_bytes(32),))
    a.net.send(b.id, marker)
    b.net.send(a.id, marker)
    await eventually(lambda: marker in b.handler.received(m.TxAnnounce, a.id), "a's message at b")
    await eventually(lambda: marker in a.handler.received(m.TxAnnounce, b.id), "b's message at a")
    assert [pid for pid in a.handler.disconnected if pid == b.id] == []
    assert [pid for pid in b.handler.disconnected if pid == a.id] == []


# ----------------------------------------------------------------------------- honest networks
def test_two_nodes_connect_and_exchange_messages():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        [b_seen_by_a] = a.net.peers()
        [a_seen_by_b] = b.net.peers()
        assert (b_seen_by_a.inbound, a_seen_by_b.inbound) == (False, True)
        assert (b_seen_by_a.head_height, b_seen_by_a.head_hash, b_seen_by_a.finalized_height) == HEAD
        assert b_seen_by_a.address == b.address
        assert a_seen_by_b.address == a.address  # its IP and the listen port of its HELLO
        assert [p.id for p in a.handler.connected] == [b.id] and [p.id for p in b.handler.connected] == [a.id]

        ids = tuple(secrets.token_bytes(32) for _ in range(3))
        a.net.send(b.id, m.TxAnnounce(ids))
        b.net.broadcast(m.NewBlock(b"block bytes"))
        a.net.send(b.id, m.EngineMessage(b"vote"))
        await eventually(lambda: b.handler.received(m.TxAnnounce, a.id) == [m.TxAnnounce(ids)], "announce at b")
        await eventually(lambda: a.handler.received(m.NewBlock, b.id) == [m.NewBlock(b"block bytes")], "block at a")
        await eventually(lambda: b.handler.received(m.EngineMessage, a.id) == [m.EngineMessage(b"vote")], "engine at b")

        new_hash = crypto.sha256(b"block 9")
        a.net.update_status(9, new_hash, 4)
        await eventually(lambda: b.handler.received(m.Status, a.id) == [m.Status(9, new_hash, 4)], "status at b")
        [a_now] = b.net.peers()
        assert (a_now.head_height, a_now.head_hash, a_now.finalized_height) == (9, new_hash, 4)

        # Keepalive: well past the idle timeout, pings keep the link up and never reach the handler.
        await asyncio.sleep(FAST.idle_timeout * 1.5)
        await connected(a, b)
        assert b.net.received["Ping"] >= 2 and a.net.received["Pong"] >= 2
        internal = (m.Ping, m.Pong, m.GetPeers, m.Peers, m.Hello, m.Auth, m.Disconnect)
        assert not [msg for _, msg in a.handler.messages + b.handler.messages if isinstance(msg, internal)]
        assert a.net.disconnects() == [] and b.net.disconnects() == []

        a.net.send("0" * 40, m.Ping(1))  # an unknown peer is ignored, not an error

    run(scenario)


def test_peer_exchange_lets_a_reach_c_through_b():
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        a = await cluster.node(peers=(b.address,))
        c = await cluster.node(peers=(b.address,))
        await connected(a, b)
        await connected(c, b)
        await connected(a, c)
        for node in (a, b, c):
            assert len(node.net.peers()) == 2
        a.net.broadcast(m.TxAnnounce((b"\x01" * 32,)))
        await eventually(lambda: c.handler.received(m.TxAnnounce, a.id), "a's broadcast directly at c")

    run(scenario)


def test_max_peers_limits_learnt_dials_and_inbound_connections():
    async def scenario(cluster: Cluster):
        b = await cluster.node(max_peers=2)
        a = await cluster.node(peers=(b.address,), max_peers=1)
        c = await cluster.node(peers=(b.address,))
        await connected(a, b)
        await connected(c, b)
        d = await cluster.node(peers=(b.address,))
        await eventually(lambda: any("too many peers" in r for r in d.reasons(b.id)), "b refuses a third peer")
        await asyncio.sleep(FAST.peer_exchange_interval * 3)
        assert a.peer_ids() == {b.id}  # a learnt c's address but has no room for it
        assert len(b.net.peers()) == 2

    run(scenario)


def test_a_duplicate_connection_is_dropped():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        twin = await cluster.node(peers=(b.address,), key=a.net.key)  # same node id as a
        await eventually(lambda: "duplicate connection" in b.reasons(a.id), "b drops the second connection")
        await eventually(lambda: "peer disconnected: duplicate connection" in twin.reasons(b.id), "the twin is told")
        assert twin.net.peers() == []
        assert b.peer_ids() == {a.id}
        await still_talking(a, b)

    run(scenario)


def test_two_nodes_dialling_each_other_keep_one_connection():
    async def scenario(cluster: Cluster):
        a = await cluster.node()
        b = await cluster.node(peers=(a.address,))
        a.net.add_peer(b.address)
        await connected(a, b)
        await asyncio.sleep(0.3)
        assert a.peer_ids() == {b.id} and b.peer_ids() == {a.id}
        [b_seen_by_a] = a.net.peers()
        [a_seen_by_b] = b.net.peers()
        assert b_seen_by_a.inbound != a_seen_by_b.inbound  # both ends of the same connection
        # Both kept the connection the smaller id dialled; if the other one was admitted first it
        # was replaced, which the handler sees as one disconnect and reconnect, never more.
        smaller = min(a, b, key=lambda node: node.id)
        assert not (a.net.peers()[0].inbound if smaller is a else b.net.peers()[0].inbound)
        for node, other in ((a, b), (b, a)):
            assert len(node.handler.connected) == len(node.handler.disconnected) + 1 <= 2
            assert all(r.startswith("duplicate connection") for r in node.reasons())
        before = (len(a.handler.connected), len(b.handler.connected))
        await asyncio.sleep(0.3)
        assert (len(a.handler.connected), len(b.handler.connected)) == before  # and then it stays
        marker = m.TxAnnounce((b"\x05" * 32,))
        a.net.send(b.id, marker)
        await eventually(lambda: b.handler.received(m.TxAnnounce, a.id) == [marker], "message over the survivor")

    run(scenario)


def test_reconnect_after_a_peer_restarts():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        port, key = b.net.listen_port, b.net.key
        await b.net.stop()
        await eventually(lambda: a.net.peers() == [], "a notices b is gone")
        assert a.handler.disconnected == [b.id]
        assert any("shutting down" in reason for reason in a.reasons(b.id))
        await asyncio.sleep(0.3)  # a keeps dialling a closed port meanwhile
        restarted = await cluster.node(key=key, port=port)
        await connected(a, restarted)
        assert [p.id for p in a.handler.connected] == [b.id, b.id]

    run(scenario)


def test_stop_returns_promptly_and_closes_everything():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        a.net.add_peer("127.0.0.1:9")  # a dial that keeps failing
        started = time.monotonic()
        await a.net.stop()
        assert time.monotonic() - started < 1.0
        await eventually(lambda: b.net.peers() == [], "b sees a leave")
        assert "peer disconnected: node shutting down" in b.reasons(a.id)

    run(scenario)


def test_the_constructor_refuses_bad_arguments():
    key = PrivateKey.generate()
    with pytest.raises(ValueError, match="host:port"):
        TcpNetwork(key, CHAIN, GENESIS, "127.0.0.1", 0, ["no-port"])
    with pytest.raises(ValueError, match="32 bytes"):
        TcpNetwork(key, CHAIN, b"short", "127.0.0.1", 0, [])
    with pytest.raises(ValueError):
        TcpNetwork(key, CHAIN, GENESIS, "127.0.0.1", 0, [], head=(0, b"short", 0))


# ----------------------------------------------------------------------------- handshake refusals
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("chain", "another-chain", "another chain"),
        ("genesis", crypto.sha256(b"another genesis"), "another genesis"),
        ("version", 2, "another protocol version"),
    ],
)
def test_an_incompatible_peer_is_refused_with_the_reason(field, value, reason):
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        a = await cluster.node(peers=(b.address,), **{field: value})
        await eventually(lambda: any(r.startswith(reason) for r in b.reasons()), "b refuses a")
        await eventually(lambda: any(reason in r for r in a.reasons()), "a refuses or is refused by b")
        await asyncio.sleep(0.2)
        assert a.net.peers() == [] and b.net.peers() == []
        assert a.handler.connected == [] and b.handler.connected == []
        # a does not hammer an incompatible address: it is set aside for the ban time.
        assert len([r for r in a.reasons() if reason in r]) == 1

    run(scenario)


def test_a_bad_handshake_signature_is_refused():
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake(bad_signature=True)
        assert await hostile.disconnect_reason() == "bad handshake signature"
        assert b.reasons(address=hostile.address) == ["bad handshake signature"]
        assert b.net.peers() == []

    run(scenario)


def test_an_auth_replayed_from_another_connection_is_refused():
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        first, second = cluster.hostile(), cluster.hostile()
        await first.connect(b.net.listen_port)
        hello = first.hello()
        await first.send(hello)
        theirs = m.decode_message(await read_frame(first.reader))
        auth = m.Auth(first.key.sign(crypto.DOMAIN_HANDSHAKE, theirs.nonce + hello.encode()))
        # The same HELLO and AUTH on a second connection: b's nonce there is another one.
        second.key = first.key
        await second.connect(b.net.listen_port)
        await second.send(hello)
        await read_frame(second.reader)
        await second.send(auth)
        assert await second.disconnect_reason() == "bad handshake signature"
        await first.send(auth)
        await eventually(lambda: first.id in b.peer_ids(), "the genuine handshake passes")

    run(scenario)


def test_a_connection_to_itself_is_refused():
    async def scenario(cluster: Cluster):
        a = await cluster.node()
        a.net.add_peer(a.address)  # its own address: never dialled
        twin = await cluster.node(peers=(a.address,), key=a.net.key)  # same node id, another process
        await eventually(lambda: "connected to itself" in a.reasons(), "a refuses its own id")
        await eventually(lambda: "connected to itself" in twin.reasons(), "so does the dialler")
        await asyncio.sleep(0.3)
        assert a.net.peers() == [] and twin.net.peers() == []
        assert len(twin.reasons()) == 1  # an address that leads to itself is not dialled again
        assert a.handler.connected == []

    run(scenario)


def test_a_message_before_the_handshake_is_refused():
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.send(m.TxAnnounce((b"\x00" * 32,)))
        assert await hostile.disconnect_reason() == "handshake expected Hello, got TxAnnounce"
        assert b.handler.messages == []

    run(scenario)


# ----------------------------------------------------------------------------- hostile peers
def test_no_handshake_at_all_is_cut_off():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        # It reads b's HELLO and then says nothing.
        assert isinstance(m.decode_message(await read_frame(hostile.reader)), m.Hello)
        reason = await hostile.disconnect_reason()
        assert reason == "handshake not completed within 0.5 s"
        assert b.reasons(address=hostile.address) == [reason]
        await still_talking(a, b)

    run(scenario)


def test_a_handshake_frame_that_never_completes_is_cut_off():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.send_raw(struct.pack(">I", 200) + b"\x01" * 10)
        assert await hostile.disconnect_reason() == "handshake not completed within 0.5 s"
        await still_talking(a, b)

    run(scenario)


def test_garbage_instead_of_a_handshake_is_cut_off():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        oversized, garbage = cluster.hostile(), cluster.hostile()
        await oversized.connect(b.net.listen_port)
        await oversized.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " is a 1.2 GB length
        assert (await oversized.disconnect_reason()).startswith("oversized handshake frame")
        await garbage.connect(b.net.listen_port)
        await garbage.send_raw(encode_frame(b"\x01" + os.urandom(40)))
        assert (await garbage.disconnect_reason()).startswith("malformed handshake: hello.")
        assert b.net.peers() and b.peer_ids() == {a.id}
        await still_talking(a, b)

    run(scenario)


def test_garbage_frames_after_the_handshake_get_a_peer_banned():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        await hostile.send_raw(encode_frame(bytes((200,)) + b"junk"))  # unknown type
        await eventually(lambda: b.net.score_of(hostile.id) == -20, "one frame costs 20")
        assert hostile.id in b.peer_ids()  # one bad frame is not yet a disconnect
        for _ in range(4):
            await hostile.send_raw(encode_frame(b"\x08" + struct.pack(">I", 3) + b"\x00" * 5))  # truncated
        await eventually(lambda: b.net.is_banned(hostile.id), "banned at -100")
        assert hostile.id not in b.peer_ids()
        [reason] = b.reasons(hostile.id)
        assert reason.startswith("banned for 30 s: undecodable message: tx_announce.ids")
        assert b.handler.disconnected == [hostile.id]
        assert not b.handler.received(m.TxAnnounce, hostile.id)

        again = cluster.hostile(hostile.key)  # the same identity comes back
        await again.connect(b.net.listen_port)
        await again.handshake()
        assert (await again.disconnect_reason()).startswith("banned for")
        await still_talking(a, b)

    run(scenario)


def test_an_oversized_frame_disconnects_at_once_and_costs_points():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        for attempt in range(2):
            await hostile.connect(b.net.listen_port)
            await hostile.handshake()
            await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
            await hostile.send_raw(struct.pack(">I", 2**31))
            await eventually(lambda: hostile.id not in b.peer_ids(), "disconnected at once")
            await hostile.close()
            if attempt == 0:
                assert b.net.score_of(hostile.id) == -50
                assert b.reasons(hostile.id) == [f"oversized frame: frame of {2**31} bytes exceeds the limit of {FAST.max_frame}"]
        assert b.net.is_banned(hostile.id)  # the second time reaches -100
        await still_talking(a, b)

    run(scenario)


def test_a_frame_that_never_completes_is_dropped_as_silent():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        await hostile.send_raw(struct.pack(">I", 1000) + b"\x07" * 20)
        await eventually(lambda: hostile.id not in b.peer_ids(), "dropped", timeout=3)
        [reason] = b.reasons(hostile.id)
        assert reason.startswith("silent for")
        await still_talking(a, b)

    run(scenario)


def test_a_message_flood_is_rate_limited_and_banned():
    async def scenario(cluster: Cluster):
        b = await cluster.node(rate_per_second=500.0, rate_burst=200.0)
        a = await cluster.node(peers=(b.address,), rate_per_second=500.0, rate_burst=200.0)
        await connected(a, b)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        flood = encode_frame(m.Status(1, b"\x01" * 32, 0).encode()) * 2000
        hostile.writer.write(flood)
        await eventually(lambda: b.net.is_banned(hostile.id), "flood banned")
        [reason] = b.reasons(hostile.id)
        assert reason == "banned for 30 s: message rate limit exceeded"
        # At most the burst (plus what refilled meanwhile) reached the handler.
        assert len(b.handler.received(m.Status, hostile.id)) < 300
        await still_talking(a, b)

    run(scenario)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"send_queue_limit": 16}, "send queue overflow (16 messages)"),
        ({"send_queue_bytes": 1024 * 1024}, "send queue overflow ("),
    ],
)
def test_a_peer_that_stops_reading_overflows_its_queue_and_is_dropped(limits, reason):
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster, **limits)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        block = m.NewBlock(os.urandom(256 * 1024))
        for _ in range(120):  # about 30 MB: more than the socket buffers and the queue hold
            b.net.broadcast(block)
            await asyncio.sleep(0)
            if hostile.id not in b.peer_ids():
                break
        await eventually(lambda: hostile.id not in b.peer_ids(), "the slow peer is dropped")
        [recorded] = b.reasons(hostile.id)
        assert recorded.startswith(reason) and recorded.endswith("the peer does not keep up")
        assert b.net.score_of(hostile.id) == 0  # slowness is not malice
        await eventually(lambda: len(a.handler.received(m.NewBlock, b.id)) >= 1, "the honest peer got blocks")
        await still_talking(a, b)

    run(scenario)


def test_a_handshake_message_after_the_handshake_costs_points():
    async def scenario(cluster: Cluster):
        b = await cluster.node()
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        await hostile.send(hostile.hello())
        await eventually(lambda: b.net.score_of(hostile.id) == -20, "penalized")
        assert hostile.id in b.peer_ids()  # one offence is not yet a disconnect
        assert b.handler.messages == []  # and the handler never sees a handshake message

    run(scenario)


def test_runtime_penalties_ban_and_the_ban_expires():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster, ban_seconds=0.5)
        b.net.penalize(a.id, 60, "invalid block")
        assert b.net.score_of(a.id) == -60 and a.id in b.peer_ids()
        b.net.penalize(a.id, 40, "invalid block")
        assert b.net.is_banned(a.id) and a.id not in b.peer_ids()
        await eventually(lambda: "peer disconnected: banned for 0.5 s: invalid block" in a.reasons(b.id), "a is told")
        # a keeps dialling b (a static peer); b refuses it until the ban ends, then accepts it.
        await eventually(lambda: any(r.startswith("banned for") for r in b.reasons(a.id)[1:]), "refused while banned")
        await connected(a, b)
        assert not b.net.is_banned(a.id) and b.net.score_of(a.id) == 0

    run(scenario)


def test_scores_recover_with_time():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster, score_recovery_per_second=100.0)
        b.net.penalize(a.id, 50, "a mistake")
        assert b.net.score_of(a.id) < 0
        await asyncio.sleep(0.6)
        assert b.net.score_of(a.id) == 0
        [a_seen] = b.net.peers()
        assert a_seen.score == 0

    run(scenario)

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
from node.p2p.budgets import Kind, PeerBudgets, TokenBucket, cost, overrun_reason
from node.p2p.connection import Connection
from node.p2p.faults import InvalidFaults, LinkFaults
from node.p2p.frames import MAX_FRAME, FrameMemory, FrameMemoryExhausted, FrameReader, FrameTooLarge, encode_frame, read_frame
from node.p2p import scores
from node.p2p.network import PeerInfo
from node.p2p.scores import Reputation
from node.p2p.settings import PENALTY_SLOW_FRAME
from node.p2p.slots import Slot, handshake_victim, inbound_victim, network_group
from node.p2p.tcp import STATUS_INTERVAL_SECONDS, P2PSettings, TcpNetwork

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
    frame_timeout=0.5,
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

    async def connect(self, port: int, source_ip: str | None = None) -> None:
        # Loopback is all of 127/8, so source_ip stands in for another host.
        local = (source_ip, 0) if source_ip is not None else None
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
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
        # Heads that change faster than the status interval share a Status: the newest is sent.
        for height in (10, 11, 12):
            a.net.update_status(height, crypto.sha256(b"block %d" % height), 4)
        newest = m.Status(12, crypto.sha256(b"block 12"), 4)
        await eventually(lambda: b.handler.received(m.Status, a.id)[-1] == newest, "the newest status at b")
        await asyncio.sleep(STATUS_INTERVAL_SECONDS * 2)
        assert len(b.handler.received(m.Status, a.id)[1:]) <= 2, "one status now, the newest at the interval's end"

        # Keepalive: well past the idle timeout, pings keep the link up and never reach the handler.
        await asyncio.sleep(FAST.idle_timeout * 1.5)
        await connected(a, b)
        assert b.net.received["Ping"] >= 2 and a.net.received["Pong"] >= 2
        internal = (m.Ping, m.Pong, m.GetPeers, m.Peers, m.Hello, m.Auth, m.Disconnect)
        assert not [msg for _, msg in a.handler.messages + b.handler.messages if isinstance(msg, internal)]
        assert a.net.disconnects() == [] and b.net.disconnects() == []

        a.net.send("0" * 40, m.Ping(1))  # an unknown peer is ignored, not an error

    run(scenario)


def test_bytes_sent_counts_each_frame_the_link_faults_let_through():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        vote = m.EngineMessage(b"vote")
        frame = len(encode_frame(vote.encode()))
        before = a.net.bytes_sent
        a.net.send(b.id, vote)
        a.net.broadcast(vote)
        assert a.net.bytes_sent - before == 2 * frame
        a.net.faults = LinkFaults(blocked=frozenset({b.id}))
        a.net.send(b.id, vote)  # dropped by the partition: not sent
        assert a.net.bytes_sent - before == 2 * frame

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


def outbound_ids(node: Node) -> set[str]:
    return {peer.id for peer in node.net.peers() if not peer.inbound}


def test_max_peers_limits_learnt_dials_and_inbound_connections_separately():
    async def scenario(cluster: Cluster):
        b = await cluster.node(max_peers=2)
        a = await cluster.node(peers=(b.address,), max_peers=1)
        c = await cluster.node(peers=(b.address,))
        await connected(a, b)
        await connected(c, b)
        d = await cluster.node(peers=(b.address,))
        # Both of b's inbound peers are among its longest connected: none can be evicted.
        await eventually(lambda: any("too many peers" in r for r in d.reasons(b.id)), "b refuses a third peer")
        await asyncio.sleep(FAST.peer_exchange_interval * 3)
        assert outbound_ids(a) == {b.id}  # a learnt c's and d's addresses but has no outbound room
        assert b.net.slot_counts()["inbound"] == 2
        # Peers that dial a use its inbound slots (max_peers: 1 of them), never its outbound one.
        assert a.net.slot_counts()["inbound"] <= 1
        assert a.net.slot_counts()["outbound"] == 1

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


def test_a_frame_that_never_completes_is_cut_off_and_costs_points():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        started = time.monotonic()
        await hostile.send_raw(struct.pack(">I", 1000) + b"\x07" * 20)
        await eventually(lambda: hostile.id not in b.peer_ids(), "dropped", timeout=3)
        # The deadline is frame_timeout plus the size at frame_min_rate; the idle timeout is 1 s.
        assert time.monotonic() - started < FAST.idle_timeout
        [reason] = b.reasons(hostile.id)
        assert reason == "frame of 1000 bytes not completed within 0.5 s"
        assert b.net.score_of(hostile.id) == -PENALTY_SLOW_FRAME
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


# ----------------------------------------------------------------------------- budgets: the arithmetic
def test_a_token_bucket_starts_full_refills_at_its_rate_and_never_above_its_burst():
    bucket = TokenBucket(rate=10.0, burst=30.0, now=100.0)
    assert bucket.take(30, 100.0) and not bucket.take(1, 100.0)
    assert not bucket.take(6, 100.5)  # 5 back after half a second: a take that does not fit takes nothing
    assert bucket.take(5, 100.5) and not bucket.take(1, 100.5)
    assert bucket.take(30, 200.0)  # a long pause refills it to the burst, not beyond
    assert not bucket.take(1, 200.0)
    assert not bucket.take(31, 1000.0)  # more than the burst never fits
    assert bucket.take(30, 1000.0)
    assert not bucket.take(1, 999.0)  # a clock that steps back refills nothing
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)


def test_a_message_costs_ids_for_announcements_and_requests_and_one_otherwise():
    ids = tuple(bytes([i % 256]) * 32 for i in range(4096))
    assert cost(m.TxAnnounce(ids).encode()) == (Kind.TX_ANNOUNCE, 4096)
    assert cost(m.TxRequest(ids[:7]).encode()) == (Kind.TX_REQUEST, 7)
    assert cost(m.TxAnnounce(()).encode()) == (Kind.TX_ANNOUNCE, 1)  # never free
    # A count larger than the ids present (the decoder refuses it later) is charged what is there.
    lying = b"\x08" + struct.pack(">I", 4096) + bytes(32 * 3)
    assert cost(lying) == (Kind.TX_ANNOUNCE, 3)
    assert cost(b"\x08\x00") == (Kind.TX_ANNOUNCE, 1)
    assert cost(m.GetBlocks((bytes(32),), 500).encode()) == (Kind.GET_BLOCKS, 1)
    assert cost(m.EngineMessage(b"vote").encode()) == (Kind.CONSENSUS, 1)
    assert cost(m.Status(1, bytes(32), 0).encode()) == (Kind.OTHER, 1)
    assert cost(bytes((200,)) + b"junk") == (Kind.OTHER, 1)
    assert cost(b"") == (Kind.OTHER, 1)


def test_peer_budgets_charge_every_message_and_its_kind():
    settings = dataclasses.replace(FAST, rate_per_second=2, rate_burst=5, get_blocks_per_second=1, get_blocks_burst=2,
                                   tx_announce_ids_per_second=4096, tx_announce_ids_burst=8192)
    budgets = PeerBudgets(settings, now=0.0)
    get_blocks = m.GetBlocks((bytes(32),), 500).encode()
    assert budgets.charge(get_blocks, 0.0) is None
    assert budgets.charge(get_blocks, 0.0) is None
    assert budgets.charge(get_blocks, 0.0) is Kind.GET_BLOCKS
    full = m.TxAnnounce(tuple(bytes([i % 256, i // 256]) * 16 for i in range(4096))).encode()
    assert budgets.charge(full, 0.0) is None  # announcements have their own budget
    assert budgets.charge(full, 0.0) is None
    assert budgets.charge(full, 0.0) is Kind.MESSAGES  # six messages, the refused one counted
    assert budgets.charge(full, 1.0) is None  # two messages and 4,096 ids back
    assert budgets.charge(full, 1.0) is Kind.TX_ANNOUNCE  # a message to spare, but no ids
    assert overrun_reason(Kind.GET_BLOCKS) == "block request budget exceeded"
    assert overrun_reason(Kind.MESSAGES) == "message rate limit exceeded"


def test_the_default_budgets_let_an_honest_node_through_and_stop_the_measured_floods():
    s = P2PSettings()
    # Honest: 12,000 transfers/s announced and requested, with the 4,096 re-announced every 10 s;
    # sync at 2,000 blocks/s in requests of 500; 100 validators' consensus traffic.
    assert s.tx_announce_ids_per_second >= 12_000 + 4096 / 10 and s.tx_request_ids_per_second >= 12_000
    assert s.get_blocks_per_second >= 2_000 / 500 * 2
    assert s.consensus_per_second >= 100 * 4
    # The floods measured against the node: 555,000 ids/s and 800 block requests/s.
    for rate, burst, flood in ((s.tx_announce_ids_per_second, s.tx_announce_ids_burst, 555_000),
                               (s.get_blocks_per_second, s.get_blocks_burst, 800)):
        assert burst / (flood - rate) < 1.0, "a flood must empty the bucket within a second"
    P2PSettings().check()
    for bad in ({"frame_memory": MAX_FRAME - 1}, {"tx_announce_ids_burst": 4095}, {"get_blocks_per_second": 0},
                {"ban_threshold": 0}, {"max_handshaking": 0}, {"frame_timeout": "5"}):
        with pytest.raises(ValueError, match="p2p setting"):
            dataclasses.replace(P2PSettings(), **bad).check()
    with pytest.raises(ValueError, match="frame_memory"):
        TcpNetwork(PrivateKey.generate(), CHAIN, GENESIS, "127.0.0.1", 0, [], settings=P2PSettings(frame_memory=1))


# ----------------------------------------------------------------------------- slots: the eviction order
def test_a_full_handshake_pool_evicts_the_oldest_of_the_most_crowded_group_and_an_ip_its_own_first():
    pending = [Slot("a1", "10.0.0.1", 1.0), Slot("b1", "10.1.0.2", 2.0), Slot("a2", "10.0.0.1", 3.0),
               Slot("c1", "10.0.7.3", 4.0)]
    assert handshake_victim(pending, "10.9.0.9", pool=5, per_ip=3) is None  # room
    # 10.0/16 holds three of four: its oldest goes.
    assert handshake_victim(pending, "10.9.0.9", pool=4, per_ip=3) == (pending[0], "evicted: 4 handshakes at once")
    others = [Slot("x1", "10.2.0.1", 1.0), Slot("y1", "10.3.0.1", 2.0), Slot("y2", "10.3.0.2", 3.0)]
    assert handshake_victim(others, "10.9.0.9", pool=3, per_ip=3)[0].ref == "y1"  # not the oldest of all
    # The newcomer counts in its group: 10.2/16 ties with 10.3/16, and the older of the two goes.
    assert handshake_victim(others, "10.2.0.5", pool=3, per_ip=3)[0].ref == "x1"
    # 10.0.7.3 is at its limit of 1: its own oldest goes, though 10.0.0.1's are older.
    victim, reason = handshake_victim(pending, "10.0.7.3", pool=10, per_ip=1)
    assert victim.ref == "c1" and reason == "evicted: 1 handshakes from 10.0.7.3 at once"
    assert handshake_victim([], "10.0.0.1", pool=1, per_ip=1) is None
    assert network_group("10.1.2.3") == "10.1.0.0/16" and network_group("::ffff:10.1.2.3") == "10.1.0.0/16"
    assert network_group("2001:db8:1::5") == "2001:db8::/32" and network_group("not an ip") == "not an ip"


def test_inbound_eviction_spares_static_and_longest_connected_peers_then_takes_the_worst_or_newest():
    peers = [
        Slot("old1", "10.1.0.1", 1.0, score=-90),  # longest connected: protected despite its score
        Slot("old2", "10.2.0.1", 2.0),
        Slot("static", "10.3.0.1", 9.0, score=-99, protected=True),
        Slot("x1", "10.4.0.1", 3.0),
        Slot("x2", "10.4.9.9", 5.0),  # another IP of the same /16
        Slot("y1", "10.5.0.1", 6.0),  # the newest of all, but its group holds one slot
        Slot("bad", "10.6.0.1", 4.0, score=-10),
        Slot("worse", "10.7.0.1", 4.5, score=-30),
    ]
    assert inbound_victim(peers, protect_longest=2).ref == "worse"  # the lowest score below 0
    scored_zero = [dataclasses.replace(p, score=0) if p.ref in ("bad", "worse") else p for p in peers]
    # All at 0: the group with the most slots (10.4/16) loses its newest.
    assert inbound_victim(scored_zero, protect_longest=2).ref == "x2"
    one_each = [p for p in scored_zero if p.ref != "x1"]
    assert inbound_victim(one_each, protect_longest=2).ref == "y1"  # no crowded IP: the newest
    assert inbound_victim(peers[:3], protect_longest=2) is None  # every peer protected
    assert inbound_victim(peers[:3], protect_longest=0).ref == "old1"


# ----------------------------------------------------------------------------- frames: the memory budget
def test_frame_memory_is_reserved_first_come_first_served_and_waits_a_bounded_time():
    async def scenario() -> None:
        memory = FrameMemory(100)
        await memory.reserve(60, timeout=1)
        big = asyncio.create_task(memory.reserve(50, timeout=1))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(memory.reserve(10, timeout=1))  # would fit, but waits its turn
        await asyncio.sleep(0.01)
        assert not big.done() and not small.done() and memory.waiting == 2
        memory.release(60)
        await asyncio.gather(big, small)
        assert memory.used == 60 and memory.waiting == 0
        started = time.monotonic()
        with pytest.raises(FrameMemoryExhausted, match="no frame memory for 50 bytes within 0.1 s"):
            await memory.reserve(50, timeout=0.1)
        assert 0.1 <= time.monotonic() - started < 0.5
        assert memory.used == 60 and memory.waiting == 0
        # A reader cancelled while waiting leaves nothing behind, and one behind it moves up.
        blocked = asyncio.create_task(memory.reserve(90, timeout=5))
        behind = asyncio.create_task(memory.reserve(40, timeout=5))
        await asyncio.sleep(0.01)
        blocked.cancel()
        await behind
        assert memory.used == 100 and memory.waiting == 0
        with pytest.raises(FrameMemoryExhausted):
            await memory.reserve(101, timeout=5)  # more than the budget never fits

    asyncio.run(scenario())


def test_a_large_frame_reserves_its_size_while_its_body_arrives_in_chunks():
    async def scenario() -> None:
        memory = FrameMemory(4 * 1024 * 1024)
        stream = asyncio.StreamReader(limit=64 * 1024)
        frames = FrameReader(stream, memory, memory_wait=1.0)
        body = os.urandom(3 * 1024 * 1024)
        stream.feed_data(struct.pack(">I", len(body)) + body[:1000])
        reading = asyncio.create_task(frames.read(MAX_FRAME))
        await asyncio.sleep(0.01)
        assert memory.used == len(body) and frames.body_size == len(body) and frames.body_since > 0
        for start in range(1000, len(body), 500_000):
            stream.feed_data(body[start : start + 500_000])
            await asyncio.sleep(0)
        assert await reading == body
        assert memory.used == 0 and frames.body_since == 0
        # A small frame does not touch the budget; a frame over the cap is refused unread.
        stream.feed_data(encode_frame(b"\x03" + bytes(8)))
        assert await frames.read(MAX_FRAME) == b"\x03" + bytes(8)
        stream.feed_data(struct.pack(">I", MAX_FRAME + 1))
        with pytest.raises(FrameTooLarge):
            await frames.read(MAX_FRAME)
        # A stream that ends mid-body gives its reservation back.
        stream.feed_data(struct.pack(">I", 1024 * 1024) + bytes(10))
        stream.feed_eof()
        with pytest.raises(asyncio.IncompleteReadError):
            await frames.read(MAX_FRAME)
        assert memory.used == 0

    asyncio.run(scenario())


def test_scores_and_bans_are_forgotten_in_time_and_their_tables_capped(monkeypatch):
    reputation = Reputation(dataclasses.replace(FAST, ban_seconds=1.0, score_recovery_per_second=1.0))
    reputation.lower("a", 5, now=0.0)
    reputation.ban("b", "10.0.0.2:9000", now=0.0)
    assert reputation.address_banned("10.0.0.2:9000", 0.5) and reputation.ban_remaining("b", 0.5) == 0.5
    reputation.prune(2.0, connected=())
    assert reputation.score("a", 2.0) == -3 and reputation.ban_remaining("b", 2.0) == 0
    reputation.prune(10.0, connected=())
    assert len(reputation) == 0
    monkeypatch.setattr(scores, "MAX_SCORES", 3)
    for points, peer in enumerate(("p1", "p2", "p3", "p4", "p5"), start=1):
        reputation.lower(peer, points * 10, now=20.0)
    reputation.prune(20.0, connected={"p1"})
    # Past the cap the scores nearest 0 of peers not connected go first.
    assert {peer for peer in ("p1", "p2", "p3", "p4", "p5") if reputation.score(peer, 20.0) < 0} == {"p1", "p4", "p5"}


# ----------------------------------------------------------------------------- slots on the wire
def test_a_full_handshake_pool_makes_room_so_an_honest_peer_still_gets_in():
    async def scenario(cluster: Cluster):
        b = await cluster.node(max_handshaking=8, max_handshaking_per_ip=3, handshake_timeout=5.0)
        lone = cluster.hostile()
        await lone.connect(b.net.listen_port)  # the oldest, but alone in 127.0/16
        crowd = []
        for index in range(10):  # five hosts of 127.1/16 in turn, silent after connecting
            hostile = cluster.hostile()
            await hostile.connect(b.net.listen_port, source_ip=f"127.1.0.{2 + index % 5}")
            crowd.append(hostile)
        await eventually(lambda: len(b.reasons()) == 3, "three evicted")
        assert b.net.slot_counts()["handshaking"] == 8
        assert [record.address for record in b.net.disconnects()] == [hostile.address for hostile in crowd[:3]]
        assert set(b.reasons()) == {"evicted: 8 handshakes at once"}
        # A host at its limit of three loses its own oldest, though older ones of its group remain.
        for _ in range(4):
            hostile = cluster.hostile()
            await hostile.connect(b.net.listen_port, source_ip="127.1.0.7")
            crowd.append(hostile)
        await eventually(lambda: len(b.reasons()) == 7, "four more evicted")
        assert b.net.disconnects()[-1].address == crowd[10].address
        assert b.net.disconnects()[-1].reason == "evicted: 3 handshakes from 127.1.0.7 at once"
        assert lone.address not in [record.address for record in b.net.disconnects()]
        # An honest peer completes its handshake within milliseconds, before it is the oldest.
        started = time.monotonic()
        a = await cluster.node(peers=(b.address,))
        await connected(a, b)
        assert time.monotonic() - started < 1.0
        assert a.reasons() == []
        assert b.net.slot_counts()["handshaking"] <= 8

    run(scenario)


def test_a_newcomer_evicts_the_worst_or_newest_inbound_peer_but_never_a_protected_one():
    async def scenario(cluster: Cluster):
        # The static peer's node id is the smaller one, so the connection it dials is the one
        # both keep: it is an inbound peer of b, protected because its address is b's static peer.
        key_b, key_static = sorted((PrivateKey.generate(), PrivateKey.generate()),
                                   key=lambda key: address_of(key.public_key).hex(), reverse=True)
        b = await cluster.node(key=key_b, max_peers=4, protect_longest_connected=1)
        static = await cluster.node(key=key_static, peers=(b.address,))
        b.net.add_peer(static.address)
        await connected(b, static)
        outbound = await cluster.node()
        b.net.add_peer(outbound.address)
        await connected(b, outbound)
        await eventually(lambda: b.net.slot_counts() == {"handshaking": 0, "inbound": 1, "outbound": 1}, "two peers")
        # b's own dial to the static peer may have registered first and been replaced by the one
        # the smaller id dialled (a disconnect, then a connect): from here on nothing may
        # disconnect it.
        b.handler.disconnected.clear()
        static.handler.disconnected.clear()

        async def admitted() -> Hostile:
            hostile = cluster.hostile()
            await hostile.connect(b.net.listen_port, source_ip="127.0.0.9")
            await hostile.handshake()
            await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
            return hostile

        first = await admitted()  # the longest connected of the unprotected: kept
        second = await admitted()
        third = await admitted()
        assert b.net.slot_counts()["inbound"] == 4
        fourth = await admitted()  # all at score 0: the newest makes room
        assert await third.disconnect_reason() == "evicted: the 4 inbound slots are full and a new peer came (score 0)"
        b.net.penalize(second.id, 10, "a mistake")
        fifth = await admitted()  # the worst score goes, though it is older
        assert await second.disconnect_reason() == "evicted: the 4 inbound slots are full and a new peer came (score -10)"
        assert b.peer_ids() == {static.id, outbound.id, first.id, fourth.id, fifth.id}
        assert b.net.slot_counts() == {"handshaking": 0, "inbound": 4, "outbound": 1}
        await still_talking(b, static)
        await still_talking(b, outbound)

    run(scenario)


# ----------------------------------------------------------------------------- budgets on the wire
@pytest.mark.parametrize(
    ("flood", "count", "reason"),
    [
        (m.GetBlocks((bytes(32),), 500), 300, "block request budget exceeded"),
        (m.TxAnnounce(tuple(os.urandom(32) for _ in range(4096))), 100, "transaction announcement budget exceeded"),
    ],
)
def test_a_flood_of_one_kind_gets_the_peer_banned_within_seconds(flood, count, reason):
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)  # the production budgets
        hostile = cluster.hostile()
        await hostile.connect(b.net.listen_port)
        await hostile.handshake()
        await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
        started = time.monotonic()
        hostile.writer.write(encode_frame(flood.encode()) * count)
        await eventually(lambda: b.net.is_banned(hostile.id), "flood banned")
        elapsed = time.monotonic() - started
        assert elapsed < 5.0
        assert b.reasons(hostile.id) == [f"banned for 30 s: {reason}"]
        # What reached the handler stayed within the budget's burst and what it refilled
        # while the flood was read (a loaded machine reads it more slowly).
        delivered = b.handler.received(type(flood), hostile.id)
        if isinstance(flood, m.GetBlocks):
            allowance = FAST.get_blocks_burst + FAST.get_blocks_per_second * elapsed
        else:
            allowance = (FAST.tx_announce_ids_burst + FAST.tx_announce_ids_per_second * elapsed) / 4096
        assert 0 < len(delivered) <= allowance + 1
        await still_talking(a, b)

    run(scenario)


# ----------------------------------------------------------------------------- frame memory on the wire
def test_unfinished_large_frames_share_one_memory_budget_and_are_cut_off():
    async def scenario(cluster: Cluster):
        mib = 1024 * 1024
        limits = dict(max_frame=mib, frame_memory=2 * mib, frame_timeout=0.5, frame_min_rate=float(mib))
        a, b = await honest_pair(cluster, **limits)
        drips = []
        for _ in range(3):
            hostile = cluster.hostile()
            await hostile.connect(b.net.listen_port)
            await hostile.handshake()
            await eventually(lambda: hostile.id in b.peer_ids(), "hostile admitted")
            await hostile.send_raw(struct.pack(">I", mib) + bytes(mib // 2))
            drips.append(hostile)
        await eventually(lambda: b.net.frame_memory.waiting == 1, "the third frame waits for memory")
        assert b.net.frame_memory.used == 2 * mib
        # The one waiting is not at fault: cut without a penalty once it has waited frame_timeout.
        assert await drips[2].disconnect_reason() == f"frame memory budget exhausted: no frame memory for {mib} bytes within 0.5 s"
        assert b.net.score_of(drips[2].id) == 0
        # The two holding memory had 0.5 s plus their size at 1 MiB/s.
        for hostile in drips[:2]:
            assert await hostile.disconnect_reason() == f"frame of {mib} bytes not completed within 1.5 s"
            assert b.net.score_of(hostile.id) == -PENALTY_SLOW_FRAME
        assert b.net.frame_memory.used == 0
        # Memory back, a large frame from the honest peer goes through.
        block = m.NewBlock(os.urandom(mib - 64))
        a.net.send(b.id, block)
        await eventually(lambda: b.handler.received(m.NewBlock, a.id) == [block], "the honest large frame")
        assert b.net.slot_counts() == {"handshaking": 0, "inbound": 1, "outbound": 0}
        assert len(b.net._connections) == 1 and not b.net._handshaking
        await still_talking(a, b)

    run(scenario)


# ----------------------------------------------------------------------------- operator's faults
def test_a_partition_cuts_the_link_both_ways_and_heal_restores_it_at_once():
    async def scenario(cluster: Cluster):
        # A long dial backoff: the heal must reconnect at once, not when the backoff ends.
        a, b = await honest_pair(cluster, dial_backoff_initial=20.0, dial_backoff_max=20.0)
        a.net.set_faults(LinkFaults(frozenset({b.id})))
        await eventually(lambda: a.net.peers() == [] and b.net.peers() == [], "the link is cut")
        assert "partitioned by the operator" in a.reasons(b.id)
        await asyncio.sleep(0.5)
        assert a.net.peers() == [] and b.net.peers() == [], "a redial is refused while partitioned"
        a.net.set_faults(LinkFaults())
        await connected(a, b)
        marker = m.TxAnnounce((secrets.token_bytes(32),))
        b.net.send(a.id, marker)
        await eventually(lambda: marker in a.handler.received(m.TxAnnounce, b.id), "messages flow again")

    run(scenario)


def test_loss_drops_outgoing_messages_and_delay_holds_them_in_order():
    async def scenario(cluster: Cluster):
        a, b = await honest_pair(cluster)
        a.net.set_faults(LinkFaults(loss_percent=100))
        lost = m.TxAnnounce((secrets.token_bytes(32),))
        a.net.send(b.id, lost)
        await asyncio.sleep(0.2)
        assert lost not in b.handler.received(m.TxAnnounce) and a.net.dropped_by_faults >= 1
        a.net.set_faults(LinkFaults(delay_ms=300))
        markers = [m.TxAnnounce((secrets.token_bytes(32),)) for _ in range(5)]
        sent_at = time.monotonic()
        for marker in markers:
            a.net.send(b.id, marker)
        await eventually(lambda: markers[-1] in b.handler.received(m.TxAnnounce), "the delayed messages")
        assert time.monotonic() - sent_at >= 0.3
        arrived = [msg for msg in b.handler.received(m.TxAnnounce) if msg in markers]
        assert arrived == markers, "delay keeps the order"

    run(scenario)


def test_link_faults_refuse_bad_settings():
    with pytest.raises(InvalidFaults) as caught:
        LinkFaults(frozenset({"not-a-node-id"}))
    assert caught.value.field == "blocked"
    for bad in ({"delay_ms": -1}, {"delay_ms": 1.5}, {"delay_ms": True}, {"loss_percent": 101}, {"loss_percent": "5"}):
        with pytest.raises(InvalidFaults):
            LinkFaults(**bad)
    assert LinkFaults().none and LinkFaults().describe() == "no faults: every link healed"


def test_a_frame_goes_to_the_socket_at_once_when_nothing_waits_before_it():
    """An idle link's frame is written in the sender's own step, not when the writer task
    next runs (a Raft AppendEntries used to wait behind the leader's durable write); with
    anything queued or buffered before it, it queues behind, so the order stays."""

    class Transport:
        def __init__(self):
            self.written: list[bytes] = []
            self.buffered = 0

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return self.buffered

    class Writer:
        def __init__(self):
            self.transport = Transport()

        def get_extra_info(self, name: str):
            return ("127.0.0.1", 9) if name == "peername" else None

    async def scenario() -> None:
        writer = Writer()
        conn = Connection(asyncio.StreamReader(), writer, False, None, P2PSettings(), FrameMemory(1 << 20))
        assert conn.enqueue(b"handshaking") is None
        assert writer.transport.written == [] and conn.queue.qsize() == 1  # no writer task yet: queued
        conn.queue.get_nowait()
        conn.queued_bytes = 0
        conn.writer_task = asyncio.get_running_loop().create_future()  # a writer that never runs
        assert conn.enqueue(b"first") is None
        assert writer.transport.written == [b"first"] and conn.queue.empty() and conn.queued_bytes == 0
        writer.transport.buffered = 10  # the socket did not take it all: the next one waits its turn
        assert conn.enqueue(b"second") is None
        writer.transport.buffered = 0
        assert conn.enqueue(b"third") is None  # behind "second", though the buffer has drained
        assert writer.transport.written == [b"first"]
        assert [conn.queue.get_nowait(), conn.queue.get_nowait()] == [b"second", b"third"]
        conn.writer_task.cancel()

    asyncio.run(scenario())

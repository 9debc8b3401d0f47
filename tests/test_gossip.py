"""Transaction gossip and block serving keep what a peer can cost bounded."""

from __future__ import annotations

import asyncio
import secrets

from api.service import Accepted
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.gossip import REQUEST_TIMEOUT_MS, TxGossip
from node.p2p.messages import GetBlocks, TxAnnounce, TxRequest
from node.sync import BlockSync

KEY = dev_keys(1)[0]
CHAIN = "gossip-test"


class FakeNetwork:
    def __init__(self):
        self.sent: list[tuple[str, object]] = []
        self.penalties: list[tuple[str, int, str]] = []

    def send(self, peer_id, message):
        self.sent.append((peer_id, message))

    def broadcast(self, message, exclude=frozenset()):
        self.sent.append(("*", message))

    def penalize(self, peer_id, points, reason):
        self.penalties.append((peer_id, points, reason))

    def peers(self):
        return []

    def requested(self, peer_id: str) -> list[bytes]:
        return [i for to, message in self.sent if to == peer_id and isinstance(message, TxRequest) for i in message.ids]


def make_gossip(now: list[int], **limits) -> tuple[TxGossip, FakeNetwork, list]:
    network = FakeNetwork()
    submitted: list = []

    async def submit(transactions, origin):
        submitted.extend(transactions)
        return [Accepted(tx.id) for tx in transactions]

    return TxGossip(network, submit, lambda tx_id: None, lambda: now[0], **limits), network, submitted


def ids(n: int) -> tuple[bytes, ...]:
    return tuple(secrets.token_bytes(32) for _ in range(n))


def test_a_flood_of_announcements_holds_a_bounded_number_of_ids():
    now = [0]
    gossip, network, _ = make_gossip(now, max_in_flight=100, max_waiting=500, max_waiting_total=800)
    for _ in range(50):
        gossip.on_announce("flooder", ids(1000))
    assert len(network.requested("flooder")) == 100, "asked for one in-flight window, not for everything announced"
    assert gossip.outstanding() == (100, 500)
    gossip.on_announce("other", ids(1000))
    requested, waiting = gossip.outstanding()
    # Over the total cap, the biggest holder lost its oldest; then the newcomer's first window went out.
    assert requested == 200 and waiting == 800 - 100, "the total is capped over all peers"
    assert requested + waiting + gossip.dropped_announcements == 51 * 1000


def test_unanswered_requests_expire_without_mempool_activity_and_make_room():
    now = [0]
    gossip, network, _ = make_gossip(now, max_in_flight=10, max_waiting=100)
    gossip.on_announce("silent", ids(30))
    assert len(network.requested("silent")) == 10
    now[0] += REQUEST_TIMEOUT_MS - 1
    gossip.expire_requests()
    assert len(network.requested("silent")) == 10
    now[0] += 1
    gossip.expire_requests()
    assert len(network.requested("silent")) == 20 and gossip.outstanding() == (10, 10)
    now[0] += 2 * REQUEST_TIMEOUT_MS
    gossip.expire_requests()
    now[0] += 2 * REQUEST_TIMEOUT_MS
    gossip.expire_requests()
    assert gossip.outstanding() == (0, 0)
    assert "silent" not in gossip._peers, "nothing is kept for a peer with nothing outstanding"


def test_a_peer_that_leaves_takes_its_requests_with_it_and_another_can_deliver():
    now = [0]
    gossip, network, submitted = make_gossip(now)
    tx = new_transfer(KEY, CHAIN, 0, bytes(20), 1)
    gossip.on_announce("a", (tx.id,))
    gossip.on_announce("b", (tx.id,))
    assert network.requested("a") == [tx.id] and network.requested("b") == []
    gossip.peer_gone("a")
    assert gossip.outstanding() == (0, 0)
    gossip.on_announce("b", (tx.id,))
    assert network.requested("b") == [tx.id]
    asyncio.run(gossip.on_batch("b", (tx.encode(),)))
    assert submitted == [tx] and gossip.outstanding() == (0, 0) and network.penalties == []


def test_only_transactions_asked_of_that_peer_are_submitted():
    now = [0]
    gossip, network, submitted = make_gossip(now)
    asked, pushed = (new_transfer(KEY, CHAIN, n, bytes(20), 1) for n in range(2))
    gossip.on_announce("a", (asked.id,))
    asyncio.run(gossip.on_batch("b", (asked.encode(),)))  # b was not asked for it
    asyncio.run(gossip.on_batch("a", (asked.encode(), pushed.encode())))
    assert submitted == [asked]
    assert [(peer, points) for peer, points, _ in network.penalties] == [("b", 1), ("a", 1)]
    asyncio.run(gossip.on_batch("a", (asked.encode(),)))  # a duplicate of what was delivered costs nothing
    assert submitted == [asked] and len(network.penalties) == 2


class _Store:
    def __init__(self):
        self.genesis = dev_genesis(KEY.public_key)

    def block_header_by_hash(self, block_hash):
        return None


def test_block_serving_answers_one_request_per_peer_at_a_time_and_refuses_foreign_locators():
    network = FakeNetwork()
    release = asyncio.Event()
    calls = []

    async def serving(function, *args):
        calls.append(args)
        await release.wait()
        return function(*args)

    sync = BlockSync(network, _Store(), lambda: None, lag=0, now_ms=lambda: 0, serving=serving, max_block_transactions=10)
    request = GetBlocks((secrets.token_bytes(32),), 500)

    async def scenario():
        first = asyncio.create_task(sync.serve("p", request))
        await asyncio.sleep(0)
        await sync.serve("p", request)  # before the answer: a flood, not served
        assert len(calls) == 1
        assert [(peer, reason) for peer, _, reason in network.penalties] == [("p", "asked for blocks before the last answer")]
        other = asyncio.create_task(sync.serve("q", request))  # another peer is served meanwhile
        await asyncio.sleep(0)
        assert len(calls) == 2
        release.set()
        await asyncio.gather(first, other)

    asyncio.run(scenario())
    assert [reason for _, _, reason in network.penalties[1:]] == ["block request names no block of this chain"] * 2
    assert not [m for _, m in network.sent], "no answer to a locator with no hash of this chain"


def test_with_a_grace_a_peer_ahead_is_asked_only_if_the_node_is_still_behind_after_it():
    """Raft's followers hear of each commit from the leader's status a moment before the
    commit index: without the grace each one started a block request."""
    from ledger.block import BlockHeader
    from node.p2p.network import PeerInfo

    heads = {"height": 5}
    header = lambda: BlockHeader(chain_id=CHAIN, height=heads["height"], timestamp=0, parent=bytes(32),
                                 tx_root=bytes(32), tx_count=0, proposer=bytes(20))

    class Peers(FakeNetwork):
        def __init__(self):
            super().__init__()
            self.listed = []

        def peers(self):
            return self.listed

    class Store:
        def block_header(self, height):
            return header()

    async def scenario():
        network = Peers()
        sync = BlockSync(network, Store(), header, lag=0, now_ms=lambda: 0, serving=None,
                         max_block_transactions=10, grace_ms=20)
        ahead = PeerInfo("leader", "", False, 6, b"\x01" * 32)
        network.listed = [ahead]
        sync.on_peer_status(ahead)
        assert not network.sent  # not at once
        heads["height"] = 6  # the engine committed it meanwhile
        await asyncio.sleep(0.03)
        assert not network.sent
        far = PeerInfo("leader", "", False, 9, b"\x02" * 32)
        network.listed = [far]
        sync.on_peer_status(far)
        await asyncio.sleep(0.03)  # still behind after the grace: now it asks
        assert [(to, type(m)) for to, m in network.sent] == [("leader", GetBlocks)]

    asyncio.run(scenario())


def test_ids_seen_are_forgotten_after_a_bound_but_what_the_mempool_holds_is_never_requested():
    now = [0]
    network = FakeNetwork()
    held = {tx_id: object() for tx_id in ids(3)}

    async def submit(transactions, origin):
        return [Accepted(tx.id) for tx in transactions]

    gossip = TxGossip(network, submit, held.get, lambda: now[0], seen_capacity=8)
    old = ids(4)
    for tx_id in old:
        gossip.seen.add(tx_id)
    for tx_id in ids(8):  # the newest push the oldest out
        gossip.seen.add(tx_id)
    assert len(gossip.seen) <= 8 and not any(tx_id in gossip.seen for tx_id in old)
    gossip.on_announce("peer", tuple(held) + old[:1])
    assert network.requested("peer") == [old[0]]  # forgotten, so asked again; pending ones not


def test_what_left_the_mempool_before_the_flush_is_not_announced():
    network = FakeNetwork()
    txs = [new_transfer(KEY, CHAIN, nonce, b"\x01" * 20, 1) for nonce in range(3)]
    held = {tx.id: tx for tx in txs}

    async def submit(transactions, origin):
        return [Accepted(tx.id) for tx in transactions]

    async def scenario():
        gossip = TxGossip(network, submit, held.get, lambda: 0)
        gossip.admitted(txs, None)
        del held[txs[1].id]  # committed in a block before the announcement went out
        gossip.flush()
        await gossip.stop()

    asyncio.run(scenario())
    announced = [i for _, message in network.sent if isinstance(message, TxAnnounce) for i in message.ids]
    assert announced == [txs[0].id, txs[2].id]


def _empty_chain(length: int) -> list:
    """Genesis and `length` empty blocks on it (unsealed: sync's decoding does not check seals)."""
    from ledger.block import Block, build_header

    blocks = [dev_genesis(KEY.public_key).block()]
    for _ in range(length):
        parent = blocks[-1].header
        blocks.append(Block(build_header(CHAIN, parent, parent.timestamp + 1, [], bytes(20))))
    return blocks


def _syncing_from(chain: list, claimed_height: int, lag: int = 0):
    """A BlockSync on the chain's genesis and a peer "p" that claims `claimed_height`."""
    from node.p2p.network import PeerInfo
    from node.sync import BlockSync

    head = [chain[0].header]

    class Peers(FakeNetwork):
        def peers(self):
            return [PeerInfo("p", "", False, claimed_height, chain[claimed_height].hash)]

    class Store:
        def block_header(self, height):
            return chain[height].header

    network = Peers()
    sync = BlockSync(network, Store(), lambda: head[0], lag=lag, now_ms=lambda: 0, serving=None,
                     max_block_transactions=10)
    return sync, network, head


def test_a_full_sync_answer_is_followed_at_once_by_a_request_from_its_last_block():
    """Catch-up pipelines: the peer reads and sends the next range while this node imports the
    one it has, and at most one answer waits for its import."""
    from node.p2p.messages import Blocks
    from node.sync import BATCH

    chain = _empty_chain(3 * BATCH)
    sync, network, head = _syncing_from(chain, 3 * BATCH)
    asked = lambda: [m.locator[0] for _, m in network.sent if isinstance(m, GetBlocks)]
    sync.on_peer_status(network.peers()[0])
    assert asked() == [chain[0].hash]

    answer = lambda first, last: Blocks(tuple(block.encode() for block in chain[first:last + 1]))
    assert len(sync.decode_response("p", answer(1, BATCH))) == BATCH
    assert asked()[1:] == [chain[BATCH].hash], "the next range is asked for before this one is imported"
    sync.decode_response("p", answer(BATCH + 1, 2 * BATCH))
    assert len(asked()) == 2, "with one answer waiting, the node asks for no third"

    head[0] = chain[BATCH].header  # the first answer is imported
    sync.after_import(chain[0].hash)
    assert asked()[2:] == [chain[2 * BATCH].hash], "the next request follows the answer still waiting"


def test_a_short_sync_answer_asks_for_nothing_more_until_it_is_imported():
    """An answer shorter than a peer sends ends at the peer's head, or the peer lies about its
    head: the node asks again only after the import, from its own head, and not at all if
    the answer moved its head nowhere."""
    from node.p2p.messages import Blocks

    chain = _empty_chain(30)
    sync, network, head = _syncing_from(chain, 30)
    requests = lambda: [m for _, m in network.sent if isinstance(m, GetBlocks)]
    sync.on_peer_status(network.peers()[0])
    sync.decode_response("p", Blocks(tuple(block.encode() for block in chain[1:11])))
    assert len(requests()) == 1

    head[0] = chain[10].header
    sync.after_import(chain[0].hash)
    assert len(requests()) == 2 and requests()[1].locator[0] == chain[10].hash

    sync.decode_response("p", Blocks(tuple(block.encode() for block in chain[11:21])))
    sync.after_import(chain[10].hash)  # nothing of it was imported
    assert len(requests()) == 2, "a fruitless answer is not asked again for the same claim"


def test_with_a_lag_the_next_range_starts_after_the_last_block_the_import_keeps():
    """BFT imports a block only with the certificate the next one carries: an answer's last
    block stays out, so the next range must start at it, not after it."""
    from node.p2p.messages import Blocks
    from node.sync import BATCH

    chain = _empty_chain(2 * BATCH + 10)
    sync, network, head = _syncing_from(chain, 2 * BATCH + 10, lag=1)
    asked = lambda: [m.locator[0] for _, m in network.sent if isinstance(m, GetBlocks)]
    sync.on_peer_status(network.peers()[0])
    sync.decode_response("p", Blocks(tuple(block.encode() for block in chain[1:BATCH + 1])))
    assert asked()[1:] == [chain[BATCH - 1].hash]


def test_a_short_answer_waiting_for_its_import_is_not_fetched_again():
    """The answer being imported is full, the one after it is the end of the peer's chain: when
    the first is imported nothing is asked (the waiting one holds the rest); the second's
    import asks again from the new head."""
    from node.p2p.messages import Blocks
    from node.sync import BATCH

    chain = _empty_chain(BATCH + 20)
    sync, network, head = _syncing_from(chain, BATCH + 20)
    requests = lambda: [m for _, m in network.sent if isinstance(m, GetBlocks)]
    sync.on_peer_status(network.peers()[0])
    sync.decode_response("p", Blocks(tuple(block.encode() for block in chain[1:BATCH + 1])))
    sync.decode_response("p", Blocks(tuple(block.encode() for block in chain[BATCH + 1:BATCH + 11])))
    assert len(requests()) == 2

    head[0] = chain[BATCH].header
    sync.after_import(chain[0].hash)
    assert len(requests()) == 2, "the waiting answer's range is not asked for again"
    head[0] = chain[BATCH + 10].header
    sync.after_import(chain[BATCH].hash)
    assert len(requests()) == 3 and requests()[2].locator[0] == chain[BATCH + 10].hash

"""A real node under attack by peers written here, over real TCP on 127.0.0.1.

The node is an in-process `node.runtime.Node` on a proof-of-work chain with a trivial
target (half of all hashes meet it), with a `TcpNetwork` on a free port; it does not
mine, so its head moves only when a peer hands it a block and every check on "the
node kept its chain" is exact.  Its peers are raw asyncio streams speaking the real
handshake with their own keys:

- an honest peer that mines valid blocks (the target is trivial, so a valid seal costs
  a couple of hashes) and later confirms a transfer;
- hostile peers that each send one kind of bad data: a block with bad proof of work,
  a wrong target, a bad Merkle root, a transaction with a bad signature or an
  overspend, a timestamp far in the future or not after the median, garbage inside a
  valid frame, garbage frames, an oversized frame, another chain's handshake, a sync
  answer with a bad block.

Whatever it is sent, the node scores the sender down (and bans it when it goes on),
keeps its head, keeps its honest peer, and still turns a good transfer final.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from consensus.mining import mine, seal_with_nonce
from consensus.pow import PowParams, compact_bytes, from_compact, median_time_past, next_target, round_target
from ledger import crypto
from ledger.address import address_of
from ledger.block import Block, BlockHeader, build_header
from ledger.codec import DecodeError
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import Transaction, TxKind, new_transfer
from node.config import NodeConfig
from node.p2p import messages as m
from node.p2p.frames import MAX_FRAME, encode_frame, read_frame
from node.p2p.tcp import TcpNetwork
from node.runtime import Node

CHAIN = "hostile-test"
KEYS = dev_keys(2)
ALICE, CAROL = KEYS
BALANCE = 1_000_000
BOB = address_of(PrivateKey(bytes(31) + b"\x0b").public_key)
MINER = address_of(PrivateKey(bytes(31) + b"\x0c").public_key)
FINALITY_DEPTH = 2
PENALTY_INVALID_BLOCK = 50  # what the runtime takes for a block that fails validation


def make_genesis() -> Genesis:
    return Genesis(
        chain_id=CHAIN,
        address_prefix="tst",
        timestamp=int(time.time() * 1000) - 60_000,
        engine="pow",
        # target_block_ms 1: any solve time of 1 ms or more keeps the target at its maximum,
        # so every block of the test is mined in a couple of hashes.
        engine_params={"target_block_ms": 1, "initial_target": "207fffff", "retarget_window": 5,
                       "finality_depth": FINALITY_DEPTH, "max_future_ms": 15_000},
        allocations={address_of(key.public_key): BALANCE for key in KEYS},
        block_reward=10,
    )


# ----------------------------------------------------------------------------- a mirror of the node's chain
class ChainBuilder:
    """The main chain as the node has it (headers), and blocks for the peers to send."""

    def __init__(self, genesis: Genesis):
        self.genesis = genesis
        self.params = PowParams.from_genesis(genesis.engine_params)
        self.headers: list[BlockHeader] = [genesis.block().header]

    @property
    def head(self) -> BlockHeader:
        return self.headers[-1]

    def window(self) -> list[BlockHeader]:
        return self.headers[-self.params.ancestors_needed:]

    def target(self) -> int:
        return next_target(self.window(), self.params)

    def unsealed(self, transactions=(), timestamp: int | None = None, **fields) -> BlockHeader:
        if timestamp is None:
            timestamp = max(int(time.time() * 1000), median_time_past(self.window()) + 1)
        header = build_header(CHAIN, self.head, timestamp, list(transactions), MINER, compact_bytes(self.target()))
        return dataclasses.replace(header, **fields) if fields else header

    def valid_block(self, transactions=(), **fields) -> Block:
        """A block whose seal meets its target; `fields` break something else on purpose."""
        header = self.unsealed(transactions, **fields)
        sealed = mine(header, from_compact(int.from_bytes(header.extra, "big")))
        assert sealed is not None
        return Block(sealed, tuple(transactions))

    def bad_pow_block(self) -> Block:
        """Right target, but a nonce whose hash is above it."""
        header = self.unsealed()
        target = self.target()
        nonce = 0
        while int.from_bytes(seal_with_nonce(header, nonce).hash, "big") <= target:
            nonce += 1
        return Block(seal_with_nonce(header, nonce))

    def accept(self, block: Block) -> None:
        assert block.header.parent == self.head.hash
        self.headers.append(block.header)


def transfer(key: PrivateKey, nonce: int, amount: int = 5, fee: int = 1) -> Transaction:
    return new_transfer(key, CHAIN, nonce, BOB, amount, fee)


def wrongly_signed_transfer(nonce: int) -> Transaction:
    """Alice's transfer carrying Carol's (well-formed, low-S) signature."""
    unsigned = Transaction(CHAIN, nonce, ALICE.public_key, BOB, 5, 1, TxKind.TRANSFER)
    return dataclasses.replace(unsigned, signature=CAROL.sign(crypto.DOMAIN_TX, unsigned.unsigned_bytes()))


# ----------------------------------------------------------------------------- raw peers
class RawPeer:
    """A peer written by hand: the real handshake over a raw asyncio stream, then any frames."""

    def __init__(self, name: str, key: PrivateKey | None = None):
        self.name = name
        self.key = key or PrivateKey.generate()
        self.id = address_of(self.key.public_key).hex()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received: list[object] = []
        self.closed = asyncio.Event()
        self.disconnect_reason: str | None = None
        self._reading: asyncio.Task | None = None
        self.answers: dict[type, Callable[[object], Awaitable[None]]] = {}

    async def connect(self, port: int, *, chain: str = CHAIN, genesis_hash: bytes, head_height: int = 0,
                      head_hash: bytes = bytes(32)) -> m.Hello:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        ours = m.Hello(chain, genesis_hash, 1, self.key.public_key, 0, head_height, head_hash, 0, secrets.token_bytes(32))
        await self.send(ours)
        theirs = m.decode_message(await read_frame(self.reader))
        if isinstance(theirs, m.Hello):
            await self.send(m.Auth(self.key.sign(crypto.DOMAIN_HANDSHAKE, theirs.nonce + ours.encode())))
        self._reading = asyncio.create_task(self._read_loop(first=theirs))
        return theirs

    async def _read_loop(self, first: object) -> None:
        message = first
        try:
            while True:
                self.received.append(message)
                if isinstance(message, m.Disconnect):
                    self.disconnect_reason = message.reason
                answer = self.answers.get(type(message))
                if answer is not None:
                    await answer(message)
                message = m.decode_message(await read_frame(self.reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    def got(self, kind: type) -> list:
        return [message for message in self.received if isinstance(message, kind)]

    async def send(self, message) -> None:
        await self.send_raw(encode_frame(message.encode()))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def push(self, block: Block) -> None:
        await self.send(m.NewBlock(block.encode()))

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)


# ----------------------------------------------------------------------------- the scene
async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


class Scene:
    """The node, its honest peer and the chain they share; every hostile peer is closed at the end."""

    def __init__(self, node: Node, network: TcpNetwork, chain: ChainBuilder, honest: RawPeer):
        self.node = node
        self.network = network
        self.chain = chain
        self.honest = honest
        self.peers: list[RawPeer] = [honest]

    async def hostile(self, name: str, **hello) -> RawPeer:
        peer = RawPeer(name)
        self.peers.append(peer)
        await peer.connect(self.network.listen_port, genesis_hash=self.node.genesis.hash, **hello)
        await eventually(lambda: self.connected(peer), f"{name} admitted")
        return peer

    def connected(self, peer: RawPeer) -> bool:
        return any(info.id == peer.id for info in self.network.peers())

    def reasons(self, peer: RawPeer) -> list[str]:
        return [record.reason for record in self.network.disconnects() if record.peer_id == peer.id]

    async def extend(self, transactions=()) -> Block:
        """The honest peer mines the next block; the node takes it as its head."""
        block = self.chain.valid_block(transactions)
        await self.honest.push(block)
        await eventually(lambda: self.node.head.hash == block.hash, f"block {block.height} imported")
        self.chain.accept(block)
        return block

    def assert_chain_kept(self, head: BlockHeader, *refused: Block) -> None:
        assert self.node.head == head
        for block in refused:
            assert self.node.store.block_header_by_hash(block.hash) is None
        assert self.connected(self.honest), "the honest peer must stay connected"
        assert not self.honest.closed.is_set()

    async def refused_with_penalty(self, peer: RawPeer, head: BlockHeader, *blocks: Block, points: int) -> None:
        await eventually(lambda: self.network.score_of(peer.id) <= -points, f"{peer.name} scored down by {points}")
        assert self.network.score_of(peer.id) == -points
        self.assert_chain_kept(head, *blocks)


def run_scene(tmp_path, scenario: Callable[[Scene], Awaitable[None]], timeout: float = 40.0) -> None:
    genesis = make_genesis()

    async def main() -> None:
        node_key = PrivateKey.generate()
        network = TcpNetwork(node_key, genesis.chain_id, genesis.hash, "127.0.0.1", 0, [])
        config = NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}", mine=False, p2p_port=0)
        node = Node(config, genesis, node_key, network)
        await node.start()
        honest = RawPeer("honest")
        scene = Scene(node, network, ChainBuilder(genesis), honest)
        try:
            async with asyncio.timeout(timeout):
                await honest.connect(network.listen_port, genesis_hash=genesis.hash)
                await eventually(lambda: scene.connected(honest), "honest peer admitted")
                for _ in range(3):  # a few blocks, so the median rule has timestamps to look at
                    await scene.extend()
                await scenario(scene)
                await a_good_transfer_still_goes_final(scene)
        finally:
            for peer in scene.peers:
                await peer.close()
            await node.stop()

    asyncio.run(main())


async def a_good_transfer_still_goes_final(scene: Scene) -> None:
    node = scene.node
    nonce = node.account(address_of(ALICE.public_key)).pending_nonce
    tx = transfer(ALICE, nonce)
    [result] = await node.submit([tx])
    assert getattr(result, "tx_id", None) == tx.id, result
    # Gossip: the node announces it to its peers (to the honest one at least).
    await eventually(lambda: any(tx.id in a.ids for a in scene.honest.got(m.TxAnnounce)), "the transfer announced")
    await scene.extend([tx])
    for _ in range(FINALITY_DEPTH):
        await scene.extend()
    record = node.transaction(tx.id)
    assert record is not None and record.status == "final", record
    assert node.account(BOB).balance >= 5


# ----------------------------------------------------------------------------- blocks that must be refused
def test_blocks_with_bad_proof_of_work_are_refused_and_the_sender_banned(tmp_path):
    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        peer = await scene.hostile("bad pow")
        bad = scene.chain.bad_pow_block()
        await peer.push(bad)
        await scene.refused_with_penalty(peer, head, bad, points=PENALTY_INVALID_BLOCK)
        assert scene.connected(peer)  # one bad block lowers the score; the second one bans

        # A block that declares a harder target than the retarget rule gives (to claim more
        # work), with a seal that meets the target it declares.
        claimed = round_target(scene.chain.target() // 4)
        wrong_target = Block(mine(scene.chain.unsealed(extra=compact_bytes(claimed)), claimed))
        await peer.push(wrong_target)
        await eventually(lambda: scene.network.is_banned(peer.id), "banned at the second invalid block")
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert not scene.connected(peer)
        [reason] = scene.reasons(peer)
        assert reason.startswith("banned for") and "invalid block" in reason
        scene.assert_chain_kept(head, bad, wrong_target)

    run_scene(tmp_path, scenario)


@pytest.mark.parametrize("case", ["bad_merkle_root", "bad_signature", "overspend", "future_timestamp",
                                  "timestamp_not_after_median", "bad_tx_count"])
def test_a_validly_sealed_block_with_one_bad_field_is_refused(tmp_path, case):
    async def scenario(scene: Scene) -> None:
        chain = scene.chain
        head = scene.node.head
        nonce = scene.node.account(address_of(ALICE.public_key)).nonce
        if case == "bad_merkle_root":
            bad = chain.valid_block([transfer(ALICE, nonce)], tx_root=crypto.sha256(b"not the root"))
        elif case == "bad_signature":
            bad = chain.valid_block([wrongly_signed_transfer(nonce)])
        elif case == "overspend":
            bad = chain.valid_block([transfer(ALICE, nonce, amount=BALANCE)])  # the fee makes it one too many
        elif case == "future_timestamp":
            bad = chain.valid_block(timestamp=int(time.time() * 1000) + 3_600_000)
        elif case == "timestamp_not_after_median":
            bad = chain.valid_block(timestamp=median_time_past(chain.window()))
        else:
            honest = chain.valid_block([transfer(ALICE, nonce)])
            bad = Block(honest.header)  # the header promises a transaction the block lacks
            with pytest.raises(DecodeError):
                Block.decode(bad.encode(), 10)
        peer = await scene.hostile(case)
        await peer.push(bad)
        await scene.refused_with_penalty(peer, head, bad, points=PENALTY_INVALID_BLOCK)
        # The honest chain goes on past the height the bad block wanted.
        await scene.extend()

    run_scene(tmp_path, scenario)


def test_a_bad_block_in_a_sync_answer_is_refused(tmp_path):
    """A peer that claims a longer chain is asked for blocks, and answers with a forged one."""

    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        forged = scene.chain.bad_pow_block()
        peer = RawPeer("liar")
        scene.peers.append(peer)

        async def answer(request: m.GetBlocks) -> None:
            await peer.send(m.Blocks((forged.encode(),)))

        peer.answers[m.GetBlocks] = answer
        await peer.connect(scene.network.listen_port, genesis_hash=scene.node.genesis.hash,
                           head_height=head.height + 50, head_hash=secrets.token_bytes(32))
        await eventually(lambda: peer.got(m.GetBlocks), "the node asks the peer that is ahead for blocks")
        await scene.refused_with_penalty(peer, head, forged, points=PENALTY_INVALID_BLOCK)
        # Its answer moved the head nowhere: it is not asked again for the same claim, and
        # the claim no longer makes the node report that it is syncing.
        await asyncio.sleep(0.3)
        assert len(peer.got(m.GetBlocks)) == 1
        assert not scene.node.node_info().syncing

    run_scene(tmp_path, scenario)


def test_a_sync_answer_commits_its_valid_blocks_before_a_bad_one_and_nothing_after(tmp_path):
    """Sync writes consecutive blocks in one database transaction; a bad block in the
    middle of an answer ends the batch: what came before it commits, nothing after."""

    async def scenario(scene: Scene) -> None:
        start = scene.node.head
        good = []
        for nonce in range(3):  # valid blocks, each with a transfer
            block = scene.chain.valid_block([transfer(ALICE, scene.node.account(address_of(ALICE.public_key)).nonce + nonce)])
            scene.chain.accept(block)
            good.append(block)
        forged = scene.chain.bad_pow_block()
        after = scene.chain.valid_block()  # valid on the forged block's parent: never reached
        peer = RawPeer("half-liar")
        scene.peers.append(peer)

        async def answer(request: m.GetBlocks) -> None:
            await peer.send(m.Blocks(tuple(block.encode() for block in (*good, forged, after))))

        peer.answers[m.GetBlocks] = answer
        await peer.connect(scene.network.listen_port, genesis_hash=scene.node.genesis.hash,
                           head_height=start.height + 50, head_hash=secrets.token_bytes(32))
        # A block with a bad proof of work gets its sender banned at once.
        await eventually(lambda: any("invalid block" in reason for reason in scene.reasons(peer)), "the forged block refused")
        assert scene.node.head == good[-1].header
        for block in good:
            assert scene.node.store.block_header_by_hash(block.hash) == block.header
            assert scene.node.transaction(block.transactions[0].id).block_height == block.height
        for block in (forged, after):
            assert scene.node.store.block_header_by_hash(block.hash) is None
        assert scene.node.state.total_supply() == scene.node.genesis.expected_supply(scene.node.head.height)

    run_scene(tmp_path, scenario)


def test_a_branch_of_forged_blocks_does_not_cost_the_node_its_chain(tmp_path):
    """A side branch that claims enormous work but carries no valid proof of it."""

    async def scenario(scene: Scene) -> None:
        chain = scene.chain
        head = scene.node.head
        fork_parent = chain.headers[-2]
        # A sibling of the head that declares target 1 (the most work a block can claim)
        # with a nonce that does not meet it.
        forged_header = build_header(CHAIN, fork_parent, head.timestamp + 1, [], MINER, compact_bytes(1))
        forged = Block(seal_with_nonce(forged_header, 0))
        peer = await scene.hostile("forged branch")
        events = scene.node.subscribe()
        await peer.push(forged)
        await eventually(lambda: scene.network.score_of(peer.id) < 0, "the forger scored down")
        scene.assert_chain_kept(head, forged)
        # Not even for a moment: reverting the head and committing it again would show as events.
        assert events.empty(), [events.get_nowait() for _ in range(events.qsize())]
        assert forged.hash not in scene.node.importer.side_blocks

    run_scene(tmp_path, scenario)


def test_a_heavier_branch_reverts_blocks_final_by_depth_and_says_so(tmp_path):
    """Proof of work after a partition that outlived the finality depth: each side holds
    blocks final by depth that the other lacks.  The node follows the heavier branch (it
    would otherwise stay split from the network for good) and records what it reverted."""

    async def scenario(scene: Scene) -> None:
        node = scene.node
        assert node.finalized_height >= 1
        other_side = ChainBuilder(scene.chain.genesis)  # mined from genesis on the other side of a split
        branch = []
        for _ in range(node.head.height + 2):
            block = other_side.valid_block()
            other_side.accept(block)
            branch.append(block)
        final_before = node.finalized_height
        peer = await scene.hostile("the other side")
        for block in branch:
            await peer.push(block)
        await eventually(lambda: node.head.hash == other_side.head.hash, "the node follows the heavier branch")
        reorg = node.importer.reorgs[-1]
        assert reorg["fork_height"] == 0 and reorg["reverted_final"] == final_before
        assert scene.network.score_of(peer.id) == 0, "valid blocks of another branch are no offence"
        scene.chain.headers = list(other_side.headers)  # the honest peer mines on from here

    run_scene(tmp_path, scenario)


def test_the_tip_of_a_shorter_branch_whose_ancestry_is_missing_is_fetched(tmp_path):
    """After a partition heals, a peer announces the new tip of its side, a branch no longer
    than ours.  The node must fetch that branch (under proof of stake the shorter branch may
    carry more votes): asking only peers that are ahead left 2|2 splits apart for good."""

    async def scenario(scene: Scene) -> None:
        node = scene.node
        head = node.head
        other_side = ChainBuilder(scene.chain.genesis)
        branch = []
        for _ in range(head.height - 1):
            block = other_side.valid_block()
            other_side.accept(block)
            branch.append(block)
        peer = await scene.hostile("the other side")

        async def answer(request: m.GetBlocks) -> None:
            await peer.send(m.Blocks(tuple(block.encode() for block in branch)))

        peer.answers[m.GetBlocks] = answer
        await peer.push(branch[-1])
        await eventually(lambda: peer.got(m.GetBlocks), "the node asks for the branch's ancestry")
        await eventually(lambda: all(block.hash in node.importer.side_blocks for block in branch),
                         "the whole branch held as side blocks")
        assert node.head == head, "a lighter branch under proof of work is kept, not followed"
        assert scene.network.score_of(peer.id) == 0

    run_scene(tmp_path, scenario)


# ----------------------------------------------------------------------------- frames and handshakes
def test_garbage_inside_a_valid_frame_is_scored_down(tmp_path):
    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        peer = await scene.hostile("garbage block")
        await peer.send(m.NewBlock(b"\x00\x00\x00\x05hello"))  # a well-formed message carrying no block
        await scene.refused_with_penalty(peer, head, points=50)
        await peer.send(m.TxBatch((b"\x01not a transaction",)))
        await eventually(lambda: scene.network.score_of(peer.id) <= -70, "an undecodable transaction costs more")
        scene.assert_chain_kept(head)

    run_scene(tmp_path, scenario)


def test_a_gossiped_transaction_with_a_bad_signature_is_scored_down_and_not_admitted(tmp_path):
    async def scenario(scene: Scene) -> None:
        peer = await scene.hostile("bad tx gossip")
        forged = wrongly_signed_transfer(0)
        await peer.send(m.TxAnnounce((forged.id,)))
        await eventually(lambda: peer.got(m.TxRequest), "the node asks for what was announced")
        assert peer.got(m.TxRequest)[0].ids == (forged.id,)
        await peer.send(m.TxBatch((forged.encode(),)))
        await eventually(lambda: scene.network.score_of(peer.id) <= -20, "scored down for the bad signature")
        assert scene.node.transaction(forged.id) is None
        assert len(scene.node.pool) == 0


def test_transactions_nobody_asked_for_are_not_admitted(tmp_path):
    async def scenario(scene: Scene) -> None:
        peer = await scene.hostile("unsolicited")
        pushed = [transfer(ALICE, nonce) for nonce in range(3)]
        await peer.send(m.TxBatch(tuple(tx.encode() for tx in pushed)))
        await eventually(lambda: scene.network.score_of(peer.id) < 0, "scored down for pushing")
        assert len(scene.node.pool) == 0
        # Announced, then asked for: the same transactions are admitted.
        await peer.send(m.TxAnnounce(tuple(tx.id for tx in pushed)))
        await eventually(lambda: peer.got(m.TxRequest), "asked for")
        await peer.send(m.TxBatch(tuple(tx.encode() for tx in pushed)))
        await eventually(lambda: len(scene.node.pool) == 3, "admitted once asked for")
        await scene.extend(pushed)  # mined by the honest peer, so the chain's nonces move on

    run_scene(tmp_path, scenario)


def test_garbage_frames_get_the_sender_banned(tmp_path):
    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        peer = await scene.hostile("garbage frames")
        await peer.send_raw(encode_frame(bytes((200,)) + b"junk"))  # an unknown message type
        await eventually(lambda: scene.network.score_of(peer.id) < 0, "scored down")
        for _ in range(10):
            if peer.closed.is_set():
                break
            await peer.send_raw(encode_frame(secrets.token_bytes(40)))
            await asyncio.sleep(0.02)
        await eventually(lambda: scene.network.is_banned(peer.id), "banned")
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert any(reason.startswith("banned for") for reason in scene.reasons(peer))
        scene.assert_chain_kept(head)

    run_scene(tmp_path, scenario)


def test_an_oversized_frame_disconnects_the_sender(tmp_path):
    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        peer = await scene.hostile("oversized")
        await peer.send_raw(struct.pack(">I", MAX_FRAME + 1) + b"\x0b" * 1024)
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert not scene.connected(peer)
        assert scene.network.score_of(peer.id) < 0
        assert any("oversized frame" in reason for reason in scene.reasons(peer))
        scene.assert_chain_kept(head)

    run_scene(tmp_path, scenario)


@pytest.mark.parametrize("other", ["chain", "genesis"])
def test_another_chains_handshake_is_refused(tmp_path, other):
    async def scenario(scene: Scene) -> None:
        head = scene.node.head
        peer = RawPeer(f"another {other}")
        scene.peers.append(peer)
        hello = {"chain": "another-chain"} if other == "chain" else {}
        genesis_hash = crypto.sha256(b"another genesis") if other == "genesis" else scene.node.genesis.hash
        theirs = await peer.connect(scene.network.listen_port, genesis_hash=genesis_hash, **hello)
        assert isinstance(theirs, m.Hello)  # the node says who it is, then refuses
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert peer.disconnect_reason is not None and f"another {other}" in peer.disconnect_reason
        assert not scene.connected(peer)
        assert [record for record in scene.network.disconnects() if f"another {other}" in record.reason]
        scene.assert_chain_kept(head)

    run_scene(tmp_path, scenario)


def test_a_peer_that_lied_about_its_height_does_not_leave_the_node_syncing(tmp_path):
    async def scenario(scene: Scene) -> None:
        peer = RawPeer("height liar")
        scene.peers.append(peer)
        await peer.connect(scene.network.listen_port, genesis_hash=scene.node.genesis.hash,
                           head_height=10**9, head_hash=secrets.token_bytes(32))
        await eventually(lambda: peer.got(m.GetBlocks), "the node asks the liar for blocks")
        assert scene.node.node_info().syncing
        await peer.send(m.Blocks(()))  # nothing after our head: the claim was a lie
        await peer.close()
        await eventually(lambda: not scene.connected(peer), "the liar gone")
        await eventually(lambda: not scene.node.node_info().syncing, "not syncing once the liar is gone")
        assert scene.node.node_info().sync_progress == 1.0

    run_scene(tmp_path, scenario)


def test_a_peer_that_claims_to_be_ahead_but_sends_nothing_is_not_asked_in_a_loop(tmp_path):
    async def scenario(scene: Scene) -> None:
        peer = RawPeer("empty answers")
        scene.peers.append(peer)

        async def answer(request: m.GetBlocks) -> None:
            await peer.send(m.Blocks(()))

        peer.answers[m.GetBlocks] = answer
        claimed = secrets.token_bytes(32)
        await peer.connect(scene.network.listen_port, genesis_hash=scene.node.genesis.hash,
                           head_height=10**6, head_hash=claimed)
        await eventually(lambda: peer.got(m.Blocks) or peer.got(m.GetBlocks), "asked once")
        await asyncio.sleep(0.5)
        assert len(peer.got(m.GetBlocks)) == 1, "asked again after an empty answer, with nothing new claimed"
        assert not scene.node.node_info().syncing  # its claim no longer counts
        # The same claim again changes nothing; a new head is worth asking about again.
        await peer.send(m.Status(10**6, claimed, 0))
        await asyncio.sleep(0.2)
        assert len(peer.got(m.GetBlocks)) == 1
        await peer.send(m.Status(10**6 + 1, secrets.token_bytes(32), 0))
        await eventually(lambda: len(peer.got(m.GetBlocks)) == 2, "asked about its new head")
        await asyncio.sleep(0.2)
        assert len(peer.got(m.GetBlocks)) == 2
        assert scene.connected(peer)

    run_scene(tmp_path, scenario)


def test_orphan_blocks_a_peer_parks_at_the_node_stay_within_a_byte_budget(tmp_path):
    """Blocks whose parent nobody knows cannot be checked yet; they must not pile up."""

    async def scenario(scene: Scene) -> None:
        side = scene.node.importer.side_blocks
        side.max_bytes = 2_000_000  # the production budget is 64 MB; the rule is the same
        head = scene.node.head
        filler = new_transfer(ALICE, CHAIN, 0, BOB, 1, 0, payload=bytes(200))
        peer = await scene.hostile("orphans")
        orphans = []
        for n in range(12):
            header = build_header(CHAIN, dataclasses.replace(head, parent=secrets.token_bytes(32), height=40 + n),
                                  head.timestamp + 1, [filler] * 1000, MINER, compact_bytes(1))
            orphans.append(Block(seal_with_nonce(header, n), (filler,) * 1000))
            await peer.push(orphans[-1])
        await eventually(lambda: orphans[-1].hash in side, "the last orphan seen")
        assert 0 < side.bytes <= side.max_bytes
        assert orphans[0].hash not in side  # the oldest made room
        assert side.bytes == sum(len(block.encode()) for block in orphans if block.hash in side)
        scene.assert_chain_kept(head, *orphans)

    run_scene(tmp_path, scenario)

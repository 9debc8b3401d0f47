"""The BFT engine run by the production runtime: four validators in one process over the
simulator's in-memory network (real time), plus a non-validator that follows."""

from __future__ import annotations

import asyncio

from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.config import NodeConfig
from node.runtime import Node
from node.sim.network import SimHub, SimNetwork
from node.testnet import make_genesis

KEYS = [PrivateKey(bytes(31) + bytes([i + 1])) for i in range(5)]
GENESIS = make_genesis("bft", KEYS[0], validators=KEYS[:4])
SENDER = dev_keys(1)[0]


def test_four_validators_finalize_transfers_and_a_follower_proves_every_block(tmp_path):
    async def scenario():
        hub = SimHub(7)
        nodes = []
        for index, key in enumerate(KEYS):
            folder = tmp_path / f"n{index}"
            config = NodeConfig(data_dir=folder, db=f"sqlite:///{folder / 'chain.db'}")
            nodes.append(Node(config, GENESIS, key, SimNetwork(hub, address_of(key.public_key).hex())))
        validators, follower = nodes[:4], nodes[4]
        for node in validators:
            await node.start()
        try:
            first = [new_transfer(SENDER, GENESIS.chain_id, n, bytes(20), 5) for n in range(10)]
            await validators[1].submit(first)
            assert set((await validators[2].wait_final([tx.id for tx in first], 20)).values()) == {"final"}
            await follower.start()
            second = [new_transfer(SENDER, GENESIS.chain_id, 10 + n, bytes(20), 5) for n in range(3)]
            await validators[3].submit(second)
            assert set((await validators[0].wait_final([tx.id for tx in second], 20)).values()) == {"final"}
            # One more block, so the follower holds a certificate for the block with `second`.
            third = new_transfer(SENDER, GENESIS.chain_id, 13, bytes(20), 5)
            await validators[0].submit([third])
            assert (await validators[0].wait_final([third.id], 20)) == {third.id: "final"}
            last = validators[0].transaction(second[-1].id).block_height
            top = validators[0].transaction(third.id).block_height
            # Validators commit a height at slightly different instants: wait for all of them.
            for _ in range(200):
                if follower.head.height >= last and all(node.head.height >= top for node in validators):
                    break
                await asyncio.sleep(0.05)
            assert all(node.head.height >= top for node in validators)
            for height in range(1, top + 1):  # one chain
                assert len({node.store.block_header(height).hash for node in validators}) == 1
            assert follower.head.height >= last
            for height in range(1, follower.head.height + 1):
                header = follower.store.block_header(height)
                assert header.hash == validators[0].store.block_header(height).hash
                validators[0].engine.verify_commit(header, follower.store.certificate(height))
            for node in nodes:
                assert node.state.total_supply() == GENESIS.expected_supply(node.head.height)
        finally:
            for node in nodes:
                if hasattr(node, "head"):
                    await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))

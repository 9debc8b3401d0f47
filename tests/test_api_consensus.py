"""GET /v1/validators, /v1/consensus and /v1/evidence on a solo node and on BFT validators."""

from __future__ import annotations

import asyncio

import httpx

from api.app import create_app
from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from node.config import NodeConfig
from node.runtime import Node
from node.sim.network import SimHub, SimNetwork
from node.testnet import make_genesis

KEYS = [PrivateKey(bytes(31) + bytes([i + 1])) for i in range(4)]


async def get(node: Node, path: str) -> dict:
    transport = httpx.ASGITransport(app=create_app(node))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


def test_a_solo_node_lists_its_authority_and_engine_state(tmp_path):
    async def scenario():
        genesis = dev_genesis(KEYS[0].public_key)
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'c.db'}"), genesis, KEYS[0])
        await node.start()
        try:
            validators = await get(node, "/v1/validators")
            assert validators["engine"] == "solo"
            assert [v["address"] for v in validators["validators"]] == [
                encode_address(genesis.address_prefix, address_of(KEYS[0].public_key))
            ]
            state = await get(node, "/v1/consensus")
            assert state["state"]["role"] == "producer" and state["height"] == 0
            assert (await get(node, "/v1/evidence"))["evidence"] == []
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_bft_validators_show_power_signing_and_the_round(tmp_path):
    async def scenario():
        genesis = make_genesis("bft", KEYS[0], validators=KEYS)
        hub = SimHub(3)
        nodes = []
        for index, key in enumerate(KEYS):
            folder = tmp_path / f"n{index}"
            config = NodeConfig(data_dir=folder, db=f"sqlite:///{folder / 'c.db'}")
            nodes.append(Node(config, genesis, key, SimNetwork(hub, address_of(key.public_key).hex())))
        for node in nodes:
            await node.start()
        try:
            from ledger.hdkeys import dev_keys
            from ledger.transaction import new_transfer

            tx = new_transfer(dev_keys(1)[0], genesis.chain_id, 0, bytes(20), 5)
            await nodes[0].submit([tx])
            assert (await nodes[1].wait_final([tx.id], 20))[tx.id] == "final"
            validators = (await get(nodes[2], "/v1/validators"))["validators"]
            assert sorted(v["address"] for v in validators) == sorted(
                encode_address(genesis.address_prefix, address_of(k.public_key)) for k in KEYS
            )
            assert all(v["power"] == 10 for v in validators)
            assert any(v["last_signed_height"] == 1 for v in validators)
            state = (await get(nodes[2], "/v1/consensus"))["state"]
            assert state["role"] == "validator" and state["height"] >= 2 and "round" in state and "step" in state
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))

"""Dev-chain controls on an in-process solo node through its REST app: mine, snapshot and
revert (chain, state, mempool, waiters, events), and the refusal on any other node."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.app import create_app
from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import dev_genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer
from node.config import NodeConfig
from node.runtime import Node
from node.testnet import make_genesis

NODE_KEY = PrivateKey(bytes(31) + b"\x07")
GENESIS = dev_genesis(NODE_KEY.public_key)
ALICE = dev_keys(1)[0]
BOB = address_of(PrivateKey(bytes(31) + b"\x09").public_key)


def run(coroutine, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def with_node(tmp_path, scenario, block_time: int = 0, genesis=GENESIS, key=NODE_KEY):
    node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'chain.db'}", block_time=block_time),
                genesis, key)
    await node.start()
    try:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await scenario(node, client)
    finally:
        await node.stop()


def balances(node: Node) -> dict:
    return {account: node.state.get(account) for account in (address_of(ALICE.public_key), BOB,
                                                              address_of(NODE_KEY.public_key))}


def test_mine_seals_the_blocks_asked_for_and_answers_once_they_are_on_the_chain(tmp_path):
    async def scenario(node, client):
        start = node.head.height
        answer = await client.post("/v1/dev/mine", params={"blocks": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [b["height"] for b in body["blocks"]] == [start + 1, start + 2, start + 3]
        assert (body["height"], body["hash"]) == (node.head.height, node.head.hash.hex()) == (start + 3, body["blocks"][-1]["hash"])
        assert node.block(start + 3).header.tx_count == 0  # empty blocks, sealed on request
        one = (await client.post("/v1/dev/mine")).json()
        assert [b["height"] for b in one["blocks"]] == [start + 4]

    run(with_node(tmp_path, scenario))


def test_snapshot_transfers_revert_gives_back_the_head_and_balances(tmp_path):
    async def scenario(node, client):
        await client.post("/v1/dev/mine")
        snap = (await client.post("/v1/dev/snapshot")).json()
        head, before = node.head, balances(node)
        assert (snap["height"], snap["hash"]) == (head.height, head.hash.hex())
        txs = [new_transfer(ALICE, GENESIS.chain_id, nonce, BOB, 1_000, fee=10) for nonce in range(3)]
        for tx in txs:
            await node.submit([tx])
            assert (await node.wait_final([tx.id], 10))[tx.id] == "final"
        assert node.head.height > head.height and balances(node) != before
        later = (await client.post("/v1/dev/snapshot")).json()
        events = node.subscribe()

        answer = await client.post(f"/v1/dev/revert/{snap['id']}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["reverted_blocks"] == 3  # one block per transfer: each waited to be final
        assert node.head == head == node.store.head()
        assert balances(node) == before
        assert node.store.load_accounts() == node.state.accounts
        assert all(node.transaction(tx.id) is None for tx in txs)
        event = await asyncio.wait_for(events.get(), 5)
        assert (event.kind, event.data["cause"], event.data["new_head"]) == ("reorg", "dev_revert", head.hash.hex())
        # Anvil's rule: the snapshot is used up, and so is every later one.
        for used in (snap["id"], later["id"]):
            gone = await client.post(f"/v1/dev/revert/{used}")
            assert gone.status_code == 404 and gone.json()["reason"] == "unknown_snapshot"
            assert gone.headers["content-type"] == "application/problem+json"
        # The chain goes on from the snapshot: the same transfers are valid again.
        await node.submit([txs[0]])
        assert (await node.wait_final([txs[0].id], 10))[txs[0].id] == "final"
        assert node.head.height == head.height + 1

    run(with_node(tmp_path, scenario))


def test_revert_drops_pending_transactions_and_answers_their_waiters(tmp_path):
    async def scenario(node, client):
        # The genesis is older than the block time: the first block comes at once; then an hour.
        await client.post("/v1/dev/mine")
        snap = (await client.post("/v1/dev/snapshot")).json()
        tx = new_transfer(ALICE, GENESIS.chain_id, 0, BOB, 5)
        await node.submit([tx])  # a block time of an hour: it waits in the mempool
        waiter = asyncio.create_task(node.wait_final([tx.id], 20))
        await asyncio.sleep(0.05)
        answer = (await client.post(f"/v1/dev/revert/{snap['id']}")).json()
        assert answer["dropped_transactions"] == 1 and answer["reverted_blocks"] == 0
        assert (await asyncio.wait_for(waiter, 2))[tx.id] == "unknown"
        assert len(node.pool) == 0 and node.account(address_of(ALICE.public_key)).pending_nonce == 0

    run(with_node(tmp_path, scenario, block_time=3600))


def test_block_time_seals_a_block_a_second_empty_or_not(tmp_path):
    async def scenario(node, client):
        while node.head.height == 0:  # the genesis is older than a second: block 1 comes at once
            await asyncio.sleep(0.01)
        start = node.head.height
        tx = new_transfer(ALICE, GENESIS.chain_id, 0, BOB, 5)
        await node.submit([tx])
        await asyncio.sleep(0.3)
        assert tx.id in node.pool  # transactions no longer wake the engine
        await asyncio.sleep(2.0)
        assert 2 <= node.head.height - start <= 3
        assert node.transaction(tx.id).status == "final"
        stamps = [node.block(h).header.timestamp for h in range(start + 1, node.head.height + 1)]
        assert all(900 <= b - a <= 1500 for a, b in zip(stamps, stamps[1:]))

    run(with_node(tmp_path, scenario, block_time=1))


@pytest.mark.parametrize("kind", ["bft", "pow", "solo follower"])
def test_a_node_that_is_not_a_dev_chains_sealer_refuses_with_a_problem(tmp_path, kind):
    if kind == "solo follower":
        node = Node(NodeConfig(data_dir=tmp_path), GENESIS, PrivateKey(bytes(31) + b"\x0b"))
    else:
        node = Node(NodeConfig(data_dir=tmp_path), make_genesis(kind, NODE_KEY, validators=[NODE_KEY]), NODE_KEY)

    async def scenario():
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            for path in ("/v1/dev/mine", "/v1/dev/snapshot", "/v1/dev/revert/1"):
                answer = await client.post(path)
                assert answer.status_code == 409, (path, answer.text)
                assert answer.headers["content-type"] == "application/problem+json"
                document = answer.json()
                assert document["type"] == "urn:ledger:problem:not_a_dev_chain"
                assert "dev chain" in document["detail"]

    run(scenario())
    node.store.close()


def test_bad_dev_inputs_get_problems_and_change_nothing(tmp_path):
    async def scenario(node, client):
        head = node.head
        for path, status, reason in (("/v1/dev/mine?blocks=0", 422, "out_of_range"),
                                     ("/v1/dev/mine?blocks=1001", 422, "out_of_range"),
                                     ("/v1/dev/mine?blocks=abc", 422, None),
                                     ("/v1/dev/revert/0", 422, "out_of_range"),
                                     ("/v1/dev/revert/x", 422, None),
                                     ("/v1/dev/revert/7", 404, "unknown_snapshot")):
            answer = await client.post(path)
            assert answer.status_code == status, (path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            if reason:
                assert answer.json()["reason"] == reason, (path, answer.text)
        assert (await client.get("/v1/dev/mine")).status_code == 405
        assert node.head == head
        schema = (await client.get("/openapi.json")).json()
        mine = schema["paths"]["/v1/dev/mine"]["post"]
        [blocks] = mine["parameters"]
        assert (blocks["schema"]["minimum"], blocks["schema"]["maximum"]) == (1, 1000)
        assert {"409", "504"} <= set(mine["responses"])
        assert "404" in schema["paths"]["/v1/dev/revert/{snapshot_id}"]["post"]["responses"]

    run(with_node(tmp_path, scenario))



def test_a_block_time_on_a_network_engine_is_refused_by_name():
    from consensus.registry import NotForThisEngine, create_engine

    with pytest.raises(NotForThisEngine, match="--block-time is for a dev chain"):
        create_engine(make_genesis("bft", NODE_KEY, validators=[NODE_KEY]), NODE_KEY, block_time_ms=1000)

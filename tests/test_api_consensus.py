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


async def start_validators(tmp_path, genesis, keys, hub: SimHub) -> list[Node]:
    """One started node a key, each with its own SQLite file, on the in-memory network."""
    nodes = []
    for index, key in enumerate(keys):
        folder = tmp_path / f"n{index}"
        config = NodeConfig(data_dir=folder, db=f"sqlite:///{folder / 'c.db'}")
        nodes.append(Node(config, genesis, key, SimNetwork(hub, address_of(key.public_key).hex())))
    for node in nodes:
        await node.start()
    return nodes


def test_a_solo_node_lists_its_authority_and_engine_state(tmp_path):
    async def scenario():
        genesis = dev_genesis(KEYS[0].public_key)
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'c.db'}"), genesis, KEYS[0])
        await node.start()
        try:
            authority = encode_address(genesis.address_prefix, address_of(KEYS[0].public_key))
            validators = await get(node, "/v1/validators")
            assert validators["engine"] == "solo" and validators["finality"] == "at_commit"
            assert [v["address"] for v in validators["validators"]] == [authority]
            # Genesis is nobody's block: nothing proposed, nothing signed yet.
            assert [(v["power"], v["blocks_proposed"], v["last_signed_height"]) for v in validators["validators"]] == [
                (1, 0, None)
            ]
            assert "note" not in validators or validators["note"] is None
            state = await get(node, "/v1/consensus")
            assert state["state"]["role"] == "producer" and state["height"] == 0
            assert state["state"]["finality"] == "at_commit" and state["state"]["round"] is None
            assert state["state"]["details"]["authority"] == KEYS[0].public_key.hex()
            assert (await get(node, "/v1/evidence"))["evidence"] == []

            from ledger.hdkeys import dev_keys
            from ledger.transaction import new_transfer

            tx = new_transfer(dev_keys(1)[0], genesis.chain_id, 0, bytes(20), 5)
            await node.submit([tx])
            assert (await node.wait_final([tx.id], 10))[tx.id] == "final"
            [authority_row] = (await get(node, "/v1/validators"))["validators"]
            assert (authority_row["blocks_proposed"], authority_row["last_signed_height"]) == (1, 1)
            # /v1/node shows the same typed status, as JSON.
            assert (await get(node, "/v1/node"))["extra"]["engine"]["validators"] == [authority_row]
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_bft_validators_show_power_signing_and_the_round(tmp_path):
    async def scenario():
        genesis = make_genesis("bft", KEYS[0], validators=KEYS)
        nodes = await start_validators(tmp_path, genesis, KEYS, SimHub(3))
        try:
            from ledger.hdkeys import dev_keys
            from ledger.transaction import new_transfer

            tx = new_transfer(dev_keys(1)[0], genesis.chain_id, 0, bytes(20), 5)
            await nodes[0].submit([tx])
            # Asked of the node that is asked next: another may have committed a moment earlier.
            assert (await nodes[2].wait_final([tx.id], 20))[tx.id] == "final"
            validators = (await get(nodes[2], "/v1/validators"))["validators"]
            assert sorted(v["address"] for v in validators) == sorted(
                encode_address(genesis.address_prefix, address_of(k.public_key)) for k in KEYS
            )
            assert all(v["power"] == 10 for v in validators)
            assert any(v["last_signed_height"] == 1 for v in validators)
            # Each committed block was proposed by one of them: the counts add up to the head.
            head = (await get(nodes[2], "/v1/node"))["height"]
            assert sum(v["blocks_proposed"] for v in validators) <= head
            assert sum(v["blocks_proposed"] for v in validators) >= 1
            answer = await get(nodes[2], "/v1/validators")
            assert (answer["finality"], answer["total_power"], answer["quorum_power"]) == ("certificate", 40, 27)
            state = (await get(nodes[2], "/v1/consensus"))["state"]
            assert state["role"] == "validator" and state["height"] >= 2 and "round" in state and "step" in state
            assert state["finality"] == "certificate" and isinstance(state["round"], int)
            assert state["step"] in ("propose", "prevote", "precommit", "decided")
            assert state["details"]["params"]["timeout_propose_ms"] > 0
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_block_records_an_equivocation_and_the_api_lists_it(tmp_path):
    """Three of four validators run; the test holds the fourth key and signs two prevotes
    for one height and round.  A validator that sees both reports them, the next block it
    proposes records them, every node stores the record, and GET /v1/evidence lists it."""
    from consensus import engine as ev
    from consensus.bft_messages import Vote, VoteType, encode_message
    from ledger.hdkeys import dev_keys
    from ledger.transaction import new_transfer

    async def scenario():
        genesis = make_genesis("bft", KEYS[0], validators=KEYS)
        nodes = await start_validators(tmp_path, genesis, KEYS[:3], SimHub(5))
        try:
            equivocator = address_of(KEYS[3].public_key)
            height = nodes[0].engine.height
            for value in (bytes(range(32)), None):
                vote = Vote.sign(KEYS[3], genesis.chain_id, VoteType.PREVOTE, height, 0, value)
                for node in nodes:
                    node.feed(ev.PeerMessage(node.now_ms(), "byzantine", encode_message(vote)))
            sender = dev_keys(1)[0]
            recorded = []
            for nonce in range(12):  # blocks until one of the validators that saw it proposes
                tx = new_transfer(sender, genesis.chain_id, nonce, bytes(20), 5)
                await nodes[nonce % 3].submit([tx])
                assert (await nodes[0].wait_final([tx.id], 20))[tx.id] == "final"
                recorded = nodes[0].store.evidence()
                if recorded:
                    break
            [(at, _, record)] = recorded
            assert (record.validator, record.height, record.round, record.kind) == (equivocator, height, 0, "duplicate_vote")
            for node in nodes[1:]:
                for _ in range(100):
                    if node.head.height >= at:
                        break
                    await asyncio.sleep(0.05)
                assert node.store.evidence(equivocator) == recorded
            address = encode_address(genesis.address_prefix, equivocator)
            listed = await get(nodes[1], f"/v1/evidence?validator={address}")
            assert [(item["validator"], item["height"], item["recorded_at"]) for item in listed["recorded"]] == [
                (address, height, at)
            ]
            assert listed["evidence"] and all(item["validator"] == address for item in listed["evidence"])
            # What the engine saw is the proof the chain recorded.
            assert record.data.hex() in [item["evidence"] for item in listed["evidence"]]
            other = encode_address(genesis.address_prefix, address_of(KEYS[0].public_key))
            assert (await get(nodes[1], f"/v1/evidence?validator={other}"))["recorded"] == []
            block = await get(nodes[2], f"/v1/blocks/{at}")
            assert [item["evidence"] for item in block["evidence"]] == [record.data.hex()]
            transport = httpx.ASGITransport(app=create_app(nodes[0]))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                page = (await client.get(f"/explorer/block/{at}")).text
                assert "Evidence of misbehaviour" in page and address in page and "duplicate vote" in page
                signers = page.split('aria-label="Certificate signers"')[1].split("</table>")[0]
                assert signers.count("<tr>") >= 1 + 3 and ">10<" in signers  # header row, 3 signers of power 10
                assert (await client.get("/v1/evidence?limit=1")).json()["next"] == f"{at}:0"
                assert (await client.get(f"/v1/evidence?before={at}:0")).json()["recorded"] == []
                for bad in ("validator=notanaddress", "limit=0", "before=-1", "before=7", "before=1:x"):
                    response = await client.get(f"/v1/evidence?{bad}")
                    assert response.status_code in (400, 422), (bad, response.text)
                    assert response.headers["content-type"].startswith("application/problem+json")
        finally:
            for node in nodes:
                await node.stop()

    asyncio.run(asyncio.wait_for(scenario(), 90))

"""One proof-of-stake node in process, on the wall clock: a single validator holds all the
stake, so its checkpoints justify and finalize alone, and the node tells its clients when
blocks become final after they were added (the `finalized` event, `wait=final`)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
from dataclasses import replace

from api.app import create_app
from ledger.transaction import new_transfer
from node.config import NodeConfig
from node.runtime import Node
from pos_helpers import KEYS, owner, pos_genesis


def test_a_lone_validator_finalizes_and_the_events_stream_says_when(tmp_path):
    genesis = replace(pos_genesis(1, slot_ms=100, slots_per_epoch=2), timestamp=int(time.time() * 1000))

    async def scenario() -> None:
        node = Node(NodeConfig(data_dir=tmp_path, db=f"sqlite:///{tmp_path / 'c.db'}"), genesis, KEYS[0])
        await node.start()
        events = node.subscribe()
        try:
            tx = new_transfer(KEYS[0], genesis.chain_id, 0, owner(1), 5, 0)
            [result] = await node.submit([tx])
            assert getattr(result, "tx_id", None) == tx.id, result
            statuses = await node.wait_final([tx.id], timeout=15)
            assert statuses == {tx.id: "final"}
            record = node.transaction(tx.id)
            finalized = []
            async with asyncio.timeout(5):
                while not finalized or finalized[-1]["height"] < record.block_height:
                    event = await events.get()
                    if event.kind == "finalized":
                        finalized.append(event.data)
            heights = [item["height"] for item in finalized]
            assert heights == sorted(set(heights)), "finality only moves forward, once per height"
            assert finalized[-1]["hash"] == node.store.block_header(finalized[-1]["height"]).hash.hex()
            assert node.finalized_height >= record.block_height
            # The block says its slot and epoch (Engine.block_labels), in the API and the explorer.
            block = node.block(record.block_height)
            labels = dict(block.labels)
            slot = (block.header.timestamp - genesis.timestamp) // 100
            assert labels["slot"] == str(slot) and labels["epoch"] == str(slot // 2)
            assert int(labels["missed slots before it"]) >= 0 and len(labels["RANDAO reveal"]) == 128
            transport = httpx.ASGITransport(app=create_app(node))
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
                shown = (await client.get(f"/v1/blocks/{record.block_height}")).json()
                assert shown["labels"] == labels
                page = (await client.get(f"/explorer/block/{record.block_height}")).text
                assert "Consensus" in page and f"<dd class=\"\">{slot}</dd>" in page
                validators = (await client.get("/explorer/validators")).text
                assert "active" in validators and "LED" in validators
                # Its checkpoints, as GET /v1/consensus has them (read around the page: finality
                # moves on), with links to their blocks.
                before = (await client.get("/v1/consensus")).json()["state"]["finalized"]
                validators = (await client.get("/explorer/validators")).text
                after = (await client.get("/v1/consensus")).json()["state"]["finalized"]
                row = validators.split('<tr data-key="finalized">')[1].split("</tr>")[0]
                shown = int(re.search(r'data-field="epoch">(\d+)</td>', row).group(1))
                assert before["epoch"] <= shown <= after["epoch"] and shown >= 1
                roots = {c["epoch"]: c["block_hash"] for c in (before, after)}
                assert shown not in roots or roots[shown] in row
                assert re.search(r'href="/explorer/block/\d+"', row)
                assert "Slashings" in validators and "No misbehaviour seen" in validators
        finally:
            node.unsubscribe(events)
            await node.stop()

    asyncio.run(scenario())

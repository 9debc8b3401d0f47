"""The network simulator: virtual time, the in-memory network's faults, and seeded runs of
production nodes whose invariants hold, replay exactly, and catch a node that breaks them."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consensus.solo import SoloEngine
from node.p2p.messages import NewBlock, Status, TxAnnounce
from node.p2p.network import PeerInfo
from node.sim import __main__ as cli
from node.sim.config import FAULT_KINDS, SimConfig, SimulationFailure
from node.sim.harness import run_seed
from node.sim.loop import ACTOR, SimulationIdle, VirtualTimeLoop, inline_blocking, run
from node.sim.network import BAN_SECONDS, SimHub, SimNetwork

ROOT = Path(__file__).resolve().parent.parent

# The CI-sized run: 10 virtual seconds of transfers under a fault every 0.3-1.5 s.
SOLO_SEEDS = range(1, 25)
POW_SEEDS = range(1, 9)


def ci_config(seed: int, **changes) -> SimConfig:
    settings = dict(seed=seed, duration=10.0, tx_per_second=10.0, fault_gap=(0.3, 1.5))
    settings.update(changes)
    return SimConfig(**settings)


# ----------------------------------------------------------------------------- virtual time


def test_virtual_time_runs_ten_minutes_of_timers_at_once():
    fired: list[float] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        for minute in range(10, 0, -1):
            loop.call_later(minute * 60, lambda: fired.append(loop.time()))
        await asyncio.sleep(600)
        # Worker threads would let real time leak in: the executor runs inline instead.
        assert await asyncio.to_thread(lambda: 7) == 7
        assert await inline_blocking(pow, 2, 10) == 1024
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(30), 5)
        return loop.time()

    started = time.perf_counter()
    assert run(main()) == pytest.approx(605.0)
    assert time.perf_counter() - started < 1.0
    assert fired == pytest.approx([60.0 * m for m in range(1, 11)])


def test_a_simulation_with_nothing_left_to_wait_for_stops_with_an_error():
    async def wait_forever() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationIdle):
        run(wait_forever())


def test_killing_an_actor_cancels_its_tasks_and_timers_only():
    events: list[str] = []

    async def worker(name: str) -> None:
        asyncio.get_running_loop().call_later(5, events.append, f"{name} timer")
        await asyncio.sleep(10)
        events.append(f"{name} done")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        for name in ("a", "b"):
            context = contextvars.copy_context()
            context.run(ACTOR.set, name)
            loop.create_task(worker(name), context=context)
        await asyncio.sleep(1)
        assert len(loop.actor_tasks("a")) == 1
        assert loop.kill_actor("a") == 3  # its task, its timer and the timer of the sleep it is in
        await asyncio.sleep(20)
        assert loop.actor_tasks("a") == []

    run(main())
    assert events == ["b timer", "b done"]


# ----------------------------------------------------------------------------- the network


@dataclass
class RecordingHandler:
    events: list[tuple] = field(default_factory=list)

    def on_peer_connected(self, peer: PeerInfo) -> None:
        self.events.append(("connected", peer.id, peer.head_height))

    def on_peer_message(self, peer_id: str, message: object) -> None:
        self.events.append(("message", peer_id, message))

    def on_peer_disconnected(self, peer_id: str) -> None:
        self.events.append(("disconnected", peer_id))

    def messages(self) -> list[object]:
        return [event[2] for event in self.events if event[0] == "message"]

    def peers_seen(self, kind: str) -> list[str]:
        return [event[1] for event in self.events if event[0] == kind]


IDS = ["aa" * 20, "bb" * 20, "cc" * 20]


async def start_network(hub: SimHub, count: int = 3) -> tuple[list[SimNetwork], list[RecordingHandler]]:
    networks = [SimNetwork(hub, node_id) for node_id in IDS[:count]]
    handlers = [RecordingHandler() for _ in networks]
    for index, (network, handler) in enumerate(zip(networks, handlers)):
        hub.name(network.node_id, f"n{index}")
        await network.start(handler)
    await asyncio.sleep(1)
    return networks, handlers


def announce(n: int) -> TxAnnounce:
    return TxAnnounce(tuple(bytes([n]) * 32 for _ in range(2)))


def test_messages_cross_the_wire_as_bytes_and_peers_see_each_other():
    async def main():
        hub = SimHub(1)
        networks, handlers = await start_network(hub)
        assert [p.id for p in networks[0].peers()] == IDS[1:]
        assert sorted(handlers[2].peers_seen("connected")) == IDS[:2]
        networks[0].update_status(7, b"\x01" * 32, 5)
        networks[0].broadcast(announce(1), exclude=frozenset({IDS[2]}))
        networks[1].send(IDS[2], NewBlock(b"block"))
        await asyncio.sleep(1)
        return hub, networks, handlers

    hub, networks, handlers = run(main())
    assert handlers[1].messages() == [Status(7, b"\x01" * 32, 5), announce(1)]
    assert handlers[2].messages() == [Status(7, b"\x01" * 32, 5), NewBlock(b"block")]
    info = next(p for p in networks[2].peers() if p.id == IDS[0])
    assert (info.head_height, info.head_hash, info.finalized_height) == (7, b"\x01" * 32, 5)
    assert hub.stats.sent == Counter({"Status": 2, "TxAnnounce": 1, "NewBlock": 1})
    assert hub.stats.announced_ids == 2 and hub.stats.delivered == 4


def test_drops_and_duplicates_follow_the_fault_settings():
    async def main():
        hub = SimHub(2)
        networks, handlers = await start_network(hub, 2)
        hub.faults.drop = 1.0
        networks[0].send(IDS[1], announce(1))
        hub.faults.drop, hub.faults.duplicate = 0.0, 1.0
        networks[0].send(IDS[1], announce(2))
        await asyncio.sleep(1)
        return hub, handlers

    hub, handlers = run(main())
    assert handlers[1].messages() == [announce(2), announce(2)]
    assert (hub.stats.dropped, hub.stats.duplicated) == (1, 1)


def test_a_link_delivers_in_order_unless_reordering_is_on():
    async def deliver(reorder: bool) -> list[object]:
        hub = SimHub(3)
        networks, handlers = await start_network(hub, 2)
        hub.faults.delay_ms = (1.0, 500.0)
        hub.faults.reorder = reorder
        for n in range(40):
            networks[0].send(IDS[1], announce(n))
        await asyncio.sleep(2)
        return handlers[1].messages()

    in_order = run(deliver(False))
    assert in_order == [announce(n) for n in range(40)]
    shuffled = run(deliver(True))
    assert sorted(shuffled, key=lambda m: m.ids[0]) == in_order and shuffled != in_order


def test_partitions_cut_links_and_heal_restores_them():
    async def main():
        hub = SimHub(4)
        networks, handlers = await start_network(hub)
        hub.partition([[IDS[0]], [IDS[1], IDS[2]]])
        await asyncio.sleep(0.1)
        cut = ([p.id for p in networks[0].peers()], [p.id for p in networks[1].peers()])
        networks[0].broadcast(announce(9))  # nobody to reach
        networks[1].send(IDS[0], announce(9))
        hub.heal()
        await asyncio.sleep(1)
        return hub, networks, handlers, cut

    hub, networks, handlers, cut = run(main())
    assert cut == ([], [IDS[2]])
    assert handlers[0].peers_seen("disconnected") == IDS[1:]
    assert [p.id for p in networks[0].peers()] == IDS[1:]
    assert handlers[0].peers_seen("connected").count(IDS[1]) == 2  # first start, then after the heal
    assert announce(9) not in handlers[0].messages() + handlers[1].messages()
    assert hub.stats.unroutable == 1


def test_a_crash_loses_messages_in_flight_and_its_peers_hear_of_it():
    async def main():
        hub = SimHub(5)
        networks, handlers = await start_network(hub)
        hub.faults.delay_ms = (100.0, 200.0)
        networks[0].send(IDS[1], announce(1))  # in flight when n1 crashes
        networks[1].send(IDS[0], announce(2))  # and its own last words
        await asyncio.sleep(0.05)
        hub.crash(IDS[1])
        await asyncio.sleep(1)
        restarted = SimNetwork(hub, IDS[1])
        fresh = RecordingHandler()
        await restarted.start(fresh)
        await asyncio.sleep(1)
        return hub, handlers, fresh

    hub, handlers, fresh = run(main())
    assert handlers[1].messages() == []
    assert handlers[0].messages() == [] and handlers[0].peers_seen("disconnected") == [IDS[1]]
    assert sorted(fresh.peers_seen("connected")) == [IDS[0], IDS[2]]
    assert hub.stats.lost_in_flight == 2


def test_a_peer_penalized_to_the_ban_score_is_cut_off_then_let_back():
    async def main():
        hub = SimHub(6)
        networks, handlers = await start_network(hub, 2)
        networks[0].penalize(IDS[1], 60, "bad block")
        assert networks[0].peers()[0].score == -60
        # The ban's second penalty comes from code owned by a node's actor, which then dies:
        # the hub's own timer (the ban's end) must outlive it.
        context = contextvars.copy_context()
        context.run(ACTOR.set, "judge")
        context.run(networks[0].penalize, IDS[1], 60, "bad block")
        asyncio.get_running_loop().kill_actor("judge")
        await asyncio.sleep(1)
        banned = (networks[0].peers(), networks[1].peers())
        await asyncio.sleep(BAN_SECONDS)
        return hub, networks, banned

    hub, networks, banned = run(main())
    assert banned == ([], [])
    assert [p.id for p in networks[0].peers()] == [IDS[1]]
    assert hub.stats.bans == 1 and [p[3] for p in hub.stats.penalties] == ["bad block", "bad block"]


# ----------------------------------------------------------------------------- seeded runs


@pytest.mark.parametrize("seed", SOLO_SEEDS)
def test_solo_four_nodes_keep_every_invariant_under_faults(seed):
    result = run_seed(ci_config(seed))
    assert result.final == result.submitted > 0
    assert result.head_height > 0
    assert result.reorgs == 0  # one authority: nothing to fork


@pytest.mark.parametrize("seed", POW_SEEDS)
def test_pow_four_nodes_keep_every_invariant_under_faults(seed):
    result = run_seed(ci_config(seed, consensus="pow"))
    assert result.final == result.submitted > 0
    assert result.head_height > 12  # past the finality depth, or nothing would be final


def test_pow_partitions_fork_the_chain_and_the_nodes_reorg_back_to_one():
    # 30 virtual seconds hold a dozen partitions or more: some split leaves both sides mining.
    result = run_seed(ci_config(1, consensus="pow", faults=frozenset({"partition"}), duration=30.0, tx_per_second=5.0))
    assert result.faults["partition"] > 0
    assert result.reorgs > 0
    assert result.final == result.submitted


def test_the_ci_seeds_cover_every_fault_kind():
    applied: Counter = Counter()
    for seed in SOLO_SEEDS[:12]:
        applied.update(run_seed(ci_config(seed, tx_per_second=2.0)).faults)
    assert set(FAULT_KINDS) | {"heal", "restart", "calm"} <= set(applied), applied


def test_a_seed_replays_the_same_trace():
    first = run_seed(ci_config(7))
    again = run_seed(ci_config(7))
    other = run_seed(ci_config(8))
    assert first.digest == again.digest and first.steps == again.steps
    assert other.digest != first.digest


def test_a_seed_replays_the_same_trace_whatever_the_hash_seed():
    """Nothing may iterate over a set of ids or hashes: their hashing changes between processes.
    Proof of work under partitions, so fork choice and reorgs are part of the run."""
    code = (
        "from node.sim.harness import SimConfig, run_seed\n"
        "r = run_seed(SimConfig(seed=1, consensus='pow', duration=30.0, tx_per_second=5.0, fault_gap=(0.3, 1.5),"
        " faults=frozenset({'partition'})))\n"
        "print(r.digest, r.reorgs)\n"
    )
    outputs = set()
    for hash_seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
    digest, reorgs = outputs.pop().split()
    assert len(digest) == 64 and int(reorgs) > 0


def test_a_node_that_finalizes_its_own_fork_is_caught_with_the_seed():
    def usurp(slot, node):
        # Node 1 believes it is the authority: it seals and finalizes blocks of its own.
        if slot.index == 1:
            params = dict(node.genesis.engine_params, authority=slot.key.public_key.hex())
            node.engine = SoloEngine(params, slot.key)

    with pytest.raises(SimulationFailure) as caught:
        run_seed(ci_config(11, faults=frozenset()), on_node=usurp)
    failure = caught.value
    assert failure.seed == 11
    assert "two nodes finalized different blocks" in failure.reason
    assert "--seeds 11 " in failure.replay and "seed 11" in str(failure)
    assert failure.trace and failure.step > 0


def test_a_run_that_spins_past_its_step_budget_fails_instead_of_hanging():
    with pytest.raises(SimulationFailure) as caught:
        run_seed(ci_config(4, faults=frozenset(), max_steps=200))
    assert "more than 200 loop steps" in caught.value.reason and caught.value.step == 201


def test_a_message_storm_fails_the_run_within_a_virtual_second():
    with pytest.raises(SimulationFailure) as caught:
        run_seed(ci_config(4, faults=frozenset(), max_messages_per_second=40))
    failure = caught.value
    assert "message storm: more than 40 messages within virtual second" in failure.reason
    assert failure.at < 2.0


def test_messages_per_transaction_stay_near_one_announce_per_link():
    config = ci_config(5, faults=frozenset(), duration=10.0, tx_per_second=30.0)
    result = run_seed(config)
    assert result.final == result.submitted > 200
    # Announce-then-fetch: each node announces a transaction to its peers but the one it
    # came from, so a link carries it at most once each way; a flood would be far above.
    assert result.announces_per_tx_link() <= 1.5
    # Each of the other nodes fetches each transaction once.
    assert result.stats.requested_ids / result.final <= config.nodes - 1
    assert result.stats.batched_txs <= result.stats.requested_ids


# ----------------------------------------------------------------------------- the command


def test_the_command_runs_seeds_and_summarizes(capsys):
    code = cli.main(["--seeds", "1-2", "--faults", "none", "--duration", "3", "--verbose"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("ok   seed") == 2 and "2 seeds, 0 failed" in out


def test_the_command_prints_failing_seeds_with_a_replay_and_exits_non_zero(capsys, monkeypatch):
    def fail_on_even(config, on_node=None, echo=None):
        if config.seed % 2 == 0:
            raise SimulationFailure(config.seed, 12, 3.5, "heads differ", ["a trace line"], config.replay_command(), "00")
        return run_seed(config, on_node, echo)

    monkeypatch.setattr(cli, "run_seed", fail_on_even)
    code = cli.main(["--seeds", "1-4", "--faults", "none", "--duration", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert [line.split()[2] for line in failed] == ["2:", "4:"]
    assert "replay: python -m node.sim --seeds 4 " in failed[1]
    assert lines[-1].startswith("4 seeds, 2 failed")


@pytest.mark.parametrize("argv", [["--seeds", "9-3"], ["--seeds", "x"], ["--faults", "meteor"], ["--nodes", "0"],
                                  ["--consensus", "paxos"], ["--duration", "-1"]])
def test_the_command_refuses_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err

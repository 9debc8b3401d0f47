"""How a proof-of-work testnet starts: an easy first block, then the retargeting climbs to
the 2 s block time without overshooting; and the miner's worker stays below its node
(lower priority, deaf to a terminal's Ctrl-C) so four miners do not slow four nodes'
start-up on two cores."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from consensus.pow import PowParams, compact_bytes, next_target, work_of_target
from ledger.block import BlockHeader
from ledger.crypto import PrivateKey
from node.mining import MINER_NICENESS, ProcessMiner
from node.testnet import make_genesis
from tests.test_network_process import children_of

HASH_RATE = 2_000_000  # the four miners of a testnet on this machine's two cores, together


def block_times(params: PowParams, blocks: int, hash_rate: float) -> list[float]:
    """Seconds per block when every block takes exactly its expected work at `hash_rate`."""
    chain = [BlockHeader("t", 0, bytes(32), 0, bytes(32), 0, bytes(20), b"")]
    clock, times = 0.0, []
    for height in range(1, blocks + 1):
        target = next_target(chain[-params.ancestors_needed:], params)
        seconds = work_of_target(target) / hash_rate
        clock += seconds
        times.append(seconds)
        chain.append(BlockHeader("t", height, chain[-1].hash, int(clock * 1000), bytes(32), 0, bytes(20),
                                 compact_bytes(target)))
    return times


def test_the_testnet_genesis_starts_easy_and_climbs_to_the_block_time_without_overshooting():
    params = PowParams.from_genesis(make_genesis("pow", PrivateKey.generate()).engine_params)
    target_s = params.target_block_ms / 1000
    times = block_times(params, 80, HASH_RATE)
    assert times[0] <= target_s / 4  # the first block: a quarter of a 2 s block's work
    assert max(times) <= target_s
    assert all(abs(seconds - target_s) <= 0.05 * target_s for seconds in times[60:]), times[60:]


def worker_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()


async def probe_a_miners_worker() -> tuple[int, int]:
    """The worker's niceness and ignored-signal mask, read from /proc while it mines."""
    slices: list[int] = []
    miner = ProcessMiner(on_hashes=lambda hashes, rate: slices.append(hashes))
    header = BlockHeader("nice-test", 1, bytes(32), 0, bytes(32), 0, bytes(20), bytes(4))
    miner.start(header, 0, lambda found: None)  # target 0: never found, the worker keeps hashing
    try:
        deadline = time.monotonic() + 30
        while not slices:  # a slice came back: the worker's initializer has run
            assert time.monotonic() < deadline, "the miner's worker reported no slice within 30 s"
            await asyncio.sleep(0.02)
        [worker] = [pid for pid in children_of(os.getpid()) if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
        with open(f"/proc/{worker}/stat", encoding="ascii") as stat:
            niceness = int(stat.read().rsplit(")", 1)[1].split()[16])  # stat field 19
        with open(f"/proc/{worker}/status", encoding="ascii") as status:
            ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        return niceness, ignored
    finally:
        miner.close()


def test_the_miner_worker_runs_below_its_node_and_ignores_ctrl_c():
    niceness, ignored = asyncio.run(probe_a_miners_worker())
    assert niceness == min(19, os.nice(0) + MINER_NICENESS)
    # Signal n is bit n - 1 of the mask.
    assert ignored & (1 << (signal.SIGINT - 1)), "a terminal's Ctrl-C would kill the worker mid-slice"

"""Proof of work: compact targets, retargeting, the seal rules, fork choice, the mining
search and the engine state machine driven by hand-fed events."""

from __future__ import annotations

import dataclasses
import hashlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import mining
from consensus.engine import (
    BlockBuilt,
    BlockCommitted,
    BuildBlock,
    Commit,
    InvalidSeal,
    Mine,
    Mined,
    SetTimer,
    Started,
    StopMining,
    Tick,
    TxsAvailable,
)
from consensus.pow import (
    MAX_TARGET,
    PowEngine,
    PowParams,
    block_work,
    compact_bytes,
    from_compact,
    median_time_past,
    next_target,
    round_target,
    to_compact,
    verify_seal,
    work_of_target,
)
from consensus.registry import create_engine
from ledger.address import address_of
from ledger.block import Block, BlockHeader, build_header
from ledger.crypto import PrivateKey
from ledger.engine_status import Finality
from ledger.genesis import Genesis
from ledger.hdkeys import dev_keys
from ledger.transaction import new_transfer

CHAIN = "pow-test"
MINER = bytes(range(20))
OTHER_MINER = bytes(range(1, 21))
EASY = "207fffff"  # half of all hashes meet it: a block every two attempts
GENESIS_TIME = 1_700_000_000_000


def params(**overrides) -> PowParams:
    raw = {"target_block_ms": 1000, "initial_target": EASY, "retarget_window": 10, "max_step": 2,
           "finality_depth": 3, "max_future_ms": 5000, "max_reorg_depth": 20}
    raw.update(overrides)
    return PowParams.from_genesis(raw)


def genesis_header(timestamp: int = GENESIS_TIME) -> BlockHeader:
    return BlockHeader(CHAIN, 0, bytes(32), timestamp, hashlib.sha256(b"").digest(), 0, bytes(20), b"\x11" * 32)


def mine_on(chain: list[BlockHeader], p: PowParams, timestamp: int, proposer: bytes = MINER,
            transactions=(), target: int | None = None) -> BlockHeader:
    """The next valid block on `chain` at `timestamp` (or with a forced target)."""
    target = next_target(chain, p) if target is None else target
    unsealed = build_header(CHAIN, chain[-1], timestamp, list(transactions), proposer, compact_bytes(target))
    sealed = mining.mine(unsealed, target)
    assert sealed is not None
    return sealed


def mined_chain(p: PowParams, length: int, spacing: int, start: int = GENESIS_TIME) -> list[BlockHeader]:
    chain = [genesis_header(start)]
    for i in range(1, length + 1):
        chain.append(mine_on(chain, p, start + i * spacing))
    return chain


# ----------------------------------------------------------------------------- compact targets


def test_compact_known_values():
    # Bitcoin's genesis difficulty, regtest's limit and the worked example of its docs.
    assert from_compact(0x1D00FFFF) == 0xFFFF << (8 * 26)
    assert from_compact(0x207FFFFF) == MAX_TARGET == 0x7FFFFF << (8 * 29)
    assert from_compact(0x1B0404CB) == 0x0404CB << (8 * 24)
    assert to_compact(0xFFFF << (8 * 26)) == 0x1D00FFFF
    assert to_compact(1) == 0x01010000 and from_compact(0x01010000) == 1
    assert to_compact(0x80) == 0x02008000  # the top mantissa bit is a sign: shift a byte up
    assert compact_bytes(MAX_TARGET) == bytes.fromhex("207fffff")


@given(st.integers(min_value=1, max_value=(1 << 256) - 1))
def test_compact_round_trip_from_target(target):
    bits = to_compact(target)
    rounded = from_compact(bits)
    size = bits >> 24
    assert rounded <= target
    assert target - rounded < 1 << (8 * max(size - 3, 0))  # only bytes past the third are lost
    assert to_compact(rounded) == bits and round_target(rounded) == rounded


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_compact_round_trip_from_bits(bits):
    try:
        target = from_compact(bits)
    except ValueError:
        # Refused: negative, zero, overflowing or not canonical; never silently re-read.
        size, mantissa = bits >> 24, bits & 0xFFFFFF
        value = mantissa >> 8 * (3 - size) if size <= 3 else mantissa << 8 * (size - 3)
        assert mantissa & 0x800000 or value == 0 or value >= 1 << 256 or to_compact(value) != bits
        return
    assert to_compact(target) == bits


@pytest.mark.parametrize("bits, problem", [
    (0x04800000, "negative"), (0x03000000, "zero"), (0x01003456, "zero"), (0x22010000, "overflows"),
    (0x04001234, "canonical"), (0x02123456, "canonical"),
])
def test_compact_refuses_bad_bits(bits, problem):
    with pytest.raises(ValueError, match=problem):
        from_compact(bits)


def test_to_compact_refuses_targets_outside_256_bits():
    for target in (0, -1, 1 << 256):
        with pytest.raises(ValueError):
            to_compact(target)


# ----------------------------------------------------------------------------- parameters


def test_params_accept_compact_or_full_targets_and_defaults():
    p = PowParams.from_genesis({"target_block_ms": 2000, "initial_target": "1f00ffff"})
    assert p.initial_target == 0xFFFF << (8 * 28)
    assert (p.retarget_window, p.max_step, p.finality_depth, p.max_future_ms, p.max_reorg_depth) == (45, 2, 6, 15000, 100)
    assert p.ancestors_needed == 46
    full = PowParams.from_genesis({"target_block_ms": 2000, "initial_target": "0x" + "00ffff" + "ab" * 29})
    assert full.initial_target == 0xFFFF << (8 * 29)  # rounded down: the third byte (ab) would set the sign bit
    assert PowParams.from_genesis({"target_block_ms": 1, "initial_target": 1 << 200}).initial_target == 1 << 200
    assert PowParams.from_genesis({"target_block_ms": 1, "initial_target": EASY, "max_step": 1.5}).max_step == Fraction(3, 2)
    assert params(retarget_window=3).ancestors_needed == 11  # the median rule reads 11


@pytest.mark.parametrize("raw, message", [
    ({"initial_target": EASY}, "target_block_ms is required"),
    ({"target_block_ms": 1000}, "initial_target is required"),
    ({"target_block_ms": 0, "initial_target": EASY}, "target_block_ms must be an integer"),
    ({"target_block_ms": True, "initial_target": EASY}, "target_block_ms must be an integer"),
    ({"target_block_ms": 1000, "initial_target": "zz00ffff"}, "initial_target"),
    ({"target_block_ms": 1000, "initial_target": "12345"}, "initial_target"),
    ({"target_block_ms": 1000, "initial_target": "20800000"}, "negative"),
    ({"target_block_ms": 1000, "initial_target": "21008000"}, "above the largest target"),
    ({"target_block_ms": 1000, "initial_target": 0}, "initial_target"),
    ({"target_block_ms": 1000, "initial_target": 2.5}, "initial_target"),
    ({"target_block_ms": 1000, "initial_target": EASY, "max_step": 1}, "max_step"),
    ({"target_block_ms": 1000, "initial_target": EASY, "max_step": "2"}, "max_step"),
    ({"target_block_ms": 1000, "initial_target": EASY, "retarget_window": 0}, "retarget_window"),
    ({"target_block_ms": 1000, "initial_target": EASY, "finality_depth": -1}, "finality_depth"),
    ({"target_block_ms": 1000, "initial_target": EASY, "max_reorg_depth": 0}, "max_reorg_depth"),
    ({"target_block_ms": 1000, "initial_target": EASY, "finality": 6}, "unknown engine.params finality"),
    ([], "must be an object"),
])
def test_params_refuse_bad_values(raw, message):
    with pytest.raises(ValueError, match=message):
        PowParams.from_genesis(raw)


# ----------------------------------------------------------------------------- retargeting


def headers_with_times(p: PowParams, times: list[int], targets: list[int]) -> list[BlockHeader]:
    """A header chain (unsealed: retargeting reads only times and targets) from genesis."""
    chain = [genesis_header(times[0])]
    for timestamp, target in zip(times[1:], targets):
        chain.append(build_header(CHAIN, chain[-1], timestamp, [], MINER, compact_bytes(target)))
    return chain


def steady_chain(p: PowParams, spacing: int, blocks: int, target: int) -> list[BlockHeader]:
    return headers_with_times(p, [GENESIS_TIME + i * spacing for i in range(blocks + 1)], [target] * blocks)


def test_retarget_is_the_initial_target_after_genesis_and_steady_on_time():
    p = params(initial_target="1f00ffff")
    assert next_target([genesis_header()], p) == p.initial_target
    on_time = steady_chain(p, p.target_block_ms, 30, p.initial_target)
    assert next_target(on_time, p) == p.initial_target


def test_retarget_does_not_time_the_genesis_block():
    # Genesis is written by `init`, maybe days before anyone mines: that gap is no solve time.
    p = params(initial_target="1f00ffff")
    for gap in (1, p.target_block_ms, 86_400_000):
        times = [GENESIS_TIME, GENESIS_TIME + gap] + [GENESIS_TIME + gap + i * p.target_block_ms for i in range(1, 6)]
        chain = headers_with_times(p, times, [p.initial_target] * 6)
        assert next_target(chain[:2], p) == p.initial_target  # one mined block: nothing to time yet
        assert next_target(chain, p) == p.initial_target  # then only the on-time blocks count


def test_retarget_moves_toward_the_block_time_both_ways():
    p = params(initial_target="1f00ffff")
    fast = steady_chain(p, p.target_block_ms // 4, 30, p.initial_target)
    slow = steady_chain(p, p.target_block_ms * 3, 30, p.initial_target)
    assert next_target(fast, p) < p.initial_target  # blocks too quick: harder
    assert next_target(slow, p) > p.initial_target  # blocks too slow: easier
    # LWMA over a full window of steady times lands on the ratio, within max_step.
    assert next_target(fast, p) == round_target(max(p.initial_target // 4, p.initial_target // 2))
    assert abs(next_target(slow, p) - 2 * p.initial_target) <= p.initial_target >> 20


def test_retarget_converges_on_a_simulated_constant_hash_rate():
    # A miner that needs `work` hashes on average at `rate` per ms finds a block in
    # work / rate ms; the target must settle where that equals the block time.
    p = params(initial_target="1f00ffff", target_block_ms=1000, retarget_window=20)
    rate = 50  # hashes per ms: 50,000 per target block time
    chain = [genesis_header()]
    for _ in range(200):
        target = next_target(chain, p)
        solve = max(1, work_of_target(target) // rate)
        chain.append(build_header(CHAIN, chain[-1], chain[-1].timestamp + solve, [], MINER, compact_bytes(target)))
    settled = work_of_target(next_target(chain, p))
    assert 0.8 * 50_000 < settled < 1.2 * 50_000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-20_000, max_value=60_000), min_size=1, max_size=40),
       st.sampled_from([2, 1.5, 4]), st.sampled_from(["1f00ffff", EASY, "1a123456", "0300ffff"]))
def test_retarget_never_steps_more_than_max_step(solve_times, step, initial):
    p = params(max_step=step, initial_target=initial)
    chain = [genesis_header()]
    for solve in solve_times:
        target = next_target(chain, p)
        previous = p.initial_target if chain[-1].height == 0 else from_compact(int.from_bytes(chain[-1].extra, "big"))
        assert previous / p.max_step <= target <= previous * p.max_step
        assert 1 <= target <= MAX_TARGET and round_target(target) == target
        chain.append(build_header(CHAIN, chain[-1], max(0, chain[-1].timestamp + solve), [], MINER, compact_bytes(target)))


def test_retarget_ignores_out_of_order_and_capped_solve_times():
    p = params(initial_target="1f00ffff")
    base = steady_chain(p, p.target_block_ms, 20, p.initial_target)
    # A block stamped far back cannot buy an easier target by making its successor look slow.
    back = base[:-1] + [build_header(CHAIN, base[-2], base[-2].timestamp - 50_000, [], MINER, base[-1].extra)]
    assert next_target(back, p) < p.initial_target
    # One block an hour late counts as 6 block times: easier, but bounded.
    late = base[:-1] + [build_header(CHAIN, base[-2], base[-2].timestamp + 3_600_000, [], MINER, base[-1].extra)]
    cap = base[:-1] + [build_header(CHAIN, base[-2], base[-2].timestamp + 6 * p.target_block_ms, [], MINER, base[-1].extra)]
    assert next_target(late, p) == next_target(cap, p) > p.initial_target


def test_retarget_refuses_too_few_or_broken_ancestors():
    p = params()
    chain = steady_chain(p, 1000, 20, p.initial_target)
    with pytest.raises(ValueError, match="needs the last 11 headers"):
        next_target(chain[-5:], p)
    with pytest.raises(ValueError, match="not a chain"):
        next_target(chain[-12:-6] + chain[-5:], p)
    with pytest.raises(ValueError, match="at least the parent"):
        next_target([], p)
    assert next_target(chain[:4], p) == next_target(chain[:4], p)  # near genesis fewer is all there is


def test_median_time_past_reads_the_last_eleven():
    p = params()
    chain = headers_with_times(p, [GENESIS_TIME + t for t in [0, 5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]],
                               [p.initial_target] * 12)
    assert median_time_past(chain) == GENESIS_TIME + sorted([1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12])[5]
    assert median_time_past(chain[:2]) == GENESIS_TIME + 5  # the upper median of two


# ----------------------------------------------------------------------------- the seal rules

# A harder target for the seal tests: a tampered header meets it with chance 2**-12, and
# the data is fixed, so the outcome is too.
MEDIUM = to_compact(1 << 244)


@pytest.fixture(scope="module")
def medium_chain() -> tuple[PowParams, list[BlockHeader]]:
    p = params(initial_target=f"{MEDIUM:08x}", max_step=16)
    return p, mined_chain(p, 14, p.target_block_ms)


def test_verify_accepts_a_mined_chain(medium_chain):
    p, chain = medium_chain
    for height in range(1, len(chain)):
        verify_seal(chain[height], chain[:height], chain[height].timestamp, p)
        assert block_work(chain[height]) == work_of_target(from_compact(int.from_bytes(chain[height].extra, "big")))


def test_verify_refuses_a_hash_above_the_target(medium_chain):
    p, chain = medium_chain
    target = next_target(chain, p)
    unsealed = build_header(CHAIN, chain[-1], chain[-1].timestamp + 1000, [], MINER, compact_bytes(target))
    prefix = mining.sealing_prefix(unsealed)
    bad_nonce = next(n for n in range(100) if hashlib.sha256(prefix + n.to_bytes(8, "big")).digest() > target.to_bytes(32, "big"))
    with pytest.raises(InvalidSeal, match="above its target"):
        verify_seal(mining.seal_with_nonce(unsealed, bad_nonce), chain, None, p)


def test_verify_refuses_a_tampered_header(medium_chain):
    p, chain = medium_chain
    good = chain[-1]
    for tampered in (dataclasses.replace(good, tx_root=bytes(32)), dataclasses.replace(good, proposer=OTHER_MINER),
                     dataclasses.replace(good, tx_count=5), dataclasses.replace(good, timestamp=good.timestamp + 1)):
        with pytest.raises(InvalidSeal, match="above its target"):
            verify_seal(tampered, chain[:-1], None, p)


def test_verify_refuses_the_wrong_target_even_if_met(medium_chain):
    p, chain = medium_chain
    easier = mine_on(chain, p, chain[-1].timestamp + 1000, target=next_target(chain, p) * 2)
    with pytest.raises(InvalidSeal, match=f"wrong target for height {len(chain)}"):
        verify_seal(easier, chain, None, p)
    harder = mine_on(chain, p, chain[-1].timestamp + 1000, target=round_target(next_target(chain, p) // 2))
    with pytest.raises(InvalidSeal, match="wrong target"):
        verify_seal(harder, chain, None, p)  # more work than asked is still not the rule
    no_target = dataclasses.replace(harder, extra=b"")
    with pytest.raises(InvalidSeal, match="4-byte compact target"):
        verify_seal(no_target, chain, None, p)


def test_verify_refuses_timestamps_not_after_the_median(medium_chain):
    p, chain = medium_chain
    median = median_time_past(chain)
    at_median = mine_on(chain, p, median)
    with pytest.raises(InvalidSeal, match=f"not after {median}, the median of the last 11"):
        verify_seal(at_median, chain, None, p)
    verify_seal(mine_on(chain, p, median + 1), chain, None, p)  # before the parent is fine, after the median


def test_verify_refuses_timestamps_too_far_in_the_future(medium_chain):
    p, chain = medium_chain
    now = chain[-1].timestamp
    future = mine_on(chain, p, now + p.max_future_ms + 1)
    with pytest.raises(InvalidSeal, match=f"{p.max_future_ms + 1} ms in the future"):
        verify_seal(future, chain, now, p)
    verify_seal(future, chain, now + 1, p)  # once the clock catches up it is fine
    verify_seal(future, chain, None, p)  # and a stored block is not re-judged by the clock


def test_verify_refuses_wrong_parent_height_and_seal_size(medium_chain):
    p, chain = medium_chain
    block = mine_on(chain, p, chain[-1].timestamp + 1000)
    with pytest.raises(InvalidSeal, match="does not extend the given parent"):
        verify_seal(block, chain[:-1], None, p)
    with pytest.raises(InvalidSeal, match="does not follow"):
        verify_seal(dataclasses.replace(block, height=block.height + 1), chain, None, p)
    with pytest.raises(InvalidSeal, match="8-byte nonce"):
        verify_seal(block.with_seal(block.seal + b"\x00"), chain, None, p)
    with pytest.raises(ValueError, match="needs the last"):
        verify_seal(block, chain[-3:], None, p)  # the caller's mistake, not the block's


def test_engine_verify_seal_uses_its_window_and_verify_header(medium_chain):
    p, chain = medium_chain
    engine = PowEngine(p)
    block = mine_on(chain, p, chain[-1].timestamp + 1000)
    with pytest.raises(ValueError, match="use verify_header"):
        engine.verify_seal(block, chain[-1])
    engine.verify_header(block, chain, block.timestamp)
    engine.handle(Started(0, chain[-1], None, tuple(chain[-p.ancestors_needed:])))
    engine.verify_seal(block, chain[-1])
    engine.verify_seal(chain[1], chain[0])  # on genesis the parent is all there is
    with pytest.raises(InvalidSeal):
        engine.verify_seal(dataclasses.replace(block, tx_count=3), chain[-1])


# ----------------------------------------------------------------------------- work and fork choice


def test_fork_choice_picks_the_heaviest_chain_not_the_longest():
    p = params(max_step=16, retarget_window=2)
    common = [genesis_header()]
    # Long branch: slow blocks keep the target at its easiest, 2 hashes' work each.
    long_branch = list(common)
    for i in range(1, 11):
        long_branch.append(mine_on(long_branch, p, GENESIS_TIME + i * 100_000, proposer=MINER))
    # Short branch: blocks come fast, the target drops 16x a block, so 4 blocks outweigh 10.
    short_branch = list(common)
    for i in range(1, 5):
        short_branch.append(mine_on(short_branch, p, GENESIS_TIME + i, proposer=OTHER_MINER))
    for chain in (long_branch, short_branch):
        for height in range(1, len(chain)):
            verify_seal(chain[height], chain[:height], None, p)
    long_work = sum(block_work(h) for h in long_branch)
    short_work = sum(block_work(h) for h in short_branch)
    assert len(short_branch) < len(long_branch) and short_work > long_work
    engine = PowEngine(p)
    assert engine.fork_choice([long_branch[1:], short_branch[1:]]) == 1
    assert engine.fork_choice([short_branch[1:], long_branch[1:]]) == 0


class _WorkByHeight(PowEngine):
    """Block work read from a table, to state the tie rule without mining for exact weights."""

    def __init__(self, work: dict[int, int]):
        super().__init__(params())
        self.work = work

    def block_work(self, header):
        return self.work[header.height]


def test_fork_choice_ties_go_to_the_first_seen():
    # Three branches from genesis whose tips weigh 10, 10 and 9.
    a, b, c = ([dataclasses.replace(genesis_header(), height=height)] for height in (1, 2, 3))
    engine = _WorkByHeight({1: 10, 2: 10, 3: 9})
    assert engine.fork_choice([a, b, c]) == 0
    assert engine.fork_choice([c, b, a]) == 1
    with pytest.raises(ValueError):
        engine.fork_choice([])


def test_block_work_is_expected_hashes():
    assert work_of_target(MAX_TARGET) == 2
    assert work_of_target((1 << 256) - 1) == 1
    assert work_of_target((1 << 240) - 1) == 1 << 16
    assert block_work(genesis_header()) == 0


# ----------------------------------------------------------------------------- the mining search


def test_search_finds_the_first_nonce_at_or_below_the_target():
    header = build_header(CHAIN, genesis_header(), GENESIS_TIME + 1, [], MINER, compact_bytes(1 << 248))
    prefix = mining.sealing_prefix(header)
    target = 1 << 248
    nonce = mining.search(prefix, target, 0, 10_000)
    assert nonce is not None
    digests = [hashlib.sha256(prefix + n.to_bytes(8, "big")).digest() for n in range(nonce + 1)]
    assert int.from_bytes(digests[-1], "big") <= target
    assert all(int.from_bytes(d, "big") > target for d in digests[:-1])
    sealed = mining.seal_with_nonce(header, nonce)
    assert sealed.hash == digests[-1]  # the search hashes exactly what the block hash covers
    assert mining.search(prefix, target, 0, nonce) is None  # the slice before it holds none
    assert mining.search(prefix, target, nonce, 1) == nonce


def test_search_refuses_bad_slices_and_targets():
    with pytest.raises(ValueError):
        mining.search(b"", 1 << 256, 0, 1)
    with pytest.raises(ValueError):
        mining.search(b"", 1, mining.MAX_NONCE, 2)
    with pytest.raises(ValueError):
        mining.nonce_seal(-1)
    assert mining.search(b"", (1 << 256) - 1, mining.MAX_NONCE, 1) == mining.MAX_NONCE


# ----------------------------------------------------------------------------- the state machine


def built(request: BuildBlock, parent: BlockHeader, transactions=()) -> Block:
    """What the runtime answers a BuildBlock with."""
    header = build_header(CHAIN, parent, request.timestamp, list(transactions), request.proposer, request.extra)
    return Block(header, tuple(transactions))


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_engine_builds_mines_commits_and_builds_on_its_block():
    p = params()
    engine = PowEngine(p, MINER, mine=True)
    genesis = genesis_header()
    actions = engine.handle(Started(GENESIS_TIME + 500, genesis, None, (genesis,)))
    request = only(actions, BuildBlock)
    assert actions == [request]
    assert (request.parent, request.height, request.proposer) == (genesis.hash, 1, MINER)
    assert request.timestamp == GENESIS_TIME + 500 and request.extra == compact_bytes(p.initial_target)

    template = built(request, genesis, [new_transfer(dev_keys(1)[0], CHAIN, 0, OTHER_MINER, 5, fee=1)])
    actions = engine.handle(BlockBuilt(GENESIS_TIME + 501, template))
    assert actions == [Mine(template.header, p.initial_target)]
    assert engine.status().phase == "mining"

    sealed = mining.mine(template.header, p.initial_target)
    actions = engine.handle(Mined(GENESIS_TIME + 600, sealed))
    assert actions == [Commit(Block(sealed, template.transactions))]  # the template's transactions kept

    actions = engine.handle(BlockCommitted(GENESIS_TIME + 610, sealed))
    request = only(actions, BuildBlock)
    assert actions == [request]
    assert (request.parent, request.height) == (sealed.hash, 2)
    assert request.extra == compact_bytes(next_target([genesis, sealed], p))


def test_engine_timestamp_is_after_the_median_even_if_the_clock_is_behind():
    p = params()
    chain = steady_chain(p, 1000, 12, p.initial_target)
    engine = PowEngine(p, MINER, mine=True)
    request = only(engine.handle(Started(GENESIS_TIME, chain[-1], None, tuple(chain[-11:]))), BuildBlock)
    assert request.timestamp == median_time_past(chain) + 1


def test_engine_stops_mining_and_rebuilds_when_a_peer_block_moves_the_head():
    p = params()
    genesis = genesis_header()
    engine = PowEngine(p, MINER, mine=True)
    request = only(engine.handle(Started(GENESIS_TIME + 10, genesis, None, (genesis,))), BuildBlock)
    template = built(request, genesis)
    engine.handle(BlockBuilt(GENESIS_TIME + 11, template))
    peer_block = mine_on([genesis], p, GENESIS_TIME + 20, proposer=OTHER_MINER)

    actions = engine.handle(BlockCommitted(GENESIS_TIME + 30, peer_block))
    assert isinstance(actions[0], StopMining)
    request = only(actions, BuildBlock)
    assert (request.parent, request.height) == (peer_block.hash, 2)
    # Our nonce for the old template, found too late, is dropped.
    assert engine.handle(Mined(GENESIS_TIME + 31, mining.mine(template.header, p.initial_target))) == []
    # Then mining resumes on the new head.
    new_template = built(request, peer_block)
    assert engine.handle(BlockBuilt(GENESIS_TIME + 32, new_template)) == [Mine(new_template.header, next_target([genesis, peer_block], p))]


def test_engine_rebuilds_a_build_overtaken_by_a_new_head():
    p = params()
    genesis = genesis_header()
    engine = PowEngine(p, MINER, mine=True)
    request = only(engine.handle(Started(GENESIS_TIME + 10, genesis, None, (genesis,))), BuildBlock)
    peer_block = mine_on([genesis], p, GENESIS_TIME + 20, proposer=OTHER_MINER)
    # A new head while a build is in flight: build on it at once, whatever the old build does.
    rebuild = only(engine.handle(BlockCommitted(GENESIS_TIME + 30, peer_block)), BuildBlock)
    assert rebuild.parent == peer_block.hash
    assert engine.handle(BlockBuilt(GENESIS_TIME + 31, built(request, genesis))) == []  # the old answer
    template = built(rebuild, peer_block)
    assert engine.handle(BlockBuilt(GENESIS_TIME + 32, template)) == [Mine(template.header, next_target([genesis, peer_block], p))]


def test_engine_rebuilds_for_new_transactions_at_most_every_second():
    p = params()
    genesis = genesis_header()
    engine = PowEngine(p, MINER, mine=True)
    t0 = GENESIS_TIME + 100
    request = only(engine.handle(Started(t0, genesis, None, (genesis,))), BuildBlock)
    first = built(request, genesis)
    engine.handle(BlockBuilt(t0, first))
    # Transactions the empty template lacks: too soon to rebuild, so a timer.
    assert engine.handle(TxsAvailable(t0 + 200, 3)) == [SetTimer(t0 + 1000)]
    assert engine.handle(TxsAvailable(t0 + 300, 4)) == []  # the timer is already set
    assert engine.handle(Tick(t0 + 999)) == []  # early: still waiting for the timer
    actions = engine.handle(Tick(t0 + 1000))
    rebuild = only(actions, BuildBlock)
    assert actions == [rebuild] and rebuild.parent == genesis.hash  # the old job keeps running meanwhile
    txs = [new_transfer(dev_keys(1)[0], CHAIN, n, OTHER_MINER, 5, fee=1) for n in range(4)]
    second = built(rebuild, genesis, txs)
    actions = engine.handle(BlockBuilt(t0 + 1001, second))
    assert actions == [StopMining(), Mine(second.header, p.initial_target)]
    # The template now holds everything ready: no more rebuilds.
    assert engine.handle(TxsAvailable(t0 + 1500, 4)) == []
    assert engine.handle(Tick(t0 + 5000)) == []
    # A nonce found for the replaced template on the same parent still counts.
    sealed_first = mining.mine(first.header, p.initial_target)
    actions = engine.handle(Mined(t0 + 1600, sealed_first))
    assert actions == [StopMining(), Commit(Block(sealed_first, ()))]


def test_engine_does_not_rebuild_a_full_template():
    p = params()
    genesis = genesis_header()
    engine = PowEngine(p, MINER, mine=True, max_block_transactions=2)
    t0 = GENESIS_TIME + 100
    request = only(engine.handle(Started(t0, genesis, None, (genesis,))), BuildBlock)
    txs = [new_transfer(dev_keys(1)[0], CHAIN, n, OTHER_MINER, 5, fee=1) for n in range(2)]
    engine.handle(BlockBuilt(t0, built(request, genesis, txs)))
    assert engine.handle(TxsAvailable(t0 + 2000, 50)) == []


def test_engine_follower_never_mines_but_tracks_the_head():
    p = params()
    chain = mined_chain(p, 3, 1000)
    engine = PowEngine(p, None, mine=False)
    assert engine.handle(Started(GENESIS_TIME, chain[0], None, (chain[0],))) == []
    for header in chain[1:]:
        assert engine.handle(BlockCommitted(header.timestamp, header)) == []
    status = engine.status()
    assert status.height == 4 and status.role == "follower" and status.finality is Finality.DEPTH
    assert status.validators is None and status.round is None
    assert engine.handle(TxsAvailable(GENESIS_TIME + 10_000, 5)) == [] and engine.handle(Tick(GENESIS_TIME + 20_000)) == []
    assert engine.status().details["next_target"] == f"{next_target(chain, p):064x}"


def test_engine_waits_for_the_recent_headers_after_a_reorg():
    p = params(retarget_window=4)
    chain = steady_chain(p, 1000, 30, p.initial_target)
    engine = PowEngine(p, MINER, mine=True)
    # Started without the recent headers at height 30: the target is unknown, so no mining.
    assert engine.handle(Started(GENESIS_TIME, chain[-1], None)) == []
    assert engine.status().phase == "waiting for the head's recent headers"
    assert engine.handle(Tick(GENESIS_TIME + 5000)) == []
    # A reorg to another branch at height 25, with its recent headers: mining resumes there.
    branch = list(chain[:25])
    branch.append(build_header(CHAIN, branch[-1], branch[-1].timestamp + 700, [], OTHER_MINER, compact_bytes(next_target(branch, p))))
    actions = engine.handle(BlockCommitted(GENESIS_TIME + 40_000, branch[-1], tuple(branch[-p.ancestors_needed:])))
    request = only(actions, BuildBlock)
    assert request.parent == branch[-1].hash and request.extra == compact_bytes(next_target(branch, p))
    with pytest.raises(ValueError, match="end with the head"):
        engine.handle(BlockCommitted(GENESIS_TIME, chain[-1], tuple(branch[-3:])))


def test_engine_refuses_a_wrong_build_and_a_bad_find():
    p = params()
    genesis = genesis_header()
    engine = PowEngine(p, MINER, mine=True)
    request = only(engine.handle(Started(GENESIS_TIME, genesis, None, (genesis,))), BuildBlock)
    wrong = Block(build_header(CHAIN, genesis, request.timestamp, [], MINER, b"\x00\x00\x00\x01"))
    with pytest.raises(ValueError, match="other than the one asked for"):
        engine.handle(BlockBuilt(GENESIS_TIME, wrong))
    engine2 = PowEngine(params(initial_target="1f00ffff"), MINER, mine=True)
    request = only(engine2.handle(Started(GENESIS_TIME, genesis, None, (genesis,))), BuildBlock)
    template = built(request, genesis)
    engine2.handle(BlockBuilt(GENESIS_TIME, template))
    prefix = mining.sealing_prefix(template.header)
    target = engine2.params.initial_target
    bad = next(n for n in range(100) if hashlib.sha256(prefix + n.to_bytes(8, "big")).digest() > target.to_bytes(32, "big"))
    with pytest.raises(ValueError, match="does not meet its target"):
        engine2.handle(Mined(GENESIS_TIME, mining.seal_with_nonce(template.header, bad)))


def test_engine_constructor_validates():
    with pytest.raises(ValueError, match="miner address"):
        PowEngine(params(), None, mine=True)
    with pytest.raises(ValueError, match="miner address"):
        PowEngine(params(), b"short", mine=True)
    with pytest.raises(ValueError, match="target_block_ms"):
        PowEngine({"initial_target": EASY}, MINER, mine=True)


def test_finalized_height_is_the_confirmation_depth():
    engine = PowEngine(params(finality_depth=3))
    assert [engine.finalized_height(h) for h in (0, 2, 3, 4, 10)] == [0, 0, 0, 1, 7]


def drive(txs_at: dict[int, int]) -> list:
    """A little runtime: performs one engine's actions in order, with transactions arriving
    and a peer's blocks committing at scripted steps.  Returns every (event, actions) pair."""
    p = params()
    engine = PowEngine(p, MINER, mine=True)
    genesis = genesis_header()
    chain = [genesis]
    by_hash = {genesis.hash: genesis}
    queue: list = [Started(GENESIS_TIME, genesis, None, (genesis,))]
    trace = []
    now = GENESIS_TIME
    for step in range(1, 200):
        if not queue:
            break
        event = queue.pop(0)
        actions = engine.handle(event)
        trace.append((event, actions))
        now += 137
        for action in actions:
            if isinstance(action, BuildBlock):
                txs = [new_transfer(dev_keys(1)[0], CHAIN, n, OTHER_MINER, 5, fee=1) for n in range(txs_at.get(step, 0))]
                queue.append(BlockBuilt(now, built(action, by_hash[action.parent], txs)))
            elif isinstance(action, Mine):
                queue.append(Mined(now, mining.mine(action.header, action.target)))
            elif isinstance(action, Commit):
                if action.block.header.parent == chain[-1].hash:
                    chain.append(action.block.header)
                    by_hash[chain[-1].hash] = chain[-1]
                queue.append(BlockCommitted(now, chain[-1]))
            elif isinstance(action, SetTimer):
                queue.append(Tick(max(now, action.at)))
        if step in txs_at:
            queue.append(TxsAvailable(now, txs_at[step] + 10))
        if step % 7 == 0:  # a peer's block commits now and then, overtaking our job
            chain.append(mine_on(chain, p, now, proposer=OTHER_MINER))
            by_hash[chain[-1].hash] = chain[-1]
            queue.append(BlockCommitted(now, chain[-1]))
    return trace


def test_engine_is_deterministic():
    script = {3: 2, 8: 5, 20: 1, 33: 7}
    first = drive(script)
    second = drive(script)
    assert first == second
    assert len(first) > 50
    kinds = {type(a).__name__ for _, actions in first for a in actions}
    assert {"BuildBlock", "Mine", "Commit", "StopMining", "SetTimer"} <= kinds
    # Every block the engine committed verifies against the chain it extends.
    p = params()
    committed = [a.block.header for _, actions in first for a in actions if isinstance(a, Commit)]
    assert len(committed) > 5
    chain_by_hash = {}
    for event, _ in first:
        header = getattr(event, "header", None) or getattr(event, "head", None)
        if isinstance(event, (Started, BlockCommitted)):
            chain_by_hash[header.hash] = header
    for header in committed:
        ancestors = [chain_by_hash[header.parent]]
        while ancestors[0].height > 0 and len(ancestors) < p.ancestors_needed:
            ancestors.insert(0, chain_by_hash[ancestors[0].parent])
        verify_seal(header, ancestors, None, p)


# ----------------------------------------------------------------------------- wiring


def test_registry_builds_a_pow_engine_from_genesis():
    key = PrivateKey(bytes(31) + b"\x05")
    genesis = Genesis(chain_id=CHAIN, address_prefix="tst", timestamp=GENESIS_TIME, engine="pow",
                      engine_params={"target_block_ms": 2000, "initial_target": "1f00ffff"}, allocations={},
                      max_block_transactions=500)
    engine = create_engine(genesis, key)
    assert isinstance(engine, PowEngine) and engine.mine and engine.miner_address == address_of(key.public_key)
    assert engine.max_block_transactions == 500 and engine.ancestors_needed == 46
    follower = create_engine(genesis, key, mine=False)
    assert not follower.mine
    assert create_engine(genesis, key, miner_address=MINER).miner_address == MINER
    # The genesis block verifies as the parent of a first mined block.
    p = engine.params
    first = mine_on([genesis.block().header], p, GENESIS_TIME + 1)
    engine.verify_header(first, [genesis.block().header], GENESIS_TIME + 1)

"""The engine conformance suite: what every engine of the registry promises the runtime
(DESIGN.md principle 1 and "The engine boundary"), checked the same way for each.

An engine joins with one line in CASES: its registry name and a factory of its `Setup`
(genesis, node keys, how far a scripted run commits, where it crashes nodes, and how to
read what a node signed), written in tests/engine_driver.py beside the others.  The
runtime that performs the engines' actions is engine_driver.Network: deterministic, in
virtual time, in memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import coincurve.context
import pytest

import engine_driver
from consensus.engine import Engine, InvalidSeal
from consensus.registry import create_engine
from engine_driver import Network
from ledger import crypto
from ledger.engine_status import EngineStatus, Finality, ValidatorStatus

CASES = [
    ("solo", engine_driver.solo_case),
    ("pow", engine_driver.pow_case),
    ("bft", engine_driver.bft_case),  # four validators
    ("pos", engine_driver.pos_case),  # four validators of equal stake
    ("raft", engine_driver.raft_case),  # three members
]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(params=[factory for _, factory in CASES], ids=[name for name, _ in CASES])
def case(request):
    """The factory of one engine's Setup (a fresh Setup per call, so runs share nothing)."""
    return request.param


def assert_committed_the_same_chain(network: Network) -> None:
    """Every node reached the target, and no two nodes committed different blocks at a height."""
    target = network.setup.target_height
    assert min(network.heights()) >= target > 1, network.heights()
    for height in range(1, target + 1):
        assert len({chain[height].hash for chain in network.blocks}) == 1, f"two blocks committed at {height}"


def assert_same_transcript(first: list, second: list) -> None:
    """Entry by entry, for a readable failure: the first event whose actions differ."""
    for index, (a, b) in enumerate(zip(first, second)):
        assert a == b, f"the runs part at event {index}"
    assert len(first) == len(second)


# ----------------------------------------------------------------------------- 1. determinism


def test_a_scripted_run_gives_the_same_transcript_every_time(case):
    first = Network(case()).run()
    second = Network(case()).run()
    assert_committed_the_same_chain(first)
    assert len(first.transcript) > 10
    assert_same_transcript(first.transcript, second.transcript)


def test_a_scripted_run_replays_in_other_processes_with_other_hash_seeds(case):
    """Set and dict-of-str orders change with PYTHONHASHSEED: an engine whose actions depend
    on them gives another transcript in another process."""
    expected = engine_driver.transcript_digest(case)
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]\n"
        "from engine_driver import transcript_digest\n"
        f"print(transcript_digest(getattr(importlib.import_module({case.__module__!r}), {case.__qualname__!r})))\n"
    )
    replays = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED=seed),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("1", "2")
    ]
    for replay in replays:
        out, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err
        assert out.strip() == expected


# ----------------------------------------------------------------------------- 2. restarts


def test_a_restarted_node_never_signs_two_different_things_at_one_height_and_round(case):
    """Nodes crash right after a Persist or Commit became durable (the rest of that action
    list, often the broadcast the Persist guarded, never happens) and restart from the
    store and their last Persist; the messages of the height they had received come again,
    and (BFT) a Byzantine proposer sends a second proposal for the same round.  Everything
    any incarnation signed, sent or not, is compared by (height, round, kind)."""
    setup = case()
    network = Network(setup).run(require=False)
    double = {key: values for key, values in network.signed.items() if len(values) > 1}
    assert not double, f"signed twice: {sorted(double)}"
    assert network.signed, "the run signed nothing: the check would pass vacuously"
    assert sorted(crash.node for crash in network.crashes) == sorted(node for node, _ in setup.restarts)
    # The engine persists a signing state: the interesting crash falls between the Persist
    # and the signed message it precedes (and, with a Byzantine peer, is followed by a
    # conflicting message).  Make sure the scenario still has one.
    between = [crash for crash in network.crashes
               if any(setup.signed_items(network, crash.node, action) for action in crash.maybe_sent)]
    if any(crash.persisted is not None for crash in network.crashes):
        assert between, "no crash fell between a Persist and the signed message after it"
    if setup.conflicting is not None:
        assert any(crash.conflicting for crash in between), "no conflicting message after such a crash"
    # Restarted nodes are not stuck: everyone committed past the last crash.
    assert_committed_the_same_chain(network)


# ----------------------------------------------------------------------------- 3. no clock, no randomness


class AmbientGuard:
    """Clocks and unseeded randomness that raise while an engine handles an event (on this
    thread: pytest-timeout's or anyone's threads still read the time)."""

    FORBIDDEN = [
        (time, "time"), (time, "time_ns"), (time, "monotonic"), (time, "monotonic_ns"),
        (time, "perf_counter"), (time, "perf_counter_ns"),
        (random, "random"), (random, "randint"), (random, "randrange"), (random, "getrandbits"),
        (random, "choice"), (random, "shuffle"),
        (os, "urandom"), (secrets, "token_bytes"), (secrets, "token_hex"),
        # coincurve seeds a new context's side-channel blinding from its own `urandom` name.
        (coincurve.context, "urandom"),
    ]

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.armed = False
        self.thread = threading.get_ident()
        for module, name in self.FORBIDDEN:
            monkeypatch.setattr(module, name, self._guarded(f"{module.__name__}.{name}", getattr(module, name)))
        guard = self

        class GuardedDatetime(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                guard.check("datetime.datetime.now")
                return super().now(tz)

            @classmethod
            def utcnow(cls):
                guard.check("datetime.datetime.utcnow")
                return super().utcnow()

            @classmethod
            def today(cls):
                guard.check("datetime.datetime.today")
                return super().today()

        monkeypatch.setattr(datetime, "datetime", GuardedDatetime)

    def check(self, name: str) -> None:
        if self.armed and threading.get_ident() == self.thread:
            self.calls.append(name)  # kept even if the engine swallowed the error
            raise AssertionError(f"the engine called {name} while handling an event")

    def _guarded(self, name, original):
        def guarded(*args, **kwargs):
            self.check(name)
            return original(*args, **kwargs)
        return guarded

    @contextmanager
    def engine_call(self):
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


@pytest.fixture
def ambient_guard(monkeypatch):
    return AmbientGuard(monkeypatch)


def test_engines_read_no_clock_and_draw_no_ambient_randomness(case, ambient_guard):
    network = Network(case(), around_engine=ambient_guard.engine_call).run()
    assert ambient_guard.calls == []
    assert_committed_the_same_chain(network)
    # And the guard does bite: a clock read inside an engine call fails.
    with pytest.raises(AssertionError, match="time.time"), ambient_guard.engine_call():
        time.time()


def test_signing_draws_no_randomness_from_python(ambient_guard):
    """libsecp256k1 signs with an RFC 6979 nonce in C: no os.urandom from Python, and the
    signature of one digest is always the same (the engines sign inside handle).  Only
    creating a coincurve context draws randomness (to blind it), and ledger.crypto signs
    with the one created at import."""
    key = engine_driver.SENDER
    digest = crypto.sha256(b"a digest")
    with ambient_guard.engine_call():
        signature = key.sign_digest(digest)
    assert ambient_guard.calls == []
    assert signature == key.sign_digest(digest)
    assert crypto.verify_digest(key.public_key, digest, signature)


# ----------------------------------------------------------------------------- 4. verify_header is pure


def verdict(engine: Engine, header, ancestors, now) -> str | None:
    try:
        engine.verify_header(header, ancestors, now)
    except InvalidSeal as exc:
        return f"InvalidSeal: {exc}"
    return None


def tampered(header) -> dict[str, object]:
    flipped = bytes(byte ^ 0xFF for byte in header.seal)
    return {
        "seal flipped": header.with_seal(flipped),
        "wrong parent": dataclasses.replace(header, parent=crypto.sha256(b"not the parent")),
    }


def test_verify_header_is_pure_and_refuses_tampered_headers(case):
    checked: list[tuple[int, int]] = []

    def check_on_the_running_engine(network: Network, node: int, block) -> None:
        """Between two events of a live engine: verdicts repeat, status and later actions do not move."""
        engine = network.engines[node]
        ancestors = network.ancestors(node, block.height)
        before = engine.status()
        assert verdict(engine, block.header, ancestors, network.now) is None
        assert verdict(engine, block.header, ancestors, network.now) is None
        for how, header in tampered(block.header).items():
            assert verdict(engine, header, ancestors, network.now) is not None, how
        assert engine.status() == before
        checked.append((node, block.height))

    plain = Network(case()).run()
    interleaved = Network(case(), on_commit=check_on_the_running_engine).run()
    assert len(checked) >= plain.setup.target_height
    assert_same_transcript(interleaved.transcript, plain.transcript)

    # A fresh engine of the same genesis, never started, agrees on every committed block.
    setup = interleaved.setup
    fresh = create_engine(setup.genesis, setup.signers[0])
    running = interleaved.engines[0]
    for block in interleaved.blocks[0][1:]:
        ancestors = interleaved.ancestors(0, block.height)
        verdicts = {verdict(engine, block.header, ancestors, None) for engine in (fresh, fresh, running)}
        assert verdicts == {None}, f"block {block.height}: {verdicts}"
        for how, header in tampered(block.header).items():
            for engine in (fresh, running):
                with pytest.raises(InvalidSeal):
                    engine.verify_header(header, ancestors, None)


# ----------------------------------------------------------------------------- 5. typed status


def test_status_is_an_engine_status(case):
    network = Network(case()).run()
    for engine in network.engines:
        status = engine.status()
        assert isinstance(status, EngineStatus)
        assert status.engine == engine.name
        assert isinstance(status.finality, Finality)
        if status.validators is not None:
            assert status.validators and all(isinstance(v, ValidatorStatus) for v in status.validators)
    if network.setup.genesis.engine == "bft":
        assert len(network.engines[0].status().validators) == 4


# ----------------------------------------------------------------------------- 6. declared capabilities

# What the runtime, simulator and API ask of an engine.  Each must be declared on the
# Engine interface itself, so no caller needs to know which engine it runs.
RUNTIME_USES = [
    "ancestors_needed", "verify_header", "finalized_height", "parent_certificate", "certificate_signers",
    "block_evidence", "block_work", "status", "finality", "import_waits_for_certificate", "pushes_own_blocks",
    "max_reorg_depth", "max_future_ms", "fork_choice", "verify_commit", "staking", "stake_ops",
    "declared_stake_changes",
]


@pytest.mark.parametrize("member", RUNTIME_USES)
def test_what_the_runtime_uses_is_declared_on_the_engine_interface(case, member):
    assert member in vars(Engine) or member in Engine.__annotations__, f"Engine does not declare {member}"
    setup = case()
    engine = create_engine(setup.genesis, setup.signers[0])
    assert hasattr(engine, member)
    assert engine.name == setup.genesis.engine  # the registry name is the engine's name

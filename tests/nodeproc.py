"""Real `ledger node` processes for integration tests.

`NodeProcess` starts `python -m node.cli node` on a free 127.0.0.1 port in a data dir,
waits for /healthz, and stops it with a signal.  No test may leave a node behind, even
when it fails half-way: every process started here is killed by `NodeProcesses` on
exit from its `with` block (use it in a fixture), by an atexit hook if pytest itself
ends early, and by the kernel (PR_SET_PDEATHSIG) if pytest is killed outright.

`run_cli` runs one short `ledger` command to completion and returns its output.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Every process not yet reaped, so the atexit hook can reach the ones a test lost.
_running: weakref.WeakSet[NodeProcess] = weakref.WeakSet()


class NodeFailed(RuntimeError):
    """The node exited or did not become ready; the message carries its stderr tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours without LEDGER_* settings (a developer's shell must
    not change what a test starts), the checkout importable, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGER_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# Looked up once here: the child must not load libraries between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: when the thread that started the node
    # (pytest's main thread) dies, the kernel kills the node too.
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m node.cli ARGS` to completion; stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


class NodeProcess:
    """One `ledger node` process over a data dir; start, stop and restart it at will.

    Each run writes its own `run<N>.stdout` and `run<N>.stderr` under `log_dir`; `stdout`
    and `stderr` read the current (or last) run's.
    """

    def __init__(
        self, data_dir: Path, *args: str, api_port: int | None = None, log_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.fixed_port = api_port is not None
        self.api_port = api_port if api_port is not None else free_port()
        self.log_dir = Path(log_dir) if log_dir is not None else self.data_dir.parent / f"{self.data_dir.name}-logs"
        self.env = env
        self.process: subprocess.Popen | None = None
        self.runs = 0
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the node was never started"
        return self.process.pid

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "node.cli", "node", "--data-dir", str(self.data_dir),
            "--api-port", str(self.api_port), "--p2p-port", "0", *self.args,
        ]

    # ------------------------------------------------------------------ starting
    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT) -> NodeProcess:
        """Start the node; with `wait`, return once /healthz answers.  A port another
        process grabbed between our probe and the node's bind is retried on a new one."""
        for attempt in range(3):
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except NodeFailed:
                if self.fixed_port or attempt == 2 or "cannot listen on" not in self.stderr:
                    raise
                self.api_port = free_port()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        if self.alive:
            raise RuntimeError(f"node {self.url} is already running (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        self._stdout_path = self.log_dir / f"run{self.runs}.stdout"
        self._stderr_path = self.log_dir / f"run{self.runs}.stderr"
        # Files, not pipes: a chatty node never blocks on a pipe nobody reads.
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=child_env(self.env), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=_die_with_parent,
            )
        _running.add(self)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        assert self.process is not None, "start the node first"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise NodeFailed(f"the node exited with {self.process.returncode} before it was ready:\n"
                                     f"{self.stderr[-3000:]}")
                try:
                    if http.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise NodeFailed(f"the node did not answer /healthz within {timeout:.0f} s:\n{self.stderr[-3000:]}")
                time.sleep(0.05)

    # ------------------------------------------------------------------ stopping
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def send_signal(self, sig: int) -> None:
        if self.alive:
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` and wait for the exit; its code.  A node that outlives `timeout` is
        killed and NodeFailed raised: a stop that hangs is a bug the caller should see."""
        assert self.process is not None, "the node was never started"
        self.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise NodeFailed(f"the node did not exit within {timeout:.0f} s of {signal.Signals(sig).name}:\n"
                             f"{self.stderr[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL and reap: the crash a power cut or the OOM killer would cause."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        _running.discard(self)

    # ------------------------------------------------------------------ output
    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace") if self._stdout_path else ""

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace") if self._stderr_path else ""


class NodeProcesses:
    """Creates nodes and guarantees they are dead when the block ends, pass or fail."""

    def __init__(self, base_dir: Path):
        self.base_dir = Path(base_dir)
        self.nodes: list[NodeProcess] = []

    def new(self, name: str = "node", *args: str, data_dir: Path | None = None, **kwargs) -> NodeProcess:
        node = NodeProcess(data_dir if data_dir is not None else self.base_dir / name, *args,
                           log_dir=self.base_dir / f"{name}-logs", **kwargs)
        self.nodes.append(node)
        return node

    def start(self, name: str = "node", *args: str, **kwargs) -> NodeProcess:
        return self.new(name, *args, **kwargs).start()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


@contextmanager
def node_processes(base_dir: Path) -> Iterator[NodeProcesses]:
    with NodeProcesses(base_dir) as nodes:
        yield nodes


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_running):
        node.kill()


def wait_for(condition, timeout: float, interval: float = 0.05, message: str = "condition") -> None:
    """Poll `condition()` until it is truthy; AssertionError naming `message` at the timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


__all__: Sequence[str] = (
    "NodeFailed", "NodeProcess", "NodeProcesses", "ROOT", "child_env", "free_port", "node_processes", "run_cli", "wait_for",
)

"""The processes of a running `ledger testnet`, and the faults laid on them on command.

The launcher owns a `Fleet`: it starts one `ledger node` per layout and keeps the
network when one of them exits or is killed (the node shows as down, with its exit
code and log, and can be started again).  A second terminal drives it through the
control socket (node/fleet_control.py): stop, start, restart, kill (SIGKILL: the crash
case), pause and resume (SIGSTOP/SIGCONT: a stalled process), partitions, delay and
loss.  Link faults go to each node's admin endpoint (api/admin.py) with the token the
node wrote to its data folder; the fleet remembers what each node should have and lays
it again on a node that restarts, so a partition outlives a restart as a real one would.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ledger.address import address_of
from ledger.crypto import PrivateKey
from node.admin import ADMIN_TOKEN_FILE
from node.keys import NODE_KEY_FILE
from node.testnet import NodeLayout, start_nodes, stop_nodes

STOP_TIMEOUT = 15.0
NO_FAULTS = {"blocked": [], "delay_ms": 0, "loss_percent": 0.0}


class FleetError(Exception):
    """A command that cannot be carried out; the message says why, for the person who typed it."""


@dataclass
class Member:
    layout: NodeLayout
    node_id: str
    process: subprocess.Popen | None = None
    paused: bool = False
    exit_code: int | None = None  # of the last run, once it ended
    faults: dict = field(default_factory=lambda: dict(NO_FAULTS))  # what the node should have
    applied: dict | None = None  # what it was last given (None: nothing since it started)

    @property
    def index(self) -> int:
        return self.layout.index

    @property
    def directory(self) -> Path:
        return self.layout.directory

    @property
    def api_url(self) -> str:
        return self.layout.api_url

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    @property
    def state(self) -> str:
        if self.process is None or self.process.poll() is not None:
            return "down"
        return "paused" if self.paused else "up"


def node_id_of(directory: Path) -> str:
    secret = bytes.fromhex((directory / NODE_KEY_FILE).read_text().strip())
    return address_of(PrivateKey(secret).public_key).hex()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class Fleet:
    def __init__(self, layouts) -> None:
        self.members = [
            Member(layout, node_id_of(layout.directory))
            for layout in layouts
        ]
        self.lock = threading.RLock()  # the launcher's loop and the control socket's threads
        self.http = httpx.Client(timeout=3.0)

    # ------------------------------------------------------------------ naming
    def member(self, name: str) -> Member:
        text = name.strip().lower()
        index = text[4:] if text.startswith("node") else text
        if index.isdigit() and int(index) < len(self.members):
            return self.members[int(index)]
        raise FleetError(f"no node {name!r}: this testnet has node0 to node{len(self.members) - 1}")

    # ------------------------------------------------------------------ processes
    def start(self, name: str) -> str:
        with self.lock:
            member = self.member(name)
            if member.state != "down":
                raise FleetError(f"{member.name} is already {member.state}")
            [member.process] = start_nodes([member.layout])
            member.paused, member.exit_code, member.applied = False, None, None
            return f"{member.name} started (pid {member.process.pid})"

    def start_all(self) -> None:
        for member in self.members:
            self.start(member.name)

    def stop(self, name: str) -> str:
        with self.lock:
            member = self._running(name)
            self._terminate(member)
            return f"{member.name} stopped ({describe_exit(member.exit_code)})"

    def kill(self, name: str) -> str:
        with self.lock:
            member = self._running(name)
            member.process.kill()  # type: ignore[union-attr]
            member.exit_code = member.process.wait()  # type: ignore[union-attr]
            member.paused = False
            return f"{member.name} killed (SIGKILL): a crash; `ledger testnet start {member.name}` brings it back"

    def restart(self, name: str) -> str:
        with self.lock:
            member = self.member(name)
            if member.state != "down":
                self._terminate(member)
            return self.start(name).replace("started", "restarted")

    def pause(self, name: str) -> str:
        with self.lock:
            member = self._running(name)
            if member.paused:
                raise FleetError(f"{member.name} is already paused")
            member.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            member.paused = True
            return f"{member.name} paused (SIGSTOP): its peers see a stalled process"

    def resume(self, name: str) -> str:
        with self.lock:
            member = self._running(name)
            if not member.paused:
                raise FleetError(f"{member.name} is not paused")
            member.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            member.paused = False
            return f"{member.name} resumed"

    def stop_all(self) -> None:
        with self.lock:
            self._terminate(*[m for m in self.members if m.state != "down"])
        self.http.close()

    def reap(self) -> list[Member]:
        """Members whose process ended since the last call (the launcher says so once)."""
        ended = []
        with self.lock:
            for member in self.members:
                if member.process is not None and member.exit_code is None and member.process.poll() is not None:
                    member.exit_code = member.process.returncode
                    member.paused = False
                    ended.append(member)
        return ended

    def _running(self, name: str) -> Member:
        member = self.member(name)
        if member.state == "down":
            raise FleetError(f"{member.name} is down; `ledger testnet start {member.name}` starts it")
        return member

    def _terminate(self, *members: Member) -> None:
        """SIGTERM (a paused process is woken first, or it could not act on it), then SIGKILL
        what has not exited within STOP_TIMEOUT: all of them at once."""
        for member in members:
            if member.paused:
                member.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                member.paused = False
        stop_nodes([member.process for member in members], STOP_TIMEOUT)  # type: ignore[misc]
        for member in members:
            member.exit_code = member.process.returncode  # type: ignore[union-attr]

    # ------------------------------------------------------------------ link faults
    def partition(self, groups: list[str]) -> str:
        """`groups` like ["0,1", "2,3"]: each node talks only to its own group."""
        with self.lock:
            sides = [[self.member(name) for name in group.split(",") if name.strip()] for group in groups]
            named = [member.index for side in sides for member in side]
            if len(sides) < 2 or any(not side for side in sides):
                raise FleetError("a partition names two groups or more, e.g. `ledger testnet partition 0,1 2,3`")
            if sorted(named) != list(range(len(self.members))):
                raise FleetError(f"name every node exactly once across the groups (node0 to node{len(self.members) - 1})")
            for side in sides:
                outside = sorted(m.node_id for m in self.members if m not in side)
                for member in side:
                    member.faults = {**member.faults, "blocked": outside}
            self.lay_faults()
            return "partitioned: " + " | ".join(",".join(m.name for m in side) for side in sides)

    def heal(self) -> str:
        with self.lock:
            for member in self.members:
                member.faults = dict(NO_FAULTS)
            self.lay_faults()
            return "healed: every link restored, no delay, no loss"

    def delay(self, name: str, milliseconds: str) -> str:
        with self.lock:
            member = self.member(name)
            if not milliseconds.isdigit() or int(milliseconds) > 60_000:
                raise FleetError(f"the delay is whole milliseconds from 0 to 60000, not {milliseconds!r}")
            member.faults = {**member.faults, "delay_ms": int(milliseconds)}
            self.lay_faults()
            return f"{member.name}: outgoing peer messages delayed {int(milliseconds)} ms"

    def loss(self, name: str, percent: str) -> str:
        with self.lock:
            member = self.member(name)
            try:
                value = float(percent)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 100:
                raise FleetError(f"the loss is a percentage from 0 to 100, not {percent!r}")
            member.faults = {**member.faults, "loss_percent": value}
            self.lay_faults()
            return f"{member.name}: {value:g}% of outgoing peer messages dropped"

    def lay_faults(self) -> list[str]:
        """Give every running node the faults it should have; what could not be laid yet (a
        node still starting, a paused one) is laid on a later call.  Returns the problems."""
        problems = []
        with self.lock:
            for member in self.members:
                if member.state != "up" or member.applied == member.faults:
                    continue
                try:
                    token = (member.directory / ADMIN_TOKEN_FILE).read_text().strip()
                    response = self.http.put(f"{member.api_url}/v1/admin/faults", json=member.faults,
                                             headers={"Authorization": f"Bearer {token}"})
                    if response.status_code == 200:
                        member.applied = dict(member.faults)
                    else:
                        problems.append(f"{member.name}: {response.status_code} {response.text[:200]}")
                except (OSError, httpx.HTTPError) as exc:
                    problems.append(f"{member.name}: not reachable yet ({type(exc).__name__})")
        return problems

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict]:
        rows = []
        with self.lock:
            members = list(self.members)
        for member in members:
            state = member.state
            # A process that just ended has a return code before the launcher's loop reaps it.
            ended = member.exit_code if member.exit_code is not None else (
                member.process.returncode if member.process is not None else None)
            row = {"node": member.name, "state": state, "pid": member.process.pid if state != "down" else None,
                   "exit": None if state != "down" else ("never started" if member.process is None else describe_exit(ended)),
                   "log": str(member.log), "api": member.api_url, "faults": member.faults,
                   "height": None, "finalized": None, "peers": None, "role": None}
            if state == "up":
                try:
                    info = self.http.get(f"{member.api_url}/v1/node", timeout=1.0).json()
                    row.update(height=info["height"], finalized=info["finalized_height"], peers=info["peers"],
                               role=info.get("extra", {}).get("engine", {}).get("role"))
                except (httpx.HTTPError, ValueError, KeyError):
                    pass  # still starting, or too busy to answer now: shown without figures
            rows.append(row)
        return rows

"""`ledger raft ...`: operator commands for a Raft cluster of this machine (a folder that
`ledger testnet` or `ledger init` wrote), through each node's API and admin endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import typer

from node.admin import ADMIN_TOKEN_FILE
from node.config import ConfigError, load_config


class RaftCommandError(Exception):
    def __init__(self, message: str, runtime: bool = False):
        super().__init__(message)
        self.runtime = runtime  # the cluster, not the arguments, is why it failed


def _nodes(directory: Path) -> list[tuple[str, Path]]:
    """(API URL, data folder) of node0, node1, ... from their config files."""
    found = []
    index = 0
    while (path := directory / f"node{index}" / "config.toml").exists():
        try:
            config = load_config({}, path, environ={})  # the file alone: what that node runs with
        except ConfigError as exc:
            raise RaftCommandError(str(exc)) from None
        found.append((config.api_url, config.data_dir))
        index += 1
    if not found:
        raise RaftCommandError(f"{directory} holds no network (no node0/config.toml): --dir names the folder "
                               "`ledger testnet` or `ledger init` wrote")
    return found


def _node_index(name: str, count: int) -> int:
    text = name.removeprefix("node")
    if not text.isdigit() or int(text) >= count:
        raise RaftCommandError(f"{name!r} names no node of this network: node0 to node{count - 1} (or 0 to {count - 1})")
    return int(text)


def transfer_leadership(directory: Path, name: str, timeout_s: float, say: Callable[[str], None]) -> None:
    import httpx

    nodes = _nodes(directory)
    target = _node_index(name, len(nodes))
    with httpx.Client(timeout=3.0) as http:
        def state(index: int) -> dict | None:
            try:
                answer = http.get(f"{nodes[index][0]}/v1/consensus")
                return answer.json()["state"] if answer.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError):
                return None

        states = {index: state(index) for index in range(len(nodes))}
        wanted = states[target]
        if wanted is None:
            raise RaftCommandError(f"node{target} does not answer at {nodes[target][0]}: is the network running?", True)
        if wanted["engine"] != "raft":
            raise RaftCommandError(f"this network runs {wanted['engine']}: only a Raft cluster has a leader to move")
        member = wanted["details"].get("member_index")
        if member is None:
            raise RaftCommandError(f"node{target} is not a member of the cluster: it cannot lead")
        address = wanted["validators"][member]["address"]
        leaders = sorted((s["term"], index) for index, s in states.items() if s is not None and s["role"] == "leader")
        if not leaders:
            raise RaftCommandError("no node leads now (an election may be under way): try again in a moment", True)
        term, leader = leaders[-1]
        if leader == target:
            say(f"node{target} leads already (term {term})")
            return
        try:
            token = (nodes[leader][1] / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise RaftCommandError(f"cannot read node{leader}'s admin token: {exc.strerror}", True) from None
        answer = http.post(f"{nodes[leader][0]}/v1/admin/leadership", json={"to": address},
                           headers={"Authorization": f"Bearer {token}"})
        if answer.status_code != 202:
            detail = answer.json().get("detail", answer.text) if answer.headers.get("content-type", "").endswith(
                "json") else answer.text
            raise RaftCommandError(f"node{leader} refused: {detail}", True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = state(target)
            if now is not None and now["role"] == "leader":
                say(f"node{target} leads term {now['term']} (node{leader} led term {term})")
                return
            time.sleep(0.05)
        raise RaftCommandError(f"node{target} did not take over within {timeout_s:g} s; node{leader} leads on "
                               f"(is node{target} reachable from it?)", True)


def add_raft_commands(app: typer.Typer, fail: Callable[..., None], say: Callable[[str], None], runtime_code: int) -> None:
    raft_app = typer.Typer(help="Raft cluster commands (leadership transfer).", no_args_is_help=True)
    app.add_typer(raft_app, name="raft")

    @raft_app.command("transfer-leadership")
    def transfer(
        node: str = typer.Argument(..., help="The member to lead next: node0, node1, ... (or 0, 1, ...)"),
        directory: Path = typer.Option(Path("testnet"), "--dir", help="The network's folder"),
        timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for the new leader", min=0.1, max=600),
    ) -> None:
        """Hand the lead to NODE (for maintenance on the leader); NODE leads a new term.

        The leader stops appending, brings NODE's log up to its own and tells it to
        campaign at once; if NODE has not taken over within an election timeout, the
        leader leads on."""
        try:
            transfer_leadership(directory, node, timeout, say)
        except RaftCommandError as exc:
            fail(str(exc), runtime_code if exc.runtime else 2)

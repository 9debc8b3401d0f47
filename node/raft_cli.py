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
    if not (text.isascii() and text.isdigit()) or int(text) >= count:
        raise RaftCommandError(f"{name!r} names no node of this network: node0 to node{count - 1} (or 0 to {count - 1})")
    return int(text)


class _Cluster:
    """The nodes of a network folder, read through their APIs; the leader's admin endpoint."""

    def __init__(self, directory: Path, http):
        self.directory = directory
        self.nodes = _nodes(directory)
        self.http = http

    def state(self, index: int) -> dict | None:
        import httpx

        try:
            answer = self.http.get(f"{self.nodes[index][0]}/v1/consensus")
            return answer.json()["state"] if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def raft_states(self) -> dict[int, dict | None]:
        states = {index: self.state(index) for index in range(len(self.nodes))}
        engines = {s["engine"] for s in states.values() if s is not None}
        if not engines:
            raise RaftCommandError(f"no node of {self.directory} answers: is the network running?", True)
        if engines != {"raft"}:
            raise RaftCommandError(f"this network runs {', '.join(sorted(engines))}: only a Raft cluster has a leader "
                                   "and members to change")
        return states

    def leader(self, states: dict[int, dict | None]) -> tuple[int, int]:
        """(index, term) of the node leading the newest term."""
        leaders = sorted((s["term"], index) for index, s in states.items() if s is not None and s["role"] == "leader")
        if not leaders:
            raise RaftCommandError("no node leads now (an election may be under way): try again in a moment", True)
        term, index = leaders[-1]
        return index, term

    def post_admin(self, index: int, path: str, body: dict) -> dict:
        import httpx

        try:
            token = (self.nodes[index][1] / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise RaftCommandError(f"cannot read node{index}'s admin token: {exc.strerror}", True) from None
        try:
            answer = self.http.post(f"{self.nodes[index][0]}{path}", json=body,
                                    headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise RaftCommandError(f"node{index} did not answer ({exc.__class__.__name__}): is it still running?",
                                   True) from None
        if answer.status_code != 202:
            detail = answer.json().get("detail", answer.text) if answer.headers.get("content-type", "").endswith(
                "json") else answer.text
            raise RaftCommandError(f"node{index} refused: {detail}", True)
        return answer.json()

    def node_key(self, index: int) -> bytes:
        """Node `index`'s public key, from the key file in its data folder (it may be down)."""
        from ledger.crypto import InvalidKey, PrivateKey
        from node.keys import NODE_KEY_FILE

        path = self.nodes[index][1] / NODE_KEY_FILE
        try:
            return PrivateKey.from_hex(path.read_text(encoding="utf-8")).public_key
        except (OSError, UnicodeDecodeError, InvalidKey):
            raise RaftCommandError(f"node{index} has no usable node key at {path}: start it once so that it makes one")


def _wait(timeout_s: float, done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return False


def transfer_leadership(directory: Path, name: str, timeout_s: float, say: Callable[[str], None]) -> None:
    import httpx

    with httpx.Client(timeout=3.0) as http:
        cluster = _Cluster(directory, http)
        target = _node_index(name, len(cluster.nodes))
        _transfer(cluster, target, timeout_s, say)


def _transfer(cluster: _Cluster, target: int, timeout_s: float, say: Callable[[str], None]) -> None:
    states = cluster.raft_states()
    wanted = states[target]
    if wanted is None:
        raise RaftCommandError(f"node{target} does not answer at {cluster.nodes[target][0]}: is it running?", True)
    member = wanted["details"].get("member")
    if member is None or member not in wanted["details"].get("voters", []):
        raise RaftCommandError(f"node{target} is not a voting member of the cluster: it cannot lead")
    leader, term = cluster.leader(states)
    if leader == target:
        say(f"node{target} leads already (term {term})")
        return
    address = next(v["address"] for v in wanted["validators"] if _hex_of(v) == member)
    cluster.post_admin(leader, "/v1/admin/leadership", {"to": address})
    if not _wait(timeout_s, lambda: (cluster.state(target) or {}).get("role") == "leader"):
        raise RaftCommandError(f"node{target} did not take over within {timeout_s:g} s; node{leader} leads on "
                               f"(is node{target} reachable from it?)", True)
    say(f"node{target} leads term {cluster.state(target)['term']} (node{leader} led term {term})")


def _hex_of(validator: dict) -> str:
    from ledger.address import address_of

    return address_of(bytes.fromhex(validator["public_key"])).hex()


def change_member(directory: Path, name: str, add: bool, timeout_s: float, say: Callable[[str], None]) -> None:
    """`ledger raft add-member` / `remove-member`: through the leader's admin endpoint, then
    wait until the leader's membership shows the change done."""
    import httpx

    from ledger.address import address_of
    from ledger.genesis import Genesis, InvalidGenesis

    with httpx.Client(timeout=3.0) as http:
        cluster = _Cluster(directory, http)
        target = _node_index(name, len(cluster.nodes))
        key = cluster.node_key(target)
        address = address_of(key)
        try:
            shown = Genesis.load(directory / "genesis.json").address(address)
        except (InvalidGenesis, OSError) as exc:
            raise RaftCommandError(f"cannot read {directory / 'genesis.json'}: {exc}") from None
        states = cluster.raft_states()
        leader, term = cluster.leader(states)
        details = states[leader]["details"]
        voters, learners = details["voters"], details["learners"]
        if add and address.hex() in voters:
            say(f"node{target} is a voter already ({len(voters)} voters)")
            return
        if not add and address.hex() not in voters + learners:
            say(f"node{target} is not a member ({len(voters)} voters)")
            return
        if not add and leader == target:
            others = [i for i, s in states.items()
                      if i != target and s is not None and s["details"].get("member") in voters]
            if not others:
                raise RaftCommandError(f"node{target} leads and no other voter answers: nothing to hand the lead to", True)
            say(f"node{target} leads: handing the lead to node{others[0]} first")
            _transfer(cluster, others[0], timeout_s, say)
            leader, term = cluster.leader(cluster.raft_states())
        if not add or address.hex() not in learners:
            body = {"add": key.hex()} if add else {"remove": shown}
            _post_when_ready(cluster, leader, body, timeout_s)
            say(f"node{leader} (leader, term {term}) {'added' if add else 'removed'} {shown} "
                f"{'as a learner' if add else ''}".rstrip())

        def membership() -> tuple[list, list] | None:
            """The leader's voters and learners, or None while it does not answer."""
            details = (cluster.state(leader) or {}).get("details")
            return (details["voters"], details["learners"]) if details and "voters" in details else None

        def added() -> bool:
            now = membership()
            return now is not None and address.hex() in now[0]

        def removed() -> bool:
            now = membership()
            return now is not None and address.hex() not in now[0] + now[1]

        if add:
            say(f"node{target} catches up from the chain; the leader promotes it once it holds every committed block")
            if not _wait(timeout_s, added):
                raise RaftCommandError(f"node{target} is still a learner after {timeout_s:g} s: is it running and "
                                       "connected to the others? (ledger testnet status)", True)
        elif not _wait(timeout_s, removed):
            raise RaftCommandError(f"the removal of node{target} was not committed within {timeout_s:g} s "
                                   f"(is a majority of the members up, and node{leader} still leading?)", True)
        voters = (membership() or ([], []))[0]
        majority = len(voters) // 2 + 1
        warning = "; every voter is needed to commit now" if len(voters) > 1 and majority == len(voters) else ""
        say(f"node{target} is {'a voter' if add else 'no longer a member'}: {len(voters)} voters, a majority is "
            f"{majority}{warning}")


def _post_when_ready(cluster: _Cluster, leader: int, body: dict, timeout_s: float) -> None:
    """The leader takes one change at a time: while the last is uncommitted it answers
    change_pending, which passes in a moment; anything else is the answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cluster.post_admin(leader, "/v1/admin/members", body)
            return
        except RaftCommandError as exc:
            if "one change at a time" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def add_raft_commands(app: typer.Typer, fail: Callable[..., None], say: Callable[[str], None], runtime_code: int) -> None:
    raft_app = typer.Typer(help="Raft cluster commands (leadership transfer, membership).", no_args_is_help=True)
    app.add_typer(raft_app, name="raft")

    def run(command: Callable[..., None], *args) -> None:
        """A refusal of the arguments exits 2, one the cluster caused `runtime_code`."""
        try:
            command(*args)
        except RaftCommandError as exc:
            fail(str(exc), runtime_code if exc.runtime else 2)

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
        run(transfer_leadership, directory, node, timeout, say)

    @raft_app.command("add-member")
    def add_member(
        node: str = typer.Argument(..., help="The node to add: node0, node1, ... (or 0, 1, ...)"),
        directory: Path = typer.Option(Path("testnet"), "--dir", help="The network's folder"),
        timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for it to become a voter", min=0.1,
                                      max=3600),
    ) -> None:
        """Make NODE a member: it joins as a learner, catches up from the chain, and the leader
        promotes it to voter once it holds every committed block.  NODE must be running
        (`ledger testnet --nodes N` with one more node adds one that follows)."""
        run(change_member, directory, node, True, timeout, say)

    @raft_app.command("remove-member")
    def remove_member(
        node: str = typer.Argument(..., help="The member to remove: node0, node1, ... (or 0, 1, ...)"),
        directory: Path = typer.Option(Path("testnet"), "--dir", help="The network's folder"),
        timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for the change to commit", min=0.1,
                                      max=600),
    ) -> None:
        """Remove NODE from the members (it may be down); the majority shrinks with it.  If
        NODE leads, the lead is handed to another member first."""
        run(change_member, directory, node, False, timeout, say)

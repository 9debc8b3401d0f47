"""Leadership transfer through the admin endpoint: the route's checks (api/admin.py) and the
node's (node/admin.py LeadershipControl) on a real Raft engine, before any event is fed."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from api.admin import LeadershipRefused
from api.app import create_app
from consensus.engine import LeadershipTransferRequested
from ledger.address import encode_address
from node.admin import LeadershipControl
from raft_cluster import Cluster
from test_api_unit import PREFIX, TOKEN, FakeService, assert_problem, call

AUTH = {"authorization": f"Bearer {TOKEN}"}


class LeadingService(FakeService):
    def __init__(self, members: list[bytes]):
        super().__init__()
        self.members = members
        self.asked: list[bytes] = []

    def transfer_leadership(self, to: bytes) -> dict:
        if to not in self.members:
            raise LeadershipRefused("not_a_member", f"{to.hex()} is not a member")
        self.asked.append(to)
        return {"from": self.members[0].hex(), "to": to.hex(), "term": 3}


def test_the_route_hands_the_lead_over_and_names_both_members():
    members = [bytes([i]) * 20 for i in range(3)]
    service = LeadingService(members)
    app = create_app(service, admin_token=TOKEN)
    response = call(app, "POST", "/v1/admin/leadership", json={"to": encode_address(PREFIX, members[2])}, headers=AUTH)
    assert response.status_code == 202, response.text
    assert response.json() == {"from": encode_address(PREFIX, members[0]), "to": encode_address(PREFIX, members[2]),
                               "term": 3}
    assert service.asked == [members[2]]


def test_the_route_refuses_bad_requests_by_field_and_asks_nothing():
    members = [bytes([i]) * 20 for i in range(3)]
    service = LeadingService(members)
    app = create_app(service, admin_token=TOKEN)
    assert_problem(call(app, "POST", "/v1/admin/leadership", json={"to": encode_address(PREFIX, members[1])}), 401,
                   "unauthorized")
    assert_problem(call(app, "POST", "/v1/admin/leadership", json={"to": "nope"}, headers=AUTH), 400,
                   "bad_format", "to")
    assert_problem(call(app, "POST", "/v1/admin/leadership", json={"to": 7}, headers=AUTH), 422, "wrong_type", "to")
    assert_problem(call(app, "POST", "/v1/admin/leadership", json={"to": encode_address(PREFIX, members[1]), "x": 1},
                        headers=AUTH), 422, "unknown_field", "x")
    assert_problem(call(app, "POST", "/v1/admin/leadership", json=["x"], headers=AUTH), 422, "wrong_type")
    assert_problem(call(app, "POST", "/v1/admin/leadership", json={"to": encode_address(PREFIX, b"\x09" * 20)},
                        headers=AUTH), 422, "not_a_member", "to")
    assert service.asked == []


class NodeOf(LeadershipControl):
    """What LeadershipControl needs of a Node: an engine, its lock, a clock and a queue."""

    def __init__(self, engine, now: int):
        self.engine, self.lock, self.fed = engine, threading.Lock(), []
        self.genesis = SimpleNamespace(address=lambda raw: encode_address(PREFIX, raw))
        self.now_ms = lambda: now

    def feed(self, event) -> None:
        self.fed.append(event)


def test_only_the_leader_starts_a_transfer_and_only_to_another_member():
    cluster = Cluster(3)
    cluster.tick(0, after_ms=300)
    leader, follower = NodeOf(cluster.engines[0], cluster.now), NodeOf(cluster.engines[1], cluster.now)
    addresses = cluster.engines[0].addresses
    with pytest.raises(LeadershipRefused, match=f"not the leader .it follows {encode_address(PREFIX, addresses[0])}"):
        follower.transfer_leadership(addresses[2])
    with pytest.raises(LeadershipRefused) as refused:
        leader.transfer_leadership(b"\x09" * 20)
    assert refused.value.reason == "not_a_member"
    with pytest.raises(LeadershipRefused) as refused:
        leader.transfer_leadership(addresses[0])
    assert refused.value.reason == "already_leader"
    assert leader.fed == [] and follower.fed == []
    assert leader.transfer_leadership(addresses[2]) == {"from": addresses[0].hex(), "to": addresses[2].hex(),
                                                        "term": cluster.engines[0].term}
    assert leader.fed == [LeadershipTransferRequested(cluster.now, addresses[2])]


def test_an_engine_without_a_leader_refuses():
    engine = SimpleNamespace(name="bft", transfers_leadership=False)
    with pytest.raises(LeadershipRefused) as refused:
        NodeOf(engine, 0).transfer_leadership(b"\x01" * 20)
    assert refused.value.reason == "no_leader_to_move"


def test_a_linearizable_read_waits_for_the_barrier_and_a_refusal_is_a_problem():
    service = FakeService()
    app = create_app(service)
    address = encode_address(PREFIX, b"\x05" * 20)
    assert call(app, "GET", f"/v1/accounts/{address}").json()["balance"] == 100
    assert getattr(service, "barriers", 0) == 0  # a local read asks nobody
    assert call(app, "GET", f"/v1/accounts/{address}?consistency=linearizable").json()["balance"] == 100
    assert service.barriers == 1
    service.read_refusal = ("no_linearizable_reads", "the bft engine has no leader to confirm reads with")
    assert_problem(call(app, "GET", f"/v1/accounts/{address}?consistency=linearizable"), 409, "no_linearizable_reads")
    service.read_refusal = ("leader_unavailable", "no leader is known now")
    response = call(app, "GET", f"/v1/accounts/{address}?consistency=linearizable")
    assert_problem(response, 503, "leader_unavailable")
    assert response.headers["retry-after"] == "1"
    assert_problem(call(app, "GET", f"/v1/accounts/{address}?consistency=strong"), 422, "invalid_value", "consistency")


def test_the_transfer_command_refuses_bad_arguments_with_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from node.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, ["raft", "transfer-leadership", *args])

    missing = run("node1", "--dir", str(tmp_path / "none"))
    assert missing.exit_code == 2 and "holds no network" in missing.output
    (tmp_path / "net" / "node0").mkdir(parents=True)
    config = tmp_path / "net" / "node0" / "config.toml"
    config.write_text("api_port = 'x'\n")
    bad = run("node0", "--dir", str(tmp_path / "net"))
    assert bad.exit_code == 2 and "api_port" in bad.output and "not an integer" in bad.output
    config.write_text(f"api_port = 1\ndata_dir = '{tmp_path}'\n")
    unknown = run("node5", "--dir", str(tmp_path / "net"))
    assert unknown.exit_code == 2 and "'node5' names no node of this network: node0 to node0" in unknown.output
    assert config.read_text() == f"api_port = 1\ndata_dir = '{tmp_path}'\n"
    assert sorted(p.name for p in (tmp_path / "net" / "node0").iterdir()) == ["config.toml"]

"""Leadership transfer and membership changes through the admin endpoint: the route's checks (api/admin.py) and the
node's (node/admin.py ClusterControl) on a real Raft engine, before any event is fed."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from api.admin import AdminRefused
from api.app import create_app
from consensus.engine import LeadershipTransferRequested, MembershipChangeRequested
from ledger.address import address_of, encode_address
from node.admin import ClusterControl
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
            raise AdminRefused("not_a_member", f"{to.hex()} is not a member")
        self.asked.append(to)
        return {"from": self.members[0].hex(), "to": to.hex(), "term": 3}

    def change_membership(self, add: bytes | None, remove: bytes | None) -> dict:
        if remove is not None and remove not in self.members:
            raise AdminRefused("not_a_member", f"{remove.hex()} is not a member")
        self.asked.append(add or remove)
        member = address_of(add) if add is not None else remove
        return {"change": "add learner" if add else "remove voter", "member": member.hex(), "term": 3}


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


NEW_KEY = Cluster(3, spares=1).members[3]


def test_the_members_route_adds_by_node_key_and_removes_by_address():
    members = [bytes([i]) * 20 for i in range(3)]
    service = LeadingService(members)
    app = create_app(service, admin_token=TOKEN)
    added = call(app, "POST", "/v1/admin/members", json={"add": NEW_KEY.hex()}, headers=AUTH)
    assert added.status_code == 202, added.text
    assert added.json() == {"change": "add learner", "member": encode_address(PREFIX, address_of(NEW_KEY)), "term": 3}
    removed = call(app, "POST", "/v1/admin/members", json={"remove": encode_address(PREFIX, members[2])}, headers=AUTH)
    assert removed.json() == {"change": "remove voter", "member": encode_address(PREFIX, members[2]), "term": 3}
    assert service.asked == [NEW_KEY, members[2]]


@pytest.mark.parametrize("body, status, reason, field", [
    ({"add": NEW_KEY.hex()[:-2]}, 422, "invalid_value", "add"),
    ({"add": "zz" * 33}, 422, "invalid_value", "add"),
    ({"add": "04" + NEW_KEY.hex()[2:]}, 422, "invalid_value", "add"),
    ({"add": 5}, 422, "wrong_type", "add"),
    ({"remove": "nope"}, 400, "bad_format", "remove"),
    ({"remove": encode_address(PREFIX, b"\x09" * 20)}, 422, "not_a_member", "remove"),
    ({}, 422, "missing_field", None),
    ({"add": NEW_KEY.hex(), "remove": encode_address(PREFIX, b"\x01" * 20)}, 422, "missing_field", None),
    ({"drop": 1}, 422, "unknown_field", "drop"),
    ([1], 422, "wrong_type", None),
])
def test_the_members_route_refuses_bad_requests_and_asks_nothing(body, status, reason, field):
    service = LeadingService([bytes([i]) * 20 for i in range(3)])
    app = create_app(service, admin_token=TOKEN)
    assert_problem(call(app, "POST", "/v1/admin/members", json=body, headers=AUTH), status, reason, field)
    assert_problem(call(app, "POST", "/v1/admin/members", json={"add": NEW_KEY.hex()}), 401, "unauthorized")
    assert service.asked == []


class NodeOf(ClusterControl):
    """What ClusterControl needs of a Node: an engine, its lock, a clock and a queue."""

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
    addresses = [cluster.address(i) for i in range(3)]
    with pytest.raises(AdminRefused, match=f"not the leader .it follows {encode_address(PREFIX, addresses[0])}"):
        follower.transfer_leadership(addresses[2])
    with pytest.raises(AdminRefused) as refused:
        leader.transfer_leadership(b"\x09" * 20)
    assert refused.value.reason == "not_a_member"
    with pytest.raises(AdminRefused) as refused:
        leader.transfer_leadership(addresses[0])
    assert refused.value.reason == "already_leader"
    assert leader.fed == [] and follower.fed == []
    assert leader.transfer_leadership(addresses[2]) == {"from": addresses[0].hex(), "to": addresses[2].hex(),
                                                        "term": cluster.engines[0].term}
    assert leader.fed == [LeadershipTransferRequested(cluster.now, addresses[2])]


def test_only_the_leader_changes_members_one_change_at_a_time_and_never_removes_itself():
    cluster = Cluster(3, spares=1)
    cluster.tick(0, after_ms=300)
    leader, follower = NodeOf(cluster.engines[0], cluster.now), NodeOf(cluster.engines[1], cluster.now)
    new = cluster.members[3]

    def refused(control, add, remove) -> str:
        with pytest.raises(AdminRefused) as caught:
            control.change_membership(add, remove)
        return caught.value.reason

    assert refused(follower, new, None) == "not_leader"
    assert refused(leader, cluster.members[1], None) == "already_member"
    assert refused(leader, None, b"\x09" * 20) == "not_a_member"
    assert refused(leader, None, cluster.address(0)) == "is_leader"
    assert leader.fed == [] and follower.fed == []
    assert leader.change_membership(new, None) == {"change": "add learner", "member": cluster.address(3).hex(),
                                                   "term": cluster.engines[0].term}
    assert leader.fed == [MembershipChangeRequested(cluster.now, new, add=True)]
    cluster.isolate(0)
    cluster.feed(0, leader.fed[0])  # appended, not committed: the next change waits
    assert refused(leader, None, cluster.address(2)) == "change_pending"
    cluster.heal()
    cluster.heartbeat(0)
    cluster.isolate(3)  # the learner stays a learner: it can be removed as one
    assert leader.change_membership(None, cluster.address(3))["change"] == "remove learner"


def test_an_engine_without_a_leader_refuses():
    engine = SimpleNamespace(name="bft", transfers_leadership=False)
    with pytest.raises(AdminRefused) as refused:
        NodeOf(engine, 0).transfer_leadership(b"\x01" * 20)
    assert refused.value.reason == "no_leader_to_move"
    engine = SimpleNamespace(name="bft", changes_membership=False)
    with pytest.raises(AdminRefused) as refused:
        NodeOf(engine, 0).change_membership(None, b"\x01" * 20)
    assert refused.value.reason == "no_membership"


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


def test_a_full_cluster_refuses_another_member():
    validators = [SimpleNamespace(address=bytes([i]) * 20, public_key=b"", power=1) for i in (1, 2)]
    status = SimpleNamespace(role="leader", term=2, validators=validators, details={
        "leader": validators[0].address.hex(), "accepts_membership_change": True, "member_limit": 2})
    engine = SimpleNamespace(name="raft", changes_membership=True, status=lambda: status)
    node = NodeOf(engine, 0)
    with pytest.raises(AdminRefused) as refused:
        node.change_membership(NEW_KEY, None)
    assert refused.value.reason == "too_many_members" and node.fed == []


def test_the_raft_commands_refuse_a_strange_node_name_and_a_leader_gone_quiet(tmp_path):
    import httpx

    from node.raft_cli import RaftCommandError, _Cluster, _node_index
    from node.testnet import write_network

    for name in ("node²", "node-1", "node3", "x"):
        with pytest.raises(RaftCommandError, match="names no node of this network"):
            _node_index(name, 3)
    write_network(tmp_path / "net", 3, "raft", 28200, 29200)
    (tmp_path / "net" / "node0" / "admin.token").write_text("t\n")

    class Gone:
        def post(self, *args, **kwargs):
            raise httpx.ConnectError("refused")

    with pytest.raises(RaftCommandError, match="node0 did not answer .ConnectError.: is it still running"):
        _Cluster(tmp_path / "net", Gone()).post_admin(0, "/v1/admin/members", {"remove": "x"})

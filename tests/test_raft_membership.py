"""Raft membership changes, one server at a time (dissertation chapter 4), on a scripted
cluster of real engines: a learner joins, catches up and is promoted; a member leaves and
the majority shrinks; one change at a time; the membership is the last entry's, so a
truncated change is undone; and a block that breaks the rules does not pass verify_seal."""

from __future__ import annotations

import pytest

from consensus.engine import LeadershipTransferRequested, MembershipChangeRequested
from consensus.raft.engine import RaftEngine
from consensus.raft.membership import Membership, decode_extra, encode_extra
from consensus.engine import Started
from ledger.block import Block, InvalidSeal, build_header
from raft_cluster import ELECTION_MS, Cluster


def change(cluster: Cluster, leader: int, node: int, add: bool) -> None:
    cluster.feed(leader, MembershipChangeRequested(cluster.now, cluster.members[node], add))
    cluster.run()


def membership(cluster: Cluster, node: int) -> Membership:
    engine = cluster.engines[node]
    return engine._members()


def committed_membership(cluster: Cluster, node: int) -> Membership:
    header = cluster.chains[node][-1].header
    return decode_extra(header.extra, cluster.engines[0].genesis_members)[1] if header.height else None


def test_a_new_member_joins_as_a_learner_catches_up_and_is_promoted_to_voter():
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    cluster.submit(0)
    assert cluster.engines[3].status().role == "observer"
    change(cluster, 0, 3, add=True)
    assert membership(cluster, 0) == Membership(cluster.members[:3], (cluster.members[3],))
    assert committed_membership(cluster, 1) == membership(cluster, 0)  # committed by the three voters
    # The learner syncs the chain (the leader no longer holds its early blocks whole, as in
    # a long-running cluster it would not), and learns that it is one.
    cluster.sync(3, 0)
    assert cluster.engines[3].status().role == "learner"
    cluster.heartbeat(0)  # its answer shows it caught up: the leader promotes it
    assert membership(cluster, 0) == Membership(cluster.members)
    assert all(membership(cluster, n) == Membership(cluster.members) for n in range(4))
    assert all(cluster.committed(n) == cluster.committed(0) for n in range(4))
    status = cluster.engines[0].status()
    assert (status.total_power, status.quorum_power) == (4, 3)
    assert [v.power for v in status.validators] == [1, 1, 1, 1]
    labels = [dict(cluster.engines[0].block_labels(cluster.chains[0][h].header, cluster.chains[0][h - 1].header))
              for h in range(1, len(cluster.chains[0]))]
    assert [label["membership"].split(" dev1")[0] for label in labels if "membership" in label] == ["add learner",
                                                                                                   "promote"]
    # Now a majority is three of four: with two old members down nothing commits ...
    cluster.crash(1)
    cluster.crash(2)
    height = len(cluster.chains[0])
    cluster.submit(0)
    cluster.heartbeat(0)
    assert len(cluster.chains[0]) == height
    # ... and the new voter's vote elects a leader once one of them is back.
    cluster.start(1)
    cluster.heartbeat(0)
    assert len(cluster.chains[0]) > height and cluster.chains[3][-1].hash == cluster.chains[0][-1].hash


def test_a_learner_counts_toward_no_majority_and_never_campaigns():
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    change(cluster, 0, 3, add=True)
    cluster.isolate(3)  # it stays a learner: the leader never sees it caught up
    cluster.sync(3, 0)
    assert cluster.engines[3].status().role == "learner"
    cluster.tick(3, after_ms=5 * ELECTION_MS)
    assert cluster.engines[3].elections == 0 and cluster.engines[3].status().role == "learner"
    cluster.heal()
    cluster.crash(1)
    cluster.crash(2)
    cluster.isolate(3, keep=(0,))  # cut only from the crashed: it answers the leader ...
    height = len(cluster.chains[0])
    cluster.submit(0)
    cluster.heartbeat(0)
    # ... which promotes nobody (the promotion needs two voters to commit) and commits nothing.
    assert len(cluster.chains[0]) == height


def test_a_removed_member_no_longer_counts_and_follows_as_an_observer():
    cluster = Cluster(4)
    cluster.elect(0)
    cluster.crash(2)
    cluster.crash(3)
    height = len(cluster.chains[0])
    cluster.submit(0)
    assert len(cluster.chains[0]) == height  # two of four: no majority
    cluster.start(2)
    cluster.start(3)
    cluster.heartbeat(0)
    cluster.sync(2, 0)
    cluster.sync(3, 0)
    change(cluster, 0, 3, add=False)
    assert membership(cluster, 0) == Membership(cluster.members[:3])
    cluster.sync(3, 0)  # node 3 hears no more appends; it syncs its removal
    assert cluster.engines[3].status().role == "observer"
    cluster.crash(2)
    cluster.submit(0)
    assert len(cluster.chains[0]) > height + 1  # two of three is a majority now
    refused = cluster.engines[1].refused_messages
    cluster.tick(3, after_ms=5 * ELECTION_MS)  # an observer does not campaign ...
    assert cluster.engines[3].elections == 0 and cluster.engines[1].refused_messages == refused


def test_one_change_at_a_time():
    cluster = Cluster(3, spares=2)
    cluster.elect(0)
    cluster.isolate(0)  # the first change cannot commit
    change(cluster, 0, 3, add=True)
    assert cluster.engines[0].status().details["accepts_membership_change"] is False
    change(cluster, 0, 4, add=True)
    assert membership(cluster, 0) == Membership(cluster.members[:3], (cluster.members[3],))
    cluster.heal()
    cluster.heartbeat(0)
    assert cluster.engines[0].status().details["accepts_membership_change"] is True
    change(cluster, 0, 4, add=True)
    assert membership(cluster, 0).learners == (cluster.members[3], cluster.members[4])


def test_a_change_truncated_with_its_entry_is_undone():
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    cluster.isolate(0)
    change(cluster, 0, 3, add=True)  # appended by 0 alone, never committed
    assert 3 in [cluster.members.index(k) for k in membership(cluster, 0).learners]
    cluster.elect(1)
    cluster.submit(1)
    cluster.heal()
    cluster.heartbeat(1)  # 0 takes 1's log: its uncommitted change goes
    assert membership(cluster, 0) == Membership(cluster.members[:3])
    assert cluster.committed(0) == cluster.committed(1)


def test_the_leader_does_not_remove_itself_and_does_not_hand_the_lead_to_a_learner():
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    length = cluster.engines[0].log.last_index
    change(cluster, 0, 0, add=False)
    assert cluster.engines[0].log.last_index == length
    change(cluster, 0, 3, add=True)
    cluster.feed(0, LeadershipTransferRequested(cluster.now, cluster.address(3)))
    assert cluster.engines[0].status().details["transferring_to"] is None


def test_a_restarted_node_knows_the_membership_from_its_head_alone():
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    change(cluster, 0, 3, add=True)
    cluster.submit(0)
    engine = RaftEngine(cluster.genesis, cluster.keys[1])
    head = cluster.chains[1][-1].header
    engine.handle(Started(cluster.now, head, None, (head,)))
    assert engine._members() == Membership(cluster.members[:3], (cluster.members[3],))


def sealed(cluster: Cluster, signer: int, parent, extra: bytes) -> Block:
    header = build_header(cluster.genesis.chain_id, parent, parent.timestamp + 1, [], cluster.address(signer), extra)
    return Block(header.with_seal(cluster.keys[signer].sign_digest(header.sealing_digest())), ())


@pytest.mark.parametrize("case, message", [
    ("two at once", "one server at a time"),
    ("leader removes itself", "removes its own leader"),
    ("learner appends", "appended by no voter"),
    ("genesis written as version 2", "version 1"),
])
def test_verify_seal_refuses_a_block_that_breaks_the_membership_rules(case, message):
    cluster = Cluster(3, spares=2)
    cluster.elect(0)
    engine = cluster.engines[1]
    genesis = engine.genesis_members
    parent = cluster.chains[1][-1].header
    members = cluster.members
    term = engine.term
    if case == "two at once":
        block = sealed(cluster, 0, parent, encode_extra(term, Membership(members[:3], members[3:5]), genesis))
    elif case == "leader removes itself":
        block = sealed(cluster, 0, parent, encode_extra(term, Membership(members[1:3]), genesis))
    elif case == "learner appends":
        change(cluster, 0, 3, add=True)
        parent = cluster.chains[1][-1].header
        block = sealed(cluster, 3, parent, encode_extra(term, Membership(members[:3], members[3:4]), genesis))
    else:
        from ledger.codec import Writer
        extra = Writer().u8(2).u64(term).u8(3).u8(0)
        for k in members[:3]:
            extra.fixed(k, 33)
        block = sealed(cluster, 0, parent, extra.bytes())
    with pytest.raises(InvalidSeal, match=message):
        engine.verify_seal(block.header, parent)


def test_a_candidate_that_syncs_its_own_removal_stops_campaigning():
    cluster = Cluster(4)
    cluster.elect(0)
    cluster.isolate(3)
    change(cluster, 0, 3, add=False)  # committed by 0, 1 and 2; node 3 never hears it
    cluster.tick(3, after_ms=5 * ELECTION_MS)
    assert cluster.engines[3].role == "pre-candidate"
    cluster.sync(3, 0)  # block sync brings the removal
    assert cluster.engines[3].role == "follower" and cluster.engines[3].status().role == "observer"
    cluster.heal()
    cluster.tick(3, after_ms=5 * ELECTION_MS)
    assert cluster.engines[3].role == "follower" and cluster.engines[0].role == "leader"


class Everyone:
    def __contains__(self, key) -> bool:
        return True


def test_a_promoted_learner_that_missed_its_promotion_still_votes():
    """Review finding: a promotion commits on a majority of the new voters, which need not
    include the learner; if the leader then dies before the others hear the commit index,
    the learner's vote is needed, and learners did not vote: no leader ever again."""
    from consensus.raft.messages import AppendEntries, decode_message

    cluster = Cluster(2, spares=1)  # voters 0 and 1; node 2 joins
    cluster.elect(0)
    change(cluster, 0, 2, add=True)
    cluster.sync(2, 0)
    assert cluster.engines[2].status().role == "learner"
    promoting = {"on": False}

    def rewrite(source, destination, data):
        if source != 0:
            return data
        message = decode_message(data, Everyone(), cluster.genesis.chain_id, 100)
        if isinstance(message, AppendEntries) and message.entries and membership(cluster, 0) == Membership(
                cluster.members):
            promoting["on"] = True
        if promoting["on"] and (destination == 2 or isinstance(message, AppendEntries) and not message.entries):
            return None  # node 2 never gets its promotion, node 1 never hears it committed
        return data

    cluster.rewrite = rewrite
    cluster.heartbeat(0)
    assert membership(cluster, 1) == Membership(cluster.members) and membership(cluster, 2) != membership(cluster, 1)
    cluster.crash(0)
    cluster.rewrite = None
    for _ in range(5):
        cluster.tick(1, after_ms=3 * ELECTION_MS)
        if cluster.engines[1].role == "leader":
            break
    assert cluster.engines[1].role == "leader"  # with the vote of node 2, which it counts as a voter
    cluster.heartbeat(1)
    assert membership(cluster, 2) == Membership(cluster.members)


def test_a_membership_is_at_most_64_members_and_the_leader_never_writes_more():
    from ledger.crypto import PrivateKey, sha256

    keys = tuple(PrivateKey(sha256(bytes([i]))).public_key for i in range(65))
    full = Membership(keys[:3], keys[3:64])
    assert full.full and not Membership(keys[:3]).full
    with pytest.raises(AssertionError):
        full.adding_learner(keys[64])
    with pytest.raises(ValueError):
        Membership(keys[:3], keys[3:63]).step_to(full.removing(keys[3]).adding_learner(keys[3]).removing(keys[4]))
    cluster = Cluster(3, spares=1)
    cluster.elect(0)
    leader = cluster.engines[0]
    leader.log.append(leader._empty_block(Membership(cluster.members[:3], keys[3:64])))  # as if 64 had joined
    leader._may_change_membership = lambda: True  # as if that were committed
    length = leader.log.last_index
    change(cluster, 0, 3, add=True)
    assert leader.log.last_index == length  # a 65th is not appended
    assert leader.status().details["member_limit"] == 64

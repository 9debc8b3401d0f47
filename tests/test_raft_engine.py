"""The Raft engine on a scripted cluster (tests/raft_cluster.py): Figure 8 of the Raft paper
as a regression test, pre-vote, check-quorum, durability before answers, restarts, and
hostile messages."""

from __future__ import annotations

import pytest

import consensus.raft.engine as raft_engine
import consensus.raft.log as raft_log
from bft_helpers import key
from ledger.address import encode_address
from consensus.engine import (
    BlockBuilt,
    BuildBlock,
    BlockCommitted,
    Commit,
    LeadershipTransferRequested,
    PeerMessage,
    Persist,
    ReadIndexFailed,
    ReadIndexReady,
    ReadIndexRequested,
    Send,
    Started,
    TxsAvailable,
)
from ledger.codec import DecodeError
from ledger.block import Block, build_header
from ledger.transaction import new_transfer
from consensus.raft import messages, replication
from consensus.raft.engine import RaftEngine
from consensus.raft.log import term_of
from consensus.raft.membership import encode_extra
from raft_cluster import ELECTION_MS, HEARTBEAT_MS, Cluster, raft_genesis


def elect(cluster: Cluster, node: int) -> None:
    """Time `node` out until it leads (a stale term may cost it a first pre-vote round)."""
    for _ in range(3):
        cluster.tick(node, after_ms=3 * ELECTION_MS)
        if cluster.engines[node].role == "leader":
            return
    raise AssertionError(f"n{node} did not win: {cluster.engines[node].role} in term {cluster.engines[node].term}")


def appends_with(cluster: Cluster, message: bytes) -> tuple[int, ...]:
    decoded = messages.decode_message(message, cluster.members, cluster.genesis.chain_id, 100)
    if isinstance(decoded, messages.AppendEntries):
        return tuple(block.height for block in decoded.entries)
    return ()


def without_entry(cluster: Cluster, message: bytes, height: int) -> bytes:
    """The message, with the entry at `height` taken out of an AppendEntries (so the follower
    still answers it: a refusal, or a success for what came before)."""
    if height not in appends_with(cluster, message):
        return message
    decoded = messages.decode_message(message, cluster.members, cluster.genesis.chain_id, 100)
    kept = tuple(block for block in decoded.entries if block.height < height)
    stripped = messages.AppendEntries(decoded.term, decoded.leader, decoded.prev_index, decoded.prev_term,
                                      decoded.commit, kept)
    return messages.encode_message(stripped, cluster.keys[cluster.members.index(decoded.leader)], cluster.genesis.chain_id)


def run_figure_8(cluster: Cluster) -> dict:
    """The scenario of Figure 8, with our indices (block 1 is the first leader's no-op)."""
    elect(cluster, 0)  # term 1: block 1 committed everywhere
    assert all(len(chain) == 2 for chain in cluster.chains)
    # (a) S0 appends block 2 in term 1 and reaches only S1.
    cluster.isolate(0, keep=(1,))
    cluster.submit(0)
    old_entry = cluster.engines[0].log.block_at(2)
    assert term_of(old_entry.header) == 1 and cluster.engines[1].log.hash_at(2) == old_entry.hash
    # (b) S0 crashes; S4 wins term 2 with S2's and S3's votes and appends its own block 2,
    # which reaches nobody.
    cluster.crash(0)
    cluster.heal()
    cluster.rewrite = lambda source, destination, message: None if source == 4 and appends_with(cluster, message) else message
    elect(cluster, 4)
    other_entry = cluster.engines[4].log.block_at(2)
    assert other_entry.hash != old_entry.hash
    cluster.crash(4)
    # (c) S0 restarts and wins term 3 with S2 and S3 (S1 cut off); one entry a message, and
    # what carries S0's block 3 (its no-op of term 3) is lost: the term-1 block 2 reaches S2
    # and S3, so S0, S2 and S3 (a majority of five) store it.
    cluster.rewrite = lambda source, destination, message: (
        without_entry(cluster, message, 3) if source == 0 else message)
    cluster.start(0)
    cluster.isolate(1)
    elect(cluster, 0)
    for _ in range(3):
        cluster.heartbeat(0)
    stored = [node for node in (0, 2, 3) if cluster.engines[node].log.hash_at(2) == old_entry.hash]
    seen = {"stored_on_majority": stored, "leader_commit": cluster.engines[0].commit_index,
            "committed_old": [n for n in range(5) if len(cluster.chains[n]) > 2 and cluster.chains[n][2].hash == old_entry.hash]}
    # (d) S0 crashes; S4 restarts and wins term 4: its block 2 (term 2) is more up to date.
    cluster.crash(0)
    cluster.heal()
    cluster.rewrite = None
    cluster.start(4)
    elect(cluster, 4)
    cluster.heartbeat(4)
    seen["final"] = {n: cluster.chains[n][2].hash for n in (1, 2, 3, 4) if len(cluster.chains[n]) > 2}
    seen["old"], seen["other"] = old_entry.hash, other_entry.hash
    return seen


def test_figure_8_an_entry_of_an_older_term_is_not_committed_by_counting_replicas(monkeypatch):
    monkeypatch.setattr(replication, "MAX_ENTRIES", 1)
    seen = run_figure_8(Cluster(5))
    assert seen["stored_on_majority"] == [0, 2, 3]  # the situation of Figure 8 (c)
    assert seen["leader_commit"] == 1 and seen["committed_old"] == []  # ... and it is not committed
    # S4's block 2 wins; had the term-1 block been committed in (c), this would revert it.
    assert seen["final"] and set(seen["final"].values()) == {seen["other"]}


def test_figure_8_with_the_naive_commit_rule_loses_a_committed_block(monkeypatch):
    """The test can fail: a leader that commits whatever a majority stores commits the
    term-1 block in (c), and S4 then commits another block at that height in (d)."""
    monkeypatch.setattr(replication, "MAX_ENTRIES", 1)

    def naive(self):
        stored = sorted([self.log.last_index] + list(self.match_index.values()), reverse=True)
        candidate = stored[self.params.majority - 1]
        if candidate > self.commit_index:
            self.commit_index = candidate
            self._apply_committed()
            self._replicate()

    monkeypatch.setattr(RaftEngine, "_advance_commit", naive)
    seen = run_figure_8(Cluster(5))
    assert seen["committed_old"] and seen["other"] in seen["final"].values()


def test_pre_vote_keeps_a_cut_off_member_from_raising_the_term():
    cluster = Cluster(3)
    elect(cluster, 0)
    term = cluster.engines[0].term
    cluster.isolate(2)
    for _ in range(5):
        for _ in range(3 * ELECTION_MS // HEARTBEAT_MS):
            cluster.heartbeat(0)  # the leader keeps its majority (check-quorum) ...
        cluster.tick(2)  # ... while the cut-off member times out again and again
    assert cluster.engines[2].term == term  # pre-votes got no answer: no term was spent
    cluster.heal()
    cluster.tick(2, after_ms=0)  # its pre-vote now reaches members that hear their leader
    cluster.heartbeat(0)
    assert cluster.engines[0].role == "leader" and cluster.engines[0].term == term
    assert cluster.engines[2].leader == cluster.members[0]


def test_check_quorum_a_leader_cut_off_from_the_majority_steps_down():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.isolate(0)
    cluster.tick(0, after_ms=ELECTION_MS + 1)
    cluster.tick(0, after_ms=ELECTION_MS + 1)
    assert cluster.engines[0].role == "follower"
    elect(cluster, 1)  # the majority elects another
    assert cluster.engines[1].term > 1


def test_a_vote_is_persisted_before_it_leaves_and_survives_a_restart():
    cluster = Cluster(3)
    elect(cluster, 0)
    actions = cluster.actions[1]
    granted = [i for i, a in enumerate(actions) if isinstance(a, Send)
               and isinstance(m := messages.decode_message(a.message, cluster.members, "raft-test", 100),
                              messages.VoteResponse) and m.granted and not m.pre_vote]
    assert granted and isinstance(actions[granted[0] - 1], Persist)
    term = cluster.engines[1].term
    cluster.crash(1)
    cluster.start(1)
    assert (cluster.engines[1].term, cluster.engines[1].voted_for) == (term, cluster.members[0])


def test_entries_are_persisted_before_they_are_acknowledged_and_kept_across_a_restart():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.isolate(0, keep=(1,))
    cluster.submit(0)  # block 2 on S0 and S1 only: committed (2 of 3) on S0 ...
    assert len(cluster.chains[0]) == 3
    cluster.crash(1)
    cluster.start(1)  # ... and S1 still holds it after a restart, committed or not
    assert cluster.engines[1].log.last_index == 2


def test_a_single_member_leads_and_commits_alone():
    cluster = Cluster(1)
    cluster.tick(0)
    assert cluster.engines[0].role == "leader"
    cluster.submit(0)
    assert len(cluster.chains[0]) == 3  # its no-op and the block


def test_hostile_messages_change_nothing():
    cluster = Cluster(3)
    elect(cluster, 0)
    engine = cluster.engines[1]
    before = (engine.term, engine.voted_for, engine.log.last_index, engine.role)
    stranger = key("raft-stranger")  # signs as member 2 without being it
    forged = messages.encode_message(messages.VoteRequest(False, 99, cluster.members[2], 99, 99), stranger, "raft-test")
    other_chain = messages.encode_message(messages.VoteRequest(False, 99, cluster.members[2], 99, 99), cluster.keys[2], "another")
    for data in (b"", b"\x04", bytes(200), forged, other_chain, forged[:-1] + bytes([forged[-1] ^ 1])):
        assert not [a for a in engine.handle(PeerMessage(cluster.now, "n9", data)) if isinstance(a, (Send, Persist))]
    assert (engine.term, engine.voted_for, engine.log.last_index, engine.role) == before
    assert engine.refused_messages == 6


@pytest.mark.parametrize("params, problem", [
    ({"members": []}, "members must list"),
    ({"members": ["zz"]}, "not a compressed secp256k1 public key"),
    ({"members": [key("a").public_key.hex()] * 2}, "listed twice"),
    ({"members": None}, "members must list"),
    ({"heartbeat_ms": 600}, "at most half"),
    ({"election_timeout_ms": 0}, "1 to 3600000"),
    ({"leader": 1}, "unknown engine.params leader"),
])
def test_bad_genesis_params_are_refused_with_a_reason(params, problem):
    genesis, keys = raft_genesis(3)
    settings = dict(genesis.engine_params)
    settings.update(params)
    with pytest.raises(ValueError, match=problem):
        messages.RaftParams.from_genesis(settings)


def transfer(cluster: Cluster, leader: int, to: int) -> None:
    cluster.feed(leader, LeadershipTransferRequested(cluster.now, cluster.address(to)))
    cluster.run()


def test_leadership_moves_to_the_member_asked_for_even_one_that_was_behind():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.isolate(2)
    cluster.submit(0)  # block 2 reaches S1 only: S2 is behind
    cluster.heal()
    term = cluster.engines[0].term
    transfer(cluster, 0, 2)  # S0 first brings S2's log up to its own, then hands over
    assert cluster.engines[2].role == "leader" and cluster.engines[2].term == term + 1
    assert cluster.engines[0].role == "follower" and cluster.engines[0].leader == cluster.members[2]
    assert cluster.engines[2].log.last_index >= 3  # block 2 and its own no-op
    cluster.submit(2)
    assert len({tuple(cluster.committed(n)) for n in range(3)}) == 1


def test_a_transfer_to_itself_a_stranger_or_a_dead_member_leaves_the_leader_leading():
    cluster = Cluster(3)
    elect(cluster, 0)
    term = cluster.engines[0].term
    transfer(cluster, 0, 0)
    cluster.feed(0, LeadershipTransferRequested(cluster.now, b"\x09" * 20))
    assert cluster.engines[0].role == "leader" and cluster.engines[0].status().details["transferring_to"] is None
    cluster.crash(2)
    transfer(cluster, 0, 2)  # it waits an election timeout for S2, building nothing meanwhile
    assert cluster.engines[0].status().details["transferring_to"] is not None
    for _ in range(2 * ELECTION_MS // HEARTBEAT_MS):
        cluster.heartbeat(0)
    assert cluster.engines[0].status().details["transferring_to"] is None
    cluster.submit(0)  # and leads on
    assert cluster.engines[0].role == "leader" and cluster.engines[0].term == term
    assert len(cluster.chains[0]) == 3


def test_a_follower_ignores_a_timeout_now_from_anyone_but_its_leader():
    cluster = Cluster(3)
    elect(cluster, 0)
    term = cluster.engines[0].term
    forged = messages.encode_message(messages.TimeoutNow(term, cluster.members[1]), cluster.keys[1], "raft-test")
    cluster.feed(2, PeerMessage(cluster.now, "n1", forged))
    cluster.run()
    assert cluster.engines[2].role == "follower" and cluster.engines[0].term == term


def test_the_status_and_the_labels_say_who_led_what():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.submit(0)
    status = cluster.engines[1].status()
    assert status.finality.value == "replication" and status.term == 1 and status.role == "follower"
    assert status.details["leader"] == cluster.address(0).hex()
    assert [(v.blocks_proposed, v.last_signed_height) for v in status.validators] == [(2, 2), (0, None), (0, None)]
    header = cluster.chains[1][2].header
    labels = dict(cluster.engines[1].block_labels(header, cluster.chains[1][1].header))
    assert labels == {"term": "1", "leader": encode_address("dev", cluster.address(0))}


def test_each_node_notes_who_led_each_term_once_for_the_explorer():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.heartbeat(0)
    transfer(cluster, 0, 2)
    seen = cluster.engines[1].status().details["leaders_seen"]
    assert [(s["term"], s["leader"]) for s in seen] == [(1, cluster.address(0).hex()), (2, cluster.address(2).hex())]
    assert seen[0]["at"] <= seen[1]["at"]


def read(cluster: Cluster, node: int, request: int) -> None:
    cluster.feed(node, ReadIndexRequested(cluster.now, request))
    cluster.run()


def test_a_read_on_the_leader_waits_for_a_majority_to_answer_a_new_round():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.submit(0)
    commit = cluster.engines[0].commit_index
    cluster.isolate(0)
    read(cluster, 0, 1)  # nobody answers the round: no answer yet
    assert cluster.reads[0] == []
    cluster.heal()
    cluster.heartbeat(0)  # the next round is answered by both
    assert cluster.reads[0] == [ReadIndexReady(1, commit)]


def test_a_read_on_a_follower_is_asked_of_the_leader():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.submit(0)
    read(cluster, 2, 7)
    assert cluster.reads[2] == [ReadIndexReady(7, cluster.engines[0].commit_index)]


def test_a_deposed_leader_never_confirms_a_read_so_no_read_is_stale():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.isolate(0)
    elect(cluster, 1)  # the majority moves on and commits a block the old leader lacks
    cluster.submit(1)
    read(cluster, 0, 3)  # the old leader still thinks it leads: its round reaches nobody
    cluster.tick(0, after_ms=ELECTION_MS + 1)
    assert cluster.reads[0] == [ReadIndexFailed(3, "leadership was not confirmed within an election timeout")]


def test_a_read_without_a_known_leader_fails_at_once():
    cluster = Cluster(3)
    read(cluster, 1, 5)
    assert cluster.reads[1] == [ReadIndexFailed(5, "no leader is known now (an election may be under way)")]


def test_a_restarted_leader_waits_for_a_lagging_follower_to_sync_instead_of_probing_it_to_index_one():
    """Review finding: a leader that no longer holds the blocks a follower lacks (it restarted,
    or the follower is far behind) probed at its last entry, and each refusal walked nextIndex
    down by one with a new message, to 1, where it stayed refused forever."""
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.isolate(1)
    cluster.submit(0)  # block 2 committed on S0 and S2; S1 stays at block 1
    assert len(cluster.chains[0]) == 3 and len(cluster.chains[1]) == 2
    cluster.crash(0)
    cluster.start(0)  # S0 comes back holding no committed block whole
    cluster.crash(2)
    cluster.heal()
    sent_before = len(cluster.actions[0])
    elect(cluster, 0)  # S1's vote: S0's log is more up to date
    for _ in range(3):
        cluster.heartbeat(0)
    appends = [a for a in cluster.actions[0][sent_before:] if isinstance(a, Send)
               and isinstance(messages.decode_message(a.message, cluster.members, "raft-test", 100),
                              messages.AppendEntries)]
    assert len(appends) <= 8, len(appends)  # one probe a heartbeat, not a walk down the log
    assert cluster.engines[0].next_index[cluster.members[1]] == 3  # parked at S0's head, awaiting S1's sync
    # S1 syncs block 2 from the store of a peer, as the runtime's block sync does ...
    block = cluster.chains[0][2]
    cluster.chains[1].append(block)
    cluster.feed(1, BlockCommitted(cluster.now, block.header))
    cluster.run()
    cluster.heartbeat(0)  # ... and the next probe matches: S0's no-op of the new term commits
    assert len(cluster.chains[0]) == 4 and cluster.committed(1) == cluster.committed(0)


def test_a_block_built_while_the_lead_is_handed_over_is_dropped():
    """Review finding: a build asked for before the transfer began appended a block after
    TimeoutNow had gone out, so the target's log was no longer up to date."""
    cluster = Cluster(3)
    elect(cluster, 0)
    engine = cluster.engines[0]
    assert any(isinstance(a, BuildBlock) for a in engine.handle(TxsAvailable(cluster.now, 1)))  # answered later
    cluster.crash(2)
    transfer(cluster, 0, 2)  # S2 is down: the transfer waits for it
    assert engine.status().details["transferring_to"] is not None
    last = engine.log.last_index
    built = build_header("raft-test", cluster.chains[0][-1].header, cluster.now + 1, [], cluster.address(0),
                         encode_extra(engine.term, engine.genesis_members, engine.genesis_members))
    cluster.feed(0, BlockBuilt(cluster.now, Block(built, ())))
    assert engine.log.last_index == last  # dropped, not appended


def test_saved_state_that_does_not_decode_leaves_the_engine_unstarted_not_forgetful():
    genesis, keys = raft_genesis(3)
    engine = RaftEngine(genesis, keys[1])
    root = genesis.block().header
    with pytest.raises(DecodeError):
        engine.handle(Started(genesis.timestamp + 1, root, b"\\x09 not a saved state", (root,)))
    assert engine.log is None and engine.term == 0
    request = messages.encode_message(messages.VoteRequest(False, 1, keys[0].public_key, 0, 0), keys[0], genesis.chain_id)
    assert engine.handle(PeerMessage(genesis.timestamp + 2, "n0", request)) == []  # no vote from a node that forgot


def test_a_restart_into_a_newer_term_than_the_saved_vote_forgets_that_vote():
    cluster = Cluster(3)
    elect(cluster, 0)  # S1 voted for S0 in term 1 and saved it
    engine = RaftEngine(cluster.genesis, cluster.keys[1])
    saved = raft_log.encode_saved(0, cluster.members[2], [])  # an older term's vote, with a log of term 1
    chain = cluster.chains[1]
    engine.handle(Started(cluster.now, chain[-1].header, saved, tuple(b.header for b in chain)))
    assert (engine.term, engine.voted_for) == (1, None)


def test_a_follower_answers_entries_and_heartbeats_but_not_the_commit_note_after_each_block():
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.heartbeat(0)

    def answers(node: int, since: int) -> int:
        return sum(1 for a in cluster.actions[node][since:] if isinstance(a, Send) and isinstance(
            messages.decode_message(a.message, cluster.members, "raft-test", 100), messages.AppendResponse))

    before, leader_sent = len(cluster.actions[1]), len(cluster.actions[0])
    cluster.submit(0)
    notes = [m for a in cluster.actions[0][leader_sent:] if isinstance(a, Send)
             and isinstance(m := messages.decode_message(a.message, cluster.members, "raft-test", 100),
                            messages.AppendEntries) and not m.entries]
    assert notes and answers(1, before) == 1  # the block's entry, not the note of its commit
    assert cluster.committed(1) == cluster.committed(0)  # the note still commits it
    before = len(cluster.actions[1])
    cluster.heartbeat(0)
    assert answers(1, before) == 1  # a heartbeat is a new round: answered (check-quorum hears it)


def test_the_log_keeps_the_terms_of_the_last_window_and_the_blocks_of_the_last_few():
    """Committed entries leave the log's tables as the head moves past the window, one step
    or a few at a time, and none of those the window still covers goes."""
    genesis, keys = raft_genesis(1)
    blocks = [genesis.block()]
    for height in range(1, raft_log.WINDOW + 300):
        parent = blocks[-1].header
        extra = encode_extra(1, raft_engine.Membership((keys[0].public_key,)), (keys[0].public_key,))
        blocks.append(Block(build_header(genesis.chain_id, parent, parent.timestamp + 1, [], parent.proposer, extra), ()))
    log = raft_log.RaftLog(blocks[0].header)
    steps = [1] * 40 + [60] * 20 + [1] * 30  # a jump of up to the 64 recent headers the runtime hands in
    for step in steps:
        for block in blocks[log.head.height + 1: log.head.height + 1 + step]:
            log.append(block)
        head = blocks[log.head.height + step].header
        log.committed(head, tuple(b.header for b in blocks[max(0, head.height - 63): head.height + 1]))
        for height in range(0, head.height + 1):
            kept_term = height > head.height - raft_log.WINDOW
            assert (log.term_at(height) is not None) == kept_term, (head.height, height)
            if height:
                assert (log.block_at(height) is not None) == (height > head.height - raft_log.KEEP_BLOCKS)


def sent_appends(cluster: Cluster, node: int, since: int) -> list[tuple[str, messages.AppendEntries, bytes]]:
    """(peer, decoded, bytes) of each AppendEntries `node` sent since action `since`."""
    found = []
    for action in cluster.actions[node][since:]:
        if isinstance(action, Send):
            decoded = messages.decode_message(action.message, cluster.members, cluster.genesis.chain_id, 100)
            if isinstance(decoded, messages.AppendEntries):
                found.append((action.peer, decoded, action.message))
    return found


def test_the_leader_writes_a_committed_block_before_it_tells_the_followers():
    """The followers' commit notes are signed and sent once the leader's Commit is done (its
    BlockCommitted), not before: they held back the write and the client waiting for it."""
    cluster = Cluster(3)
    elect(cluster, 0)
    since = len(cluster.actions[0])
    cluster.submit(0)
    actions = cluster.actions[0][since:]
    commit_at = next(i for i, a in enumerate(actions) if isinstance(a, Commit) and a.block.height == 2)
    notes = [i for i, a in enumerate(actions) if isinstance(a, Send) and appends_with(cluster, a.message) == ()
             and messages.decode_message(a.message, cluster.members, "raft-test", 100).commit == 2]
    assert len(notes) == 2 and min(notes) > commit_at
    assert [len(chain) for chain in cluster.chains] == [3, 3, 3]


def test_entries_on_their_way_are_not_sent_again_and_a_lost_one_is():
    """Pipelining: the commit note to a follower whose answer has not come back does not carry
    the block again; when the block itself was lost, the follower's refusal brings it back."""
    cluster = Cluster(3)
    elect(cluster, 0)
    cluster.rewrite = lambda source, destination, message: None if (source, destination) == (2, 0) else message
    since = len(cluster.actions[0])
    cluster.submit(0)  # S2 stores block 2, its answer is lost; S1's commits it
    to_s2 = [(decoded.entries, decoded.commit) for peer, decoded, _ in sent_appends(cluster, 0, since) if peer == "n2"]
    assert [(tuple(b.height for b in entries), commit) for entries, commit in to_s2] == [((2,), 1), ((), 2)]
    assert len(cluster.chains[2]) == 3  # committed on the note alone
    # Now the block is lost on its way to S2: the note (prev 3) is refused and the block sent again.
    cluster.rewrite = lambda source, destination, message: (
        None if (source, destination) == (0, 2) and appends_with(cluster, message) else message)
    cluster.submit(0)
    assert len(cluster.chains[2]) == 3 and len(cluster.chains[0]) == 4
    cluster.rewrite = None
    since = len(cluster.actions[0])
    cluster.heartbeat(0)
    resent = [tuple(b.height for b in d.entries) for peer, d, _ in sent_appends(cluster, 0, since) if peer == "n2"]
    assert (3,) in resent
    assert cluster.committed(2) == cluster.committed(0)


def test_followers_at_the_same_place_get_one_signed_message(monkeypatch):
    cluster = Cluster(3)
    elect(cluster, 0)
    signed = []
    original = raft_engine.encode_message
    monkeypatch.setattr(raft_engine, "encode_message", lambda *args: signed.append(args[0]) or original(*args))
    since = len(cluster.actions[0])
    cluster.feed(0, TxsAvailable(cluster.now, 1))
    cluster.run()
    appends = [a for a in sent_appends(cluster, 0, since) if a[1].entries]
    assert {peer for peer, _, _ in appends} == {"n1", "n2"} and len({raw for _, _, raw in appends}) == 1
    assert sum(isinstance(m, messages.AppendEntries) and bool(m.entries) for m in signed) == 1
    # One behind gets its own: S2 misses block 3, and the next block's append to it differs.
    cluster.rewrite = lambda source, destination, message: (
        None if (source, destination) == (0, 2) and appends_with(cluster, message) else message)
    cluster.submit(0)
    cluster.rewrite = None
    since = len(cluster.actions[0])
    cluster.heartbeat(0)
    by_peer = {peer: raw for peer, _, raw in sent_appends(cluster, 0, since)}
    assert by_peer["n1"] != by_peer["n2"]


def test_with_transactions_waiting_the_next_blocks_append_carries_the_commit_index():
    """No commit note of its own when the leader builds at once: the append of the next block,
    a moment later, tells the followers."""
    cluster = Cluster(3)
    elect(cluster, 0)
    engine = cluster.engines[0]
    assert any(isinstance(a, BuildBlock) for a in engine.handle(TxsAvailable(cluster.now, 1)))
    built = build_header("raft-test", cluster.chains[0][-1].header, cluster.now + 1, [], cluster.address(0),
                         encode_extra(engine.term, engine.genesis_members, engine.genesis_members))
    engine.handle(TxsAvailable(cluster.now, 1))  # more arrive while block 2 is built ...
    since = len(cluster.actions[0])
    cluster.feed(0, BlockBuilt(cluster.now, Block(built, ())))
    engine._txs_waiting = 1  # ... and while it is replicated (the runtime says so after the build)
    cluster.run()
    appends = [(tuple(b.height for b in d.entries), d.commit) for _, d, _ in sent_appends(cluster, 0, since)]
    assert ((), 2) not in appends  # no note of its own
    assert appends.count(((3,), 2)) == 2  # block 3's append to each follower carries commit 2
    assert [len(chain) for chain in cluster.chains] == [4, 4, 4]


def block_on_its_way(report_ready: bool = False) -> tuple[Cluster, list]:
    """A leader (S0) whose block 2, holding the first of two transfers from one sender, the
    followers have stored while their answers wait (cut until the test heals the cluster)."""
    cluster = Cluster(3)
    cluster.report_ready = report_ready
    elect(cluster, 0)
    sender = key("raft-test-sender")
    transfers = [new_transfer(sender, "raft-test", nonce, b"\x01" * 20, 1) for nonce in (0, 1)]
    cluster.cut = {(1, 0), (2, 0)}
    cluster.mempool = transfers[:1]
    cluster.submit(0)
    engine = cluster.engines[0]
    assert engine.log.last_index == 2 and engine.commit_index == 1
    return cluster, transfers


@pytest.mark.parametrize("report_ready, counted", [(False, 1), (True, 3)])
def test_transactions_counted_while_their_block_was_on_its_way_start_no_empty_block(report_ready, counted):
    """The mempool's count of waiting transactions includes those of the block on its way
    (it drops them at commit): once that block commits they wait no more, and the leader
    sends its commit note instead of building an empty block.  When the runtime's
    BlockCommitted says how many wait, that count wins over any taken before."""
    cluster, _ = block_on_its_way(report_ready)
    engine = cluster.engines[0]
    cluster.feed(0, TxsAvailable(cluster.now, counted))  # counted while block 2 holds one of them
    cluster.heal()
    since = len(cluster.actions[0])
    cluster.heartbeat(0)
    assert engine.commit_index == 2 and engine.log.last_index == 2
    assert not any(isinstance(a, BuildBlock) for a in cluster.actions[0][since:])
    assert ((), 2) in [(tuple(b.height for b in d.entries), d.commit) for _, d, _ in sent_appends(cluster, 0, since)]


def test_transactions_that_arrived_while_a_block_was_on_its_way_are_built_at_its_commit():
    """The count taken while a block is on its way holds its transactions and newer ones:
    at its commit only its own stop waiting, and the leader builds the next block at once
    with the newer ones (not a heartbeat later, and not with the committed ones again)."""
    cluster, (first, second) = block_on_its_way()
    engine = cluster.engines[0]
    cluster.mempool.append(second)
    cluster.feed(0, TxsAvailable(cluster.now, 2))  # block 2's transfer and the new one
    cluster.heal()
    since = len(cluster.actions[0])
    cluster.heartbeat(0)
    assert any(isinstance(a, BuildBlock) for a in cluster.actions[0][since:])
    assert engine.log.last_index == 3
    assert [tx.id for tx in engine.log.block_at(2).transactions] == [first.id]
    assert [tx.id for tx in engine.log.block_at(3).transactions] == [second.id]


def test_told_at_commit_that_transactions_wait_the_leader_builds_at_once_without_a_note():
    """The runtime's BlockCommitted says how many transactions wait once the block's are gone:
    the leader builds the next block on it at once, and that block's append carries the commit
    index.  A note of its own ahead of the append would have a follower apply the committed
    block before it stored and answered the new one, on every round of a loaded leader."""
    cluster, (_, second) = block_on_its_way(report_ready=True)
    engine = cluster.engines[0]
    cluster.mempool.append(second)  # arrived meanwhile; no TxsAvailable reached the engine yet
    cluster.heal()
    since = len(cluster.actions[0])
    cluster.heartbeat(0)
    appends = [(tuple(b.height for b in d.entries), d.commit) for _, d, _ in sent_appends(cluster, 0, since)]
    assert ((), 2) not in appends  # no note of its own
    assert appends.count(((3,), 2)) == 2
    assert [tx.id for tx in engine.log.block_at(3).transactions] == [second.id]
    assert [len(chain) for chain in cluster.chains] == [4, 4, 4]



def test_no_part_of_the_engine_hides_a_method_behind_a_stub():
    """RaftEngine is put together from parts (elections, replication, reads, operators,
    report) that declare what they call elsewhere as `...` stubs: one that comes earlier in
    the method order than the real method would silently replace it with a no-op."""
    import inspect

    def is_stub(function) -> bool:
        lines = [line.strip() for line in inspect.getsource(function).splitlines()]
        return lines[-1].endswith(": ...") and len(lines) == 1

    for name in dir(raft_engine.RaftEngine):
        resolved = inspect.getattr_static(raft_engine.RaftEngine, name)
        if inspect.isfunction(resolved):
            assert not is_stub(resolved), f"RaftEngine.{name} resolves to a stub"

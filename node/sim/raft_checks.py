"""Raft in the simulator: the genesis of a run, the properties of the Raft paper's Figure 3
checked on the running engines, and membership churn (`--membership`): every few virtual
seconds the leader is asked, through the node's own admin path, to add a node that is not
a member or to remove one, under the same faults.

- Election safety: at most one leader in a term (checked after every step).
- Leader completeness: a new leader's log holds every block some node committed (checked
  when a node is first seen leading a term).
- Log matching: two logs with an entry of the same index and term hold the same block there
  and agree before it (checked at the end, over the entries the engines still hold).
- State machine safety is the harness's own "one final block a height" check: under Raft a
  committed block is final.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from api.admin import AdminRefused
from consensus.raft.engine import LEADER, RaftEngine
from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis

ELECTION_TIMEOUT_MS = 500
HEARTBEAT_MS = 50


def raft_genesis(chain_id: str, timestamp: int, members: Sequence[PrivateKey], accounts: Sequence[PrivateKey],
                 balance: int) -> Genesis:
    """Every node of `members` a voter (with membership churn the harness leaves one out)."""
    return Genesis(
        chain_id=chain_id,
        address_prefix="dev",
        timestamp=timestamp,
        engine="raft",
        engine_params={"members": [key.public_key.hex() for key in members],
                       "election_timeout_ms": ELECTION_TIMEOUT_MS, "heartbeat_ms": HEARTBEAT_MS},
        allocations={address_of(key.public_key): balance for key in accounts},
        block_reward=0,
    )


class RaftChecks:
    """What the harness knows of the engines beyond blocks: who led which term."""

    def __init__(self, fail: Callable[[str], None], trace: Callable[[str], None]):
        self.fail = fail
        self.trace = trace
        self.leaders: dict[int, str] = {}  # term -> label of its leader

    def after_step(self, label: str, engine: RaftEngine, final_blocks: dict[int, tuple[bytes, str]]) -> None:
        if engine.role != LEADER:
            return
        term = engine.term
        leader = self.leaders.get(term)
        if leader == label:
            return
        if leader is not None:
            self.fail(f"two leaders in term {term}: {leader} and {label}")
            return
        self.leaders[term] = label
        self.trace(f"{label} leads term {term}")
        log = engine.log
        assert log is not None
        for height, (block_hash, holder) in final_blocks.items():
            held = log.hash_at(height)
            if height > log.last_index or (held is not None and held != block_hash):
                self.fail(f"{label} leads term {term} without block {height} {block_hash.hex()[:12]} that "
                          f"{holder} committed (its log ends at {log.last_index})")
                return

    def at_end(self, engines: dict[str, RaftEngine]) -> None:
        """Log matching over the entries every pair of engines still holds."""
        labels = sorted(engines)
        for position, first in enumerate(labels):
            for second in labels[position + 1:]:
                a, b = engines[first].log, engines[second].log
                assert a is not None and b is not None
                top = min(a.last_index, b.last_index)
                agreed_from = None
                for index in range(top, 0, -1):
                    term_a, term_b = a.term_at(index), b.term_at(index)
                    if term_a is None or term_b is None:
                        break
                    if term_a == term_b:
                        agreed_from = index if agreed_from is None else agreed_from
                        if a.hash_at(index) != b.hash_at(index):
                            self.fail(f"log matching: {first} and {second} hold different blocks at {index} "
                                      f"in term {term_a}")
                            return
                    elif agreed_from is not None:
                        self.fail(f"log matching: {first} and {second} agree at {agreed_from} but not at {index}")
                        return


MIN_VOTERS = 2  # churn never removes below this many voters


class MembershipChurn:
    """Asks whichever node leads the newest term to change the membership by one node: add
    a node that is not a member (it joins as a learner) or remove a member other than the
    leader, chosen by the run's own random stream."""

    def __init__(self, rng: random.Random, keys: Sequence[PrivateKey], trace: Callable[[str], None],
                 label: Callable[[bytes], str]):
        self.rng = rng
        self.keys = list(keys)
        self.trace = trace
        self.label = label  # public key -> node label
        self.asked = 0
        self.refused = 0

    def step(self, nodes: Sequence) -> None:
        leaders = [node for node in nodes if node is not None and node.engine.role == LEADER]
        if not leaders:
            return
        node = max(leaders, key=lambda n: n.engine.term)
        details = node.engine.status().details
        voters, learners = details["voters"], details["learners"]
        outside = [k for k in self.keys if address_of(k.public_key).hex() not in voters + learners]
        removable = [k for k in self.keys if address_of(k.public_key).hex() in learners
                     or (address_of(k.public_key).hex() in voters and len(voters) > MIN_VOTERS
                         and k.public_key != node.engine.key)]
        if not outside and not removable:
            return
        add = bool(outside) and (not removable or self.rng.random() < 0.5)
        key = self.rng.choice(outside if add else removable)
        self.asked += 1
        try:
            if add:
                node.change_membership(key.public_key, None)
            else:
                node.change_membership(None, address_of(key.public_key))
        except AdminRefused as exc:
            self.refused += 1
            self.trace(f"membership: {'add' if add else 'remove'} {self.label(key.public_key)} refused ({exc.reason})")
            return
        self.trace(f"membership: {self.label(node.engine.key)} asked to {'add' if add else 'remove'} "
                   f"{self.label(key.public_key)} (voters {len(voters)}, learners {len(learners)})")

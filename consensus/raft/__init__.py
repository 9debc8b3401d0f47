"""Raft: leader election and log replication for a cluster whose members crash but do not
lie (consensus/raft/engine.py)."""

# A node's role in its current term (pre-candidate: asking for pre-votes, dissertation 9.6).
FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER = "follower", "pre-candidate", "candidate", "leader"

"""Raft: leader election and log replication for a cluster whose members crash but do not
lie (consensus/raft/engine.py)."""

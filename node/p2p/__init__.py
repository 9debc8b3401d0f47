"""Peers: the wire messages, the Network interface the runtime uses, and its TCP implementation."""

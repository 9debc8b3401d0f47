"""Consensus engines behind one interface (consensus.engine): deterministic state machines
that take events and return actions.  No sockets, no clock, no database."""

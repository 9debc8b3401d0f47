"""The node runtime: wires store, mempool, engine and API; config; the `ledger` CLI."""

__version__ = "0.1.0"

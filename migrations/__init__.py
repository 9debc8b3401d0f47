"""Alembic environment and versions of the chain store schema (ledger/store.py).

A package so the script directory ships with an installed node; ChainStore.upgrade
finds it through this module's location.
"""

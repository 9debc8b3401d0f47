"""The domain: crypto, codec, types, merkle, state machine, mempool, chain store, genesis.

No networking and no web: everything here is plain Python over bytes and SQL.
"""

"""The wallet: encrypted keystore, BIP-39/BIP-32 keys, and the `wallet` command.

It imports `ledger` for keys, addresses and transactions and reaches nodes only
over HTTP, through the shared client in `api.client`.
"""

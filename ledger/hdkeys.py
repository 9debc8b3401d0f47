"""BIP-32 hierarchical deterministic keys on secp256k1, and BIP-39 seeds.

Accounts live at m/44'/COIN_TYPE'/0'/0/i.  COIN_TYPE is 1, SLIP-44's "testnet
(all coins)", because this chain has no registered coin type.  The dev accounts of
every dev network derive from DEV_MNEMONIC, the well-known test phrase that
Hardhat and anvil also use: its keys are public, never hold value with them.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

import coincurve

from ledger.crypto import CURVE_ORDER, PrivateKey

COIN_TYPE = 1
HARDENED = 0x80000000
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def mnemonic_to_seed(mnemonic: str, passphrase: str = "") -> bytes:
    """BIP-39 seed: PBKDF2-HMAC-SHA512, 2048 rounds, salt 'mnemonic' + passphrase."""
    words = unicodedata.normalize("NFKD", " ".join(mnemonic.split()))
    salt = unicodedata.normalize("NFKD", "mnemonic" + passphrase)
    return hashlib.pbkdf2_hmac("sha512", words.encode(), salt.encode(), 2048)


class ExtendedKey:
    __slots__ = ("secret", "chain_code")

    def __init__(self, secret: bytes, chain_code: bytes):
        self.secret = secret
        self.chain_code = chain_code

    @classmethod
    def from_seed(cls, seed: bytes) -> ExtendedKey:
        digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
        key = int.from_bytes(digest[:32], "big")
        if not 0 < key < CURVE_ORDER:
            raise ValueError("seed yields an invalid master key; use another seed")
        return cls(digest[:32], digest[32:])

    def public_key(self) -> bytes:
        return coincurve.PrivateKey(self.secret).public_key.format(compressed=True)

    def child(self, index: int) -> ExtendedKey:
        if index >= HARDENED:
            data = b"\x00" + self.secret + index.to_bytes(4, "big")
        else:
            data = self.public_key() + index.to_bytes(4, "big")
        digest = hmac.new(self.chain_code, data, hashlib.sha512).digest()
        tweak = int.from_bytes(digest[:32], "big")
        child = (tweak + int.from_bytes(self.secret, "big")) % CURVE_ORDER
        if tweak >= CURVE_ORDER or child == 0:
            # BIP-32: such an index is skipped; the probability is below 2^-127.
            return self.child(index + 1)
        return ExtendedKey(child.to_bytes(32, "big"), digest[32:])

    def derive(self, path: str) -> ExtendedKey:
        parts = path.split("/")
        if parts[0] != "m":
            raise ValueError("a derivation path starts with 'm'")
        key = self
        for part in parts[1:]:
            hardened = part.endswith(("'", "h", "H"))
            digits = part.rstrip("'hH")
            if not digits.isdigit() or int(digits) >= HARDENED:
                raise ValueError(f"bad path element '{part}'")
            key = key.child(int(digits) + (HARDENED if hardened else 0))
        return key

    def private_key(self) -> PrivateKey:
        return PrivateKey(self.secret)


def account_path(index: int) -> str:
    return f"m/44'/{COIN_TYPE}'/0'/0/{index}"


def account_key(mnemonic: str, index: int, passphrase: str = "") -> PrivateKey:
    return ExtendedKey.from_seed(mnemonic_to_seed(mnemonic, passphrase)).derive(account_path(index)).private_key()


def dev_keys(count: int = 10) -> list[PrivateKey]:
    account_root = ExtendedKey.from_seed(mnemonic_to_seed(DEV_MNEMONIC)).derive(f"m/44'/{COIN_TYPE}'/0'/0")
    return [account_root.child(i).private_key() for i in range(count)]

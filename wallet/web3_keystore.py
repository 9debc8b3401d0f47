"""Reading Web3 Secret Storage v3 files, the keystore format of geth and MetaMask exports.

The same secp256k1 keys as ours, so a key a person already holds in Ethereum tooling
can be imported.  The format: a KDF (scrypt, or PBKDF2-HMAC-SHA256) turns the password
into a derived key DK; DK[0:16] is the AES-128-CTR key of the ciphertext and
keccak-256(DK[16:32] || ciphertext) is the MAC that tells a wrong password.

Keccak-256 is Ethereum's hash, not NIST SHA3-256 (different padding), so it comes
from pycryptodome: hashlib's sha3_256 gives different digests.  Scrypt also comes from
pycryptodome, because OpenSSL (behind `cryptography` and hashlib) refuses the
parameters of the published test vector (n = 2^18 with r = 1 breaks RFC 7914's
N < 2^(128 r / 8)), and geth accepts them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import coincurve
from Crypto.Hash import keccak
from Crypto.Protocol.KDF import scrypt as pycryptodome_scrypt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ledger.crypto import InvalidKey, PrivateKey
from wallet.errors import BadInput, CorruptKeystore, WrongPassword

# Bounds on a file's parameters: a hostile file must not cost gigabytes or hours.
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_MEMORY = 1 << 30
_MAX_PBKDF2_ROUNDS = 10_000_000


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def ethereum_address(key: PrivateKey) -> bytes:
    """The 20-byte Ethereum address: the last 20 bytes of keccak-256 of the uncompressed point."""
    point = coincurve.PrivateKey(key.secret).public_key.format(compressed=False)
    return keccak256(point[1:])[-20:]


def is_web3_keystore(document: Any) -> bool:
    return isinstance(document, dict) and document.get("version") == 3 and (
        isinstance(document.get("crypto"), dict) or isinstance(document.get("Crypto"), dict)
    )


def _get(container: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = container.get(name)
    if kind is int:
        ok = type(value) is int
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CorruptKeystore(f"{where}: field '{name}' is missing or has the wrong type")
    return value


def _hex(container: dict[str, Any], name: str, where: str) -> bytes:
    text = _get(container, name, str, where).removeprefix("0x")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CorruptKeystore(f"{where}: field '{name}' is not hex") from None


def _derive(crypto: dict[str, Any], password: str, where: str) -> bytes:
    kdf = _get(crypto, "kdf", str, where)
    params = _get(crypto, "kdfparams", dict, where)
    dklen = _get(params, "dklen", int, where)
    if not 32 <= dklen <= 64:
        raise CorruptKeystore(f"{where}: kdfparams.dklen must be from 32 to 64, not {dklen}")
    salt = _hex(params, "salt", where)
    secret = password.encode("utf-8")
    if kdf == "scrypt":
        n, r, p = (_get(params, k, int, where) for k in ("n", "r", "p"))
        if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise CorruptKeystore(f"{where}: scrypt parameters n={n} r={r} p={p} are out of bounds")
        if 128 * n * r > _MAX_SCRYPT_MEMORY:
            raise CorruptKeystore(f"{where}: scrypt parameters need more than 1 GiB of memory")
        return pycryptodome_scrypt(secret, salt, dklen, N=n, r=r, p=p)
    if kdf == "pbkdf2":
        prf = _get(params, "prf", str, where)
        if prf != "hmac-sha256":
            raise CorruptKeystore(f"{where}: unsupported pbkdf2 prf '{prf}' (only hmac-sha256)")
        rounds = _get(params, "c", int, where)
        if not 1 <= rounds <= _MAX_PBKDF2_ROUNDS:
            raise CorruptKeystore(f"{where}: pbkdf2 round count {rounds} is out of bounds")
        return hashlib.pbkdf2_hmac("sha256", secret, salt, rounds, dklen)
    raise CorruptKeystore(f"{where}: unsupported kdf '{kdf}' (scrypt or pbkdf2)")


def decrypt_web3_keystore(document: Any, password: str, where: str = "the keystore file") -> PrivateKey:
    """The private key in a Web3 Secret Storage v3 document.

    WrongPassword when the MAC does not match (a wrong password, or a damaged file:
    the format cannot tell them apart); CorruptKeystore when the document is
    malformed or its `address` is not the key's; BadInput when it is not v3.
    """
    if not is_web3_keystore(document):
        raise BadInput(f"{where} is not a Web3 Secret Storage version 3 keystore", "not_a_keystore")
    crypto = document.get("crypto") or document.get("Crypto")
    cipher = _get(crypto, "cipher", str, where)
    if cipher != "aes-128-ctr":
        raise CorruptKeystore(f"{where}: unsupported cipher '{cipher}' (only aes-128-ctr)")
    iv = _hex(_get(crypto, "cipherparams", dict, where), "iv", where)
    if len(iv) != 16:
        raise CorruptKeystore(f"{where}: cipherparams.iv must be 16 bytes")
    ciphertext = _hex(crypto, "ciphertext", where)
    if len(ciphertext) != 32:
        raise CorruptKeystore(f"{where}: the ciphertext is {len(ciphertext)} bytes, a secp256k1 key is 32")
    mac = _hex(crypto, "mac", where)

    derived = _derive(crypto, password, where)
    if not hmac.compare_digest(keccak256(derived[16:32] + ciphertext), mac):
        raise WrongPassword(f"wrong password for {where} (or the file is damaged: its MAC does not match)")
    decryptor = Cipher(algorithms.AES(derived[:16]), modes.CTR(iv)).decryptor()
    secret = decryptor.update(ciphertext) + decryptor.finalize()
    try:
        key = PrivateKey(secret)
    except InvalidKey:
        raise CorruptKeystore(f"{where} decrypts to an invalid secp256k1 key") from None

    # geth writes the Ethereum address beside the key; when present it must be this key's.
    claimed = document.get("address")
    if claimed is not None:
        if not isinstance(claimed, str):
            raise CorruptKeystore(f"{where}: field 'address' is not a string")
        try:
            claimed_bytes = bytes.fromhex(claimed.removeprefix("0x"))
        except ValueError:
            raise CorruptKeystore(f"{where}: field 'address' is not hex") from None
        if claimed_bytes != ethereum_address(key):
            raise CorruptKeystore(f"{where}: its address {claimed} is not the address of the key inside")
    return key

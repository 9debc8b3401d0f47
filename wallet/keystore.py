"""The keystore: one JSON file per key, the private key sealed with scrypt and AES-256-GCM.

A file holds in clear what `list` and `balance` need without a password: the key's
name, address, public key, derivation path and creation time.  Those fields are the
AEAD associated data, so editing any of them makes decryption fail.  A short check
value derived from the scrypt key tells a wrong password apart from a file whose
ciphertext or clear fields were altered; it lets an attacker test a guess no faster
than the AEAD tag already does, since each guess still costs one scrypt run.

Files are written atomically (a temp file in the same folder, fsync, then link or
rename into place), mode 0600, in a folder created 0700: a crash or a full disk
never leaves a half-written key behind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ledger.address import ADDRESS_SIZE, InvalidAddress, address_of, bech32m_decode, encode_address
from ledger.crypto import PUBLIC_KEY_SIZE, InvalidKey, PrivateKey
from wallet.errors import BadInput, CorruptKeystore, NotFound, WalletError, WrongPassword

FORMAT = "ledger-keystore"
VERSION = 1
CIPHER = "aes-256-gcm"
KDF = "scrypt"


@dataclass(frozen=True)
class ScryptParams:
    n: int
    r: int
    p: int

    def memory_bytes(self) -> int:
        return 128 * self.n * self.r


# OWASP's recommended scrypt cost: about 0.4 s and 128 MiB on a laptop core.
STANDARD_KDF = ScryptParams(n=2**17, r=8, p=1)
# For tests and throwaway dev keys only: about 10 ms.
LIGHT_KDF = ScryptParams(n=2**12, r=8, p=1)

# Bounds on what a file may ask for, so a hostile file cannot make us allocate gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEMORY = 1 << 30
_SALT_SIZES = range(16, 65)
_NONCE_SIZE = 12
_TAG_SIZE = 16
_CHECK_SIZE = 16
_MAX_FILE_SIZE = 64 * 1024
_CHECK_LABEL = b"ledger-keystore/password-check"

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name.endswith(".json"):
        raise BadInput(
            f"key name '{name}' is not allowed: 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            "bad_key_name",
        )
    return name


def default_keystore_dir() -> Path:
    """$LEDGER_KEYSTORE, else the user's data dir: $XDG_DATA_HOME/ledger/keystore or ~/.local/share/..."""
    configured = os.environ.get("LEDGER_KEYSTORE")
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ledger" / "keystore"


@dataclass(frozen=True)
class KeyEntry:
    """What a keystore file shows without its password."""

    name: str
    account: bytes  # the 20-byte account id
    public_key: bytes
    path: str | None  # BIP-32 derivation path when the key came from a mnemonic
    created: str
    file: Path
    document: dict[str, Any]

    def address(self, prefix: str) -> str:
        return encode_address(prefix, self.account)

    @property
    def stored_address(self) -> str:
        return self.document["address"]


# --- sealing and opening one document ------------------------------------------------------------


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password.encode("utf-8"))


def _check_value(derived: bytes) -> bytes:
    return hmac.new(derived, _CHECK_LABEL, hashlib.sha256).digest()[:_CHECK_SIZE]


def _associated_data(document: dict[str, Any]) -> bytes:
    """Every clear field of the file, canonical JSON: altering any of them breaks the tag."""
    bound = {key: document.get(key) for key in ("format", "version", "name", "address", "public_key", "path", "created")}
    return json.dumps(bound, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(
    key: PrivateKey, name: str, password: str, prefix: str, params: ScryptParams = STANDARD_KDF,
    path: str | None = None, created: str | None = None,
) -> dict[str, Any]:
    """A keystore document holding `key` encrypted under `password`."""
    if not password:
        raise BadInput("the password is empty", "empty_password")
    check_name(name)
    public_key = key.public_key
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "address": encode_address(prefix, address_of(public_key)),
        "public_key": public_key.hex(),
        "path": path,
        "created": created or datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    salt = secrets.token_bytes(32)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    derived = _derive(password, salt, params)
    ciphertext = AESGCM(derived).encrypt(nonce, key.secret, _associated_data(document))
    document["crypto"] = {
        "kdf": KDF,
        "kdfparams": {"n": params.n, "r": params.r, "p": params.p, "salt": salt.hex(), "dklen": 32},
        "cipher": CIPHER,
        "nonce": nonce.hex(),
        "ciphertext": ciphertext.hex(),
        "check": _check_value(derived).hex(),
    }
    return document


def _hex_field(container: dict[str, Any], name: str, sizes: range | int, where: str) -> bytes:
    value = container.get(name)
    if not isinstance(value, str):
        raise CorruptKeystore(f"{where}: field '{name}' is missing or not a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise CorruptKeystore(f"{where}: field '{name}' is not hex") from None
    allowed = range(sizes, sizes + 1) if isinstance(sizes, int) else sizes
    if len(raw) not in allowed:
        raise CorruptKeystore(f"{where}: field '{name}' has {len(raw)} bytes")
    return raw


def _int_field(container: dict[str, Any], name: str, low: int, high: int, where: str) -> int:
    value = container.get(name)
    if type(value) is not int or not low <= value <= high:
        raise CorruptKeystore(f"{where}: field '{name}' must be an integer from {low} to {high}")
    return value


def describe(document: Any, file: Path) -> KeyEntry:
    """The clear fields of a keystore document, checked for shape (CorruptKeystore otherwise)."""
    where = f"keystore file {file}"
    if not isinstance(document, dict):
        raise CorruptKeystore(f"{where} is not a JSON object")
    if document.get("format") != FORMAT or document.get("version") != VERSION:
        raise CorruptKeystore(f"{where} is not a version {VERSION} {FORMAT} file")
    name = document.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise CorruptKeystore(f"{where}: field 'name' is missing or not a valid key name")
    address = document.get("address")
    if not isinstance(address, str):
        raise CorruptKeystore(f"{where}: field 'address' is missing")
    try:
        _, account = bech32m_decode(address)
    except InvalidAddress as exc:
        raise CorruptKeystore(f"{where}: field 'address' does not decode: {exc}") from None
    public_key = _hex_field(document, "public_key", PUBLIC_KEY_SIZE, where)
    if len(account) != ADDRESS_SIZE or address_of(public_key) != account:
        raise CorruptKeystore(f"{where}: the address does not belong to the public key")
    path = document.get("path")
    if path is not None and not isinstance(path, str):
        raise CorruptKeystore(f"{where}: field 'path' is not a string")
    created = document.get("created")
    if not isinstance(created, str):
        raise CorruptKeystore(f"{where}: field 'created' is missing")
    crypto = document.get("crypto")
    if not isinstance(crypto, dict):
        raise CorruptKeystore(f"{where}: field 'crypto' is missing")
    return KeyEntry(name, account, public_key, path, created, file, document)


def open_sealed(entry: KeyEntry, password: str) -> PrivateKey:
    """The private key of `entry`; WrongPassword or CorruptKeystore when it cannot be trusted."""
    where = f"keystore file {entry.file}"
    crypto = entry.document["crypto"]
    if crypto.get("kdf") != KDF or crypto.get("cipher") != CIPHER:
        raise CorruptKeystore(f"{where}: unsupported kdf or cipher (expected {KDF} and {CIPHER})")
    kdfparams = crypto.get("kdfparams")
    if not isinstance(kdfparams, dict):
        raise CorruptKeystore(f"{where}: field 'crypto.kdfparams' is missing")
    params = ScryptParams(
        _int_field(kdfparams, "n", 2, _MAX_N, where),
        _int_field(kdfparams, "r", 1, _MAX_R, where),
        _int_field(kdfparams, "p", 1, _MAX_P, where),
    )
    if params.n & (params.n - 1) or params.memory_bytes() > _MAX_MEMORY:
        raise CorruptKeystore(f"{where}: scrypt n must be a power of two and need at most 1 GiB")
    if kdfparams.get("dklen") != 32:
        raise CorruptKeystore(f"{where}: scrypt dklen must be 32")
    salt = _hex_field(kdfparams, "salt", _SALT_SIZES, where)
    nonce = _hex_field(crypto, "nonce", _NONCE_SIZE, where)
    ciphertext = _hex_field(crypto, "ciphertext", 32 + _TAG_SIZE, where)
    check = _hex_field(crypto, "check", _CHECK_SIZE, where)

    derived = _derive(password, salt, params)
    if not hmac.compare_digest(_check_value(derived), check):
        raise WrongPassword(f"wrong password for key '{entry.name}'")
    try:
        secret = AESGCM(derived).decrypt(nonce, ciphertext, _associated_data(entry.document))
    except InvalidTag:
        raise CorruptKeystore(
            f"{where} was altered or is damaged: the AES-GCM tag does not match its contents"
        ) from None
    try:
        key = PrivateKey(secret)
    except InvalidKey:
        raise CorruptKeystore(f"{where} holds an invalid private key") from None
    if key.public_key != entry.public_key:
        raise CorruptKeystore(f"{where}: the private key does not match the public key")
    return key


# --- files -------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the file itself is synced
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes, replace: bool) -> None:
    """Write `data` to `path` atomically with mode 0600.

    With replace=False an existing file is never overwritten (FileExistsError): the
    finished temp file is hard-linked into place, which fails if the name exists.
    """
    folder = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise
            except OSError:
                # A file system without hard links: check, then rename (a tiny race, no corruption).
                if path.exists():
                    raise FileExistsError(str(path)) from None
                os.replace(temp, path)
        _fsync_dir(folder)
    finally:
        temp.unlink(missing_ok=True)


class Keystore:
    """A folder of keystore files, one per key, named `<name>.json`."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _ensure_folder(self) -> None:
        if not self.folder.exists():
            try:
                self.folder.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass
            except OSError as exc:
                raise WalletError(f"cannot create the keystore folder {self.folder}: {exc.strerror}", "keystore_io")
            # mkdir's mode is filtered by the umask; the folder we create is ours alone.
            os.chmod(self.folder, 0o700)
        elif not self.folder.is_dir():
            raise BadInput(f"the keystore {self.folder} is not a folder", "bad_keystore")

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.json") if p.is_file() and not p.name.startswith("."))

    def scan(self) -> tuple[list[KeyEntry], list[tuple[Path, str]]]:
        """Every readable key, and (file, problem) for each file that is not one."""
        entries: list[KeyEntry] = []
        problems: list[tuple[Path, str]] = []
        for file in self._files():
            try:
                entries.append(self.read(file))
            except WalletError as exc:
                problems.append((file, str(exc)))
        return entries, problems

    def entries(self) -> list[KeyEntry]:
        return self.scan()[0]

    def read(self, file: Path) -> KeyEntry:
        try:
            size = file.stat().st_size
            if size > _MAX_FILE_SIZE:
                raise CorruptKeystore(f"keystore file {file} is {size} bytes, too large for a key")
            text = file.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no keystore file {file}", "key_not_found") from None
        except OSError as exc:
            raise WalletError(f"cannot read {file}: {exc.strerror}", "keystore_io") from None
        try:
            document = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise CorruptKeystore(f"keystore file {file} is not valid JSON") from None
        return describe(document, file)

    def find(self, name_or_address: str) -> KeyEntry:
        """The key named `name_or_address`, or holding that address (any network prefix)."""
        wanted = name_or_address.strip()
        entries, problems = self.scan()
        for entry in entries:
            if entry.name == wanted:
                return entry
        account = _account_of(wanted)
        if account is not None:
            for entry in entries:
                if entry.account == account:
                    return entry
        for file, problem in problems:
            if file.stem == wanted:
                raise CorruptKeystore(problem)
        known = ", ".join(e.name for e in entries) or "none"
        raise NotFound(f"no key '{wanted}' in the keystore {self.folder} (keys: {known})", "key_not_found")

    def add(self, key: PrivateKey, name: str, password: str, prefix: str, params: ScryptParams,
            path: str | None = None) -> KeyEntry:
        """Store a new key; refuses a name or a key that is already there."""
        check_name(name)
        account = address_of(key.public_key)
        for entry in self.entries():
            if entry.name == name:
                raise BadInput(f"a key named '{name}' already exists in {self.folder}", "key_exists")
            if entry.account == account:
                raise BadInput(f"this key is already stored as '{entry.name}' ({entry.stored_address})", "key_exists")
        document = seal(key, name, password, prefix, params, path)
        self._ensure_folder()
        file = self.folder / f"{name}.json"
        try:
            write_private_file(file, _serialize(document), replace=False)
        except FileExistsError:
            raise BadInput(f"the file {file} already exists; choose another name", "key_exists") from None
        except OSError as exc:
            raise WalletError(f"cannot write {file}: {exc.strerror}", "keystore_io") from None
        return describe(document, file)

    def replace(self, entry: KeyEntry, document: dict[str, Any]) -> KeyEntry:
        """Overwrite `entry`'s file atomically with `document` (a new password)."""
        try:
            write_private_file(entry.file, _serialize(document), replace=True)
        except OSError as exc:
            raise WalletError(f"cannot write {entry.file}: {exc.strerror}", "keystore_io") from None
        return describe(document, entry.file)


def reseal(entry: KeyEntry, key: PrivateKey, new_password: str, params: ScryptParams) -> dict[str, Any]:
    """`entry`'s document under a new password, with fresh salt and nonce, other fields kept."""
    prefix, _ = bech32m_decode(entry.stored_address)
    return seal(key, entry.name, new_password, prefix, params, entry.path, entry.created)


def _serialize(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def _account_of(text: str) -> bytes | None:
    try:
        _, data = bech32m_decode(text)
    except InvalidAddress:
        return None
    return data if len(data) == ADDRESS_SIZE else None

"""The node key: the identity that signs blocks (and, with peers, handshakes).

Kept as hex in `<data-dir>/node_key`, mode 0600, created on first start.
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger.crypto import InvalidKey, PrivateKey

NODE_KEY_FILE = "node_key"


class NodeKeyError(ValueError):
    pass


def write_private_file(path: Path, text: str) -> None:
    """Write atomically with mode 0600: a temporary file renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_or_create_node_key(data_dir: Path) -> PrivateKey:
    path = data_dir / NODE_KEY_FILE
    if path.exists():
        try:
            return PrivateKey.from_hex(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, InvalidKey) as exc:
            raise NodeKeyError(f"{path} does not hold a valid hex private key ({exc})") from None
    key = PrivateKey.generate()
    write_private_file(path, key.secret.hex() + "\n")
    return key

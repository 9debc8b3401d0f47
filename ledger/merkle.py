"""Merkle root of a block's transaction ids.

Leaves and inner nodes hash under different one-byte prefixes (as RFC 6962 does), so
an inner node can never pass for a leaf; an odd node is promoted, not duplicated, so
two different lists of ids never share a root (the flaw of CVE-2012-2459).
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    sha = hashlib.sha256
    level = [sha(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        paired = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]

"""The nonce search a mining worker runs: pure, picklable inputs, no process or thread inside.

A proof-of-work header is sealed with an 8-byte big-endian nonce, and the block hash is
SHA-256 of the whole encoded header, whose last bytes are the seal: a u32 length (8)
and the nonce.  Everything before the nonce is the same for every attempt, so the
search hashes that prefix once and, per nonce, copies the SHA-256 state and feeds it
only the nonce: one compression function call per attempt instead of three.

The runtime splits the nonce space into slices (`start_nonce`, `count`) so a worker
returns regularly: the runtime can then count hashes for the hash rate, notice a
StopMining, and hand out the next slice.  `search` returns the first nonce in the
slice whose hash is at or below the target, or None after `count` attempts.
"""

from __future__ import annotations

import hashlib
import struct
import time

from ledger.block import BlockHeader

NONCE_SIZE = 8
MAX_NONCE = (1 << (8 * NONCE_SIZE)) - 1
_SEAL_LENGTH = struct.pack(">I", NONCE_SIZE)
_NONCE = struct.Struct(">Q")


def sealing_prefix(header: BlockHeader) -> bytes:
    """The bytes of the sealed header's encoding that precede the nonce."""
    return header.unsealed_bytes() + _SEAL_LENGTH


def nonce_seal(nonce: int) -> bytes:
    if not 0 <= nonce <= MAX_NONCE:
        raise ValueError(f"a nonce is 0 to 2**64-1, got {nonce}")
    return _NONCE.pack(nonce)


def seal_with_nonce(header: BlockHeader, nonce: int) -> BlockHeader:
    return header.with_seal(nonce_seal(nonce))


def search(prefix: bytes, target: int, start_nonce: int, count: int) -> int | None:
    """The first nonce in [start_nonce, start_nonce + count) whose hash, as a big-endian
    integer, is <= target; None when the slice holds none."""
    if not 0 <= target < 1 << 256:
        raise ValueError("target must be a 256-bit unsigned integer")
    if count < 0 or start_nonce < 0 or start_nonce + count > MAX_NONCE + 1:
        raise ValueError("the nonce slice must lie within 0 .. 2**64-1")
    # Comparing 32-byte big-endian digests as bytes orders them as integers, without
    # building an int per attempt.
    target_bytes = target.to_bytes(32, "big")
    base = hashlib.sha256(prefix)
    copy = base.copy
    for nonce in range(start_nonce, start_nonce + count):
        attempt = copy()
        attempt.update(nonce.to_bytes(8, "big"))  # measured a little faster than struct.pack
        if attempt.digest() <= target_bytes:
            return nonce
    return None


def mine(header: BlockHeader, target: int, start_nonce: int = 0, count: int = MAX_NONCE + 1) -> BlockHeader | None:
    """Seal `header` by searching the slice in this process (tests, tools and the simulator)."""
    nonce = search(sealing_prefix(header), target, start_nonce, min(count, MAX_NONCE + 1 - start_nonce))
    return None if nonce is None else seal_with_nonce(header, nonce)


def measure_hash_rate(seconds: float = 1.0, slice_size: int = 200_000) -> float:
    """Attempts per second of `search` on this machine, with a target nothing meets."""
    header = BlockHeader("rate", 1, bytes(32), 0, bytes(32), 0, bytes(20), bytes(4))
    prefix = sealing_prefix(header)
    attempts = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        search(prefix, 0, attempts, slice_size)
        attempts += slice_size
    return attempts / elapsed


if __name__ == "__main__":
    print(f"{measure_hash_rate(3.0):,.0f} hashes/s on one core")

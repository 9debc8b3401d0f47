"""Child processes that end with their parent, so a killed node or launcher leaves no orphan."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process (as a preexec_fn or a pool initializer): get SIGTERM when the parent
    dies, however it dies (Linux only; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

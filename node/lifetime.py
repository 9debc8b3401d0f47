"""Child processes that end with their parent, so a killed node or launcher leaves no orphan."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a child process (as a preexec_fn or a pool initializer): get SIGTERM when the parent
    dies, however it dies (Linux only; elsewhere a no-op).  With the parent's pid, exit at once
    if it is gone already: a spawned worker gets here only after its interpreter has started,
    and a parent killed meanwhile sends no signal to a child that asks only now."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os._exit(1)

"""The state dir at start: it must be writable, and only one daemon may use it.

The lock is an exclusive flock on `<state dir>/lock`, held for the daemon's life.  The
supervisor hands its descriptor to every child, so the lock stays taken until the last
process of a tree has exited: a supervisor killed with -9 takes its children with it a
moment later, and a new daemon started at once waits for them instead of writing the
same log beside a survivor.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

from learnd.daemon.errors import StartupError

EXIT_STATE_DIR = 4
LOCK_FILE = "lock"
LOCK_WAIT_S = 10.0        # a killed tree's children are gone well within this


def prepare(state_dir, wait_s=LOCK_WAIT_S):
    """Create the state dir if needed, check it is writable, take its lock; returns the
    lock's file descriptor (keep it open).  Raises StartupError (exit 4)."""
    try:
        os.makedirs(state_dir, exist_ok=True)
        probe = os.path.join(state_dir, ".write-probe")
        with open(probe, "wb") as f:
            f.write(b"x")
        os.unlink(probe)
        fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError(f"state dir {state_dir} is not writable: {exc.strerror}", EXIT_STATE_DIR) from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise StartupError(f"state dir {state_dir} is in use by another learnd"
                                   f"{f' (pid {holder})' if holder else ''}", EXIT_STATE_DIR) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_holder(fd):
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""

"""An inter-process lock, so that N ranks running `porter patch` at once apply the patch once."""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StateError


@contextmanager
def dir_lock(path: Path, timeout: float = 300.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``path``; the kernel releases it if the holder dies.

    Locking the target's own package directory means no lock file is ever created, so a plan that fails
    leaves site-packages exactly as it was, and a revert leaves nothing behind.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait:
                    on_wait(f"waiting for another porter process holding {path}")
                    told = True
                if time.monotonic() > deadline:
                    raise StateError(f"another porter process has held {path} for over {timeout:.0f} s",
                                     hint="wait for it to finish; the lock is released when it exits") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """True while another process holds the lock (a patch or revert is running right now)."""
    if not Path(path).exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)

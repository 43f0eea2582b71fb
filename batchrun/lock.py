"""The run folder's lock: one `batchrun run` (or cancel) at a time per folder.

An flock on RUN_DIR/.lock, whose content is the holder's pid while it is held (emptied on
release), so a reader can tell who holds it without taking it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from batchrun.errors import RunFolderInUse

LOCK_FILE = ".lock"


def take(run_dir: Path) -> int:
    """Lock `run_dir` for this process; returns the fd to `release`. RunFolderInUse if held."""
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise RunFolderInUse(
            f"run folder {run_dir} in use by pid {pid}; wait for that run to finish "
            "(or stop it) and try again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int | None) -> None:
    """Give up a lock `take` returned (None: nothing to release)."""
    if fd is not None:
        try:
            os.ftruncate(fd, 0)  # no pid: `holder` can tell that no run is active
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def holder(run_dir: Path) -> int | None:
    """The pid of a live process holding `run_dir`'s lock, if any (read without locking)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
        pid = int(text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid

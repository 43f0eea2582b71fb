"""The run folder's lock: one `batchrun run` (or cancel) at a time per folder.

An flock on RUN_DIR/.lock, whose content is the holder's pid while it is held (emptied on
release), so a reader can tell who holds it without taking it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from batchrun.errors import RunFolderInUse, StateError

LOCK_FILE = ".lock"
# What flock says when another process holds the lock; any other error is the disk's.
HELD = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES})


def take(run_dir: Path) -> int:
    """Lock `run_dir` for this process; returns the fd to `release`. RunFolderInUse if held."""
    path = Path(run_dir) / LOCK_FILE
    try:
        # O_NOFOLLOW: a .lock planted as a symlink must not truncate the file it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise _lock_problem(path, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StateError(f"{path}: not a regular file; remove it and run again")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in HELD:  # no holder: a file system without locks, a failing disk
            os.close(fd)
            raise _lock_problem(path, exc) from None
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise RunFolderInUse(
            f"run folder {run_dir} in use by pid {pid}; wait for that run to finish "
            "(or stop it) and try again"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        try:
            release(fd)
        except OSError:
            pass
        raise _lock_problem(path, exc) from None
    return fd


def _lock_problem(path: Path, exc: OSError) -> StateError:
    what = (
        "it is a symbolic link, which batchrun never writes through; remove it"
        if exc.errno == errno.ELOOP
        else advice(exc)
    )
    return StateError(
        f"{path}: cannot take the run folder's lock ({exc.strerror}); {what}, then run again"
    )


def advice(exc: OSError) -> str:
    """What to do when the disk refuses a run folder's file: 'the disk is full; free some
    space' and the like."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "the disk is full; free some space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "no permission to write it; make the folder writable"
    if exc.errno == errno.ENOLCK:
        return "the file system gives no locks (a network mount?); use a folder on a local disk"
    if exc.errno == errno.EIO:
        return "the disk reports an input/output error; check it"
    return "check the folder"


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

"""Atomic, durable file writes: write `name.part`, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path

from batchrun.errors import StateError


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` so a reader (or a crash) never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        if part.is_symlink():
            part.unlink()  # a planted link: remove it, never write through it
        with open(part, "w", encoding="utf-8", newline="", opener=_no_follow) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, path)  # a link at `path` is replaced, not followed
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StateError(
                f"{path}: cannot write it ({exc.strerror or exc}); free some space or fix the "
                "folder's permissions, then try again"
            ) from None
        raise
    fsync_dir(path.parent)
    return path


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)

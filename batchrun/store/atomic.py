"""Atomic, durable file writes: write `name.part`, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from batchrun.errors import StateError

# Never follow a symlink planted where a .part file goes.
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)


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


@contextmanager
def built_beside(dest: Path, doing: str) -> Iterator[Path]:
    """A folder made beside `dest` (new, or an empty folder) and renamed into its place once
    the block ends, so `dest` is either whole or absent; removed if the block fails. `doing`
    names the hidden work folder (`.NAME.DOING-PID`)."""
    work = dest.parent / f".{dest.name}.{doing}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        yield work
        if dest.is_dir():
            dest.rmdir()  # empty (checked by the caller): os.replace cannot put a folder over it
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextmanager
def open_atomic(
    path: str | os.PathLike[str],
    *,
    sync_dir: bool = True,
    hidden: bool = False,
    durable: bool = True,
) -> Iterator[BinaryIO]:
    """A binary file whose bytes appear at `path` whole or not at all.

    Written to `part_name(path)`; on a clean exit fsynced and renamed over `path`, on an error
    removed. A link planted where the .part goes is removed, never written through.
    `sync_dir=False` leaves the folder's fsync to a caller that writes many files; `hidden`
    names the .part `.NAME.part`, which no downloaded output's name can be. `durable=False`
    skips the fsyncs (still whole or not at all for readers, not across a power cut): for
    files made again from state.db whenever they are written.
    """
    path = Path(path)
    part = part_name(path, hidden=hidden)
    if part.is_symlink():
        part.unlink()
    try:
        with os.fdopen(os.open(part, _PART_FLAGS, 0o666), "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(part, path)  # a link at `path` is replaced, not followed
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)


def part_name(path: Path, *, hidden: bool = False) -> Path:
    """The temporary name `path` is written under: `NAME.part`, or `.NAME.part` if hidden."""
    return path.with_name(f".{path.name}.part" if hidden else f"{path.name}.part")


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> Path:
    """Write `data` to `path` (creating its folder) so a reader never sees half of it (see
    open_atomic for `durable`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_atomic(path, durable=durable) as fh:
            fh.write(data)
    except OSError as exc:
        raise StateError(
            f"{path}: cannot write it ({exc.strerror or exc}); free some space or fix the "
            "folder's permissions, then try again"
        ) from None
    return path


def write_text(path: Path, text: str, *, durable: bool = True) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` so a reader never sees half of it."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_output(target: str | os.PathLike[str], text: str, *, append: bool = False) -> str:
    """Write a report a user asked for: `-` is stdout; an existing symlink, device or FIFO
    (`/dev/stdout`, a pipe) is written through, never replaced; a regular file is written
    atomically, or appended to with `append` (GitHub's step summary convention). Returns
    where it went, for messages."""
    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return "stdout"
    path = Path(target)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        # Opened without O_TRUNC: a device or FIFO has nothing to truncate, and a symlink's
        # target is the user's to keep (appended to, or rewritten when it is a regular file).
        mode = "a" if append or not path.resolve().is_file() else "w"
        with open(path, mode, encoding="utf-8", newline="") as fh:
            fh.write(text)
        return str(path)
    if append and path.is_file():
        with open(path, "a", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return str(path)
    write_text(path, text)
    return str(path)

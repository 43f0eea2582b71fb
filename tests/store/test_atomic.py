"""atomic: a file appears whole or not at all, and no .part is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchrun.store import atomic


def test_write_text_writes_utf8_as_given(tmp_path: Path) -> None:
    path = atomic.write_text(tmp_path / "sub" / "a.txt", "é\r\nx\n")
    assert path.read_bytes() == "é\r\nx\n".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_open_atomic_commits_on_success(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic.open_atomic(target) as fh:
        fh.write(b"new ")
        fh.write(b"bytes")
        assert target.read_bytes() == b"old"  # not visible until the block ends
        assert (tmp_path / "f.bin.part").exists()
    assert target.read_bytes() == b"new bytes"
    assert not (tmp_path / "f.bin.part").exists()


def test_open_atomic_keeps_the_old_file_and_removes_the_part_on_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="cut short"):
        with atomic.open_atomic(target, sync_dir=False) as fh:
            fh.write(b"half")
            raise RuntimeError("cut short")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path / "d") == ["f.bin"]


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW")
def test_open_atomic_does_not_follow_a_planted_part_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "f.bin.part").symlink_to(victim)
    atomic.write_bytes(tmp_path / "f.bin", b"new")  # the link is removed, not written through
    assert victim.read_bytes() == b"keep me"
    assert (tmp_path / "f.bin").read_bytes() == b"new"
    assert not (tmp_path / "f.bin.part").is_symlink()

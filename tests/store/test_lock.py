"""The run folder's lock: taken once, refused a second time with the holder's pid, released."""

from __future__ import annotations

import os

import pytest

from batchrun.errors import RunFolderInUse
from batchrun.store import lock


def test_take_names_the_holder_and_release_clears_it(tmp_path):
    assert lock.holder(tmp_path) is None
    fd = lock.take(tmp_path)
    try:
        assert lock.holder(tmp_path) == os.getpid()
        assert (tmp_path / lock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release(fd)
    assert lock.holder(tmp_path) is None
    assert (tmp_path / lock.LOCK_FILE).read_text() == ""


def test_a_second_take_is_refused_with_the_holders_pid(tmp_path):
    fd = lock.take(tmp_path)
    try:
        with pytest.raises(RunFolderInUse) as info:
            lock.take(tmp_path)
        assert str(info.value) == (
            f"run folder {tmp_path} in use by pid {os.getpid()}; wait for that run to finish "
            "(or stop it) and try again"
        )
    finally:
        lock.release(fd)
    lock.release(lock.take(tmp_path))  # free again once released


@pytest.mark.parametrize("content", ["", "not a pid\n", "999999999\n"])
def test_holder_is_none_without_a_live_pid(tmp_path, content):
    (tmp_path / lock.LOCK_FILE).write_text(content)
    assert lock.holder(tmp_path) is None


def test_release_of_nothing_is_a_no_op():
    lock.release(None)

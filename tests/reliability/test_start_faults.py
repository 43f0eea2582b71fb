"""A disk that refuses the run folder at the start: making the folder, creating or writing the
lock, taking the lock itself (a file system without locks), making `run --simulate`'s state
folder. Each is exit 2 naming the file and what to do, never a traceback, and nothing is sent."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from batchrun.cli import main

from .hostile_api import HostileApi, manifest_for

ERRNOS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EACCES": errno.EACCES}
ADVICE = {
    "ENOSPC": "the disk is full; free some space",
    "EROFS": "no permission to write it; make the folder writable",
    "EACCES": "no permission to write it; make the folder writable",
}


def _raise(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def _failing(real: Any, code: int, hit: Any) -> Any:
    """`real`, except that it raises OSError(code) for a path `hit` accepts."""

    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        if hit(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    return call


def _run(tmp_path: Path, api: HostileApi, *extra: str) -> int:
    args = ["run", str(tmp_path / "m.yaml"), "--run-dir", str(tmp_path / "run"), *extra]
    return main(args + ([] if "--simulate" in extra else ["--api-base", api.base_url]))


@pytest.mark.parametrize("name", sorted(ERRNOS))
@pytest.mark.parametrize("where", ["make-folder", "create-lock", "write-lock"])
def test_a_refused_start_is_exit_2_with_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, where: str, name: str
) -> None:
    code = ERRNOS[name]
    manifest_for(tmp_path, 1)
    run_dir = tmp_path / "run"
    if where == "make-folder":
        monkeypatch.setattr(os, "mkdir", _failing(os.mkdir, code, lambda p: Path(p) == run_dir))
    elif where == "create-lock":
        monkeypatch.setattr(os, "open", _failing(os.open, code, lambda p: str(p).endswith(".lock")))
    else:
        monkeypatch.setattr(os, "pwrite", _raise(code))
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-x")
    with HostileApi() as api:
        assert _run(tmp_path, api) == 2
    err = capsys.readouterr().err
    assert sum(api.calls.values()) == 0
    if where == "make-folder":
        assert err == (
            f"error: {run_dir}: cannot make the run folder ({os.strerror(code)}); "
            "choose another --run-dir or outputs.dir\n"
        )
    else:
        assert err == (
            f"error: {run_dir / '.lock'}: cannot take the run folder's lock ({os.strerror(code)}); "
            f"{ADVICE[name]}, then run again\n"
        )


@pytest.mark.parametrize(
    ("name", "advice"),
    [
        (
            "ENOLCK",
            "the file system gives no locks (a network mount?); use a folder on a local disk",
        ),
        ("EIO", "the disk reports an input/output error; check it"),
        ("ENOSPC", "the disk is full; free some space"),
    ],
)
def test_a_file_system_that_cannot_lock_is_not_a_folder_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, name: str, advice: str
) -> None:
    """flock failing for another reason than a holder: said as it is, not 'in use by pid ?'."""
    code = getattr(errno, name)
    manifest_for(tmp_path, 1)
    monkeypatch.setattr(fcntl, "flock", _raise(code))
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-x")
    with HostileApi() as api:
        assert _run(tmp_path, api) == 2
    assert sum(api.calls.values()) == 0
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'run' / '.lock'}: cannot take the run folder's lock "
        f"({os.strerror(code)}); {advice}, then run again\n"
    )


@pytest.mark.parametrize("name", ["ENOSPC", "EROFS"])
def test_the_simulators_state_folder_refused_is_not_a_port_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, name: str
) -> None:
    code = ERRNOS[name]
    manifest_for(tmp_path, 1)
    state_dir = tmp_path / "run" / ".simulator"
    monkeypatch.setattr(os, "mkdir", _failing(os.mkdir, code, lambda p: Path(p) == state_dir))
    with HostileApi() as api:
        assert _run(tmp_path, api, "--simulate", "--quiet") == 2
    err = capsys.readouterr().err
    assert "port" not in err, err
    assert err == (
        f"error: {state_dir}: cannot make the simulator's state folder ({os.strerror(code)}); "
        f"{ADVICE[name]}, then run again\n"
    )

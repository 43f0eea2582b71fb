"""Links planted in a run folder are never written through, and temporary names never collide
with output names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batchrun.errors import StateError
from batchrun.store import state as st

from .hostile_api import Call, HostileApi, Reply, manifest_for, run_here

SECRET = b"outside data, must survive\n"


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file.txt").write_bytes(SECRET)
    (outside / "dir").mkdir()
    (outside / "dir" / "image.png.part").write_bytes(SECRET)
    (outside / "dir" / ".image.png.part").write_bytes(SECRET)
    return outside


def _untouched(outside: Path) -> None:
    assert (outside / "file.txt").read_bytes() == SECRET
    assert (outside / "dir" / "image.png.part").read_bytes() == SECRET
    assert (outside / "dir" / ".image.png.part").read_bytes() == SECRET
    assert sorted(p.name for p in (outside / "dir").iterdir()) == [
        ".image.png.part",
        "image.png.part",
    ]


@pytest.mark.parametrize("name", [".lock", "state.db", "files", "report.csv", "summary.json"])
def test_a_run_folder_with_a_planted_link_is_refused(tmp_path: Path, name: str) -> None:
    outside = _outside(tmp_path)
    manifest_for(tmp_path, 1, download=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = outside / ("dir" if name == "files" else "file.txt")
    (run_dir / name).symlink_to(target)
    with HostileApi() as api, pytest.raises(StateError) as info:
        run_here(tmp_path, api)
    assert name in str(info.value) and "symbolic link" in str(info.value)
    assert api.calls["submit"] == 0
    _untouched(outside)


@pytest.mark.parametrize("name", ["report.csv.part", "summary.json.part", "report.html.part"])
def test_a_planted_part_link_is_replaced_not_written_through(tmp_path: Path, name: str) -> None:
    outside = _outside(tmp_path)
    manifest_for(tmp_path, 1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(outside / "file.txt")
    with HostileApi() as api:
        code, _, _ = run_here(tmp_path, api)
    assert code == 0
    _untouched(outside)
    assert (run_dir / name.removesuffix(".part")).is_file()


def test_a_job_folder_linked_outside_is_neither_written_nor_cleaned(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    manifest_for(tmp_path, 1, download=True)
    with HostileApi() as api:
        code, _, rows = run_here(tmp_path, api)  # makes the folder and its one job's files
        job_id = rows[0].job_id
        job_dir = tmp_path / "run" / "files" / job_id
        for f in job_dir.iterdir():
            f.unlink()
        job_dir.rmdir()
        job_dir.symlink_to(outside / "dir", target_is_directory=True)
        code, _, rows = run_here(tmp_path, api)
    assert code == 1
    assert "refused" in rows[0].files[0].error
    _untouched(outside)


def test_an_output_named_like_a_temporary_file_keeps_both(tmp_path: Path) -> None:
    # The *.part outputs first: a temporary a.png.part for a.png would then replace one.
    bodies = {"a.png.part": b"first file, longer", ".a.png.part": b"2", "a.png": b"third file"}

    def answer(call: Call) -> Reply | None:
        if call.kind == "result":
            urls = [api.file_url(n) for n in bodies]
            return Reply(body={"status": "succeeded", "output": {"images": urls}})
        if call.kind == "file":
            return Reply(body=bodies[call.path.rsplit("/", 1)[-1]])
        return None

    manifest_for(tmp_path, 1, download=True)
    with HostileApi(answer) as api:
        code, _, rows = run_here(tmp_path, api)
    assert code == 0, rows
    [row] = rows
    assert row.status == st.SUCCEEDED and len(row.files) == 3
    run_dir = tmp_path / "run"
    for f in row.files:
        assert not f.error, f
        data = (run_dir / f.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f.sha256
    got = sorted((run_dir / f.name).read_bytes() for f in row.files)
    assert got == sorted(bodies.values())
    on_disk = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    outputs = sorted(f.name for f in row.files)
    assert [n for n in on_disk if n.startswith("files/")] == outputs  # no temporary file left

    # A resume keeps an output named *.part: it is a file, not a leftover.
    with HostileApi(answer) as api2:
        api2.base_url = api.base_url  # same URLs; nothing needs fetching
        code, _, rows = run_here(tmp_path, api)
    assert all((run_dir / f.name).exists() for f in rows[0].files)

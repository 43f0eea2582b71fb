"""Local faults: a disk that fills up during a run, and state the user (or a tool) damaged.
Each ends in a clean message naming the file and what to do (exit 2), never a traceback, and
the run folder stays resumable."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from batchrun.errors import StateError
from batchrun.fetch import download
from batchrun.store import state as st
from batchrun.store.records import OutputFile
from batchrun.store.state import StateStore

from .conftest import run_cli
from .hostile_api import Call, HostileApi, Reply, manifest_for, run_here


def test_a_nearly_full_disk_stops_downloads_not_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the headroom no file is written, every request id and result is recorded, the
    run says so, and a rerun with space fetches the files."""
    free = {"bytes": 10 * 1024**2}  # 10 MB: under the 50 MB batchrun keeps
    monkeypatch.setattr(download, "free_bytes", lambda path: free["bytes"])
    manifest_for(tmp_path, 6, download=True)
    with HostileApi() as api:
        code, messages, rows = run_here(tmp_path, api)
        assert code == 1
        assert api.calls["file"] == 0, "downloaded onto a nearly full disk"
        assert [r.status for r in rows] == [st.SUCCEEDED] * 6
        assert all(r.request_id for r in rows)
        for r in rows:
            assert len(r.files) == 1 and "disk is nearly full" in r.files[0].error
        assert any("not downloaded" in m for m in messages)

        free["bytes"] = 10 * 1024**3
        code, _, rows = run_here(tmp_path, api)
    assert code == 0
    assert api.calls["submit"] == 6 and api.calls["file"] == 6
    assert all(r.files[0].name and not r.files[0].error for r in rows)


def test_the_disk_filling_during_a_download_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = {"n": 0}

    def shrinking(path: Path) -> int:
        reads["n"] += 1
        return 10 * 1024**3 if reads["n"] == 1 else 1024  # full after the first check

    monkeypatch.setattr(download, "free_bytes", shrinking)
    big = os.urandom(3 * download.CHUNK)

    def answer(call: Call) -> Reply | None:
        return (
            Reply(body=big, headers={"Content-Type": "image/png"}) if call.kind == "file" else None
        )

    manifest_for(tmp_path, 1, download=True)
    with HostileApi(answer) as api:
        code, _, rows = run_here(tmp_path, api)
    assert code == 1
    [f] = rows[0].files
    assert "disk is nearly full" in f.error and not f.name
    assert [p for p in (tmp_path / "run" / "files").rglob("*") if p.is_file()] == []


def _full_store(tmp_path: Path) -> tuple[StateStore, str]:
    """A store whose file cannot grow (SQLite's max_page_count: SQLITE_FULL, as a full disk)."""
    manifest_for(tmp_path, 3)
    from batchrun.plan.build import build_plan

    store = StateStore.open(tmp_path / "run")
    store.add_jobs(build_plan(tmp_path / "m.yaml").jobs)
    job_id = store.rows()[0].job_id
    conn = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    return store, job_id


@pytest.mark.parametrize("batched", [False, True])
def test_a_full_state_db_is_a_state_error_and_keeps_what_was_saved(
    tmp_path: Path, batched: bool
) -> None:
    store, job_id = _full_store(tmp_path)
    store.record_request_id(job_id, "r-saved", 1.0)
    with pytest.raises(StateError) as info:
        if batched:
            with store.batch(durable=True):
                store.record_files(job_id, [OutputFile(url="x" * 200_000)])
        else:
            store.record_files(job_id, [OutputFile(url="x" * 200_000)])
    message = str(info.value)
    assert "state.db" in message and "disk is full" in message and "rerun" in message
    # Consistent and still usable: the request id is there, the failed change is not.
    row = store.get(job_id)
    assert row.request_id == "r-saved" and row.files == []
    store.record_error(job_id, "short")
    assert store.get(job_id).error == "short"
    store.close()


def _damage(run_dir: Path, sql: str) -> None:
    conn = sqlite3.connect(run_dir / "state.db")
    conn.execute(sql)
    conn.commit()
    conn.close()


DAMAGE = {
    "schema-version-text": "UPDATE meta SET value = 'one' WHERE key = 'schema_version'",
    "dropped-column": "ALTER TABLE jobs DROP COLUMN cost_usd",
    "malformed-json-inputs": "UPDATE jobs SET inputs = '{not json'",
    "malformed-json-files": "UPDATE jobs SET files = '[{\"nope\": 1}]'",
    "wrong-type-output": "UPDATE jobs SET output = 'x{'",
}


@pytest.mark.parametrize("what", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["run", "status"])
def test_damaged_state_is_exit_2_with_the_file(tmp_path: Path, what: str, command: str) -> None:
    manifest = manifest_for(tmp_path, 2)
    run_dir = tmp_path / "run"
    with StateStore.open(run_dir) as store:
        from batchrun.plan.build import build_plan

        store.add_jobs(build_plan(manifest).jobs)
    _damage(run_dir, DAMAGE[what])
    if command == "run":
        # Nothing listens there: a run that got past its state would fail on the network.
        args = ["run", str(manifest), "--run-dir", str(run_dir), "--api-base", "http://127.0.0.1:9"]
    else:
        args = ["status", str(run_dir)]
    res = run_cli(*args, timeout=60)
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == 2, out
    assert "state.db" in res.stderr and ("run again" in res.stderr or "rerun" in res.stderr)


def test_a_read_only_state_db_is_exit_2(tmp_path: Path) -> None:
    manifest = manifest_for(tmp_path, 1)
    run_dir = tmp_path / "run"
    with StateStore.open(run_dir) as store:
        from batchrun.plan.build import build_plan

        store.add_jobs(build_plan(manifest).jobs)
    # What an immutable file or a read-only mount does to SQLite (root ignores chmod).
    conn = sqlite3.connect(run_dir / "state.db")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    uri = f"file:{run_dir / 'state.db'}?mode=ro"
    ro = sqlite3.connect(uri, uri=True, isolation_level=None)
    with pytest.raises(StateError) as info:
        store = StateStore(run_dir, ro, None)
        with store.batch():
            store.record_error(store.rows()[0].job_id, "x")
    ro.close()
    assert "read-only" in str(info.value) and "writable" in str(info.value)

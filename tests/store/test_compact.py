"""state.db's compact rows (schema 6): a folder of version 5 reads the same after its
migration, what is stored once reads back in every row, and a finished run of jobs without
files takes at most 400 bytes a job."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import yaml

from batchrun.plan.grid import Job
from batchrun.store import ledger, mirrored, state as st
from batchrun.store.records import JobRow
from batchrun.store.state import SCHEMA_VERSION, StateStore
from testing.cli import invoke
from testing.folders import as_version_5, as_version_6

T2I = "google/nano-banana-2-lite/text-to-image"
I2V = "some/other-model/image-to-video"


def _folder(folder: Path) -> None:
    """Jobs of two models through most of what a folder can hold: a retried job (two
    requests), an unknown submit, a cache hit, a refused submit, attempts merged from a folder
    of another origin, vars and none."""
    jobs = [
        Job(f"j{i}", T2I if i % 2 else I2V, {"prompt": f"p {i}"}, {"n": i} if i < 3 else {}, 0, i)
        for i in range(6)
    ]
    with StateStore.open(folder) as s:
        s.set_meta(origin="https://api.example")
        s.add_jobs(jobs)
        s.mark_submitting("j0", Decimal("0.04"))
        s.record_request_id("j0", "r0-first", 10.5)
        s.close_attempt("j0", answer=ledger.REFUSED)
        s.requeue([st.FAILED, st.QUEUED], only=["j0"])
        s.mark_submitting("j0", Decimal("0.04"))
        s.record_request_id("j0", "r0-second", 20.25)
        s.record_result("j0", st.SUCCEEDED, finished_at=30.125, cost_usd=0.05, output={"u": 1})
        s.close_attempt("j0", actual=Decimal("0.05"))
        s.mark_submitting("j1")
        s.mark_unknown("j1", "connection reset")
        s.record_cached("j2", finished_at=40.0, output={"c": 2}, saved_usd=0.03, files=[])
        s.mark_submitting("j3", Decimal("0.01"))
        s.record_request_id("j3", "r3", 50.0)
        s.append_attempts(
            [
                ledger.Attempt("j4", 1, T2I, ledger.ACCEPTED, "simulator", 60.0, "r4-elsewhere"),
                ledger.Attempt("j5", 1, "gone/model", ledger.UNKNOWN, "", None, None),
            ]
        )


def _read(folder: Path, *, lock: bool) -> tuple[list[JobRow], list[ledger.Attempt]]:
    with StateStore.open(folder, create=lock, lock=lock) as s:
        return s.rows(), s.attempts()


def test_a_version_5_folder_reads_the_same_rows_and_attempts_after_its_migration(tmp_path):
    folder = tmp_path / "old"
    _folder(folder)
    rows, attempts = _read(folder, lock=True)
    assert [a.request_id for a in attempts if a.job_id == "j0"] == ["r0-first", "r0-second"]
    assert {a.origin for a in attempts} == {"https://api.example", "simulator", ""}
    conn = sqlite3.connect(folder / "state.db")
    as_version_5(conn)  # as batchrun made it at version 5
    assert conn.execute("SELECT COUNT(*) FROM attempts WHERE request_id = ''").fetchone() == (0,)
    conn.close()
    with StateStore.open(folder, create=False, lock=False) as s:  # read as it is (status)
        assert s.meta()["schema_version"] == "5"
        assert (s.rows(), s.attempts()) == (rows, attempts)
    assert _read(folder, lock=True) == (rows, attempts)  # a run migrates it
    conn = sqlite3.connect(folder / "state.db")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "names" in tables and not {"jobs_v5", "attempts_v5", "jobs_status"} & tables
    # the request ids the jobs hold are stored once, the model ids and origins once each
    stored = conn.execute("SELECT COUNT(*) FROM attempts WHERE request_id = ''").fetchone()[0]
    assert stored == 2  # j0's second request and j3's
    names = sorted(r[0] for r in conn.execute("SELECT name FROM names"))
    assert names == sorted(["", "https://api.example", "simulator", T2I, I2V, "gone/model"])
    conn.close()


def test_a_version_6_folder_reads_the_same_read_as_it_is_and_after_its_migration(tmp_path):
    """Read as it is (status, report: no lock), a folder of version 6 shows its model ids and
    origins by name and its mirrored table; a run adds version 7's indexes."""
    folder = tmp_path / "old"
    _folder(folder)
    with StateStore.open(folder) as s:
        s.record_mirrored(mirrored.Mirrored("s3://b/a.png", "j0", "files/j0/a.png", "ab", 3))
    rows, attempts = _read(folder, lock=True)
    conn = sqlite3.connect(folder / "state.db")
    as_version_6(conn)
    conn.close()
    with StateStore.open(folder, create=False, lock=False) as s:
        assert s.meta()["schema_version"] == "6"
        assert (s.rows(), s.attempts()) == (rows, attempts)
        assert {r.model_id for r in rows} <= {T2I, I2V, "gone/model"}
        assert [m.url for m in s.mirrored()] == ["s3://b/a.png"]
    assert _read(folder, lock=True) == (rows, attempts)  # a run migrates it
    conn = sqlite3.connect(folder / "state.db")
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert {"jobs_position", "jobs_active"} <= indexes and version == (str(SCHEMA_VERSION),)


def test_an_attempt_keeps_its_request_id_when_its_job_moves_on(tmp_path):
    """The request id stored once (in the job's row) is written back into the attempt
    before the job's row changes it or goes."""
    with StateStore.open(tmp_path) as s:
        s.add_jobs([Job("j0", T2I, {"prompt": "x"}, {}, 0, 0), Job("j1", T2I, {}, {}, 0, 1)])
        for n in range(3):
            s.mark_submitting("j0")
            s.record_request_id("j0", f"r{n}", float(n))
            s.close_attempt("j0", answer=ledger.REFUSED)
            s.requeue([st.QUEUED], only=["j0"])
        s.mark_submitting("j1")
        s.record_request_id("j1", "r-j1", 1.0)
        assert [a.request_id for a in s.attempts()] == ["r0", "r1", "r2", "r-j1"]
        assert s.get("j0").request_id is None
        s.import_job(JobRow("j1", 1, T2I, {}, request_id="r-other"))
        assert [a.request_id for a in s.attempts()][-1] == "r-j1"
    conn = sqlite3.connect(tmp_path / "state.db")
    with conn:
        conn.execute("DELETE FROM jobs")
    conn.close()
    with StateStore.open(tmp_path) as s:
        assert [a.request_id for a in s.attempts()] == ["r0", "r1", "r2", "r-j1"]
        assert {a.model_id for a in s.attempts()} == {T2I}


def test_a_finished_run_without_files_takes_at_most_400_bytes_a_job(tmp_path):
    n = 5000
    manifest = tmp_path / "sweep.yaml"
    doc = {
        "version": 1,
        "name": "compact",
        "run": {"max_jobs": n, "rate_limit": "100000/s", "max_in_flight": 200},
        "outputs": {"dir": str(tmp_path / "run"), "download": False},
        "vars": {"a": list(range(50)), "b": list(range(n // 50))},
        "models": [{"id": T2I, "inputs": {"prompt": "compact prompt {a}-{b}"}}],
    }
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    sim = ("--sim", "concurrency=0", "--sim", "run_time=0.01", "--sim", "run_time_jitter=0")
    done = invoke("run", str(manifest), "--simulate", "--quiet", *sim)
    assert done.code == 0, done.stderr
    db = tmp_path / "run" / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = conn.execute(
        "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'), "
        "(SELECT COUNT(*) FROM attempts WHERE answer = 'accepted')"
    ).fetchone()
    conn.close()
    assert counts == (n, n)
    # A folder's fixed pages (the schema, meta, names, the mirror's table: about 24 KB) are
    # not a job's: 5 bytes a job at 5,000 jobs, 0.2 at 100,000. They are an empty folder's
    # pages but the first of the jobs, the attempts and their 3 indexes.
    with StateStore.open(tmp_path / "empty"):
        pass
    fixed = (tmp_path / "empty" / "state.db").stat().st_size - 5 * 4096
    per_job = (db.stat().st_size - fixed) / n
    assert per_job <= 400, f"{per_job:.0f} bytes a job ({db.stat().st_size} in all)"
    assert per_job >= 100  # the measure is of the rows: a figure far below it is a wrong one

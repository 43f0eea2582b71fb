"""state.db's mirrored table: what outputs.mirror copied, kept across runs and kills, and an
older folder brought to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchrun.store.mirrored import Mirrored, urls_by_job
from batchrun.store.state import SCHEMA_VERSION, StateStore
from testing.folders import as_version_5


def _record(url: str, job_id: str = "j1", name: str = "files/j1/a.png") -> Mirrored:
    return Mirrored(url, job_id, name, "ab" * 32, 12, 1.5)


def test_records_survive_reopening_and_a_url_is_replaced(tmp_path: Path):
    with StateStore.open(tmp_path) as s:
        s.record_mirrored(_record("s3://b/r/files/j1/a.png"))
        s.record_mirrored(_record("s3://b/r/report.csv", job_id="", name="report.csv"))
    with StateStore.open(tmp_path) as s:
        assert [m.url for m in s.mirrored()] == ["s3://b/r/files/j1/a.png", "s3://b/r/report.csv"]
        s.record_mirrored(Mirrored("s3://b/r/report.csv", "", "report.csv", "cd" * 32, 99, 2.0))
        got = {m.url: m for m in s.mirrored()}
    assert got["s3://b/r/report.csv"].size == 99 and len(got) == 2


def test_urls_by_job_leaves_the_reports_out_and_sorts_by_name():
    records = [
        _record("s3://b/r/files/j1/b.png", name="files/j1/b.png"),
        _record("s3://b/r/files/j1/a.png", name="files/j1/a.png"),
        _record("s3://b/r/files/j2/a.png", job_id="j2", name="files/j2/a.png"),
        _record("s3://b/r/summary.json", job_id="", name="summary.json"),
    ]
    assert urls_by_job(records) == {
        "j1": ["s3://b/r/files/j1/a.png", "s3://b/r/files/j1/b.png"],
        "j2": ["s3://b/r/files/j2/a.png"],
    }


def test_a_folder_of_version_3_is_read_as_is_and_migrated_by_a_run(tmp_path: Path):
    with StateStore.open(tmp_path) as s:
        pass
    conn = sqlite3.connect(tmp_path / "state.db")
    as_version_5(conn)
    with conn:  # as batchrun made it before the mirror
        conn.execute("DROP TABLE mirrored")
        conn.execute("ALTER TABLE jobs DROP COLUMN retries_from")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    with StateStore.open(tmp_path, create=False, lock=False) as s:  # status, merge: as it is
        assert s.meta()["schema_version"] == "3" and s.mirrored() == []
    with StateStore.open(tmp_path) as s:
        assert s.meta()["schema_version"] == str(SCHEMA_VERSION) and s.mirrored() == []
        s.record_mirrored(_record("s3://b/r/files/j1/a.png"))
    tables = {r[0] for r in sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}  # fmt: skip
    assert "mirrored" in tables

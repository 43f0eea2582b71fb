"""`batchrun run` again on a run folder: an unchanged plan is taken from state.db (not expanded,
checked or added again), a changed one is built in full; the report files are rewritten only
when the jobs or the ledger changed since they were written (or the files did)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchrun.commands import run as run_command
from batchrun.plan.digest import PLAN_META, PlanMark
from batchrun.results.report import REPORT_FILES
from batchrun.store.state import StateStore
from testing.cli import invoke

MODEL = "google/nano-banana-2-lite/text-to-image"


def _manifest(tmp_path: Path, seeds: int = 4, **run: Any) -> Path:
    data = {
        "version": 1,
        "name": "resume",
        "run": {"poll_interval": "50ms", **run},
        "outputs": {"dir": str(tmp_path / "out"), "download": False},
        "vars": {"who": {"file": "who.txt"}, "n": list(range(1, seeds + 1))},
        "models": [
            {
                "id": MODEL,
                "inputs": {"prompt": "photo {n} of {who}"},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    if not (tmp_path / "who.txt").exists():
        (tmp_path / "who.txt").write_text("a cat\na dog\n")
    return path


def _run(manifest: Path, *extra: str) -> Any:
    return invoke("run", str(manifest), "--simulate", "--sim", "run_time=0.05", "--quiet", *extra)


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {
        n: ((run_dir / n).stat().st_ino, (run_dir / n).stat().st_mtime_ns) for n in REPORT_FILES
    }


def _state(run_dir: Path) -> tuple[int, int, str]:
    with StateStore.open(run_dir, create=False, lock=False) as store:
        return store.revision(), len(store.attempts()), store.meta().get(PLAN_META, "")


def test_an_unchanged_plan_is_taken_from_the_run_folder(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path)
    first = _run(manifest)
    assert first.code == 0, first.stderr
    run_dir = tmp_path / "out"
    revision, attempts, recorded = _state(run_dir)
    assert attempts == 8
    assert PlanMark.loads(recorded) is not None
    calls: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(str(args[0]))
        raise AssertionError("the plan was expanded again")

    monkeypatch.setattr(run_command, "build_plan", refuse)
    again = _run(manifest)
    assert again.code == 0, again.stderr
    assert calls == []
    # Nothing sent, nothing written to the jobs or the ledger.
    assert _state(run_dir) == (revision, attempts, recorded)


def test_a_changed_source_file_builds_the_plan_again_and_adds_its_jobs(tmp_path):
    manifest = _manifest(tmp_path)
    assert _run(manifest).code == 0
    (tmp_path / "who.txt").write_text("a cat\na dog\na bird\n")  # the manifest's bytes: same
    again = _run(manifest, "--run-dir", str(tmp_path / "out"))
    assert again.code == 0, again.stderr
    with StateStore.open(tmp_path / "out", create=False, lock=False) as store:
        rows = store.rows(in_manifest_only=True)
    assert len(rows) == 12
    assert {r.status for r in rows} == {"succeeded"}


def test_a_changed_manifest_adds_its_new_jobs_and_says_so(tmp_path):
    assert _run(_manifest(tmp_path, seeds=4)).code == 0
    manifest = _manifest(tmp_path, seeds=5)
    again = invoke("run", str(manifest), "--simulate", "--sim", "run_time=0.05")
    assert again.code == 0, again.stderr
    assert "manifest changed since" in again.stderr
    assert "2 new job(s) added" in again.stderr
    _, attempts, _ = _state(tmp_path / "out")
    assert attempts == 10


def test_a_part_of_the_sweep_records_no_digest_and_the_whole_sweep_then_runs_in_full(
    tmp_path,
):
    manifest = _manifest(tmp_path)
    assert _run(manifest, "--first", "3").code == 0
    assert PlanMark.loads(_state(tmp_path / "out")[2]) is None
    whole = _run(manifest)
    assert whole.code == 0, whole.stderr
    _, attempts, recorded = _state(tmp_path / "out")
    assert attempts == 8 and PlanMark.loads(recorded) is not None


def test_reports_are_rewritten_only_when_something_changed(tmp_path):
    manifest = _manifest(tmp_path)
    assert _run(manifest).code == 0
    run_dir = tmp_path / "out"
    written = _files(run_dir)
    assert _run(manifest).code == 0
    assert _files(run_dir) == written  # the same files: not even replaced by equal ones
    # A job's row changes (a new job): all three are written again.
    assert _run(_manifest(tmp_path, seeds=5)).code == 0
    after = _files(run_dir)
    assert all(after[n] != written[n] for n in REPORT_FILES)
    with (run_dir / "report.csv").open() as f:
        assert sum(1 for _ in f) == 1 + 10
    # A report file gone: written again, though nothing changed.
    (run_dir / "report.html").unlink()
    assert _run(_manifest(tmp_path, seeds=5)).code == 0
    assert (run_dir / "report.html").is_file()
    # `batchrun report` after that run: the files are those it would write; left as they are.
    before = _files(run_dir)
    texts = {n: (run_dir / n).read_bytes() for n in REPORT_FILES}
    left = invoke("report", str(run_dir))
    assert left.code == 0 and "up to date (nothing changed since they were written)" in left.stderr
    assert _files(run_dir) == before
    # A file edited since (or replaced, or gone): all are written again, as they were.
    (run_dir / "report.csv").write_text("edited\n")
    wrote = invoke("report", str(run_dir))
    assert wrote.code == 0 and "wrote " in wrote.stderr
    assert all(_files(run_dir)[n] != before[n] for n in REPORT_FILES)
    assert {n: (run_dir / n).read_bytes() for n in REPORT_FILES} == texts
    # Another grid asked for: report.html alone is written again, in that grid; report.csv
    # and summary.json are those of the same jobs and facts, and stay.
    again = _files(run_dir)
    regrid = invoke("report", str(run_dir), "--rows", "n", "--cols", "who")
    assert regrid.code == 0 and "up to date: " in regrid.stderr, regrid.stderr
    now = _files(run_dir)
    assert now["report.html"] != again["report.html"]
    assert all(now[n] == again[n] for n in ("report.csv", "summary.json"))
    sheet = (run_dir / "report.html").read_text()
    assert "rows: <b>var.n</b>" in sheet
    # ... the page every file written again in that grid makes
    (run_dir / "report.csv").write_bytes(texts["report.csv"])  # touched: every file is made
    assert "wrote " in invoke("report", str(run_dir)).stderr  # the grid chosen is kept
    assert (run_dir / "report.html").read_text() == sheet
    assert {n: (run_dir / n).read_bytes() for n in ("report.csv", "summary.json")} == {
        n: texts[n] for n in ("report.csv", "summary.json")
    }
    # report.html touched (report.csv and summary.json not): it alone is written again.
    before = _files(run_dir)
    (run_dir / "report.html").write_text("edited\n")
    touched = _files(run_dir)
    assert "up to date: " in invoke("report", str(run_dir)).stderr
    assert (run_dir / "report.html").read_text() == sheet
    assert all(_files(run_dir)[n] == before[n] for n in ("report.csv", "summary.json"))
    assert _files(run_dir)["report.html"] != touched["report.html"]

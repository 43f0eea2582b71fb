"""One vocabulary: report.csv, summary.json, `status` and the progress line name a job's
state with the same words; a submit that may have been billed is `unknown` everywhere."""

from __future__ import annotations

import io
import json
from pathlib import Path

from batchrun.cli import main
from batchrun.plan.grid import Job
from batchrun.results.report import write_report
from batchrun.results.reportcsv import read_jobs
from batchrun.run.progress import Progress, describe
from batchrun.store import state as st
from batchrun.store.state import StateStore


def make_folder(run_dir: Path) -> None:
    jobs = [
        Job(job_id=f"j{i}", model_id="acme/m", inputs={"n": i}, vars={}, repeat=0, position=i)
        for i in range(5)
    ]
    with StateStore.open(run_dir) as store:
        store.add_jobs(jobs)
        store.mark_submitting("j0")  # a run killed mid-submit
        store.mark_submitting("j1")
        store.mark_unknown("j1", "submit may have reached the server (read timed out)")
        store.mark_submitting("j2")
        store.record_request_id("j2", "req-2", 1.0)  # queued
        store.mark_submitting("j3")
        store.record_request_id("j3", "req-3", 1.0)
        store.record_status("j3", st.RUNNING, started_at=2.0)
        write_report(run_dir, store.rows(), store.attempts())


def test_every_view_uses_the_same_words(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    make_folder(run_dir)
    report = {job_id: row["status"] for job_id, row in read_jobs(run_dir / "report.csv").items()}
    assert report == {
        "j0": "unknown",
        "j1": "unknown",
        "j2": "queued",
        "j3": "running",
        "j4": "pending",
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in summary["statuses"].items() if v} == {
        "unknown": 2,
        "queued": 1,
        "running": 1,
        "pending": 1,
    }
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "5 jobs: unknown 2, queued 1, running 1, pending 1\n" in out
    assert "submitting" not in out
    assert main(["status", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"unknown": 2, "queued": 1, "running": 1, "pending": 1}
    assert {p["job_id"]: p["status"] for p in data["problems"]} == {
        "j0": "unknown",
        "j1": "unknown",
    }


def test_the_progress_line_says_unknown_for_a_submit_in_the_air() -> None:
    counts = {st.SUBMITTING: 1, st.UNKNOWN: 2, st.QUEUED: 3, st.PENDING: 4, st.SUCCEEDED: 5}
    assert describe(counts) == "succeeded 5, unknown 3, queued 3, pending 4"
    stream = io.StringIO()
    Progress(15, stream=stream, clock=lambda: 0.0).line(counts, 5, 7)
    assert "(succeeded 5, unknown 3, queued 3, pending 4)" in stream.getvalue()

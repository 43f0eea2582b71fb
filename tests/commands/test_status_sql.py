"""`status` counts with SQL and reads only the jobs it lists: on a folder of every kind of job,
it says exactly what it said when it decoded every row (the former way, kept here)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from batchrun.api.answers import AMBIGUOUS_SUBMIT
from batchrun.commands.status import status_data
from batchrun.plan.grid import Job
from batchrun.results.report import job_costs, without_output
from batchrun.run.progress import report_counts
from batchrun.store import ledger, state as st
from batchrun.store.records import OutputFile, report_status
from batchrun.store.state import StateStore

MODEL = "google/nano-banana-2-lite/text-to-image"


def _former(run_dir: Path) -> dict[str, Any]:
    """status_data's job figures as they were worked out from every decoded row."""
    with StateStore.open(run_dir, create=False, lock=False) as store:
        rows = store.rows(in_manifest_only=True)
        attempts = store.attempts()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    costs = job_costs(rows, attempts)
    cost = sum((costs[r.job_id] for r in rows if r.job_id in costs), Decimal(0))
    return {
        "total": len(rows),
        "counts": report_counts(counts),
        "cost_usd": float(round(cost, 6)),
        **ledger.summary(attempts, {r.job_id for r in rows}),
        "on_server": [
            {"job_id": r.job_id, "request_id": r.request_id, "status": r.status}
            for r in rows
            if r.status in (st.QUEUED, st.RUNNING)
        ],
        "problems": [
            {
                "job_id": r.job_id,
                "model_id": r.model_id,
                "status": report_status(r.status),
                "error": r.error or AMBIGUOUS_SUBMIT.format(why="sent; no answer recorded yet"),
            }
            for r in rows
            if r.status in (st.FAILED, st.TIMED_OUT, st.CANCELLED, st.UNKNOWN, st.SUBMITTING)
        ],
        "without_output": [r.job_id for r in rows if without_output(r)],
    }


def _mixed_folder(run_dir: Path) -> None:
    jobs = [Job(f"{i:012x}", MODEL, {"prompt": f"p{i}"}, {"i": i}, 0, 40 - i) for i in range(40)]
    with StateStore.open(run_dir) as s:
        s.add_jobs(jobs)
        for i, job in enumerate(jobs):
            jid, kind = job.job_id, i % 10
            if kind == 0:
                continue  # pending
            s.mark_submitting(jid, Decimal("0.04"))
            if kind == 1:
                continue  # submitting (a crash mid-submit)
            if kind == 2:
                s.mark_unknown(jid, "read timeout")
                continue
            s.record_request_id(jid, f"req-{i}", 1000.0 + i)
            if kind == 3:
                s.record_status(jid, st.QUEUED)
            elif kind == 4:
                s.record_status(jid, st.RUNNING, started_at=1001.0 + i)
            elif kind == 5:
                s.record_result(jid, st.FAILED, finished_at=1010.0 + i, error="boom", cost_usd=0.01)
            elif kind == 6:
                s.record_result(jid, st.SUCCEEDED, finished_at=1010.0 + i, output={"x": 1})
            elif kind == 7:
                s.record_result(
                    jid, st.SUCCEEDED, finished_at=1010.0 + i, output="http://h/a.png",
                    cost_usd=0.04,
                )  # fmt: skip
                s.record_files(jid, [OutputFile("http://h/a.png", f"files/{jid}/a.png", "ab", 3)])
            elif kind == 8:
                s.record_result(
                    jid, st.SUCCEEDED, finished_at=1010.0 + i, output="http://h/b.png",
                    cost_usd=0.05,
                )  # fmt: skip
            else:
                s.record_result(jid, st.CANCELLED, finished_at=1010.0 + i, error="cancelled")
                s.close_attempt(jid, answer="cancelled")
            if kind in (5, 7, 8):  # what the budget writes to the ledger as a result comes
                s.close_attempt(jid, actual=Decimal(f"0.0{kind - 4}"))
        # Jobs no longer in the manifest: their money shows apart, their rows not at all.
        s.add_jobs(jobs[:30])


def test_status_says_what_decoding_every_row_said(tmp_path):
    run_dir = tmp_path / "run"
    _mixed_folder(run_dir)
    now = status_data(run_dir)
    former = _former(run_dir)
    assert {k: now[k] for k in former} == former
    # The folder is mixed: every list and count has something in it.
    assert former["on_server"] and former["problems"] and former["without_output"]
    assert former["not_in_manifest"]["jobs"] and former["cost_usd"] > 0
    assert len(former["counts"]) >= 6

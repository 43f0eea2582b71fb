"""`batchrun report` of a large folder (made in two processes) while another process writes
jobs into it: every report is of one moment of state.db, and state.db stays whole."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from batchrun.plan.grid import Job
from batchrun.results import html_pages
from batchrun.store import state as st
from batchrun.store.state import StateStore
from testing.cli import run_cli

JOBS = 10_000  # 20 pages: made by two processes (html_pages.HELPED_PAGES)


def _counts(run_dir: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Jobs per status as report.csv lists them, as summary.json counts them, and as page 1
    of report.html shows them."""
    with open(run_dir / "report.csv", encoding="utf-8", newline="") as f:
        listed = Counter(row["status"] for row in csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    counted = {k: v for k, v in summary["statuses"].items() if v}
    page = (run_dir / "report.html").read_text()
    shown = {s: int(n) for s, n in re.findall(r's-[a-z_]+">([a-z_]+)</span> (\d+)<', page)}
    return dict(listed), counted, shown


@pytest.mark.slow
def test_reports_while_a_writer_goes_are_each_of_one_moment(tmp_path: Path) -> None:
    assert JOBS >= html_pages.HELPED_PAGES * html_pages.PAGE_CARDS
    run_dir = tmp_path / "run"
    jobs = [Job(f"{i:012x}", "acme/painter", {"seed": i % 100}, {"n": i // 100}, 0, i)
            for i in range(JOBS)]  # fmt: skip
    with StateStore.open(run_dir) as store:
        store.add_jobs(jobs)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # a run finishing jobs, one transaction each, from the last page
        with StateStore.open(run_dir) as store:
            for job in reversed(jobs):
                if stop.is_set():
                    return
                store.mark_submitting(job.job_id, Decimal("0.01"))
                store.record_request_id(job.job_id, f"r-{job.job_id}", 1000.0)
                store.record_result(job.job_id, st.SUCCEEDED, finished_at=1001.0, output={})
                written.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for grid in ([], ["--rows", "seed", "--cols", "n"], ["--rows", "n", "--cols", "seed"]):
            done = run_cli("report", str(run_dir), *grid, timeout=120)
            assert done.returncode == 0, done.stderr
            listed, counted, shown = _counts(run_dir)
            assert listed == counted == shown, (listed, counted, shown)
            # the jobs' attempts (their rows) and the ledger's (its books), of one moment:
            # the same, but for the one job the writer may be submitting (in the ledger from
            # mark_submitting on, counted in its row from record_request_id on)
            summary = json.loads((run_dir / "summary.json").read_text())
            assert 0 <= summary["billable_attempts"] - summary["attempts"] <= 1, summary
    finally:
        stop.set()
        thread.join()
    assert 0 < len(written) < JOBS  # the reports ran while it wrote
    # Once the writer is done, a report is of the state it left, in every file.
    assert run_cli("report", str(run_dir)).returncode == 0
    listed, counted, shown = _counts(run_dir)
    assert listed == counted == shown == {"succeeded": len(written), "pending": JOBS - len(written)}
    assert not list(run_dir.glob(".report.csv.*"))
    conn = sqlite3.connect(run_dir / "state.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()

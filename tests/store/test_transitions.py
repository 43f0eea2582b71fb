"""Each transition's changes, made to a row in memory, give the row state.db holds after it:
every single-job transition of StateStore, from rows in several states."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from batchrun.plan.grid import Job
from batchrun.store import records as rec, transitions
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore

LONG = "x" * (rec.MAX_ERROR_CHARS + 10)
FILES = [OutputFile("http://h/a.png", "files/j0/a.png", "ab" * 32, 10)]

# How the row looks before the transition.
BEFORE: dict[str, Callable[[StateStore], object]] = {
    "new": lambda s: None,
    "cached": lambda s: s.record_cached(
        "j0", finished_at=1.0, output={"i": "u"}, saved_usd=0.3, files=FILES
    ),
    "running since 0": lambda s: (
        s.mark_submitting("j0"),
        s.record_request_id("j0", "r0", 0.0),
        s.record_status("j0", rec.RUNNING, started_at=0.0),
    ),
    "succeeded with files": lambda s: (
        s.mark_submitting("j0"),
        s.record_request_id("j0", "r0", 1.0),
        s.record_result("j0", rec.SUCCEEDED, finished_at=2.0, output=["u"], cost_usd=0.1),
        s.record_files("j0", FILES),
    ),
}

TRANSITIONS: dict[str, Callable[[StateStore], transitions.Changes]] = {
    "mark_submitting": lambda s: s.mark_submitting("j0"),
    "record_request_id": lambda s: s.record_request_id("j0", "r1", 5.0),
    "mark_unknown": lambda s: s.mark_unknown("j0", LONG),
    "mark_unknown uncounted": lambda s: s.mark_unknown("j0", "lost", count_attempt=False),
    "mark_pending": lambda s: s.mark_pending("j0", LONG),
    "record_status running": lambda s: s.record_status("j0", rec.RUNNING, started_at=7.0),
    "record_status queued": lambda s: s.record_status("j0", rec.QUEUED),
    "record_result": lambda s: s.record_result(
        "j0", rec.FAILED, finished_at=8.0, output={"e": [1]}, error=LONG, cost_usd=float("inf")
    ),
    "record_cached": lambda s: s.record_cached(
        "j0", finished_at=9.0, output=None, saved_usd=None, files=[]
    ),
    "record_error": lambda s: s.record_error("j0", LONG),
    "record_files": lambda s: s.record_files("j0", FILES),
    "import_job": lambda s: s.import_job(
        JobRow(
            "j0",
            0,
            "m/x",
            {},
            status=rec.UNKNOWN,
            attempts=4,
            error=LONG,
            cost_usd=-1.0,
            retries_from=3,
        )
    ),
}


@pytest.mark.parametrize("before", BEFORE)
@pytest.mark.parametrize("transition", TRANSITIONS)
def test_the_changes_returned_are_the_ones_state_db_made(
    tmp_path: Path, before: str, transition: str
) -> None:
    with StateStore.open(tmp_path / "run") as store:
        store.add_jobs([Job("j0", "m/x", {}, {}, 0, 0)])
        BEFORE[before](store)
        row = copy.deepcopy(store.get("j0"))
        transitions.apply(row, TRANSITIONS[transition](store))
        stored = store.get("j0")
        for f in fields(JobRow):
            assert getattr(row, f.name) == getattr(stored, f.name), f.name


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"attempts": transitions.Add(1)}, {"attempts": 3}),
        ({"attempts": transitions.Add(0)}, {"attempts": 2}),
        ({"started_at": transitions.IfUnset(5.0)}, {"started_at": 0.0}),  # 0.0 is set
        ({"finished_at": transitions.IfUnset(5.0)}, {"finished_at": 5.0}),
        ({"finished_at": transitions.IfUnset(None)}, {"finished_at": None}),
        ({"error": "e", "status": rec.FAILED}, {"error": "e", "status": rec.FAILED}),
        ({"retries_from": transitions.Copy("attempts")}, {"retries_from": 2, "attempts": 2}),
    ],
)
def test_apply(changes: transitions.Changes, expected: dict) -> None:
    row = JobRow("j0", 0, "m/x", {}, attempts=2, started_at=0.0)
    transitions.apply(row, changes)
    assert {name: getattr(row, name) for name in expected} == expected


def test_text_is_capped_and_costs_made_finite_once_for_both() -> None:
    assert transitions.record_error(LONG)["error"] == rec.cap_error(LONG)
    changes = transitions.record_result(rec.SUCCEEDED, finished_at=1.0, cost_usd=float("nan"))
    assert changes["cost_usd"] is None

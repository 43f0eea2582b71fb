"""Each job transition defined once: which fields of the job's row it changes, and to what.

StateStore writes exactly these changes to state.db and returns them; the run's job table in
memory (run/jobtable.py) applies the same changes to its copy, so the two cannot differ. Text
is capped and costs made finite here, once, for both.

A change is the field's new value, or one that depends on the row as it is (`Add`, `IfUnset`,
`Copy`),
which state.db applies inside its UPDATE, without reading the row first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batchrun.store.records import (
    FAILED,
    PENDING,
    QUEUED,
    SUBMITTING,
    SUCCEEDED,
    UNKNOWN,
    JobRow,
    OutputFile,
    cap_error,
    finite_cost,
)


@dataclass(frozen=True)
class Add:
    """The field's value plus `n` (a count)."""

    n: int


@dataclass(frozen=True)
class IfUnset:
    """`value` where the field is None; otherwise the field keeps its value (a first sighting)."""

    value: Any


@dataclass(frozen=True)
class Copy:
    """The value another field of the row has (`name`)."""

    name: str


Changes = dict[str, Any]  # JobRow field -> its new value, an Add, an IfUnset or a Copy


def apply(row: JobRow, changes: Changes) -> None:
    """Make `changes` to a row in memory, as state.db makes them to its row."""
    for name, value in changes.items():
        kind = type(value)
        if kind is Add:
            value = getattr(row, name) + value.n
        elif kind is IfUnset:
            current = getattr(row, name)
            value = value.value if current is None else current
        elif kind is Copy:
            value = getattr(row, value.name)
        setattr(row, name, value)


def mark_submitting() -> Changes:
    """A submit is about to be sent; a crash from here on leaves it ambiguous."""
    return {"status": SUBMITTING}


def record_request_id(request_id: str, submitted_at: float) -> Changes:
    """The server took the submit: a new attempt, nothing left of the previous one's result
    (nor of a cache hit)."""
    return {
        "status": QUEUED,
        "request_id": request_id,
        "attempts": Add(1),
        "submitted_at": submitted_at,
        "started_at": None,
        "finished_at": None,
        "error": "",
        "output": None,
        "cost_usd": None,
        "files": [],
        "cached": False,
        "saved_usd": None,
    }


def mark_unknown(error: str, *, count_attempt: bool = True) -> Changes:
    """The submit may have reached the server."""
    return {
        "status": UNKNOWN,
        "error": cap_error(error),
        "attempts": Add(1 if count_attempt else 0),
    }


def mark_pending(error: str = "") -> Changes:
    """Back to the submit queue (a refused submit, a retry, a requested resubmission)."""
    return {
        "status": PENDING,
        "error": cap_error(error),
        "request_id": None,
        "finished_at": None,
        "output": None,
        "files": [],
    }


def requeue(error: str = "") -> Changes:
    """Sent again because the user asked (--retry-failed, --resubmit-unknown): back to the
    submit queue with a fresh allowance of `run.retries`, counted from the attempts so far."""
    return {**mark_pending(error), "retries_from": Copy("attempts")}


def record_status(status: str, started_at: float | None = None) -> Changes:
    """QUEUED or RUNNING as last seen on the server; the first RUNNING sighting is the start."""
    return {"status": status, "started_at": IfUnset(started_at)}


def record_result(
    status: str,
    *,
    finished_at: float,
    output: Any = None,
    error: str = "",
    cost_usd: float | None = None,
) -> Changes:
    """A terminal state: SUCCEEDED, FAILED, TIMED_OUT or CANCELLED."""
    return {
        "status": status,
        "finished_at": finished_at,
        "output": output,
        "error": cap_error(error),
        "cost_usd": finite_cost(cost_usd),
    }


def fail_expectations(error: str) -> Changes:
    """A succeeded job whose files fail its expectations: FAILED, its output, files and cost
    kept (the server did the work and billed it)."""
    return {"status": FAILED, "error": cap_error(error)}


def record_cached(
    *, finished_at: float, output: Any, saved_usd: float | None, files: Iterable[OutputFile]
) -> Changes:
    """SUCCEEDED from the cross-run cache: nothing sent, nothing paid."""
    return {
        "status": SUCCEEDED,
        "request_id": None,
        "error": "",
        "submitted_at": None,
        "started_at": None,
        "finished_at": finished_at,
        "output": output,
        "cost_usd": 0.0,
        "cached": True,
        "saved_usd": saved_usd,
        "files": list(files),
    }


def record_error(error: str) -> Changes:
    """A note on a job that keeps its state."""
    return {"error": cap_error(error)}


def record_files(files: Iterable[OutputFile]) -> Changes:
    """The job's files so far."""
    return {"files": list(files)}


def import_job(row: JobRow) -> Changes:
    """A job's state, request, times, result and files as another folder holds them (merge)."""
    return {
        "status": row.status,
        "request_id": row.request_id,
        "attempts": row.attempts,
        "error": cap_error(row.error),
        "submitted_at": row.submitted_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "cost_usd": finite_cost(row.cost_usd),
        "output": row.output,
        "files": list(row.files),
        "cached": row.cached,
        "saved_usd": finite_cost(row.saved_usd),
        "retries_from": row.retries_from,
    }


class RowTransitions:
    """The transitions that change a job's row alone, as methods of a store (StateStore,
    SharedState) whose `_change` writes a transition's changes in one transaction and returns
    them (for the run's job table to make the same)."""

    def _change(self, job_id: str, changes: Changes) -> Changes:
        raise NotImplementedError

    def mark_pending(self, job_id: str, error: str = "") -> Changes:
        """Back to the submit queue (a refused submit, a retry, a requested resubmission)."""
        return self._change(job_id, mark_pending(error))

    def record_status(
        self, job_id: str, status: str, *, started_at: float | None = None
    ) -> Changes:
        """QUEUED or RUNNING as last seen on the server."""
        return self._change(job_id, record_status(status, started_at))

    def record_result(
        self,
        job_id: str,
        status: str,
        *,
        finished_at: float,
        output: Any = None,
        error: str = "",
        cost_usd: float | None = None,
    ) -> Changes:
        """A terminal state: SUCCEEDED, FAILED, TIMED_OUT or CANCELLED."""
        changes = record_result(
            status, finished_at=finished_at, output=output, error=error, cost_usd=cost_usd
        )
        return self._change(job_id, changes)

    def fail_expectations(self, job_id: str, error: str) -> Changes:
        """A succeeded job whose files fail its expectations becomes FAILED (cost kept)."""
        return self._change(job_id, fail_expectations(error))

    def record_error(self, job_id: str, error: str) -> Changes:
        """A note on a job that keeps its state (e.g. the server unreachable while polling)."""
        return self._change(job_id, record_error(error))

    def record_files(self, job_id: str, files: list[OutputFile]) -> Changes:
        """A job's files so far (rewritten as more land)."""
        return self._change(job_id, record_files(files))

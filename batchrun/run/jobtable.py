"""The run's job table in memory: each transition committed to state.db before the copy is
updated, with the very changes state.db made (store/transitions.py).

It holds the jobs the run is working on, not the sweep: pending jobs come in pages (a Feed,
run/parts.py) and finished ones leave (`settled`, `forget`), while the counts of the progress
and final lines are kept for every job of the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, Protocol

from batchrun.store import state as st, transitions
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.transitions import Changes

DONE = (*st.TERMINAL, st.UNKNOWN)  # nothing more for this run to do about the job


class Transitions(Protocol):
    """What the job table needs of a store: StateStore (a run folder's state.db) or
    SharedState (a shared sweep's database), one method per transition."""

    def batch(self, *, durable: bool = False) -> AbstractContextManager[None]: ...
    def mark_submitting(self, job_id: str, estimate: Decimal | None = None) -> Changes: ...
    def record_request_id(self, job_id: str, request_id: str, submitted_at: float) -> Changes: ...
    def mark_pending(self, job_id: str, error: str = "") -> Changes: ...
    def mark_unknown(self, job_id: str, error: str, *, count_attempt: bool = True) -> Changes: ...
    def record_status(
        self, job_id: str, status: str, *, started_at: float | None = None
    ) -> Changes: ...
    def record_result(
        self,
        job_id: str,
        status: str,
        *,
        finished_at: float,
        output: Any = None,
        error: str = "",
        cost_usd: float | None = None,
    ) -> Changes: ...
    def record_error(self, job_id: str, error: str) -> Changes: ...
    def fail_expectations(self, job_id: str, error: str) -> Changes: ...
    def record_files(self, job_id: str, files: list[OutputFile]) -> Changes: ...


class JobTable:
    """One method per transition, named as StateStore's: commit it there first, then make the
    changes it returns to `rows` and `counts`."""

    def __init__(
        self, store: Transitions, rows: Iterable[JobRow], counts: Mapping[str, int] | None = None
    ) -> None:
        """`counts`: the statuses of every job of the run, when `rows` (and the rows added
        later) are some of them; None: the run's jobs are `rows` and those added later."""
        self.store = store
        self.rows: dict[str, JobRow] = {r.job_id: r for r in rows}
        self._counted = counts is not None
        self.counts: Counter[str] = Counter(
            counts if counts is not None else (r.status for r in self.rows.values())
        )
        self.changes = 0  # transitions applied so far: equal at two moments, nothing changed
        self.settled: list[str] = []  # jobs that reached DONE since the last `take_settled`

    @property
    def total(self) -> int:
        """The run's jobs (held here or not)."""
        return sum(self.counts.values())

    def add(self, rows: Iterable[JobRow]) -> None:
        """Rows this run takes on as it goes (a page of pending jobs, a shared sweep's claims)."""
        for row in rows:
            if row.job_id not in self.rows:
                self.rows[row.job_id] = row
                if not self._counted:
                    self.counts[row.status] += 1

    def forget(self, job_id: str) -> None:
        """The job leaves memory (state.db holds it); its count stays."""
        self.rows.pop(job_id, None)

    def take_settled(self) -> list[str]:
        """The jobs that reached DONE since the last call (they may have moved on since)."""
        settled, self.settled = self.settled, []
        return settled

    def batch(self, *, durable: bool = False) -> AbstractContextManager[None]:
        """The transitions made inside share one commit (see StateStore.batch)."""
        return self.store.batch(durable=durable)

    def mark_submitting(self, job_id: str, estimate: Decimal | None = None) -> None:
        self._apply(job_id, self.store.mark_submitting(job_id, estimate))

    def record_request_id(self, job_id: str, request_id: str, submitted_at: float) -> None:
        self._apply(job_id, self.store.record_request_id(job_id, request_id, submitted_at))

    def mark_pending(self, job_id: str, error: str = "") -> None:
        self._apply(job_id, self.store.mark_pending(job_id, error))

    def mark_unknown(self, job_id: str, error: str) -> None:
        self._apply(job_id, self.store.mark_unknown(job_id, error))

    def record_status(self, job_id: str, status: str, *, started_at: float | None = None) -> None:
        """QUEUED or RUNNING on the server; the first RUNNING sighting is the start time."""
        self._apply(job_id, self.store.record_status(job_id, status, started_at=started_at))

    def record_result(
        self,
        job_id: str,
        status: str,
        *,
        finished_at: float,
        output: Any = None,
        error: str = "",
        cost_usd: float | None = None,
    ) -> None:
        changes = self.store.record_result(
            job_id, status, finished_at=finished_at, output=output, error=error, cost_usd=cost_usd
        )
        self._apply(job_id, changes)

    def fail_expectations(self, job_id: str, error: str) -> None:
        self._apply(job_id, self.store.fail_expectations(job_id, error))

    def record_error(self, job_id: str, error: str) -> None:
        self._apply(job_id, self.store.record_error(job_id, error))

    def record_files(self, job_id: str, files: list[OutputFile]) -> None:
        self._apply(job_id, self.store.record_files(job_id, files))

    def done(self) -> int:
        """Jobs this run will do nothing more about (terminal, or ambiguous)."""
        return sum(self.counts[s] for s in DONE)

    def _apply(self, job_id: str, changes: Changes) -> None:
        row = self.rows[job_id]
        before = row.status
        transitions.apply(row, changes)
        self.changes += 1
        if row.status != before:
            self.counts[before] -= 1
            self.counts[row.status] += 1
        if row.status in DONE:
            self.settled.append(job_id)

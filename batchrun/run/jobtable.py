"""The run's job table in memory: each transition committed to state.db before the copy is
updated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

from batchrun.store import state as st
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore


class JobTable:
    """One method per transition, named as StateStore's: commit it there first, then mirror it
    in `rows`/`counts`."""

    def __init__(self, store: StateStore, rows: Iterable[JobRow]) -> None:
        self.store = store
        self.rows: dict[str, JobRow] = {r.job_id: r for r in rows}
        self.counts: Counter[str] = Counter(r.status for r in self.rows.values())

    def batch(self, *, durable: bool = False) -> AbstractContextManager[None]:
        """The transitions made inside share one commit (see StateStore.batch)."""
        return self.store.batch(durable=durable)

    def mark_submitting(self, job_id: str, estimate: Decimal | None = None) -> None:
        self.store.mark_submitting(job_id, estimate)
        self._set(job_id, st.SUBMITTING)

    def record_request_id(self, job_id: str, request_id: str, submitted_at: float) -> None:
        self.store.record_request_id(job_id, request_id, submitted_at)
        row = self.rows[job_id]
        self._set(job_id, st.QUEUED, request_id=request_id, submitted_at=submitted_at, error="")
        row.attempts += 1
        row.started_at = row.finished_at = row.output = row.cost_usd = None
        row.files = []

    def mark_pending(self, job_id: str, error: str = "") -> None:
        self.store.mark_pending(job_id, error)
        self._set(job_id, st.PENDING, error=error, request_id=None, output=None)

    def mark_unknown(self, job_id: str, error: str) -> None:
        self.store.mark_unknown(job_id, error)
        self.rows[job_id].attempts += 1
        self._set(job_id, st.UNKNOWN, error=error)

    def record_status(self, job_id: str, status: str, *, started_at: float | None = None) -> None:
        """QUEUED or RUNNING on the server; the first RUNNING sighting is the start time."""
        self.store.record_status(job_id, status, started_at=started_at)
        row = self.rows[job_id]
        self._set(job_id, status, started_at=row.started_at or started_at)

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
        self.store.record_result(
            job_id, status, finished_at=finished_at, output=output, error=error, cost_usd=cost_usd
        )
        self._set(
            job_id, status, finished_at=finished_at, output=output, error=error, cost_usd=cost_usd
        )

    def record_error(self, job_id: str, error: str) -> None:
        self.store.record_error(job_id, error)
        self.rows[job_id].error = error

    def record_files(self, job_id: str, files: list[OutputFile]) -> None:
        self.store.record_files(job_id, files)
        self.rows[job_id].files = files

    def done(self) -> int:
        """Jobs this run will do nothing more about (terminal, or ambiguous)."""
        return sum(self.counts[s] for s in (*st.TERMINAL, st.UNKNOWN))

    def _set(self, job_id: str, status: str, **changes: Any) -> None:
        row = self.rows[job_id]
        if row.status != status:
            self.counts[row.status] -= 1
            self.counts[status] += 1
            row.status = status
        for key, value in changes.items():
            setattr(row, key, value)

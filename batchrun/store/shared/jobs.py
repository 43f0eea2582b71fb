"""The sweep, its jobs' transitions (fenced by their owner) and the ledger's attempts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal

from batchrun.errors import StateError
from batchrun.store import ledger, records, transitions
from batchrun.store.shared.connection import (
    Connection,
    LeaseLost,
    _count,
    _one,
    _patient,
    _text,
    scrub,
)
from batchrun.store.state import assignments
from batchrun.store.transitions import Changes


class Jobs(Connection):
    # ---- the sweep ----------------------------------------------------------------------

    @_patient
    def open_sweep(self, manifest_sha256: str, origin: str, cap_usd: Decimal | None) -> None:
        """Make the sweep, or join it; a different manifest under the same name is refused."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sweeps (sweep, manifest_sha256, origin, created, cap_usd) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sweep) DO NOTHING",
                (self.sweep, manifest_sha256, origin, time.time(), cap_usd),
            )
            held, held_origin = _one(
                conn.execute(
                    "SELECT manifest_sha256, origin FROM sweeps WHERE sweep = %s", (self.sweep,)
                )
            )
        if held != manifest_sha256:
            raise StateError(
                f"the shared state {scrub(self.url)} holds another sweep named {self.sweep!r} "
                "(its manifest differs from this one); give this manifest another `name:`, or "
                "use another database"
            )
        if held_origin != origin:
            raise StateError(
                f"the sweep {self.sweep!r} in {scrub(self.url)} ran against {held_origin!r}, "
                f"not {origin!r}; simulated and real results are never mixed"
            )

    @_patient
    def add_jobs(self, jobs: Iterable[records.JobLike]) -> int:
        """Insert the jobs the sweep does not have yet; returns how many were new."""
        rows = [
            (
                self.sweep, j.job_id, j.position, j.model_id, records.dumps(j.inputs),
                records.dumps(j.vars), j.repeat,
            )
            for j in jobs
        ]  # fmt: skip
        with self._tx() as conn, conn.cursor() as cur:
            before = _count(conn, self.sweep)
            cur.executemany(
                "INSERT INTO jobs (sweep, job_id, position, model_id, inputs, vars, repeat) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )
            return _count(conn, self.sweep) - before

    @_patient
    def counts(self) -> dict[str, int]:
        with self._tx() as conn:
            cur = conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE sweep = %s GROUP BY status",
                (self.sweep,),
            )
            return {status: int(n) for status, n in cur.fetchall()}

    def _change(self, job_id: str, changes: Changes) -> Changes:
        return self.update(job_id, changes)

    @_patient
    def update(self, job_id: str, changes: Changes) -> Changes:
        """One transition (store/transitions.py) of a job this worker holds. A worker whose
        lease lapsed (and was taken over) holds it no more: LeaseLost, nothing written."""
        sets, params = assignments(changes, "%s")
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = %s "
                "WHERE sweep = %s AND job_id = %s AND owner = %s",
                (*params, time.time(), self.sweep, job_id, self.worker),
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"job {job_id} of the sweep {self.sweep!r} is no longer held by this "
                    "worker (its lease lapsed, e.g. while the machine slept, and another worker "
                    "took it over); nothing of it was written. Run the same command again to "
                    "rejoin the sweep, and give run.lease more time if this machine pauses"
                )
        return changes

    @_patient
    def get(self, job_id: str) -> records.JobRow:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {records.COLUMNS} FROM jobs WHERE sweep = %s AND job_id = %s",
                (self.sweep, job_id),
            ).fetchone()
        if row is None:
            raise StateError(f"no job {job_id} in the sweep {self.sweep!r}")
        return records.decode_row(row)

    # ---- what the run's job table and readers use (StateStore's interface) ---------------

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        """Each transition inside stays its own transaction (each durable on its commit), so
        each can be done again on its own when the database comes back."""
        yield

    @_patient
    def meta(self) -> dict[str, str]:
        with self._tx() as conn:
            cur = conn.execute("SELECT key, value FROM meta WHERE sweep = %s", (self.sweep,))
            return dict(cur.fetchall())

    @_patient
    def set_meta(self, **values: str) -> None:
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO meta (sweep, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (sweep, key) DO UPDATE SET value = excluded.value",
                [(self.sweep, k, str(v)) for k, v in values.items()],
            )

    @_patient
    def rows(self, *, in_manifest_only: bool = False) -> list[records.JobRow]:
        """Every job of the sweep, in expansion order."""
        where = "AND in_manifest = 1 " if in_manifest_only else ""
        with self._tx() as conn:
            cur = conn.execute(
                f"SELECT {records.COLUMNS} FROM jobs WHERE sweep = %s {where}ORDER BY position",
                (self.sweep,),
            )
            return [records.decode_row(r) for r in cur.fetchall()]

    @_patient
    def mark_submitting(self, job_id: str, estimate: Decimal | None = None) -> Changes:
        """Committed before the submit is sent, with its `sending` attempt in the ledger."""
        with self._tx():
            changes = self.update(job_id, transitions.mark_submitting())
            if self._latest(job_id)[0] != ledger.SENDING:  # not when done again (a reconnect)
                self._add_attempt(job_id, ledger.SENDING, estimate=estimate)
        return changes

    @_patient
    def record_request_id(self, job_id: str, request_id: str, submitted_at: float) -> Changes:
        with self._tx():
            changes = self.update(job_id, transitions.record_request_id(request_id, submitted_at))
            answered = self._answer(job_id, ledger.ACCEPTED, request_id=request_id)
            if not answered and self._latest(job_id) != (ledger.ACCEPTED, request_id):
                self._add_attempt(job_id, ledger.ACCEPTED, request_id=request_id)
        return changes

    @_patient
    def mark_unknown(self, job_id: str, error: str, *, count_attempt: bool = True) -> Changes:
        with self._tx():
            changes = self.update(
                job_id, transitions.mark_unknown(error, count_attempt=count_attempt)
            )
            if not self._answer(job_id, ledger.UNKNOWN) and count_attempt:
                self._add_attempt(job_id, ledger.UNKNOWN)
        return changes

    @_patient
    def record_files(self, job_id: str, files: list[records.OutputFile]) -> Changes:
        with self._tx() as conn:
            changes = self.update(job_id, transitions.record_files(files))
            if self.files_at is not None:
                conn.execute(
                    "UPDATE jobs SET files_dir = %s, files_host = %s "
                    "WHERE sweep = %s AND job_id = %s",
                    (*self.files_at, self.sweep, job_id),
                )
        return changes

    @_patient
    def attempts(self) -> list[ledger.Attempt]:
        """Every submit attempt of the sweep, by every worker, in the order they were made."""
        with self._tx() as conn:
            cur = conn.execute(
                f"SELECT {ledger.COLUMNS} FROM attempts WHERE sweep = %s ORDER BY seq",
                (self.sweep,),
            )
            return [ledger.Attempt.from_row(r) for r in cur.fetchall()]

    @_patient
    def close_attempt(
        self, job_id: str, *, answer: str | None = None, actual: Decimal | None = None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE attempts SET answer = COALESCE(%s, answer), "
                "actual_usd = COALESCE(actual_usd, %s), "
                "finished_at = COALESCE(finished_at, %s) WHERE seq = "
                "(SELECT MAX(seq) FROM attempts WHERE sweep = %s AND job_id = %s)",
                (answer, _text(actual), time.time(), self.sweep, job_id),
            )

    def _add_attempt(
        self,
        job_id: str,
        answer: str,
        *,
        request_id: str | None = None,
        estimate: Decimal | None = None,
    ) -> None:
        self._conn.execute(
            "INSERT INTO attempts (sweep, job_id, attempt, model_id, origin, sent_at, answer, "
            "request_id, estimate_usd, worker) "
            "SELECT j.sweep, j.job_id, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts a "
            "WHERE a.sweep = j.sweep AND a.job_id = j.job_id), j.model_id, s.origin, %s, %s, "
            "%s, %s, %s FROM jobs j JOIN sweeps s ON s.sweep = j.sweep "
            "WHERE j.sweep = %s AND j.job_id = %s",
            (time.time(), answer, request_id, _text(estimate), self.worker, self.sweep, job_id),
        )

    def _latest(self, job_id: str) -> tuple[str | None, str | None]:
        """The answer and request id of the job's latest attempt ((None, None): none)."""
        row = self._conn.execute(
            "SELECT answer, request_id FROM attempts WHERE sweep = %s AND job_id = %s "
            "ORDER BY seq DESC LIMIT 1",
            (self.sweep, job_id),
        ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def _answer(self, job_id: str, answer: str, *, request_id: str | None = None) -> bool:
        cur = self._conn.execute(
            "UPDATE attempts SET answer = %s, request_id = COALESCE(%s, request_id) WHERE seq = "
            "(SELECT MAX(seq) FROM attempts WHERE sweep = %s AND job_id = %s) "
            "AND answer IN (%s, %s)",
            (answer, request_id, self.sweep, job_id, ledger.SENDING, ledger.UNKNOWN),
        )
        return cur.rowcount == 1

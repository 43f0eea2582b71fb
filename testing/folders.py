"""Run folders made directly in state.db, for commands that read one (cancel, status)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from batchrun.plan.grid import Job
from batchrun.store import state as st
from batchrun.store.migrations import ATTEMPTS_V5, JOBS_V5
from batchrun.store.state import StateStore


def queued_run_folder(run_dir: Path, api_base: str, jobs: int = 2) -> None:
    """A run folder whose run against `api_base` left `jobs` requests (req-0, req-1...)
    queued on the server."""
    with StateStore.open(run_dir) as store:
        store.add_jobs(
            [
                Job(job_id=f"j{i}", model_id="m", inputs={"n": i}, vars={}, repeat=0, position=i)
                for i in range(jobs)
            ]
        )
        store.set_meta(api_base=api_base)
        for i in range(jobs):
            store.mark_submitting(f"j{i}")
            store.record_request_id(f"j{i}", f"req-{i}", 1.0)
            store.record_status(f"j{i}", st.QUEUED)


def as_version_6(conn: sqlite3.Connection) -> None:
    """Rewrite a state.db made now (schema 7) as batchrun made it at schema version 6: the
    index of unfinished jobs by status alone, no index by position. The caller commits."""
    conn.executescript(
        """
        BEGIN;
        DROP INDEX IF EXISTS jobs_position;
        DROP INDEX IF EXISTS jobs_active;
        CREATE INDEX jobs_active ON jobs (status)
            WHERE status NOT IN ('succeeded', 'failed', 'timed_out', 'cancelled');
        UPDATE meta SET value = '6' WHERE key = 'schema_version';
        COMMIT;
        """
    )


def as_version_5(conn: sqlite3.Connection) -> None:
    """Rewrite a state.db made now (schema 6) as batchrun made it at schema version 5: model
    ids and origins in each row, request ids in each attempt, the full status index; the
    rows as they are otherwise. `conn` is not in a transaction; the caller commits."""
    name = "(SELECT name FROM names WHERE ref = {})"
    conn.executescript(
        f"""
        BEGIN;
        DROP TRIGGER IF EXISTS jobs_request_kept;
        DROP TRIGGER IF EXISTS jobs_request_gone;
        DROP INDEX IF EXISTS jobs_active;
        DROP INDEX IF EXISTS attempts_job;
        ALTER TABLE jobs RENAME TO jobs_v6;
        ALTER TABLE attempts RENAME TO attempts_v6;
        {JOBS_V5};
        INSERT INTO jobs SELECT job_id, position, {name.format("model_id")}, inputs, vars,
            repeat, status, request_id, attempts, error, submitted_at, started_at, finished_at,
            cost_usd, output, files, in_manifest, updated_at, cached, saved_usd, retries_from
            FROM jobs_v6 ORDER BY rowid;
        CREATE INDEX jobs_status ON jobs (status);
        {ATTEMPTS_V5};
        INSERT INTO attempts SELECT a.seq, a.job_id, a.attempt, {name.format("a.model_id")},
            {name.format("a.origin")}, a.sent_at, a.answer, CASE a.request_id WHEN '' THEN
            (SELECT request_id FROM jobs j WHERE j.job_id = a.job_id) ELSE a.request_id END,
            a.estimate_usd, a.actual_usd, a.saved_usd, a.finished_at FROM attempts_v6 a;
        DROP TABLE jobs_v6;
        DROP TABLE attempts_v6;
        DROP TABLE names;
        UPDATE meta SET value = '5' WHERE key = 'schema_version';
        COMMIT;
        """
    )


def succeeded_shard(
    run_dir: Path, positions: range, *, api_base: str = "http://127.0.0.1:1"
) -> None:
    """A shard's run folder whose jobs (one a position of `positions`, job id `j<position>`)
    all succeeded, each with its attempt in the ledger and an output URL (no file), made in a
    few statements: a big folder in seconds. The meta says a simulated run."""
    now = 1_700_000_000.0
    jobs = [
        Job(
            job_id=f"j{p}", model_id="m", inputs={"prompt": f"prompt {p}", "seed": p},
            vars={"p": p}, repeat=0, position=p,
        )
        for p in positions
    ]  # fmt: skip
    with StateStore.open(run_dir) as store:
        store.add_jobs(jobs, models=["m"])
        store.set_meta(name="shards", manifest="m.yaml", api_base=api_base, origin="simulator")
    with contextlib.closing(sqlite3.connect(run_dir / "state.db")) as conn, conn:
        conn.execute(
            "UPDATE jobs SET status = 'succeeded', request_id = 'req-' || job_id, attempts = 1, "
            "submitted_at = ?, started_at = ?, finished_at = ?, cost_usd = 0.01, output = ?",
            (now - 3, now - 2, now, '"http://127.0.0.1/files/x.png"'),
        )
        conn.execute("INSERT OR IGNORE INTO names (name) VALUES ('simulator')")
        conn.execute(
            "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, "
            "request_id, estimate_usd, actual_usd, finished_at) SELECT job_id, 1, model_id, "
            "(SELECT ref FROM names WHERE name = 'simulator'), ?, 'accepted', '', '0.01', "
            "'0.01', ? FROM jobs ORDER BY position",
            (now - 3, now),
        )

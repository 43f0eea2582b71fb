"""state.db as a file: its tables and their versions, migrations, and what makes it unusable
(a planted link, a full disk, a read-only file) said with the fix."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from batchrun import __version__
from batchrun.errors import StateError
from batchrun.store import ledger, lock as folder_lock, mirrored
from batchrun.store.records import COLUMNS, COLUMNS_V1, COLUMNS_V3, COLUMNS_V6

# 1: the first; 2: jobs.cached and jobs.saved_usd (the cross-run cache); 3: the attempts
# table (the ledger: one row per submit attempt, appended, never rewritten away); 4: the
# mirrored table (what outputs.mirror has copied to its bucket); 5: jobs.retries_from (where
# a job's allowance of retries began); 6: compact rows (model ids and origins stored once, in
# `names`; an attempt's request id stored once when it is its job's; the status index holds
# unfinished jobs only; times no one reads exactly kept to the second)
SCHEMA_VERSION = 7
STATE_FILE = "state.db"


_ATTEMPTS = """
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    sent_at REAL,
    answer TEXT NOT NULL,
    request_id TEXT,
    estimate_usd TEXT,
    actual_usd TEXT,
    saved_usd TEXT,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);
"""

# Version 6 stores each model id and origin once, in `names`; the jobs' model_id and the
# attempts' model_id and origin hold its `ref` (records.columns and ledger.columns read the
# names back). An attempt's request_id is '' when it is its job's request_id (the job's row
# holds it; a trigger writes it back into the attempt before the job's changes or goes).
# The attempts table of version 5 (and JOBS_V5 below), as a test makes a folder of that version.
ATTEMPTS_V5 = _ATTEMPTS.split(";")[0].replace(" IF NOT EXISTS", "")
_NAMES = "CREATE TABLE IF NOT EXISTS names (ref INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)"
_ATTEMPTS_V6 = _ATTEMPTS.replace("model_id TEXT NOT NULL", "model_id INTEGER NOT NULL").replace(
    "origin TEXT NOT NULL DEFAULT ''", "origin INTEGER NOT NULL"
)
# Only unfinished jobs are looked up by status (status, requeue, a resume's submits in the
# air, the run's pages of pending jobs in plan order); finished ones, most of a large folder,
# stay out of the index.
ACTIVE = "status NOT IN ('succeeded', 'failed', 'timed_out', 'cancelled')"
_ACTIVE_INDEX = f"CREATE INDEX IF NOT EXISTS jobs_active ON jobs (status, position) WHERE {ACTIVE}"
# Every job in plan order: the reports and the ledger read alongside them, without a sort.
_POSITION_INDEX = "CREATE INDEX IF NOT EXISTS jobs_position ON jobs (position)"
_REQUEST_KEPT = [
    "CREATE TRIGGER IF NOT EXISTS jobs_request_kept BEFORE UPDATE OF request_id ON jobs "
    "WHEN OLD.request_id IS NOT NEW.request_id BEGIN UPDATE attempts SET request_id = "
    "OLD.request_id WHERE job_id = OLD.job_id AND request_id = ''; END",
    "CREATE TRIGGER IF NOT EXISTS jobs_request_gone BEFORE DELETE ON jobs BEGIN UPDATE "
    "attempts SET request_id = OLD.request_id WHERE job_id = OLD.job_id AND request_id = ''; "
    "END",
]

# A folder made before the ledger: one attempt for what each job's row shows (its request, an
# unknown submit, a cache hit), and one unknown attempt for each earlier attempt it counted
# (those may have been billed, and nothing else is known of them).
_BACKFILL = (
    "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, request_id, "
    "actual_usd, saved_usd, finished_at) "
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
    "(SELECT MAX(attempts) FROM jobs)) "
    "SELECT j.job_id, n.i, j.model_id, COALESCE((SELECT value FROM meta WHERE key = 'origin'), "
    "''), j.submitted_at, 'unknown', NULL, NULL, NULL, NULL FROM jobs j JOIN n "
    "ON n.i <= j.attempts - (CASE WHEN j.request_id IS NOT NULL OR j.status IN "
    "('unknown', 'submitting') THEN 1 ELSE 0 END)",
    "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, request_id, "
    "actual_usd, saved_usd, finished_at) "
    "SELECT job_id, MAX(attempts, 1), model_id, COALESCE((SELECT value FROM meta WHERE key = "
    "'origin'), ''), submitted_at, CASE WHEN cached = 1 THEN 'cached' WHEN request_id IS NULL "
    "THEN 'unknown' WHEN status = 'cancelled' THEN 'cancelled' ELSE 'accepted' END, "
    "request_id, CASE WHEN cached = 1 THEN '0' WHEN cost_usd IS NOT NULL THEN "
    "CAST(cost_usd AS TEXT) END, CASE WHEN cached = 1 AND saved_usd IS NOT NULL THEN "
    "CAST(saved_usd AS TEXT) END, CASE WHEN status IN ('succeeded', 'failed', 'timed_out', "
    "'cancelled') THEN finished_at END FROM jobs WHERE cached = 1 OR request_id IS NOT NULL "
    "OR status IN ('unknown', 'submitting')",
)

_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    inputs TEXT NOT NULL,
    vars TEXT NOT NULL DEFAULT '{}',
    repeat INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    request_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    submitted_at REAL,
    started_at REAL,
    finished_at REAL,
    cost_usd REAL,
    output TEXT,
    files TEXT NOT NULL DEFAULT '[]',
    in_manifest INTEGER NOT NULL DEFAULT 1,
    updated_at REAL,
    cached INTEGER NOT NULL DEFAULT 0,
    saved_usd REAL,
    retries_from INTEGER NOT NULL DEFAULT 0
)"""
JOBS_V5 = _JOBS.replace(" IF NOT EXISTS", "")
_JOBS_V6 = _JOBS.replace("model_id TEXT NOT NULL", "model_id INTEGER NOT NULL")

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _NAMES,
    _JOBS_V6,
    _ACTIVE_INDEX,
    _POSITION_INDEX,
    *[stmt for stmt in _ATTEMPTS_V6.split(";") if stmt.strip()],
    mirrored.TABLE,
    *_REQUEST_KEPT,
]

# Version 5 -> 6: both tables made again in the compact form, their rows copied over.
_JOB_FIELDS = (
    "job_id, position, inputs, vars, repeat, status, request_id, attempts, error, "
    "submitted_at, started_at, finished_at, cost_usd, output, files, in_manifest, cached, "
    "saved_usd, retries_from"
)
_ORIGIN = "COALESCE((SELECT value FROM meta WHERE key = 'origin'), '')"
_TO_V6 = (
    _NAMES,
    "INSERT OR IGNORE INTO names (name) SELECT model_id FROM jobs UNION SELECT model_id FROM "
    f"attempts UNION SELECT origin FROM attempts UNION SELECT {_ORIGIN}",
    "DROP INDEX IF EXISTS jobs_status",
    "DROP INDEX IF EXISTS attempts_job",
    "ALTER TABLE jobs RENAME TO jobs_v5",
    "ALTER TABLE attempts RENAME TO attempts_v5",
    _JOBS_V6,
    f"INSERT INTO jobs ({_JOB_FIELDS}, model_id, updated_at) SELECT {_JOB_FIELDS}, "
    "(SELECT ref FROM names WHERE name = model_id), ROUND(updated_at) FROM jobs_v5 "
    "ORDER BY rowid",
    "DROP TABLE jobs_v5",
    _ACTIVE_INDEX,
    *[stmt for stmt in _ATTEMPTS_V6.split(";") if stmt.strip()],
    "INSERT INTO attempts (seq, job_id, attempt, model_id, origin, sent_at, answer, "
    "request_id, estimate_usd, actual_usd, saved_usd, finished_at) SELECT a.seq, a.job_id, "
    "a.attempt, (SELECT ref FROM names WHERE name = a.model_id), (SELECT ref FROM names WHERE "
    "name = a.origin), ROUND(a.sent_at), a.answer, CASE WHEN a.request_id <> '' AND "
    "a.request_id = (SELECT j.request_id FROM jobs j WHERE j.job_id = a.job_id) THEN '' ELSE "
    "a.request_id END, a.estimate_usd, a.actual_usd, a.saved_usd, ROUND(a.finished_at) "
    "FROM attempts_v5 a ORDER BY a.seq",
    "DROP TABLE attempts_v5",
    *_REQUEST_KEPT,
)


# The revision: a counter in meta that every write of a job's row or of the ledger bumps, in the
# same transaction (StateStore.revision). Triggers, so no writer can forget it; made on every
# writable open (IF NOT EXISTS), so a folder of any version gets them without a new version.
REVISION_KEY = "revision"
_BUMP = "BEGIN UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'; END"
_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {table}_{event.lower()}_revision AFTER {event} ON {table} "
    + _BUMP
    for table in ("jobs", "attempts")
    for event in ("INSERT", "UPDATE", "DELETE")
]


# Version N-1 -> N, in order; each runs in one transaction with the version's update.
_MIGRATIONS = {
    2: (
        "ALTER TABLE jobs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN saved_usd REAL",
    ),
    3: (*[stmt for stmt in _ATTEMPTS.split(";") if stmt.strip()], *_BACKFILL),
    4: (mirrored.TABLE,),
    # Attempts made before count against the allowance: a migrated folder grants no more.
    5: ("ALTER TABLE jobs ADD COLUMN retries_from INTEGER NOT NULL DEFAULT 0",),
    6: _TO_V6,
    # The index of unfinished jobs ordered by position too: a run reads its pending jobs in
    # pages, in plan order, without sorting them all; and every job by position.
    7: ("DROP INDEX IF EXISTS jobs_active", _ACTIVE_INDEX, _POSITION_INDEX),
}


def migrate(conn: sqlite3.Connection, run_dir: Path, *, writable: bool) -> tuple[str, str]:
    """Create the tables of a new state.db (`conn`, not in a transaction), or bring an older
    one to SCHEMA_VERSION; refuse one that is newer, edited or damaged (StateError with the
    fix). Returns the columns to read its jobs and its attempts with (records.COLUMNS_V6 and
    ledger.COLUMNS_V6, unless read as is)."""
    path = run_dir / STATE_FILE
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    if "meta" not in tables:
        if not writable:
            raise StateError(f"{run_dir}: {STATE_FILE} is empty")
        _create(conn, path)
    version = _version(conn, run_dir)
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{run_dir}: {STATE_FILE} has schema version {version}, made by a newer "
            f"batchrun; this one ({__version__}) reads version {SCHEMA_VERSION}: upgrade"
        )
    if version < SCHEMA_VERSION and not writable:
        return _read_as_is(conn, version)
    rebuilt = version < 6
    while version < SCHEMA_VERSION:
        version += 1
        with _transaction(conn, path):
            for stmt in _MIGRATIONS[version]:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(version),),
            )
    if rebuilt:
        # Version 6 made both tables again: give the old pages back to the disk, once (the
        # folder is whole without it, so a full disk only leaves them to be reused).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("VACUUM")
    if writable:
        _revision(conn, path)
    have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    missing = [c.strip() for c in COLUMNS.split(",") if c.strip() not in have]
    if missing:
        raise StateError(
            f"{path}: its jobs table has no column {', '.join(missing)} (was it edited?); "
            f"restore the file from a copy, or move {run_dir} aside and run again"
        )
    return COLUMNS_V6, ledger.COLUMNS_V6


def _read_as_is(conn: sqlite3.Connection, version: int) -> tuple[str, str]:
    """An older state.db read as it is (status, merge's sources): the missing columns read as
    defaults, and the ledger of a folder made before it is built in a temporary table, as the
    migration would build it; so is its (empty) mirrored table. A folder of version 6 has the
    compact tables already (only version 7's indexes are missing: it reads the same)."""
    if version >= 6:
        return COLUMNS_V6, ledger.COLUMNS_V6
    conn.execute(mirrored.TABLE.replace("TABLE IF NOT EXISTS", "TEMP TABLE"))
    if version < 3:
        _temporary_ledger(conn, version)
    jobs = COLUMNS_V1 if version < 2 else COLUMNS_V3 if version < 5 else COLUMNS
    return jobs, ledger.COLUMNS


def _temporary_ledger(conn: sqlite3.Connection, version: int) -> None:
    """The ledger of a folder made before it (version 1 or 2), in a temporary table."""
    conn.execute(_ATTEMPTS.split(";")[0].replace("TABLE IF NOT EXISTS", "TEMP TABLE"))
    for stmt in _BACKFILL:
        if version < 2:
            for column in ("cached = 1", "saved_usd IS NOT NULL", "CAST(saved_usd AS TEXT)"):
                stmt = stmt.replace(column, "NULL")
        conn.execute(stmt)


def _create(conn: sqlite3.Connection, path: Path) -> None:
    with _transaction(conn, path):
        for stmt in _SCHEMA:
            conn.execute(stmt)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", str(SCHEMA_VERSION)),
                ("batchrun_version", __version__),
                ("created", str(time.time())),
            ],
        )


def _revision(conn: sqlite3.Connection, path: Path) -> None:
    """The revision counter and its triggers, when missing (see REVISION_KEY)."""
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    have = conn.execute("SELECT 1 FROM meta WHERE key = ?", (REVISION_KEY,)).fetchone()
    if have and all(stmt.split()[5] in names for stmt in _TRIGGERS):
        return
    with _transaction(conn, path):
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '0')", (REVISION_KEY,))
        for stmt in _TRIGGERS:
            conn.execute(stmt)


def _version(conn: sqlite3.Connection, run_dir: Path) -> int:
    """The schema version state.db says it has; StateError when it is not a number."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    text = "0" if found is None else found[0]
    try:
        return int(text)
    except ValueError:
        raise StateError(
            f"{run_dir / STATE_FILE}: its schema_version {text[:40]!r} is not a number (was it "
            f"edited?); set it back to {SCHEMA_VERSION} in its meta table, or move {run_dir} "
            "aside and run again"
        ) from None


@contextmanager
def _transaction(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
    """One step of the migration, committed whole or not at all; a write state.db refuses
    (disk full, read-only) is said with the fix, as StateStore says it."""
    try:
        with conn:  # commits, or rolls back when the block raises
            conn.execute("BEGIN IMMEDIATE")
            yield
    except sqlite3.Error as exc:
        raise StateError(write_problem(path, exc)) from None


# What batchrun writes in a run folder; none may be a symlink (a write would land elsewhere).
_OWN_NAMES = [STATE_FILE, f"{STATE_FILE}-wal", f"{STATE_FILE}-shm", folder_lock.LOCK_FILE, "files"]
_OWN_NAMES += ["report.csv", "summary.json", "report.html"]


def refuse_links(run_dir: Path) -> None:
    links = [n for n in _OWN_NAMES if (run_dir / n).is_symlink()]
    if links:
        raise StateError(
            f"{run_dir}: symbolic link in the run folder: {', '.join(links)}; batchrun never "
            "writes through links in a run folder. Remove them (or choose another --run-dir) "
            "and run again"
        )


def write_problem(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    low = text.lower()
    if "full" in low:
        what = "the disk is full"
        fix = f"free some space on the disk of {path.parent}"
    elif "readonly" in low or "read-only" in low:
        what = "it cannot be written (read-only file or folder)"
        fix = f"make {path} and its folder writable (chmod, chattr -i, remount)"
    elif "i/o" in low or "disk" in low:
        what = "the disk reported an I/O error"
        fix = "check the disk"
    else:
        what = "it cannot be used"
        fix = f"if the file is damaged, move {path.parent} aside and run again"
    return (
        f"{path}: {what} ({text}); the changes saved before this one are kept. "
        f"{fix}, then rerun the same command to resume"
    )

"""The shared state's tables, created and migrated by batchrun (versioned, like state.db's)."""

from __future__ import annotations

from batchrun.store import records

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batchrun_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (
    sweep TEXT PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    created DOUBLE PRECISION NOT NULL,
    cap_usd NUMERIC,
    spent_usd NUMERIC NOT NULL DEFAULT 0,
    reserved_usd NUMERIC NOT NULL DEFAULT 0,
    in_flight INTEGER NOT NULL DEFAULT 0,
    calls DOUBLE PRECISION[] NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS jobs (
    sweep TEXT NOT NULL REFERENCES sweeps (sweep),
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    inputs TEXT NOT NULL,
    vars TEXT NOT NULL DEFAULT '{}',
    repeat INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    request_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    submitted_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    cost_usd DOUBLE PRECISION,
    output TEXT,
    files TEXT NOT NULL DEFAULT '[]',
    in_manifest INTEGER NOT NULL DEFAULT 1,
    updated_at DOUBLE PRECISION,
    cached INTEGER NOT NULL DEFAULT 0,
    saved_usd DOUBLE PRECISION,
    retries_from INTEGER NOT NULL DEFAULT 0,
    reserved_usd NUMERIC,
    owner TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (sweep, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (sweep, status, position);
CREATE TABLE IF NOT EXISTS attempts (
    seq BIGSERIAL PRIMARY KEY,
    sweep TEXT NOT NULL REFERENCES sweeps (sweep),
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    sent_at DOUBLE PRECISION,
    answer TEXT NOT NULL,
    request_id TEXT,
    estimate_usd TEXT,
    actual_usd TEXT,
    saved_usd TEXT,
    finished_at DOUBLE PRECISION,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (sweep, job_id);
CREATE TABLE IF NOT EXISTS meta (
    sweep TEXT NOT NULL REFERENCES sweeps (sweep),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (sweep, key)
);
"""

# What each version adds to the one before (the tables above are version 1's).
_MIGRATIONS = {
    # Where each job's files are (the worker's run folder and host), for `export`; the sweep's
    # halt and canaries; the workers alive (and retries_from, for a database made before it).
    2: """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS retries_from INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS files_dir TEXT;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS files_host TEXT;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS gate TEXT NOT NULL DEFAULT '';
ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS halted TEXT NOT NULL DEFAULT '';
ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS halt_base INTEGER[] NOT NULL DEFAULT '{0,0}';
ALTER TABLE sweeps ADD COLUMN IF NOT EXISTS ambiguous INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS workers (
    sweep TEXT NOT NULL REFERENCES sweeps (sweep),
    worker TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    run_dir TEXT NOT NULL DEFAULT '',
    started DOUBLE PRECISION NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sweep, worker)
);
""",
}

# jobs.gate: a canary of its model, or held until its model's canaries succeeded, or blocked
# (a canary of its model failed); '' otherwise.
CANARY, HELD, BLOCKED = "canary", "held", "blocked"
_TO_DO = (records.PENDING, records.SUBMITTING, records.QUEUED, records.RUNNING)
_FINISHED = (records.SUCCEEDED, records.FAILED, records.TIMED_OUT, records.CANCELLED)
_BAD = (records.FAILED, records.TIMED_OUT)
_NOT_HALTED = "(SELECT halted FROM sweeps WHERE sweep = %s) = ''"
_BLOCKED_META = "canary_blocked:"  # + model: why its canary failed

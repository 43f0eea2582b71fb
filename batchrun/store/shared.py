"""A sweep shared by workers on several machines, kept in PostgreSQL (`--state postgresql://`).

What the workers of one sweep share, each piece one statement so that it holds with any number
of workers:
- the jobs, with claims: a worker takes pending jobs with `FOR UPDATE SKIP LOCKED` under a lease
  it renews while alive; a lapsed lease's accepted requests are taken over and polled by their
  recorded ids, and its submit in the air becomes `unknown` (never sent again unasked);
- the rate window: the times of the sweep's latest calls in one row; a call is allowed when
  fewer than the limit fell in the last window (the database's clock, so the machines' clocks
  do not matter);
- the budget and the in-flight slots: a reservation is one UPDATE that fails when
  spent + reserved + estimate would pass the cap (or the slots are all taken).

psycopg 3 is an extra (`pip install 'runcomfy-batchrun[postgres]'`), imported only here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from batchrun.errors import MissingDependencyError, StateError
from batchrun.store import records, transitions
from batchrun.store.state import assignments

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
DEFAULT_LEASE_S = 30.0

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
    reserved_usd NUMERIC,
    owner TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (sweep, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (sweep, status, position);
"""

_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")


def scrub(text: str) -> str:
    """`text` with the password of any PostgreSQL URL in it replaced by ***."""
    return _PASSWORD.sub(r"\1***\3", text)


def is_url(state: str) -> bool:
    return urlsplit(state).scheme in ("postgresql", "postgres")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise MissingDependencyError(
            "a shared state (--state postgresql://...) needs psycopg 3: "
            "pip install 'runcomfy-batchrun[postgres]'",
            package="psycopg",
            extra="postgres",
        ) from None
    return psycopg


class LeaseLost(StateError):
    """This worker wrote to a job it no longer holds: it was too slow to renew its lease."""


@dataclass(frozen=True)
class Claimed:
    """What a claim handed this worker: pending jobs to submit, and accepted requests whose
    worker's lease lapsed (to poll by their recorded ids)."""

    pending: list[records.JobRow]
    taken_over: list[records.JobRow]


class SharedState:
    """One sweep in a PostgreSQL database, seen by one worker (`worker`: a name unique to the
    process, e.g. host:pid:random)."""

    def __init__(self, conn: psycopg.Connection[Any], url: str, sweep: str, worker: str):
        self._conn = conn
        self.url = url
        self.sweep = sweep
        self.worker = worker

    @classmethod
    def connect(cls, url: str, *, sweep: str, worker: str) -> SharedState:
        """Connect and bring the schema up to date; a clean StateError (password scrubbed)
        when the database cannot be reached."""
        psycopg = _psycopg()
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StateError(
                f"cannot reach the shared state {scrub(url)}: {scrub(str(exc).strip())}; check "
                "the URL and that the database server is up, then rerun"
            ) from None
        state = cls(conn, url, sweep, worker)
        state._migrate()
        return state

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        psycopg = _psycopg()
        try:
            with self._conn.transaction():
                yield self._conn
        except psycopg.OperationalError as exc:
            raise StateError(
                f"the shared state {scrub(self.url)} was lost: {scrub(str(exc).strip())}"
            ) from None

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(2024120401)")  # one migrator at a time
            conn.execute(_SCHEMA)
            row = conn.execute("SELECT version FROM batchrun_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO batchrun_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StateError(
                    f"the shared state {scrub(self.url)} was made by a newer batchrun (schema "
                    f"{row[0]}, this one knows {SCHEMA_VERSION}); upgrade batchrun"
                )

    # ---- the sweep ----------------------------------------------------------------------

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

    def counts(self) -> dict[str, int]:
        with self._tx() as conn:
            cur = conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE sweep = %s GROUP BY status",
                (self.sweep,),
            )
            return {status: int(n) for status, n in cur.fetchall()}

    def update(self, job_id: str, changes: transitions.Changes) -> transitions.Changes:
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
                    "worker (its lease lapsed and another worker took it over)"
                )
        return changes

    def get(self, job_id: str) -> records.JobRow:
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {records.COLUMNS} FROM jobs WHERE sweep = %s AND job_id = %s",
                (self.sweep, job_id),
            ).fetchone()
        if row is None:
            raise StateError(f"no job {job_id} in the sweep {self.sweep!r}")
        return records.decode_row(row)

    # ---- claims -------------------------------------------------------------------------

    def claim(self, limit: int, lease_s: float = DEFAULT_LEASE_S) -> Claimed:
        """Up to `limit` pending jobs nobody holds, in plan order, leased to this worker; and
        every job a lapsed lease left behind: accepted ones taken over (to be polled), a
        submit in the air made `unknown` (it may have reached the server)."""
        lease = f"{lease_s} seconds"
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status = %s, owner = NULL, lease_until = NULL, error = %s "
                "WHERE sweep = %s AND status = %s AND lease_until < now()",
                (
                    records.UNKNOWN,
                    "its worker was lost while submitting; the submit may have reached the "
                    "server, so it is not sent again unless you rerun with --resubmit-unknown",
                    self.sweep,
                    records.SUBMITTING,
                ),
            )
            taken = conn.execute(
                f"UPDATE jobs SET owner = %s, lease_until = now() + %s::interval "
                f"WHERE sweep = %s AND status IN (%s, %s) AND lease_until < now() "
                f"RETURNING {records.COLUMNS}",
                (self.worker, lease, self.sweep, records.QUEUED, records.RUNNING),
            ).fetchall()
            pending = conn.execute(
                f"WITH c AS (SELECT job_id FROM jobs WHERE sweep = %s AND status = %s "
                f"AND in_manifest = 1 AND (lease_until IS NULL OR lease_until < now()) "
                f"ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE jobs j SET owner = %s, lease_until = now() + %s::interval FROM c "
                f"WHERE j.sweep = %s AND j.job_id = c.job_id "
                f"RETURNING {_qualified('j')}",
                (self.sweep, records.PENDING, limit, self.worker, lease, self.sweep),
            ).fetchall()
        return Claimed(
            pending=sorted((records.decode_row(r) for r in pending), key=lambda r: r.position),
            taken_over=[records.decode_row(r) for r in taken],
        )

    def renew(self, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Extend this worker's leases (call well within a lease); returns how many it holds."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until = now() + %s::interval "
                "WHERE sweep = %s AND owner = %s",
                (f"{lease_s} seconds", self.sweep, self.worker),
            )
            return cur.rowcount

    def release(self, job_ids: Iterable[str]) -> None:
        """Give back claimed jobs this worker will not send (set aside, or stopping)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET owner = NULL, lease_until = NULL "
                "WHERE sweep = %s AND owner = %s AND job_id = ANY(%s)",
                (self.sweep, self.worker, list(job_ids)),
            )

    # ---- the account: rate, slots, budget -----------------------------------------------

    def take_call(self, limit: int, window_s: float = 1.0) -> float:
        """One API call of the sweep's `limit` per `window_s`: 0.0 when taken, else how long
        until one may be (nothing taken then)."""
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE sweeps SET calls = (CASE WHEN cardinality(calls) < %(n)s THEN calls "
                "ELSE calls[cardinality(calls) - %(n)s + 2:] END) "
                "|| extract(epoch FROM clock_timestamp())::double precision "
                "WHERE sweep = %(s)s AND (cardinality(calls) < %(n)s OR "
                "calls[cardinality(calls) - %(n)s + 1] <= "
                "extract(epoch FROM clock_timestamp()) - %(w)s) RETURNING 1",
                {"n": limit, "s": self.sweep, "w": window_s},
            ).fetchone()
            if row is not None:
                return 0.0
            oldest, now = _one(
                conn.execute(
                    "SELECT calls[cardinality(calls) - %s + 1], "
                    "extract(epoch FROM clock_timestamp())::double precision "
                    "FROM sweeps WHERE sweep = %s",
                    (limit, self.sweep),
                )
            )
        return max(0.001, float(oldest) + window_s - float(now))

    def reserve(self, job_id: str, estimate: Decimal, max_in_flight: int | None) -> bool:
        """Before a submit: one in-flight slot and `estimate` of the cap, both or neither."""
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE sweeps SET reserved_usd = reserved_usd + %(e)s, "
                "in_flight = in_flight + 1 WHERE sweep = %(s)s "
                "AND (cap_usd IS NULL OR spent_usd + reserved_usd + %(e)s <= cap_usd) "
                "AND (%(m)s::integer IS NULL OR in_flight < %(m)s::integer) RETURNING 1",
                {"e": estimate, "s": self.sweep, "m": max_in_flight},
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE jobs SET reserved_usd = %s WHERE sweep = %s AND job_id = %s",
                (estimate, self.sweep, job_id),
            )
        return True

    def settle(self, job_id: str, actual: Decimal | None, *, billed: bool = True) -> None:
        """The job's attempt is over: its slot and reservation go back, and what it cost (or,
        unknown but billed, its reservation) is spent."""
        with self._tx() as conn:
            row = conn.execute(
                "WITH old AS (SELECT reserved_usd FROM jobs WHERE sweep = %(s)s AND job_id = "
                "%(j)s AND reserved_usd IS NOT NULL FOR UPDATE) UPDATE jobs SET reserved_usd = "
                "NULL FROM old WHERE sweep = %(s)s AND job_id = %(j)s RETURNING old.reserved_usd",
                {"s": self.sweep, "j": job_id},
            ).fetchone()
            if row is None:
                return  # settled already (by this worker or one that took it over)
            held = Decimal(row[0])
            spent = (actual if actual is not None else held) if billed else Decimal(0)
            conn.execute(
                "UPDATE sweeps SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s, "
                "in_flight = in_flight - 1 WHERE sweep = %s",
                (held, spent, self.sweep),
            )

    def money(self) -> tuple[Decimal | None, Decimal, Decimal, int]:
        """(cap, spent, reserved, in flight) of the sweep."""
        with self._tx() as conn:
            cap, spent, reserved, flights = _one(
                conn.execute(
                    "SELECT cap_usd, spent_usd, reserved_usd, in_flight FROM sweeps "
                    "WHERE sweep = %s",
                    (self.sweep,),
                )
            )
        return cap, Decimal(spent), Decimal(reserved), int(flights)


def _qualified(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in records.COLUMNS.split(","))


def _one(cur: psycopg.Cursor[Any]) -> Any:
    """The one row a statement about the sweep returns (the sweep is there once opened)."""
    row = cur.fetchone()
    if row is None:
        raise StateError("internal: the sweep is not in the shared state; open it first")
    return row


def _count(conn: psycopg.Connection[Any], sweep: str) -> int:
    row = conn.execute("SELECT COUNT(*) FROM jobs WHERE sweep = %s", (sweep,)).fetchone()
    return int(row[0]) if row else 0

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

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from batchrun.errors import ConfigError, MissingDependencyError, StateError
from batchrun.store import ledger, records, transitions
from batchrun.store.state import assignments
from batchrun.store.transitions import Changes

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 1
DEFAULT_LEASE_S = 30.0
PATIENCE_S = 120.0  # how long a lost database is waited for before the run gives up
RECONNECT_S = 1.0  # between reconnection attempts

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _patient(method: _F) -> _F:
    """The method, done again while the database is briefly unreachable (SharedState._patiently)."""

    @functools.wraps(method)
    def again(self: SharedState, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(lambda: method(self, *args, **kwargs))

    return cast(_F, again)


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

_LOST_SUBMIT = (
    "its worker was lost while submitting; the submit may have reached the server, so it is "
    "not sent again unless you rerun with --resubmit-unknown"
)

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


class SharedStateLost(ConfigError):
    """The shared database stayed unreachable past the run's patience (exit 3)."""


class LeaseLost(StateError):
    """This worker wrote to a job it no longer holds: it was too slow to renew its lease."""


@dataclass(frozen=True)
class Claimed:
    """What a claim handed this worker: pending jobs to submit, and accepted requests whose
    worker's lease lapsed (to poll by their recorded ids)."""

    pending: list[records.JobRow]
    taken_over: list[records.JobRow]


class SharedState(transitions.RowTransitions):
    """One sweep in a PostgreSQL database, seen by one worker (`worker`: a name unique to the
    process, e.g. host:pid:random)."""

    def __init__(self, conn: psycopg.Connection[Any], url: str, sweep: str, worker: str):
        self._conn = conn
        self.url = url
        self.sweep = sweep
        self.worker = worker
        # One connection, one transaction at a time: the run's threads take turns (the rate
        # window has its own connection, see rate_window).
        self._mutex = threading.RLock()
        self._others: list[SharedState] = []
        self._inside = threading.local()  # this thread's open transactions
        # A lost database: each call waits this long for it to come back (reconnecting), then
        # SharedStateLost; `on_lost` is told once per outage.
        self.patience_s = PATIENCE_S
        self.on_lost: Callable[[str], None] = lambda message: None
        self._gone: SharedStateLost | None = None

    @classmethod
    def connect(cls, url: str, *, sweep: str, worker: str) -> SharedState:
        """Connect and bring the schema up to date; a clean StateError (password scrubbed)
        when the database cannot be reached."""
        state = cls(_connect(url), url, sweep, worker)
        state._migrate()
        return state

    def rate_window(self, slack_s: float = 0.0) -> Callable[[int, float], float]:
        """`take_call` on a connection of its own (the rate limiter's `shared`), its window
        `slack_s` longer: the threads sending calls never wait for a job's transaction."""
        other = SharedState(_connect(self.url), self.url, self.sweep, self.worker)
        other.patience_s, other.on_lost = self.patience_s, self.on_lost
        self._others.append(other)
        return lambda limit, window_s: other.take_call(limit, window_s + slack_s)

    def close(self) -> None:
        for other in self._others:
            other.close()
        with self._mutex:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction (a savepoint inside another of this thread's)."""
        with self._mutex:
            depth = getattr(self._inside, "depth", 0)
            self._inside.depth = depth + 1
            try:
                with self._conn.transaction():
                    yield self._conn
            finally:
                self._inside.depth = depth

    def _patiently(self, call: Callable[[], _T]) -> _T:
        """`call()`, again on a new connection while the database is unreachable, for up to
        `patience_s`; then SharedStateLost. Each public method is one transaction, so doing
        it again after the connection dropped repeats nothing that was committed (the
        server rolls back what it did not commit)."""
        if getattr(self._inside, "depth", 0):
            return call()  # part of this thread's transaction: the outermost call retries
        pg = _psycopg()
        give_up: float | None = None
        while True:
            if self._gone is not None:
                raise self._gone
            try:
                return call()
            except pg.OperationalError as exc:
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.patience_s
                    self.on_lost(
                        f"the shared state {scrub(self.url)} is unreachable "
                        f"({scrub(str(exc).strip())}); nothing is submitted until it is back "
                        f"(waiting up to {self.patience_s:.0f} s)"
                    )
                if now >= give_up:
                    self._gone = SharedStateLost(
                        f"the shared state {scrub(self.url)} was unreachable for "
                        f"{self.patience_s:.0f} s ({scrub(str(exc).strip())}); nothing was "
                        "submitted since. Answers not recorded leave their jobs unknown, never "
                        "sent again unasked. Rerun the same command once the database is back"
                    )
                    raise self._gone from None
                time.sleep(min(RECONNECT_S, max(0.0, give_up - now)))
                self._reconnect()

    def _reconnect(self) -> None:
        pg = _psycopg()
        with self._mutex:
            with contextlib.suppress(pg.Error):
                self._conn.close()
            try:
                self._conn = pg.connect(self.url, autocommit=True, connect_timeout=5)
            except pg.Error:
                pass  # still down: the next call fails fast and waits again

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
                    "worker (its lease lapsed and another worker took it over)"
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

    # ---- claims -------------------------------------------------------------------------

    @_patient
    def claim(self, limit: int, lease_s: float = DEFAULT_LEASE_S) -> Claimed:
        """Up to `limit` pending jobs nobody holds, in plan order, leased to this worker; and
        every job a lapsed lease left behind: accepted ones taken over (to be polled), a
        submit in the air made `unknown` (it may have reached the server)."""
        lease = f"{lease_s} seconds"
        with self._tx() as conn:
            lost = conn.execute(
                "WITH old AS (SELECT job_id, reserved_usd FROM jobs WHERE sweep = %(s)s AND "
                "status = %(submitting)s AND lease_until < now() FOR UPDATE) "
                "UPDATE jobs j SET status = %(unknown)s, owner = NULL, lease_until = NULL, "
                "error = %(error)s, reserved_usd = NULL FROM old "
                "WHERE j.sweep = %(s)s AND j.job_id = old.job_id "
                "RETURNING j.job_id, COALESCE(old.reserved_usd, 0)",
                {
                    "s": self.sweep,
                    "submitting": records.SUBMITTING,
                    "unknown": records.UNKNOWN,
                    "error": _LOST_SUBMIT,
                },
            ).fetchall()
            if lost:  # may have been billed: what it held is spent, its slot freed
                conn.execute(
                    "UPDATE attempts SET answer = %s WHERE sweep = %s AND answer = %s "
                    "AND job_id = ANY(%s)",
                    (ledger.UNKNOWN, self.sweep, ledger.SENDING, [j for j, _ in lost]),
                )
                held = sum((Decimal(r) for _, r in lost), Decimal(0))
                conn.execute(
                    "UPDATE sweeps SET spent_usd = spent_usd + %s, reserved_usd = reserved_usd "
                    "- %s, in_flight = in_flight - %s WHERE sweep = %s",
                    (held, held, len(lost), self.sweep),
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

    @_patient
    def renew(self, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Extend this worker's leases (call well within a lease); returns how many it holds."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until = now() + %s::interval "
                "WHERE sweep = %s AND owner = %s",
                (f"{lease_s} seconds", self.sweep, self.worker),
            )
            return cur.rowcount

    @_patient
    def release(self, job_ids: Iterable[str]) -> None:
        """Give back claimed jobs this worker will not send (set aside, or stopping)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET owner = NULL, lease_until = NULL "
                "WHERE sweep = %s AND owner = %s AND job_id = ANY(%s)",
                (self.sweep, self.worker, list(job_ids)),
            )

    @_patient
    def let_go(self) -> int:
        """This worker stops: the pending jobs it holds go back to the others, with the slots
        and the room they reserved (their submits were never sent). Jobs at the server stay
        leased until the lease lapses, then another worker polls them."""
        with self._tx() as conn:
            freed = conn.execute(
                "WITH old AS (SELECT job_id, reserved_usd FROM jobs WHERE sweep = %(s)s AND "
                "owner = %(w)s AND status = %(p)s FOR UPDATE) UPDATE jobs j SET owner = NULL, "
                "lease_until = NULL, reserved_usd = NULL FROM old WHERE j.sweep = %(s)s AND "
                "j.job_id = old.job_id RETURNING old.reserved_usd",
                {"s": self.sweep, "w": self.worker, "p": records.PENDING},
            ).fetchall()
            held = [Decimal(r) for (r,) in freed if r is not None]
            if held:
                conn.execute(
                    "UPDATE sweeps SET reserved_usd = reserved_usd - %s, "
                    "in_flight = in_flight - %s WHERE sweep = %s",
                    (sum(held, Decimal(0)), len(held), self.sweep),
                )
        return len(freed)

    @_patient
    def unfinished(self) -> int:
        """Jobs of the sweep some worker still has to do something about (pending, being
        submitted, at the server), whoever holds them."""
        with self._tx() as conn:
            row = _one(
                conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE sweep = %s AND in_manifest = 1 "
                    "AND status IN (%s, %s, %s, %s)",
                    (
                        self.sweep,
                        records.PENDING,
                        records.SUBMITTING,
                        records.QUEUED,
                        records.RUNNING,
                    ),
                )
            )
        return int(row[0])

    @_patient
    def requeue(self, statuses: Iterable[str], error: str = "") -> int:
        """--retry-failed / --resubmit-unknown: the sweep's jobs in `statuses` back to pending
        (a FAILED job whose request the server stopped knowing stays, as in StateStore)."""
        statuses = list(statuses)
        sets, params = assignments(transitions.requeue(error), "%s")
        unread = "(status = %s AND substr(error, 1, %s) = %s)"
        unread_args = (records.FAILED, len(records.NOT_FOUND), records.NOT_FOUND)
        which = (
            "(status = ANY(%s) OR {u})"
            if records.UNKNOWN in statuses
            else ("(status = ANY(%s) AND NOT {u})")
        )
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = %s WHERE sweep = %s AND in_manifest = 1 "
                f"AND (lease_until IS NULL OR lease_until < now()) AND {which.format(u=unread)}",
                (*params, time.time(), self.sweep, statuses, *unread_args),
            )
            return cur.rowcount

    # ---- the account: rate, slots, budget -----------------------------------------------

    @_patient
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

    @_patient
    def reserve(
        self, job_id: str, model_id: str, estimate: Decimal | None, max_in_flight: int | None
    ) -> bool:
        """Before a submit: one in-flight slot and the job's best estimate of the cap, both or
        neither; asking again for a job that holds them is a yes. The best estimate is the
        higher of `estimate` and the highest actual cost of the model in the sweep; with
        neither, the job holds all the room left under a cap (so it goes alone)."""
        with self._tx() as conn:
            held = _one(
                conn.execute(
                    "SELECT reserved_usd IS NOT NULL FROM jobs WHERE sweep = %s AND job_id = %s",
                    (self.sweep, job_id),
                )
            )[0]
            if held:
                return True
            best = _one(
                conn.execute(
                    "SELECT GREATEST(%s::numeric, MAX(actual_usd::numeric)) FROM attempts "
                    "WHERE sweep = %s AND model_id = %s AND actual_usd IS NOT NULL",
                    (estimate, self.sweep, model_id),
                )
            )[0]
            cap, spent, reserved, flights = _one(
                conn.execute(
                    "SELECT cap_usd, spent_usd, reserved_usd, in_flight FROM sweeps "
                    "WHERE sweep = %s FOR UPDATE",
                    (self.sweep,),
                )
            )
            if max_in_flight is not None and flights >= max_in_flight:
                return False
            room = None if cap is None else Decimal(cap) - Decimal(spent) - Decimal(reserved)
            amount = Decimal(best) if best is not None else (room or Decimal(0))
            if room is not None and (amount > room or room <= 0):
                return False
            conn.execute(
                "UPDATE sweeps SET in_flight = in_flight + 1, reserved_usd = reserved_usd + %s "
                "WHERE sweep = %s",
                (amount, self.sweep),
            )
            conn.execute(
                "UPDATE jobs SET reserved_usd = %s WHERE sweep = %s AND job_id = %s",
                (amount, self.sweep, job_id),
            )
        return True

    @_patient
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

    @_patient
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


def _connect(url: str) -> psycopg.Connection[Any]:
    pg = _psycopg()
    try:
        conn = pg.connect(url, autocommit=True, connect_timeout=10)
    except pg.Error as exc:
        raise StateError(
            f"cannot reach the shared state {scrub(url)}: {scrub(str(exc).strip())}; check "
            "the URL and that the database server is up, then rerun"
        ) from None
    return cast("psycopg.Connection[Any]", conn)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


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

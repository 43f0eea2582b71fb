"""SharedState: one worker's view of a shared sweep, made of the pieces of this package."""

from __future__ import annotations

from collections.abc import Callable

from batchrun.errors import StateError
from batchrun.store import transitions
from batchrun.store.shared.account import Account
from batchrun.store.shared.claims import Claims
from batchrun.store.shared.connection import _connect, _psycopg, scrub
from batchrun.store.shared.gate import Gate
from batchrun.store.shared.jobs import Jobs
from batchrun.store.shared.reading import Reading
from batchrun.store.shared.schema import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION


class SharedState(Jobs, Claims, Gate, Reading, Account, transitions.RowTransitions):
    """One sweep in a PostgreSQL database, seen by one worker: the jobs and the ledger (jobs),
    claims under leases (claims), the halt and canaries (gate), what status and export read
    (reading), the rate window and the money (account)."""

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
        pg = _psycopg()
        conn = self._patiently(
            lambda: pg.connect(self.url, autocommit=True, connect_timeout=10)
        )  # made mid-run: waits for a database that is briefly away, as every call does
        other = SharedState(conn, self.url, self.sweep, self.worker)
        other.patience_s, other.on_lost = self.patience_s, self.on_lost
        self._others.append(other)
        return lambda limit, window_s: other.take_call(limit, window_s + slack_s)

    @classmethod
    def reading(cls, url: str, sweep: str | None) -> SharedState:
        """The sweep `sweep` of the database at `url`, to read; without a name, the one sweep
        the database holds. StateError (exit 2) naming the sweeps there when it is not one."""
        state = cls.connect(url, sweep=sweep or "", worker="")
        try:
            names = state.sweeps()
            if sweep is None and len(names) == 1:
                state.sweep = names[0]
            elif sweep not in names:
                there = ", ".join(names) if names else "none"
                asked = f"no sweep named {sweep!r}" if sweep else "more than one sweep"
                raise StateError(
                    f"the shared state {scrub(url)} holds {asked} (its sweeps: {there}); "
                    "name one with --sweep NAME (the manifest's `name:`)"
                    if names
                    else f"the shared state {scrub(url)} holds no sweep yet; run one first "
                    "with `batchrun run MANIFEST --state URL`"
                )
        except BaseException:
            state.close()
            raise
        return state

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(2024120401)")  # one migrator at a time
            conn.execute(_SCHEMA)
            row = conn.execute("SELECT version FROM batchrun_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO batchrun_schema VALUES (1)")
                row = (1,)
            if row[0] > SCHEMA_VERSION:
                raise StateError(
                    f"the shared state {scrub(self.url)} was made by a newer batchrun (schema "
                    f"{row[0]}, this one knows {SCHEMA_VERSION}); upgrade batchrun"
                )
            for version in range(row[0] + 1, SCHEMA_VERSION + 1):
                conn.execute(_MIGRATIONS[version])
                conn.execute("UPDATE batchrun_schema SET version = %s", (version,))

"""The shared state's connection: one transaction at a time per worker process, each public
call done again on a new connection while the database is briefly unreachable, the password of
its URL never shown."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, cast

from batchrun.errors import ConfigError, MissingDependencyError, StateError
from batchrun.store import records

if TYPE_CHECKING:
    import psycopg

DEFAULT_LEASE_S = 30.0
PATIENCE_S = 120.0  # how long a lost database is waited for before the run gives up
RECONNECT_S = 1.0  # between reconnection attempts

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def _patient(method: _F) -> _F:
    """The method, done again while the database is briefly unreachable (Connection._patiently)."""

    @functools.wraps(method)
    def again(self: Connection, *args: Any, **kwargs: Any) -> Any:
        return self._patiently(lambda: method(self, *args, **kwargs))

    return cast(_F, again)


_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")


def scrub(text: str) -> str:
    """`text` with the password of any PostgreSQL URL in it replaced by ***."""
    return _PASSWORD.sub(r"\1***\3", text)


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


class Connection:
    """One sweep in a PostgreSQL database, seen by one worker (`worker`: a name unique to the
    process, e.g. host:pid:random): the connection and its transactions."""

    def __init__(self, conn: psycopg.Connection[Any], url: str, sweep: str, worker: str):
        self._conn = conn
        self.url = url
        self.sweep = sweep
        self.worker = worker
        # One connection, one transaction at a time: the run's threads take turns (the rate
        # window has its own connection, see rate_window).
        self._mutex = threading.RLock()
        self._others: list[Connection] = []
        self._inside = threading.local()  # this thread's open transactions
        # A lost database: each call waits this long for it to come back (reconnecting), then
        # SharedStateLost; `on_lost` is told once per outage.
        self.patience_s = PATIENCE_S
        self.on_lost: Callable[[str], None] = lambda message: None
        self._gone: SharedStateLost | None = None
        # Where this worker's files land (its run folder's absolute path, its host), recorded
        # with each job's files so that `export` can gather them.
        self.files_at: tuple[str, str] | None = None

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

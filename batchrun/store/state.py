"""The SQLite state store of a run folder: one row per job, every transition atomic on its own."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchrun.errors import StateError
from batchrun.store import ledger, lock as folder_lock, mirrored, records, transitions
from batchrun.store.migrations import (
    ACTIVE,
    REVISION_KEY,
    SCHEMA_VERSION as SCHEMA_VERSION,
    STATE_FILE as STATE_FILE,
    migrate,
    refuse_links,
    write_problem,
)
from batchrun.store.mirrored import Mirrored

# The states are re-exported (callers speak of `state.SUCCEEDED`...); JobRow and OutputFile
# are imported from records, their one home.
from batchrun.store.records import (
    CANCELLED as CANCELLED,
    COLUMNS_V6,
    ENCODED_FIELDS,
    FAILED as FAILED,
    NOT_FOUND,
    PENDING as PENDING,
    QUEUED as QUEUED,
    RUNNING as RUNNING,
    SUBMITTING as SUBMITTING,
    SUCCEEDED as SUCCEEDED,
    TERMINAL as TERMINAL,
    TIMED_OUT as TIMED_OUT,
    UNKNOWN as UNKNOWN,
    JobLike,
    decode_row,
    dumps,
    encode_field,
    not_found_error as not_found_error,
    report_status as report_status,
)
from batchrun.store.transitions import Changes
from batchrun.util.gcpause import gc_paused

_PAGE = 2000  # rows a cursor reads at a time (iter_rows)
# An attempt the server may still be working on (ledger.Attempt.in_flight, loosely): accepted,
# no outcome recorded.
_OPEN_ATTEMPT = "answer = 'accepted' AND finished_at IS NULL"
# An attempt that may have been billed and whose cost a result gave (an answer edited into
# something else reads `unknown`: may be billed).
_NEVER_BILLED = ", ".join(f"'{a}'" for a in sorted(ledger.ANSWERS - ledger.MAYBE_BILLED))
_KNOWN_COST = f"a.answer NOT IN ({_NEVER_BILLED}) AND a.actual_usd IS NOT NULL"
_REF = "(SELECT ref FROM names WHERE name = ?)"  # a model id's or origin's ref (schema 6)
# ORDER BY position forward, or backward (the position index serves both)
_DESC = {False: "", True: " DESC"}
_ORIGIN_REF = (
    "(SELECT ref FROM names WHERE name = COALESCE((SELECT value FROM meta WHERE key = "
    "'origin'), ''))"
)
# Which folder each job a merge took came from (its number in the merge): a temporary table
# of the connection, gone when the store closes (the jobs stay in `jobs`).
_TAKEN = (
    "CREATE TEMP TABLE IF NOT EXISTS taken (job_id TEXT PRIMARY KEY, folder INTEGER NOT NULL) "
    "WITHOUT ROWID"
)
# An attempt's request id as stored: '' when it is its job's (the job's row holds it).
_REQUEST = (
    "CASE WHEN ? <> '' AND ? = (SELECT request_id FROM jobs WHERE job_id = ?) THEN '' ELSE "
    "COALESCE(?, request_id) END"
)


class StateStore(transitions.RowTransitions):
    """state.db of one run folder. Each method is one transaction; open() takes the run lock.

    Durability: WAL with synchronous=NORMAL, so a committed transition survives a crash of the
    process (kill -9 included: the WAL is in the OS page cache). The transitions whose loss
    could make a job be paid for twice (SUBMITTING and the request id) are committed with
    synchronous=FULL, so they also survive a power cut; the rest would at worst be re-polled.

    `batch()` commits many transitions at once (the run loop's group commit: one fsync for
    every request id that arrived together, not one per job); each stays atomic on its own.
    """

    def __init__(
        self,
        run_dir: Path,
        conn: sqlite3.Connection,
        lock_fd: int | None,
        # the columns to read jobs and attempts with (migrations.migrate)
        columns: tuple[str, str] = (COLUMNS_V6, ledger.COLUMNS_V6),
    ) -> None:
        self.run_dir = run_dir
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._batch: bool | None = None  # the open batch's durability; None: no batch open
        self._depth = 0  # transactions open inside one another (the outer one commits)
        self._columns, self._attempt_columns = columns

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, run_dir: str | Path, *, create: bool = True, lock: bool = True) -> StateStore:
        """Open (or create) RUN_DIR/state.db; with `lock`, fail if another process holds it."""
        run_dir = Path(run_dir)
        path = run_dir / STATE_FILE
        if not path.exists() and not create:
            raise StateError(
                f"{run_dir}: no {STATE_FILE} here; is it a run folder? "
                "`batchrun run MANIFEST` makes one"
            )
        if create:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(
                    f"{run_dir}: cannot make the run folder ({exc.strerror}); "
                    "choose another --run-dir or outputs.dir"
                ) from None
        if lock:
            refuse_links(run_dir)
        lock_fd = folder_lock.take(run_dir) if lock else None
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=10000")
            if lock:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            columns = migrate(conn, run_dir, writable=lock or create)
            store = cls(run_dir, conn, lock_fd, columns)
        except sqlite3.DatabaseError as exc:
            folder_lock.release(lock_fd)
            low = str(exc).lower()
            if "readonly" in low or "full" in low or "i/o" in low:
                raise StateError(write_problem(path, exc)) from None
            raise StateError(
                f"{path}: not a usable state file ({exc}); move {run_dir} aside (or choose "
                "another --run-dir) and run again"
            ) from None
        except BaseException:
            folder_lock.release(lock_fd)
            raise
        return store

    def close(self) -> None:
        with self._mutex:
            self._conn.close()
        folder_lock.release(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        """One transaction for every transition made inside, committed at the end, also when
        the block raises: each transition is atomic on its own (a savepoint), so what completed
        stays, as it would have unbatched.

        Nothing outside the process may depend on a transition before the block has ended
        (a submit marked SUBMITTING inside is sent after it). `durable` must be set when any
        transition inside needs it (SUBMITTING, a request id).
        """
        with self._mutex:
            if self._batch is not None:
                raise StateError("internal: batches do not nest")
            with self._synchronous(durable), self._sqlite_errors():
                self._conn.execute("BEGIN IMMEDIATE")
                self._batch = durable
                try:
                    yield
                finally:
                    self._batch = None
                    self._commit()

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            if self._batch is not None and durable and not self._batch:
                raise StateError("internal: a durable transition in a batch that is not")
            outer = self._batch is None and self._depth == 0
            if outer:
                begin, undo, end = "BEGIN IMMEDIATE", "ROLLBACK", "COMMIT"
            else:  # in a batch, or a transition made of others (a job's and its attempt's)
                begin, undo, end = "SAVEPOINT tx", "ROLLBACK TO tx", "RELEASE tx"
            with self._synchronous(durable and outer), self._sqlite_errors(), self._nested():
                self._conn.execute(begin)
                try:
                    yield self._conn
                except BaseException:
                    # SQLite may have rolled the whole transaction back itself (disk full)
                    if self._conn.in_transaction:
                        self._conn.execute(undo)
                        if not outer:
                            self._conn.execute(end)
                    raise
                if outer:
                    self._commit()
                else:
                    self._conn.execute(end)

    @contextmanager
    def _nested(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _commit(self) -> None:
        """COMMIT; when it fails (disk full), roll back so the connection stays usable."""
        if not self._conn.in_transaction:
            return  # SQLite rolled it back itself after an error, which is on its way up
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """A write state.db refuses (disk full, read-only, I/O error) as a StateError saying
        which file and what to do; what was committed before stays, so a rerun resumes."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(write_problem(self.run_dir / STATE_FILE, exc)) from None

    @contextmanager
    def _synchronous(self, durable: bool) -> Iterator[None]:
        """synchronous=FULL for one transaction: its commit is fsynced (it can't change inside)."""
        if not durable:
            yield
            return
        self._conn.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous=NORMAL")

    # ---- meta ---------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        with self._mutex:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str) -> None:
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()],
            )

    # ---- jobs ---------------------------------------------------------------------------

    def add_jobs(
        self, jobs: Iterable[JobLike], *, models: Iterable[str] | None = None
    ) -> tuple[int, int]:
        """Make the manifest's jobs the reported ones: insert new ones, keep known ones as they
        are (finished stay finished), mark the others in_manifest=0. Returns (added, removed).

        `jobs` come in plan order. Given their `models`, they are read as they come, twice at
        most (a streamed plan's sweep expands them again for each pass), never held."""
        if models is None:
            jobs = list(jobs)
            models = {j.model_id for j in jobs}
        with self._tx() as conn:
            # A resume of an unchanged manifest: the same jobs at the same places. Nothing to
            # write then, and re-encoding and upserting every job costs seconds at 100,000.
            if _same_places(conn, jobs):
                removed = conn.execute("SELECT COUNT(*) FROM jobs WHERE in_manifest = 0")
                return 0, removed.fetchone()[0]
            now = round(time.time())
            self._names(conn, models)
            rows = (
                (j.job_id, j.position, j.model_id, dumps(j.inputs), dumps(j.vars), j.repeat, now)
                for j in jobs
            )
            before = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            conn.execute("UPDATE jobs SET in_manifest = 0 WHERE in_manifest = 1")
            conn.executemany(
                "INSERT INTO jobs (job_id, position, model_id, inputs, vars, repeat, "
                f"updated_at) VALUES (?, ?, {_REF}, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE "
                "SET position = excluded.position, in_manifest = 1",
                rows,
            )
            after = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            removed = conn.execute("SELECT COUNT(*) FROM jobs WHERE in_manifest = 0").fetchone()
        return after - before, removed[0]

    def rows(self, *, in_manifest_only: bool = False) -> list[records.JobRow]:
        """Every job, in expansion order."""
        where = "WHERE in_manifest = 1 " if in_manifest_only else ""
        with self._mutex, gc_paused():
            cur = self._conn.execute(f"SELECT {self._columns} FROM jobs {where}ORDER BY position")
            return [self._decode(r) for r in cur.fetchall()]

    def iter_rows(
        self,
        *,
        in_manifest_only: bool = False,
        statuses: Iterable[str] | None = None,
        cached_only: bool = False,
        backward: bool = False,
    ) -> Iterator[records.JobRow]:
        """The jobs (in the manifest only; in one of `statuses` only; taken from the cache
        only), in expansion order (`backward`: from the last), read with a cursor: memory
        holds one page of rows, not the folder's."""
        where, params = ["in_manifest = 1"] if in_manifest_only else [], []
        if cached_only:
            where.append("cached = 1")
        if statuses is not None:
            wanted = list(statuses)
            where.append(f"status IN ({', '.join('?' for _ in wanted)})")
            params += wanted
            if not TERMINAL.intersection(wanted):
                where.append(ACTIVE)  # the index of unfinished jobs serves the query
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT {self._columns} FROM jobs {clause}ORDER BY position{_DESC[backward]}"
        return (self._decode(r) for r in self._cursor(sql, params))

    def _cursor(self, sql: str, params: Iterable[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql`, read a page at a time (the mutex held for each page only); the
        cursor closes when the reader is done, or when it stops early."""
        with self._mutex:
            cur = self._conn.cursor()
            cur.execute(sql, list(params))
        try:
            while True:
                with self._mutex:
                    page = cur.fetchmany(_PAGE)
                if not page:
                    return
                yield from page
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # the store closed first
                cur.close()

    def pending_page(
        self, after: int, limit: int, *, skip_models: Iterable[str] = ()
    ) -> list[records.JobRow]:
        """Up to `limit` pending jobs of the manifest past position `after`, in plan order,
        leaving out the models in `skip_models` (the index of unfinished jobs, by status and
        position, serves it without a sort)."""
        skip = sorted(skip_models)
        models = (
            f" AND jobs.model_id NOT IN (SELECT ref FROM names WHERE name IN "
            f"({', '.join('?' for _ in skip)}))"
            if skip
            else ""
        )
        with self._mutex, gc_paused():
            cur = self._conn.execute(
                f"SELECT {self._columns} FROM jobs WHERE status = ? AND {ACTIVE} AND "
                f"in_manifest = 1 AND position > ?{models} ORDER BY position LIMIT ?",
                [PENDING, after, *skip, limit],
            )
            return [self._decode(r) for r in cur.fetchall()]

    def brief(self) -> Iterator[records.Brief]:
        """(job id, model id, status, cached) of the jobs in the manifest, in plan order, read
        with a cursor and never decoded."""
        sql = (
            "SELECT job_id, (SELECT name FROM names WHERE ref = jobs.model_id), status, cached "
            "FROM jobs WHERE in_manifest = 1 ORDER BY position"
        )
        return (records.Brief(j, m, s, bool(c)) for j, m, s, c in self._cursor(sql))

    def count(self, *, in_manifest_only: bool = False) -> int:
        where = " WHERE in_manifest = 1" if in_manifest_only else ""
        with self._mutex:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM jobs{where}").fetchone()[0])

    def report_fields(self) -> tuple[list[str], list[str]]:
        """The input fields and the var names of the jobs in the manifest, each in first-seen
        order (expansion order, then the job's own): report.csv's input./var. columns, found
        with SQL, no row decoded."""
        found = []
        for column in ("inputs", "vars"):
            # With MIN, SQLite takes the bare e.id from the row holding the minimum: the
            # key's place in the first job that has it.
            sql = (
                f"SELECT e.key, MIN(j.position), e.id FROM jobs j, json_each(j.{column}) e "
                "WHERE j.in_manifest = 1 GROUP BY e.key ORDER BY 2, 3"
            )
            try:
                with self._mutex:
                    found.append([r[0] for r in self._conn.execute(sql)])
            except sqlite3.OperationalError:  # malformed JSON: say which job, as reading would
                self.check_rows()
                raise
        return found[0], found[1]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees state.db as it was at its first read (one read transaction),
        whatever other connections write meanwhile (WAL). For a store opened only to read."""
        with self._mutex:
            self._conn.execute("BEGIN")
        try:
            yield
        finally:
            with self._mutex:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def check_rows(self) -> None:
        """StateError naming the first job whose stored JSON (inputs, vars, output, files) is
        damaged, as reading it would; one SQL scan, for readers that decode few rows."""
        with self._mutex:
            found = self._conn.execute(
                "SELECT job_id FROM jobs WHERE NOT (json_valid(inputs) AND json_valid(vars) AND "
                "(output IS NULL OR json_valid(output)) AND "
                "(files IS NULL OR files = '' OR json_valid(files))) ORDER BY position LIMIT 1"
            ).fetchone()
            if found is None:  # valid JSON: the files must also be files
                cur = self._conn.execute(
                    "SELECT job_id, files FROM jobs WHERE files IS NOT NULL AND "
                    "files NOT IN ('', '[]') ORDER BY position"
                )
                for job_id, files in cur:
                    try:
                        [records.OutputFile(**f) for f in records.loads(files)]
                    except (ValueError, TypeError, KeyError, AttributeError):
                        found = (job_id,)
                        break
        if found is not None:
            self.get(found[0])  # raises, saying what is wrong with it

    def job_ids(self, *, in_manifest_only: bool = False) -> set[str]:
        where = " WHERE in_manifest = 1" if in_manifest_only else ""
        with self._mutex:
            return {r[0] for r in self._conn.execute(f"SELECT job_id FROM jobs{where}")}

    def bare_successes(self) -> Iterator[tuple[str, Any]]:
        """(job id, output) of the succeeded jobs in the manifest that hold no file, in
        expansion order: those whose output holds no URL succeeded without output."""
        with self._mutex:
            cur = self._conn.execute(
                "SELECT job_id, output FROM jobs WHERE in_manifest = 1 AND status = ? AND "
                "(files IS NULL OR files IN ('', '[]')) ORDER BY position",
                (SUCCEEDED,),
            )
            found = cur.fetchall()
        for job_id, output in found:
            yield job_id, None if output is None else records.loads(output)

    def _decode(self, r: tuple[Any, ...]) -> records.JobRow:
        try:
            return decode_row(r)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(
                f"{self.run_dir / STATE_FILE}: the row of job {r[0]} is damaged ({exc}); "
                "restore the file from a copy, or delete that row (the job is then submitted "
                "again) and rerun"
            ) from None

    def change_mark(self) -> tuple[int, int]:
        """Equal at two moments only if no job or meta was written in between, by this
        connection (total_changes) or another (data_version)."""
        with self._mutex:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            return self._conn.total_changes, version

    def revision(self) -> int:
        """The folder's revision: bumped in the same transaction as every write of a job's row
        or of the ledger (by any process, any version of batchrun that opened it for writing
        since), never by meta. Two equal values mean the jobs and the ledger are the same; what
        was made from them then (the reports) is still right. 0 for a folder only read so far."""
        with self._mutex:
            found = self._conn.execute(
                "SELECT value FROM meta WHERE key = ?", (REVISION_KEY,)
            ).fetchone()
        try:
            return int(found[0]) if found else 0
        except ValueError:
            return -1  # edited: never equal to a revision recorded with the reports

    def get(self, job_id: str) -> records.JobRow:
        with self._mutex:
            r = self._conn.execute(
                f"SELECT {self._columns} FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if r is None:
            raise StateError(f"{self.run_dir}: no job {job_id} in {STATE_FILE}")
        return self._decode(r)

    def models(self) -> list[str]:
        """The models of the jobs in the manifest, sorted."""
        with self._mutex:
            cur = self._conn.execute(
                "SELECT DISTINCT model_id FROM "
                f"(SELECT {self._columns} FROM jobs WHERE in_manifest = 1) ORDER BY model_id"
            )
            return [r[0] for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Jobs per internal state (jobs still in the manifest)."""
        with self._mutex:
            cur = self._conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE in_manifest = 1 GROUP BY status"
            )
            return dict(cur.fetchall())

    # ---- transitions (one transaction each) ---------------------------------------------

    # Each returns the changes it made to the job's row (store/transitions.py, where each
    # transition is defined), for the run's table in memory to make the same.

    def _change(self, job_id: str, changes: Changes) -> Changes:
        return self._update(job_id, changes)

    def _update(self, job_id: str, changes: Changes, *, durable: bool = False) -> Changes:
        sets, params = assignments(changes)
        with self._tx(durable=durable) as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = ? WHERE job_id = ?",
                (*params, round(time.time()), job_id),
            )
            if cur.rowcount != 1:
                raise StateError(f"{self.run_dir}: no job {job_id} in {STATE_FILE}")
        return changes

    def mark_submitting(self, job_id: str, estimate: Decimal | None = None) -> Changes:
        """Committed before the submit is sent: a crash from here on leaves it ambiguous. The
        ledger gets the attempt (`sending`, with the job's estimate) in the same transaction."""
        with self._tx(durable=True):
            changes = self._update(job_id, transitions.mark_submitting(), durable=True)
            self._add_attempt(job_id, ledger.SENDING, estimate=estimate)
        return changes

    def record_request_id(self, job_id: str, request_id: str, submitted_at: float) -> Changes:
        with self._tx(durable=True):
            changes = self._update(
                job_id, transitions.record_request_id(request_id, submitted_at), durable=True
            )
            if not self._answer(job_id, ledger.ACCEPTED, request_id=request_id):
                self._add_attempt(job_id, ledger.ACCEPTED, request_id=request_id)
        return changes

    def mark_unknown(self, job_id: str, error: str, *, count_attempt: bool = True) -> Changes:
        """The submit may have reached the server: never resubmitted without being asked."""
        with self._tx():
            changes = self._update(
                job_id, transitions.mark_unknown(error, count_attempt=count_attempt)
            )
            if not self._answer(job_id, ledger.UNKNOWN) and count_attempt:
                self._add_attempt(job_id, ledger.UNKNOWN)
        return changes

    def import_jobs(
        self, rows: list[records.JobRow], attempts: Iterable[ledger.Attempt], **meta: str
    ) -> None:
        """Other folders' jobs as they hold them (merge, export), their ledger and `meta`, in
        one durable commit."""
        with self.batch(durable=True):
            self.add_jobs(rows)
            for row in rows:
                self.import_job(row)
            self.append_attempts(attempts)
            self.set_meta(**meta)

    def import_job(self, row: records.JobRow) -> Changes:
        """A job's row as another folder holds it (merge): its state, request, times, result
        and files, written as they are. Its attempts come with `append_attempts`."""
        return self._update(row.job_id, transitions.import_job(row))

    # ---- a merge of folders, a page at a time (results/merge.py) -------------------------

    def take_rows(self, rows: Iterable[records.JobRow], folder: int) -> None:
        """Other folders' rows as they hold them (one page of a merge), each added or put in
        place of the one taken before for its job, and noted as taken from `folder` (see
        `taken`), in one transaction."""
        rows = list(rows)
        with self._tx() as conn:
            conn.execute(_TAKEN)
            self._names(conn, {r.model_id for r in rows})
            now = round(time.time())
            # Each row in one statement: its job and import_job's changes to it.
            statements: dict[tuple[str, ...], list[list[Any]]] = {}
            for r in rows:
                changes = transitions.import_job(r)
                row: list[Any] = [r.job_id, r.position, r.model_id, dumps(r.inputs),
                                  dumps(r.vars), r.repeat, now]  # fmt: skip
                row += [
                    encode_field(name, value) if name in ENCODED_FIELDS else value
                    for name, value in changes.items()
                ]
                statements.setdefault(tuple(changes), []).append(row)
            for names, values in statements.items():
                conn.executemany(_imported(names), values)
            conn.executemany(
                "INSERT OR REPLACE INTO temp.taken (job_id, folder) VALUES (?, ?)",
                [(r.job_id, folder) for r in rows],
            )

    def taken(self, job_ids: Iterable[str]) -> dict[str, tuple[records.JobRow, int]]:
        """Of `job_ids`, the rows `take_rows` took, each with the folder it came from."""
        sql = (
            f"SELECT {self._columns}, (SELECT folder FROM temp.taken t WHERE t.job_id = "
            "jobs.job_id) FROM jobs WHERE job_id IN (SELECT value FROM json_each(?))"
        )
        with self._mutex, gc_paused():
            self._conn.execute(_TAKEN)
            found = self._conn.execute(sql, (dumps(list(job_ids)),)).fetchall()
        return {r[0]: (self._decode(r[:-1]), r[-1]) for r in found}

    def taken_from(self, job_ids: Iterable[str]) -> dict[str, int]:
        """Of `job_ids`, the folder `take_rows` took each job from (the jobs it took)."""
        with self._mutex:
            self._conn.execute(_TAKEN)
            found = self._conn.execute(
                "SELECT job_id, folder FROM temp.taken WHERE job_id IN (SELECT value FROM "
                "json_each(?))",
                (dumps(list(job_ids)),),
            )
            return dict(found.fetchall())

    def taken_files(self) -> Iterator[tuple[int, list[records.OutputFile]]]:
        """(the folder it came from, its files) of each job `take_rows` took that has files,
        in the order they were first taken, read with a cursor."""
        with self._mutex:
            self._conn.execute(_TAKEN)
        sql = (
            "SELECT t.folder, jobs.files FROM jobs JOIN temp.taken t ON t.job_id = jobs.job_id "
            "WHERE jobs.files NOT IN ('', '[]') ORDER BY jobs.rowid"
        )
        for folder, files in self._cursor(sql):
            yield folder, [records.OutputFile(**f) for f in records.loads(files)]

    def iter_attempts(self) -> Iterator[ledger.Attempt]:
        """Every submit attempt of the folder, in the order they were made, read with a
        cursor."""
        sql = f"SELECT {self._attempt_columns} FROM attempts ORDER BY seq"
        return (ledger.Attempt.from_row(r) for r in self._cursor(sql))

    # ---- the mirror bucket (store/mirrored.py) ------------------------------------------

    def mirrored(self) -> list[Mirrored]:
        """Every object the folder has copied to its mirror bucket."""
        with self._mutex:
            cur = self._conn.execute(f"SELECT {mirrored.COLUMNS} FROM mirrored ORDER BY url")
            return [Mirrored.from_row(r) for r in cur.fetchall()]

    def record_mirrored(self, record: Mirrored) -> None:
        """The store took `record`'s object (replacing what was known of its URL)."""
        with self._tx() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO mirrored ({mirrored.COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                record.row(),
            )

    def approve_job(self, row: records.JobRow, attempts: Iterable[ledger.Attempt]) -> None:
        """A job's result approved from another folder (`batchrun approve`), in one
        transaction: its row as that folder holds it (added, or replacing this folder's), and
        its attempts in place of this folder's for it. The one case where attempts leave the
        ledger: a baseline holds each job's approved result and what that result cost, not
        the history of the results it replaced."""
        with self._tx(durable=True) as conn:
            self._names(conn, {row.model_id})
            conn.execute(
                "INSERT INTO jobs (job_id, position, model_id, inputs, vars, repeat, "
                f"updated_at) VALUES (?, ?, {_REF}, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE "
                "SET position = excluded.position, model_id = excluded.model_id, "
                "inputs = excluded.inputs, vars = excluded.vars, repeat = excluded.repeat, "
                "in_manifest = 1",
                (
                    row.job_id, row.position, row.model_id, dumps(row.inputs), dumps(row.vars),
                    row.repeat, round(time.time()),
                ),
            )  # fmt: skip
            self._update(row.job_id, transitions.import_job(row))
            conn.execute("DELETE FROM attempts WHERE job_id = ?", (row.job_id,))
            self.append_attempts(a for a in attempts if a.job_id == row.job_id)

    def retire_job(self, job_id: str) -> None:
        """Leave a job out of the reports (in_manifest = 0): a baseline's job that the run
        approved in full no longer has."""
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET in_manifest = 0 WHERE job_id = ?", (job_id,))

    # ---- the ledger (store/ledger.py): attempts are appended, never removed --------------

    def open_attempts(self) -> list[ledger.Attempt]:
        """The attempts whose outcome is not recorded yet (accepted, not finished): those a
        run may poll again."""
        with self._mutex:
            cur = self._conn.execute(
                f"SELECT {self._attempt_columns} FROM attempts WHERE {_OPEN_ATTEMPT} ORDER BY seq"
            )
            return [ledger.Attempt.from_row(r) for r in cur.fetchall()]

    def books(self) -> ledger.Books:
        """What the folder's attempts add up to (ledger.books), read in groups."""
        return ledger.books_of([*self.settled_attempts(), *((a, 1) for a in self.open_attempts())])

    def settled_attempts(self) -> list[tuple[ledger.Attempt, int]]:
        """The other attempts, for ledger.books_of: one of each kind (model, origin, answer,
        amounts) and how many there are, so a folder of a million reads a few rows."""
        with self._mutex:
            cur = self._conn.execute(
                "SELECT '', 0, (SELECT name FROM names WHERE ref = a.model_id), (SELECT name "
                "FROM names WHERE ref = a.origin), NULL, a.answer, NULL, a.estimate_usd, "
                "a.actual_usd, a.saved_usd, MAX(a.finished_at), COUNT(*) FROM attempts a "
                f"WHERE NOT ({_OPEN_ATTEMPT}) GROUP BY a.model_id, a.origin, a.answer, "
                "a.estimate_usd, a.actual_usd, a.saved_usd"
            )
            return [(ledger.Attempt.from_row(r), r[11]) for r in cur.fetchall()]

    def attempts_not_in_manifest(self) -> list[ledger.Attempt]:
        """The attempts of jobs no longer in the manifest (or no longer in state.db)."""
        with self._mutex:
            cur = self._conn.execute(
                f"SELECT {self._attempt_columns} FROM attempts WHERE NOT EXISTS (SELECT 1 FROM "
                "jobs j WHERE j.job_id = attempts.job_id AND j.in_manifest = 1) ORDER BY seq"
            )
            return [ledger.Attempt.from_row(r) for r in cur.fetchall()]

    def known_cost(self) -> Decimal:
        """The sum of the jobs' actual costs known (report.csv's cost_usd summed, see
        report_rows), read in groups of one amount."""
        with self._mutex:
            cur = self._conn.execute(
                f"SELECT a.actual_usd, COUNT(*) FROM attempts a WHERE {_KNOWN_COST} AND "
                "a.job_id IN (SELECT job_id FROM jobs WHERE in_manifest = 1) GROUP BY 1"
            )
            groups = cur.fetchall()
        amounts = ((ledger.amount(text), n) for text, n in groups)
        return sum((amount * n for amount, n in amounts if amount is not None), Decimal(0))

    def report_rows(self, *, backward: bool = False) -> ReportRows:
        """The jobs in the manifest, in expansion order (`backward`: from the last), each with
        its actual costs known, read with one cursor (ReportRows)."""
        # A blob is no amount (ledger.amount); JSON cannot hold one.
        sql = (
            f"SELECT {self._columns}, (SELECT json_group_array(CASE WHEN {_KNOWN_COST} AND "
            "typeof(a.actual_usd) = 'text' THEN a.actual_usd END) FROM attempts a WHERE "
            "a.job_id = jobs.job_id) FROM jobs WHERE in_manifest = 1 ORDER BY position"
            f"{_DESC[backward]}"
        )
        return ReportRows(self._cursor(sql), self._decode)

    def attempt_count(self) -> int:
        """How many attempts the ledger holds."""
        with self._mutex:
            return int(self._conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0])

    def attempts(self) -> list[ledger.Attempt]:
        """Every submit attempt of the folder, in the order they were made."""
        with self._mutex:
            cur = self._conn.execute(f"SELECT {self._attempt_columns} FROM attempts ORDER BY seq")
            return [ledger.Attempt.from_row(r) for r in cur.fetchall()]

    def close_attempt(
        self, job_id: str, *, answer: str | None = None, actual: Decimal | None = None
    ) -> None:
        """What became of the job's latest attempt: `answer` REFUSED or CANCELLED (it was not
        billed), its actual cost, or only that nothing more will be learnt of it."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE attempts SET answer = COALESCE(?, answer), "
                "actual_usd = COALESCE(actual_usd, ?), finished_at = COALESCE(finished_at, ?) "
                "WHERE seq = (SELECT MAX(seq) FROM attempts WHERE job_id = ?)",
                (answer, None if actual is None else str(actual), round(time.time()), job_id),
            )

    def append_attempts(self, attempts: Iterable[ledger.Attempt]) -> None:
        """Copy attempts made elsewhere (a merged shard's), as they are."""
        attempts = list(attempts)
        with self._tx() as conn:
            self._names(conn, {a.model_id for a in attempts} | {a.origin for a in attempts})
            conn.executemany(
                f"INSERT INTO attempts ({ledger.COLUMNS}) VALUES "
                f"(?, ?, {_REF}, {_REF}, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        a.job_id, a.attempt, a.model_id, a.origin, a.sent_at, a.answer,
                        a.request_id, _text(a.estimate), _text(a.actual), _text(a.saved),
                        a.finished_at,
                    )
                    for a in attempts
                ],
            )  # fmt: skip

    def _names(self, conn: sqlite3.Connection, names: Iterable[str]) -> None:
        """Every one of `names` (model ids, origins) in the names table, so _REF finds it."""
        conn.executemany("INSERT OR IGNORE INTO names (name) VALUES (?)", [(n,) for n in names])

    def _add_attempt(
        self,
        job_id: str,
        answer: str,
        *,
        request_id: str | None = None,
        estimate: Decimal | None = None,
        actual: Decimal | None = None,
        saved: Decimal | None = None,
        finished: bool = False,
    ) -> None:
        now = round(time.time())  # an attempt's times are kept to the second
        self._conn.execute(
            "INSERT OR IGNORE INTO names (name) VALUES "
            "(COALESCE((SELECT value FROM meta WHERE key = 'origin'), ''))"
        )
        self._conn.execute(
            "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, "
            "request_id, estimate_usd, actual_usd, saved_usd, finished_at) "
            "SELECT job_id, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts WHERE job_id = "
            f"?), model_id, {_ORIGIN_REF}, ?, ?, CASE WHEN ? = request_id THEN '' ELSE ? END, "
            "?, ?, ?, ? FROM jobs WHERE job_id = ?",
            (
                job_id,
                None if answer == ledger.CACHED else now,
                answer,
                request_id,
                request_id,
                _text(estimate),
                _text(actual),
                _text(saved),
                now if finished else None,
                job_id,
            ),
        )

    def _answer(self, job_id: str, answer: str, *, request_id: str | None = None) -> bool:
        """The answer to the job's submit in the air (its latest attempt, `sending` or
        `unknown`); False when it has none."""
        cur = self._conn.execute(
            f"UPDATE attempts SET answer = ?, request_id = {_REQUEST} WHERE seq = "
            "(SELECT MAX(seq) FROM attempts WHERE job_id = ?) AND answer IN (?, ?)",
            (
                answer, request_id, request_id, job_id, request_id, job_id, ledger.SENDING,
                ledger.UNKNOWN,
            ),
        )  # fmt: skip
        return cur.rowcount == 1

    def record_cached(
        self,
        job_id: str,
        *,
        finished_at: float,
        output: Any,
        saved_usd: float | None,
        files: list[records.OutputFile],
    ) -> Changes:
        """SUCCEEDED from the cross-run cache: nothing sent, nothing paid (cost 0), `saved_usd`
        what the result cost when it was made; a `cached` attempt in the ledger."""
        with self._tx():
            self._add_attempt(
                job_id,
                ledger.CACHED,
                actual=Decimal(0),
                saved=None if saved_usd is None else Decimal(repr(saved_usd)),
                finished=True,
            )
            return self._update(
                job_id,
                transitions.record_cached(
                    finished_at=finished_at, output=output, saved_usd=saved_usd, files=files
                ),
            )

    def requeue(
        self, statuses: Iterable[str], error: str = "", *, only: Iterable[str] | None = None
    ) -> int:
        """Every job (in the manifest; of `only`, when given) in one of `statuses` sent again,
        with a fresh allowance of retries (transitions.requeue's changes, in one statement);
        returns how many.

        A FAILED job whose request the server stopped knowing before its result was read (its
        error starts with NOT_FOUND) may have been billed: it counts as UNKNOWN here, never as
        FAILED, so --retry-failed does not replace its request id.
        """
        statuses = list(statuses)
        marks = ", ".join("?" for _ in statuses)
        unread = "(status = ? AND substr(error, 1, ?) = ?)"
        unread_args = (FAILED, len(NOT_FOUND), NOT_FOUND)
        if UNKNOWN in statuses:
            which, args = f"(status IN ({marks}) OR {unread})", (*statuses, *unread_args)
        else:
            which, args = f"(status IN ({marks}) AND NOT {unread})", (*statuses, *unread_args)
        sets, params = assignments(transitions.requeue(error))
        update = f"UPDATE jobs SET {sets}, updated_at = ? WHERE in_manifest = 1 AND {which}"
        values = (*params, round(time.time()), *args)
        with self._tx() as conn:
            if only is None:
                return conn.execute(update, values).rowcount
            cur = conn.executemany(f"{update} AND job_id = ?", [(*values, j) for j in only])
            return cur.rowcount

    def submitting_to_unknown(self, error: str) -> int:
        """On resume: a SUBMITTING row means a crash around the submit, which is ambiguous
        (mark_unknown's changes, for every such row)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE attempts SET answer = ? WHERE answer = ?", (ledger.UNKNOWN, ledger.SENDING)
            )
            sets, params = assignments(transitions.mark_unknown(error))
            cur = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = ? WHERE status = ? AND {ACTIVE}",
                (*params, round(time.time()), SUBMITTING),
            )
            return cur.rowcount


class ReportRows:
    """Jobs read with their row's amounts (StateStore.report_rows), each with its actual costs
    known (ledger.per_job: those of its attempts that may have been billed and whose cost a
    result gave, summed; None when there are none), looked up in the ledger by job id; and
    `attempts`: how many attempts the ledger holds of the jobs read so far."""

    def __init__(
        self, rows: Iterator[tuple[Any, ...]], decode: Callable[[tuple[Any, ...]], records.JobRow]
    ) -> None:
        self.attempts = 0
        self._rows, self._decode = rows, decode

    def __iter__(self) -> Iterator[tuple[records.JobRow, Decimal | None]]:
        # Each row ends with the JSON list of its job's attempts' amounts (null where there
        # is none to count), which repeat from job to job.
        known: dict[str, tuple[Decimal | None, int]] = {}
        decode = self._decode
        for r in self._rows:
            amounts = r[-1]
            total = known.get(amounts)
            if total is None:
                if len(known) > 10_000:
                    known.clear()
                listed = records.loads(amounts)
                total = known[amounts] = (ledger.known_total(listed), len(listed))
            self.attempts += total[1]
            yield decode(r), total[0]


def _imported(names: tuple[str, ...]) -> str:
    """The statement that adds a job as another folder holds it, or puts it in the place of
    the one of its id (what approve_job writes), with the fields `names` (plain values, as
    import_job gives them)."""
    return (
        "INSERT INTO jobs (job_id, position, model_id, inputs, vars, repeat, updated_at, "
        f"{', '.join(names)}) VALUES (?, ?, {_REF}, ?, ?, ?, ?{', ?' * len(names)}) "
        "ON CONFLICT(job_id) DO UPDATE SET position = excluded.position, model_id = "
        "excluded.model_id, inputs = excluded.inputs, vars = excluded.vars, repeat = "
        "excluded.repeat, in_manifest = 1, updated_at = excluded.updated_at, "
        + ", ".join(f"{name} = excluded.{name}" for name in names)
    )


def _same_places(conn: sqlite3.Connection, jobs: Iterable[JobLike]) -> bool:
    """Whether the manifest's jobs in state.db are `jobs` (in plan order), each at its place:
    both read side by side, stopping at the first difference."""
    held = conn.execute("SELECT job_id, position FROM jobs WHERE in_manifest = 1 ORDER BY position")
    try:
        given = ((j.job_id, j.position) for j in jobs)
        return all(a == b for a, b in itertools.zip_longest(held, given))
    finally:
        held.close()


def assignments(changes: Changes, mark: str = "?") -> tuple[str, list[Any]]:
    """The SET clause, and its parameters, that make `changes` to a row of the jobs table
    (`mark`: the driver's placeholder, `?` for SQLite, `%s` for PostgreSQL)."""
    sets, params = [], []
    for name, value in changes.items():
        kind = type(value)
        if kind is transitions.Add:
            sets.append(f"{name} = {name} + {mark}")
            params.append(value.n)
        elif kind is transitions.IfUnset:
            sets.append(f"{name} = COALESCE({name}, {mark})")
            params.append(value.value)
        elif kind is transitions.Copy:
            sets.append(f"{name} = {value.name}")  # a field name of ours, never input
        else:
            sets.append(f"{name} = {mark}")
            params.append(encode_field(name, value) if name in ENCODED_FIELDS else value)
    return ", ".join(sets), params


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)

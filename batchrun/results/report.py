"""report.csv (one row per job, expansion order) and summary.json (totals) of a run folder.

report.csv is read in terminals (`cat`, `less`) as much as in spreadsheets: the server's text in
it (errors, request ids, URLs, file names) shows control characters escaped (safetext), while
state.db keeps them as they came."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from batchrun import __version__
from batchrun.errors import ChoiceError
from batchrun.results import report_lines, reportcsv
from batchrun.results.html_pages import DrawnPage, Helper, Sheet, StaleRead, more_pages
from batchrun.results.html_report import Live
from batchrun.results.reportcsv import (
    INPUT_PREFIX,
    VAR_PREFIX,
)
from batchrun.store import ledger
from batchrun.store.atomic import write_text
from batchrun.store.ledger import Attempt
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import REPORT_STATUSES, SUCCEEDED, JobRow, report_statuses
from batchrun.store.state import ReportRows, StateStore
from batchrun.util.gcpause import gc_paused


def without_output(row: JobRow) -> bool:
    """A succeeded job whose result holds no output URL (missing, null, empty, no URL in it)."""
    return row.status == SUCCEEDED and not row.files and not collect_urls(row.output)


def _reported(rows: Iterable[JobRow]) -> list[JobRow]:
    return sorted((r for r in rows if r.in_manifest), key=lambda r: r.position)


def _fields(rows: list[JobRow]) -> tuple[list[str], list[str]]:
    """Input fields and var names in first-seen order."""
    inputs: dict[str, None] = {}
    var_names: dict[str, None] = {}
    for row in rows:
        inputs.update(dict.fromkeys(row.inputs))
        var_names.update(dict.fromkeys(row.vars))
    return list(inputs), list(var_names)


def columns(rows: list[JobRow]) -> list[str]:
    """reportcsv.COLUMNS + input.<field> and var.<name> columns in first-seen order."""
    return reportcsv.header(*_fields(rows))


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p95": None}
    ordered = sorted(values)
    n, half = len(ordered), len(ordered) // 2
    # statistics.fmean and median, but median without sorting them again
    median = ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2
    p95 = ordered[max(0, math.ceil(0.95 * n) - 1)]  # nearest-rank
    return {
        "mean": round(math.fsum(ordered) / n, 3),
        "median": round(median, 3),
        "p95": round(p95, 3),
    }


def job_costs(rows: Iterable[JobRow], attempts: Iterable[Attempt]) -> dict[str, Decimal]:
    """Each reported job's cost (report.csv's cost_usd): its attempts' actual costs from the
    ledger, 0 for a job taken from the cache."""
    costs = ledger.per_job(attempts)
    return costs | {r.job_id: Decimal(0) for r in rows if r.cached and r.job_id not in costs}


class Balance(TypedDict):
    scope: str  # "account": the whole account's balance, not this run's alone
    before_usd: float
    after_usd: float | None


class CacheUse(TypedDict):
    folder: str
    taken_this_run: int
    damaged_entries: int


class RunFacts(TypedDict, total=False):
    """summary.json's figures about the run rather than its jobs (what `summarise` computes
    from the jobs and the ledger is the rest). The one list of them: `run` writes them, `merge`
    writes a merged folder's, `report` keeps those of the last run."""

    name: str
    manifest: str
    origin: str  # "simulator" or the API base the results came from
    api_calls: dict[str, int]  # over every run of the folder, by kind, and "total"
    api_calls_this_run: dict[str, int]
    throttled: int  # 429 answers this run
    elapsed_s: float
    interrupted: bool
    est_cost_usd: float | None  # the plan's estimate of its priced jobs
    unpriced_jobs: int | None
    max_cost_usd: float | None  # the cap in force (a shard's share of it)
    stopped_at_budget: bool
    balance: Balance  # when the run read the account balance
    cache: CacheUse  # when the run used a cache
    selected: int  # with --only/--first/--sample/--shard: the jobs chosen
    left_out: int  # ... and those the filter left out
    merged_from: list[str]  # a merged folder: its shard folders
    exported_from: str  # an exported shared sweep: its database (the password scrubbed)
    mirror: MirrorFacts  # a run with outputs.mirror


class MirrorFacts(TypedDict):
    to: str  # s3://BUCKET/PREFIX/<run name>
    files: int  # the jobs' files in the bucket (sent this run or before)
    files_sent_this_run: int  # of those, the ones this run uploaded
    not_mirrored: int  # files still to copy: a rerun copies them


_Priced = tuple[JobRow, Decimal | None]  # a job with its actual costs known (None: none)


@dataclass
class Money:
    """The ledger as a report reads it beside the jobs' own costs: the folder's books, and
    the attempts of jobs no longer in the manifest (`gone`), both asked once every job was
    read (inside the same snapshot)."""

    books: Callable[[], ledger.Books]
    gone: Callable[[], list[Attempt]]

    @classmethod
    def of(cls, attempts: Iterable[Attempt], reported: set[str]) -> Money:
        """Of attempts in memory, `reported` the jobs in the manifest."""
        attempts = list(attempts)
        gone, books = [a for a in attempts if a.job_id not in reported], ledger.books(attempts)
        return cls(lambda: books, lambda: gone)

    @classmethod
    def read(cls, store: StateStore, rows: ReportRows) -> Money:
        """Of state.db, its attempts read in groups (the memory of a few whatever the
        folder's size); those of jobs no longer in the manifest looked for only when the
        jobs of `rows`, once read, have fewer attempts than the ledger holds."""

        def gone() -> list[Attempt]:
            if rows.attempts == store.attempt_count():
                return []
            return store.attempts_not_in_manifest()

        return cls(functools.cache(store.books), gone)


class Tally:
    """summary.json's figures of the reported jobs, added up a chunk of jobs at a time
    (`add`), so a report is made in one pass over them (or in pieces, taken in order: `take`)."""

    def __init__(self) -> None:
        self.jobs = 0
        self.statuses = dict.fromkeys(REPORT_STATUSES, 0)
        self.bare = 0
        self.first_submit: float | None = None
        self.last_finish: float | None = None
        self.queue_s: array[float] = array("d")
        self.run_s: array[float] = array("d")
        self.cost = Decimal(0)
        self.cached = 0
        self.saved: array[float] = array("d")  # each cached job's, summed in order
        self.attempts = 0
        self.files = {"downloaded": 0, "refused": 0, "failed": 0}

    def add(
        self,
        rows: Sequence[JobRow],
        costs: Sequence[Decimal | None],
        bare: Sequence[bool],
        when: report_lines.Times,
    ) -> None:
        """Reported jobs (a chunk, in expansion order); `costs`: each one's actual costs known
        (ledger.per_job; None: none); `bare`: whether it succeeded without output (see
        without_output); `when`: their times. A figure at a time over the chunk (100,000s of
        jobs a report)."""
        self.jobs += len(rows)
        statuses = self.statuses  # keyed by REPORT_STATUSES
        for status in report_statuses([r.status for r in rows]):
            statuses[status] += 1
        self.bare += sum(bare)
        submits = [s for s in when.submitted if s is not None]
        if submits:
            first = min(submits)
            if self.first_submit is None or first < self.first_submit:
                self.first_submit = first
        finishes = [e for e in when.finished if e is not None]
        if finishes:
            last = max(finishes)
            if self.last_finish is None or last > self.last_finish:
                self.last_finish = last
        self.queue_s.extend([q for q in when.queue_s if q is not None])
        self.run_s.extend([t for t in when.run_s if t is not None])
        self.cost = sum([c for c in costs if c is not None], self.cost)
        for row in [r for r in rows if r.cached]:
            self.cached += 1
            self.saved.append(row.saved_usd or 0.0)
        self.attempts += sum([r.attempts for r in rows])
        for row in [r for r in rows if r.files]:
            for f in row.files:
                if f.error:
                    self.files["refused" if f.error.startswith("refused") else "failed"] += 1
                elif f.name:
                    self.files["downloaded"] += 1

    def take(self, later: Tally) -> None:
        """The figures of the jobs after these (a Helper's), as if `add` had added them."""
        self.jobs += later.jobs
        for status, n in later.statuses.items():
            self.statuses[status] += n
        self.bare += later.bare
        firsts = [t for t in (self.first_submit, later.first_submit) if t is not None]
        lasts = [t for t in (self.last_finish, later.last_finish) if t is not None]
        self.first_submit = min(firsts, default=None)
        self.last_finish = max(lasts, default=None)
        self.queue_s.extend(later.queue_s)
        self.run_s.extend(later.run_s)
        self.cost += later.cost
        self.cached += later.cached
        self.saved.extend(later.saved)
        self.attempts += later.attempts
        for kind, n in later.files.items():
            self.files[kind] += n

    def summary(self, money: Money) -> dict[str, Any]:
        """summary.json's figures, the money's from the ledger (`money`)."""
        first, last = self.first_submit, self.last_finish
        saved = 0.0
        for value in self.saved:
            saved += value
        makespan = None if first is None or last is None else last - first
        return {
            "jobs": self.jobs,
            "statuses": self.statuses,
            "succeeded_without_output": self.bare,
            "durations": {
                "makespan_s": None if makespan is None else round(max(0.0, makespan), 3),
                "queue_s": _stats(self.queue_s),
                "run_s": _stats(self.run_s),
            },
            # what the reported jobs' results said they cost: the sum of report.csv's cost_usd
            "cost_usd": float(round(self.cost, 6)),
            **ledger.summary_of(money.books(), money.gone()),
            "cached": self.cached,
            "saved_usd": round(saved, 6),
            "attempts": self.attempts,
            "files": self.files,
        }


def summarise(rows: Iterable[JobRow], attempts: Iterable[Attempt] = ()) -> dict[str, Any]:
    """Totals of the reported jobs: per status, durations, attempts, files; money from the
    ledger's `attempts` (store/ledger.py)."""
    jobs = ReportJobs.of(rows, attempts)
    tally = Tally()
    reported, costs = [r for r, _ in jobs.rows], [c for _, c in jobs.rows]
    tally.add(reported, costs, [without_output(r) for r in reported], report_lines.times(reported))
    return tally.summary(jobs.money)


class _OtherFields(Exception):
    """The jobs' input fields and var names are not those taken for theirs (ReportJobs.read)."""


@dataclass
class ReportJobs:
    """The jobs a report is made of, in expansion order, each with its actual costs known
    (ledger.per_job; None: none), read in one pass (a cursor on state.db, or rows in memory);
    how many there are and their input fields and var names (report.csv's columns) are known
    before. Where those were taken for theirs (`check`), reading `rows` raises _OtherFields
    at a job with others (and `check.done` once every job was read, when one was never
    seen), and `exact` reads the jobs again with their fields found in full. `later`: the
    later pages of the jobs made by a second process."""

    rows: Iterable[_Priced]
    count: int
    inputs: list[str]
    var_names: list[str]
    money: Money
    exact: Callable[[], ReportJobs] | None = None
    check: _FieldCheck | None = None
    later: Later | None = None

    @classmethod
    def of(cls, rows: Iterable[JobRow], attempts: Iterable[Attempt] = ()) -> ReportJobs:
        """The reported ones of rows in memory, and the ledger's `attempts`."""
        jobs = _reported(rows)
        attempts = list(attempts)
        costs = ledger.per_job(attempts)
        money = Money.of(attempts, {r.job_id for r in jobs})
        priced = [(r, costs.get(r.job_id)) for r in jobs]
        return cls(priced, len(jobs), *_fields(jobs), money)

    @classmethod
    def read(cls, store: StateStore, *, helped: bool = False) -> ReportJobs:
        """The reported jobs of a state store and its ledger, read with cursors (inside one
        `store.snapshot()`, every figure is of one moment). Their fields are taken to be the
        columns of the report.csv beside state.db, checked on every job (they seldom change
        from one report to the next, and finding them in every job's JSON with SQL costs a
        tenth of a report); without one, they are found with SQL. `helped`: the later pages
        of a large report are made by a second process (Later.of; call from a process with
        one thread)."""
        count = store.count(in_manifest_only=True)

        def later(rows: ReportRows) -> Later | None:
            return Later.of(store, count, rows) if helped else None

        def exact() -> ReportJobs:
            rows = store.report_rows()
            money = Money.read(store, rows)
            return cls(rows, count, *store.report_fields(), money, later=later(rows))

        kept = reportcsv.fields(store.run_dir / "report.csv")
        if kept is None:
            return exact()
        rows, check = store.report_rows(), _FieldCheck(*kept)
        return cls(
            check.rows(rows), count, *kept, Money.read(store, rows), exact, check, later(rows)
        )


class _FieldCheck:
    """Whether the jobs' input fields and var names in first-seen order (as _fields finds
    them) are INPUTS and VAR_NAMES: `rows` raises _OtherFields at the first job with another,
    `done` when one was never seen once every job went through (here, or in a helper's
    check this one `take`s)."""

    def __init__(self, inputs: list[str], var_names: list[str]) -> None:
        self.inputs, self.var_names = inputs, var_names
        self.seen_inputs: dict[str, None] = {}
        self.seen_vars: dict[str, None] = {}

    def rows(self, rows: Iterable[_Priced]) -> Iterator[_Priced]:
        known_inputs, known_vars = set(self.inputs), set(self.var_names)
        seen_inputs, seen_vars = self.seen_inputs, self.seen_vars
        for row, cost in rows:
            given, named = row.inputs, row.vars
            if type(given) is not dict or not given.keys() <= seen_inputs.keys():
                if not dict.fromkeys(given).keys() <= known_inputs:
                    raise _OtherFields(row.job_id)
                seen_inputs.update(dict.fromkeys(given))
            if type(named) is not dict or not named.keys() <= seen_vars.keys():
                if not dict.fromkeys(named).keys() <= known_vars:
                    raise _OtherFields(row.job_id)
                seen_vars.update(dict.fromkeys(named))
            yield row, cost

    def fresh(self) -> _FieldCheck:
        """A check of the same fields, of other jobs (a helper's)."""
        return _FieldCheck(self.inputs, self.var_names)

    def take(self, later: _FieldCheck) -> None:
        self.seen_inputs.update(later.seen_inputs)
        self.seen_vars.update(later.seen_vars)

    def done(self) -> None:
        if list(self.seen_inputs) != self.inputs or list(self.seen_vars) != self.var_names:
            raise _OtherFields("a field no job has")


@dataclass
class Later:
    """The later pages of a report's jobs, made by a second process (Helper) from the last
    back, that reads them through a connection of its own (`own`: state.db in the report's
    state, or StaleRead); `counted`: the ReportRows the report's process reads, whose count
    of the ledger's attempts takes the helper's in (None: no money read, report.html
    alone)."""

    helper: Helper
    own: Callable[[], AbstractContextManager[StateStore]]
    counted: ReportRows | None

    @classmethod
    def of(cls, store: StateStore, count: int, counted: ReportRows | None) -> Later | None:
        """The later pages of the report of the `count` jobs in the manifest of `store`
        (inside a snapshot), read with their costs when `counted` is; None where a helper
        would not gain (Helper.gains)."""
        if not Helper.gains(count):
            return None
        revision, run_dir = store.revision(), store.run_dir

        @contextmanager
        def own() -> Iterator[StateStore]:
            # In the helper: a fork of the report's process, whose connection it leaves alone.
            # The report's snapshot (its read lock) holds the state for as long as the helper
            # reads.
            with StateStore.open(run_dir, create=False, lock=False) as theirs, theirs.snapshot():
                if theirs.revision() != revision:
                    raise StaleRead(f"revision {theirs.revision()}, not {revision}")
                yield theirs

        return cls(Helper(count), own, counted)

    def rows(self, store: StateStore) -> Iterable[_Priced]:
        """The jobs from the last back, read from the helper's `store` (`own`)."""
        if self.counted is not None:
            return store.report_rows(backward=True)
        return ((r, None) for r in store.iter_rows(in_manifest_only=True, backward=True))


@dataclass
class _Piece:
    """A page of jobs a helper made (Later), handed back: their figures (None: report.html
    alone), where their report.csv lines are in the helper's file (offset, size), the page
    drawn, the fields seen and the ledger's attempts of them."""

    tally: Tally | None
    lines: tuple[int, int]
    drawn: DrawnPage
    check: _FieldCheck | None
    attempts: int = 0


_MakePage = Callable[[int, list[_Priced]], _Piece]  # a helper's making of a page


_CHUNK = 250  # jobs made into report.csv lines at a time (more cost memory, not time)
_T = TypeVar("_T")


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """`items` in lists of `size` (the last one shorter), as they come."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def write_report(
    run_dir: Path,
    rows: Iterable[JobRow] | ReportJobs,
    attempts: Iterable[Attempt] = (),
    *,
    facts: RunFacts | None = None,
    rows_key: str | None = None,
    cols_key: str | None = None,
    mirror_urls: dict[str, list[str]] | None = None,
    live: Live | None = None,
) -> None:
    """Write report.csv, summary.json and report.html (and its pages) into `run_dir`, each
    atomically, in one pass over the jobs: `rows` in memory (the reported ones are picked
    out) with the ledger's `attempts`, or ReportJobs read from state.db (jobs and ledger).

    `rows_key`/`cols_key` choose the swept fields of report.html's grid (default: the two
    that vary most). `mirror_urls` (a run with outputs.mirror): each job's s3:// URLs, for
    report.csv's mirror_urls column.
    While the run goes (`live`), summary.json says `"live": true` and
    report.html carries the live line and reloads itself.
    """
    jobs = rows if isinstance(rows, ReportJobs) else ReportJobs.of(rows, attempts)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = _write_files(run_dir, jobs, rows_key, cols_key, mirror_urls, live)
    except (_OtherFields, ChoiceError):
        # The fields taken were not the jobs' (or the grid names a field they lacked):
        # every file is made again with the jobs' own.
        if jobs.exact is None:
            raise
        summary = _write_files(run_dir, jobs.exact(), rows_key, cols_key, mirror_urls, live)
    summary |= dict(facts or {})
    if live is not None:
        summary["live"] = True
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def _write_files(
    run_dir: Path,
    jobs: ReportJobs,
    rows_key: str | None,
    cols_key: str | None,
    mirror_urls: dict[str, list[str]] | None,
    live: Live | None,
) -> dict[str, Any]:
    """write_report's report.csv and report.html (and its pages); summary.json's figures."""
    inputs, var_names, later = jobs.inputs, jobs.var_names, jobs.later
    tally = Tally()
    keys = _sheet_keys(inputs, var_names)
    sheet = Sheet(run_dir, jobs.count, keys, rows_key=rows_key, cols_key=cols_key, live=live)
    header = reportcsv.header(inputs, var_names, mirror=mirror_urls is not None)
    # report.csv's lines of the jobs a helper makes, until they are added to it
    their_lines = run_dir / f".report.csv.{os.getpid()}.later"

    def lines_of(
        write_rows: reportcsv.Rows, tally: Tally
    ) -> Callable[[list[_Priced]], list[JobRow]]:
        """The making of a chunk of jobs' report.csv lines and figures; its jobs."""

        def make(chunk: list[_Priced]) -> list[JobRow]:
            rows, costs = [r for r, _ in chunk], [c for _, c in chunk]
            mirrored = (
                None if mirror_urls is None else [mirror_urls.get(r.job_id, []) for r in rows]
            )
            cells, bare, when = report_lines.lines(rows, costs, inputs, var_names, mirrored)
            write_rows(cells)
            tally.add(rows, costs, bare, when)
            return rows

        return make

    @contextmanager
    def later_pages(part: Sheet) -> Iterator[_MakePage]:
        with reportcsv.lines_to(their_lines) as write_rows:

            def make_page(number: int, page: list[_Priced]) -> _Piece:
                their_tally, check = Tally(), None if jobs.check is None else jobs.check.fresh()
                make, start = lines_of(write_rows, their_tally), write_rows.offset()
                for chunk in _batched(page if check is None else check.rows(page), _CHUNK):
                    make(chunk)
                at = (start, write_rows.offset() - start)
                return _Piece(their_tally, at, part.draw(number, [r for r, _ in page]), check)

            yield make_page

    try:
        with gc_paused(), reportcsv.writer(run_dir / "report.csv", header) as out:
            make = lines_of(out, tally)
            pieces = _in_pages(
                jobs.rows, later, sheet, lambda chunk: sheet.add(make(chunk)), later_pages,
                jobs.money.books,
            )  # fmt: skip
            if pieces:
                out.extend_from(their_lines, [piece.lines for piece in pieces])
            for piece in pieces:
                assert piece.tally is not None
                tally.take(piece.tally)
                if jobs.check is not None and piece.check is not None:
                    jobs.check.take(piece.check)
                if later is not None and later.counted is not None:
                    later.counted.attempts += piece.attempts
            if jobs.check is not None:
                jobs.check.done()
            sheet.finish()
    finally:
        their_lines.unlink(missing_ok=True)
    return tally.summary(jobs.money)


def _in_pages(
    rows: Iterable[_Priced],
    later: Later | None,
    sheet: Sheet,
    make: Callable[[list[_Priced]], object],
    later_pages: Callable[[Sheet], AbstractContextManager[_MakePage]],
    meanwhile: Callable[[], object] = lambda: None,
) -> list[_Piece]:
    """Make the report of ROWS a chunk of jobs at a time (`make`). With `later`, its helper
    is forked first and makes pages from the last back (`later_pages` of its own read of the
    jobs, and of `sheet` as it goes on there: Sheet.later), while this process makes them
    from the first on, until none is left (Helper). The pages the helper made, in order, their
    drawings taken into `sheet`, for this process to take in the rest of; none when this
    process made every page (no helper, or one that failed). `meanwhile`: what this process
    does first, while the helper takes pages."""
    rows = iter(rows)
    if later is not None:
        helper = later.helper

        def work() -> list[_Piece]:  # in the helper
            with later.own() as store:
                laid = sheet.later(store.iter_rows(in_manifest_only=True))
                theirs = later.rows(store)
                counted = theirs if isinstance(theirs, ReportRows) else None
                read, pieces = iter(theirs), []
                with later_pages(laid) as make_page:
                    for number in helper.last_pages():
                        before = counted.attempts if counted else 0
                        piece = make_page(number, list(islice(read, helper.size(number)))[::-1])
                        piece.attempts = counted.attempts - before if counted else 0
                        pieces.append(piece)
            return pieces

        helper.fork(work)
        made = 0
        try:
            meanwhile()
            for made in helper.first_pages():
                for chunk in _batched(islice(rows, helper.size(made)), _CHUNK):
                    make(chunk)
            pieces: list[_Piece] | None = helper.join()
        finally:
            helper.wait()  # a report given up (made again with other fields): its helper too
        if pieces is not None:
            pieces.sort(key=lambda piece: piece.drawn.number)
            if [p.drawn.number for p in pieces] == list(range(made + 1, helper.pages + 1)):
                for piece in pieces:
                    sheet.take(piece.drawn)
                return pieces
    for chunk in _batched(rows, _CHUNK):
        make(chunk)
    return []


def _sheet_keys(inputs: list[str], var_names: list[str]) -> list[str]:
    """The fields report.html lays its grid out by (html_report.field_keys)."""
    return ["model", *(INPUT_PREFIX + k for k in inputs), *(VAR_PREFIX + k for k in var_names)]


def write_sheet(
    store: StateStore, rows_key: str | None, cols_key: str | None, *, helped: bool = False
) -> None:
    """report.html (and its pages) alone, of the jobs as `store` holds them (read with a
    cursor: call inside one `store.snapshot()`), in the grid chosen, beside report.csv and
    summary.json of the same state (to_write): their input fields and var names are those of
    that report.csv's columns. `helped`: the later pages of a large sheet are drawn by a
    second process (Later.of; call from a process with one thread). A grid that names no
    swept field raises ChoiceError."""
    run_dir = store.run_dir
    inputs, var_names = reportcsv.fields(run_dir / "report.csv") or store.report_fields()
    count = store.count(in_manifest_only=True)
    later = Later.of(store, count, None) if helped else None
    sheet = Sheet(
        run_dir, count, _sheet_keys(inputs, var_names), rows_key=rows_key, cols_key=cols_key
    )

    @contextmanager
    def later_pages(part: Sheet) -> Iterator[_MakePage]:
        def draw(number: int, page: list[_Priced]) -> _Piece:
            return _Piece(None, (0, 0), part.draw(number, [r for r, _ in page]), None)

        yield draw

    rows = ((r, None) for r in store.iter_rows(in_manifest_only=True))
    with gc_paused():
        _in_pages(rows, later, sheet, lambda chunk: sheet.add([r for r, _ in chunk]), later_pages)
        sheet.finish()


def write_from_state(
    run_dir: Path,
    facts: RunFacts,
    rows_key: str | None,
    cols_key: str | None,
    *,
    live: Live | None = None,
) -> None:
    """write_report of the jobs as RUN_DIR/state.db holds them, read through a connection of
    its own inside one snapshot (a run may write meanwhile); a grid that names no swept field
    is laid out automatically."""
    with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
        try:
            write_report(
                run_dir, ReportJobs.read(store), facts=facts, rows_key=rows_key,
                cols_key=cols_key, live=live,
            )  # fmt: skip
        except ChoiceError:
            write_report(run_dir, ReportJobs.read(store), facts=facts, live=live)


# state.db meta key of the mark the report files were last written at (see `report_mark`).
REPORT_MARK_META = "report_mark"
REPORT_FILES = ("report.csv", "summary.json", "report.html")
# Facts that change from one run to the next though the jobs did not: a run with nothing to do
# keeps the files the run that last changed something wrote.
_PER_RUN_FACTS = frozenset(
    {"api_calls", "api_calls_this_run", "throttled", "elapsed_s", "balance", "cache"}
)


def report_mark(
    revision: int, facts: RunFacts | None, rows_key: str | None, cols_key: str | None
) -> str:
    """What the report files are made of, in short: the state's revision (StateStore.revision),
    the facts that are not per run, and report.html's grid, as `revision:facts:grid`. Equal
    marks: the same files. Marks equal but for the grid: the same report.csv and summary.json
    (see `to_write`)."""
    kept = {k: v for k, v in (facts or {}).items() if k not in _PER_RUN_FACTS}
    return f"{revision}:{_digest(json.dumps(kept, sort_keys=True, default=str), 16)}:" + _digest(
        json.dumps([rows_key, cols_key]), 16
    )


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def reports_present(run_dir: Path) -> bool:
    return all((Path(run_dir) / name).is_file() for name in REPORT_FILES)


# state.db meta key of the report files as they were when their mark was recorded (see
# `files_mark`): `batchrun report` leaves files that nothing changed since.
REPORT_FILES_META = "report_files"


def files_mark(run_dir: Path) -> str:
    """The report files of RUN_DIR as they are on disk, in short: report.csv's and
    summary.json's mark, then report.html's and its pages' (`data:sheet`), each of the files'
    names, sizes, inodes and times (every write replaces a file whole) and the version of
    batchrun; a part is '' when one of its files is missing. Equal parts: none of their files
    was written, replaced or removed meanwhile."""
    run_dir = Path(run_dir)
    data = _stats_mark(run_dir, _DATA_FILES)
    return f"{data}:{_stats_mark(run_dir, [_SHEET_FILE, *more_pages(run_dir)])}"


_DATA_FILES = ("report.csv", "summary.json")  # made of the jobs and the facts
_SHEET_FILE = "report.html"  # and its pages: made of the jobs and the grid


def _stats_mark(run_dir: Path, names: Iterable[str]) -> str:
    stats = []
    try:
        for name in names:
            st = (run_dir / name).stat()
            stats.append([name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns])
    except OSError:
        return ""
    return _digest(json.dumps([__version__, stats]), 32)


def to_write(run_dir: Path, meta: dict[str, str], mark: str) -> tuple[str, ...]:
    """Which of RUN_DIR's report files to write for them to be those made at `mark`
    (report_mark): none when they are those, untouched since; report.html alone (and its
    pages) when only it differs (another grid, or it was touched) and report.csv and
    summary.json are those of the mark's state and facts, untouched since; else all."""
    data_was, _, sheet_was = meta.get(REPORT_FILES_META, "").partition(":")
    data_now, _, sheet_now = files_mark(run_dir).partition(":")
    recorded = meta.get(REPORT_MARK_META, "")
    same_data = recorded.rpartition(":")[0] == mark.rpartition(":")[0]  # all but the grid
    if not same_data or not data_was or data_now != data_was:
        return REPORT_FILES
    if recorded != mark or not sheet_was or sheet_now != sheet_was:
        return (_SHEET_FILE,)
    return ()


# state.db meta keys of the grid chosen with `batchrun report --rows/--cols`: later runs keep it.
GRID_META = {"rows": "report_rows", "cols": "report_cols"}


def grid_choice(
    meta: dict[str, str], rows: str | None, cols: str | None
) -> tuple[str | None, str | None]:
    """report.html's grid: the one chosen with `report --rows/--cols` (kept in state.db's
    meta), else ROWS/COLS (the manifest's `report:`), else None (automatic)."""
    return meta.get(GRID_META["rows"]) or rows, meta.get(GRID_META["cols"]) or cols

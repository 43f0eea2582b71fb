"""report.csv (one row per job, expansion order) and summary.json (totals) of a run folder.

report.csv is read in terminals (`cat`, `less`) as much as in spreadsheets: the server's text in
it (errors, request ids, URLs, file names) shows control characters escaped (safetext), while
state.db keeps them as they came."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

from batchrun.results import reportcsv
from batchrun.results.html_report import Live, write_html
from batchrun.results.reportcsv import guard, join_cell, value_cell
from batchrun.store import ledger
from batchrun.store.atomic import write_text
from batchrun.store.ledger import Attempt
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import REPORT_STATUSES, SUCCEEDED, JobRow, report_status
from batchrun.util.gcpause import gc_paused
from batchrun.util.safetext import printable

_SECONDS: dict[int, str] = {}  # whole second -> its text: a run's jobs share few seconds


def _timestamp(epoch: float | None) -> str:
    if epoch is None:
        return ""
    second = math.floor(epoch)
    # Near the next second, rounding to microseconds may carry into it: format directly.
    if epoch - second > 0.999:
        return _format_time(epoch)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        text = _SECONDS[second] = _format_time(second)
    return text


def _format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


_COSTS: dict[float, str] = {}  # a model's price repeats from job to job


def _cost(value: float | None) -> str:
    if value is None:
        return ""
    text = _COSTS.get(value) if value else None  # 0.0 == -0.0, yet they print apart
    if text is None:
        if len(_COSTS) > 10_000:
            _COSTS.clear()
        text = _COSTS[value] = f"{value:.6f}".rstrip("0").rstrip(".")
    return text


# The error column of a job that succeeded with nothing to fetch: worth a look, not a failure.
NO_OUTPUT = "succeeded without output: the result holds no output URL, so no file to download"


def without_output(row: JobRow) -> bool:
    """A succeeded job whose result holds no output URL (missing, null, empty, no URL in it)."""
    return row.status == SUCCEEDED and not row.files and not collect_urls(row.output)


def _error_cell(row: JobRow) -> str:
    parts = [row.error] if row.error else []
    if without_output(row):
        parts.insert(0, NO_OUTPUT)
    parts += [f"output {i}: {f.error}" for i, f in enumerate(row.files, start=1) if f.error]
    return guard(printable("; ".join(parts), lines=True))


def _urls(row: JobRow) -> list[str]:
    urls = [f.url for f in row.files] if row.files else collect_urls(row.output)
    # SEPARATOR joins a cell's values; keep it out of the URLs themselves.
    return [printable(u).replace(reportcsv.SEPARATOR, "%3B") for u in urls]


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


def _line(
    row: JobRow,
    inputs: list[str],
    var_names: list[str],
    cost: Decimal | None,
    mirrored: list[str] | None = None,
) -> list[str]:
    """The row's cells in columns() order (empty where the job has no such field); `cost`
    is what the job's attempts cost, from the ledger; `mirrored`, in a run with a mirror,
    the s3:// URLs of its files there."""
    files = row.files
    done = [f for f in files if f.name and not f.error] if files else []
    queue_s, run_s = row.queue_s, row.run_s
    cells = [
        row.job_id,
        guard(row.model_id),
        report_status(row.status),
        guard(printable(row.request_id or "")),
        _error_cell(row) if row.error or files or row.status == SUCCEEDED else "",
        str(row.attempts),
        _timestamp(row.submitted_at),
        _timestamp(row.finished_at),
        _seconds(queue_s),
        _seconds(run_s),
        _cost(None if cost is None else float(cost)),
        guard(join_cell(printable(f.name) for f in done)),
        guard(join_cell(_urls(row))),
        join_cell(f.sha256 for f in done),
        "true" if row.cached else "false",
        _cost(row.saved_usd),
    ]
    if mirrored is not None:
        cells.append(guard(join_cell(u.replace(reportcsv.SEPARATOR, "%3B") for u in mirrored)))
    given, var_values = row.inputs, row.vars
    cells += [value_cell(given[k]) if k in given else "" for k in inputs]
    cells += [value_cell(var_values[k]) if k in var_values else "" for k in var_names]
    return cells


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p95": None}
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest-rank
    return {
        "mean": round(statistics.fmean(ordered), 3),
        "median": round(statistics.median(ordered), 3),
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
    mirror: MirrorFacts  # a run with outputs.mirror


class MirrorFacts(TypedDict):
    to: str  # s3://BUCKET/PREFIX/<run name>
    files: int  # the jobs' files in the bucket (sent this run or before)
    files_sent_this_run: int  # of those, the ones this run uploaded
    not_mirrored: int  # files still to copy: a rerun copies them


def summarise(rows: Iterable[JobRow], attempts: Iterable[Attempt] = ()) -> dict[str, Any]:
    """Totals of the reported jobs: per status, durations, attempts, files; money from the
    ledger's `attempts` (store/ledger.py)."""
    jobs = _reported(rows)
    attempts = list(attempts)
    totals = dict.fromkeys(REPORT_STATUSES, 0)
    for row in jobs:
        totals[report_status(row.status)] += 1
    submits = [r.submitted_at for r in jobs if r.submitted_at is not None]
    finishes = [r.finished_at for r in jobs if r.finished_at is not None]
    makespan = max(finishes) - min(submits) if submits and finishes else None
    files = [f for r in jobs for f in r.files]
    costs = job_costs(jobs, attempts)
    reported = {r.job_id for r in jobs}
    cached = [r for r in jobs if r.cached]
    return {
        "jobs": len(jobs),
        "statuses": totals,
        "succeeded_without_output": sum(1 for r in jobs if without_output(r)),
        "durations": {
            "makespan_s": None if makespan is None else round(max(0.0, makespan), 3),
            "queue_s": _stats([q for q in (r.queue_s for r in jobs) if q is not None]),
            "run_s": _stats([t for t in (r.run_s for r in jobs) if t is not None]),
        },
        # what the reported jobs' results said they cost: the sum of report.csv's cost_usd
        "cost_usd": float(round(sum((costs[j] for j in reported if j in costs), Decimal(0)), 6)),
        **ledger.summary(attempts, reported),
        "cached": len(cached),
        "saved_usd": round(sum(r.saved_usd or 0.0 for r in cached), 6),
        "attempts": sum(r.attempts for r in jobs),
        "files": {
            "downloaded": sum(1 for f in files if f.name and not f.error),
            "refused": sum(1 for f in files if f.error.startswith("refused")),
            "failed": sum(1 for f in files if f.error and not f.error.startswith("refused")),
        },
    }


def write_report(
    run_dir: Path,
    rows: list[JobRow],
    attempts: list[Attempt],
    *,
    facts: RunFacts | None = None,
    rows_key: str | None = None,
    cols_key: str | None = None,
    mirror_urls: dict[str, list[str]] | None = None,
    live: Live | None = None,
) -> None:
    """Write report.csv, summary.json and report.html into `run_dir`, each atomically.

    `rows_key`/`cols_key` choose the swept fields of report.html's grid (default: the two
    that vary most). `mirror_urls` (a run with outputs.mirror): each job's s3:// URLs, for
    report.csv's mirror_urls column.
    While the run goes (`live`), summary.json says `"live": true` and
    report.html carries the live line and reloads itself.
    """
    with gc_paused():
        jobs = _reported(rows)
        costs = job_costs(jobs, attempts)
        inputs, var_names = _fields(jobs)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        reportcsv.write(
            run_dir / "report.csv",
            reportcsv.header(inputs, var_names, mirror=mirror_urls is not None),
            (
                _line(
                    row,
                    inputs,
                    var_names,
                    costs.get(row.job_id),
                    None if mirror_urls is None else mirror_urls.get(row.job_id, []),
                )
                for row in jobs
            ),  # fmt: skip
        )
        summary = summarise(jobs, attempts) | dict(facts or {})
        if live is not None:
            summary["live"] = True
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_html(run_dir, jobs, rows_key=rows_key, cols_key=cols_key, live=live)


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
    """What the report files are made of, in short: the state's revision (StateStore.revision)
    and the layout and facts that are not per run. Equal marks: the same files."""
    kept = {k: v for k, v in (facts or {}).items() if k not in _PER_RUN_FACTS}
    text = json.dumps([kept, rows_key, cols_key], sort_keys=True, default=str)
    return f"{revision}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def reports_present(run_dir: Path) -> bool:
    return all((Path(run_dir) / name).is_file() for name in REPORT_FILES)


# state.db meta keys of the grid chosen with `batchrun report --rows/--cols`: later runs keep it.
GRID_META = {"rows": "report_rows", "cols": "report_cols"}


def grid_choice(
    meta: dict[str, str], rows: str | None, cols: str | None
) -> tuple[str | None, str | None]:
    """report.html's grid: the one chosen with `report --rows/--cols` (kept in state.db's
    meta), else ROWS/COLS (the manifest's `report:`), else None (automatic)."""
    return meta.get(GRID_META["rows"]) or rows, meta.get(GRID_META["cols"]) or cols

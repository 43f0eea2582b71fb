"""report.csv's lines of a run's jobs, made a chunk of jobs at a time and, in a chunk, a column
at a time: a report makes 100,000s of lines, and a column is one loop over the chunk's jobs
where a line would be a call per cell.

The server's text in them (errors, request ids, URLs, file names) shows control characters
escaped (safetext), while state.db keeps them as they came."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from itertools import repeat
from typing import Any, NamedTuple, TypeVar

from batchrun.results.reportcsv import FORMULA_START, SEPARATOR, guard, join_cell, value_cell
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import SUCCEEDED, JobRow, report_statuses
from batchrun.util.safetext import is_printable, printable

# The error column of a job that succeeded with nothing to fetch: worth a look, not a failure.
NO_OUTPUT = "succeeded without output: the result holds no output URL, so no file to download"

K = TypeVar("K")

_SECONDS: dict[int, str] = {}  # whole second -> its text: a run's jobs share few seconds


def timestamp(epoch: float | None) -> str:
    """An epoch as report.csv writes it (UTC, to the second); '' for none."""
    if epoch is None:
        return ""
    second = math.floor(epoch)
    # Near the next second, rounding to microseconds may carry into it: format directly.
    if epoch - second > 0.999:
        return _format_time(epoch)
    return _SECONDS.get(second) or _kept(_SECONDS, second, _format_time(second), 100_000)


def _kept(cache: dict[K, str], key: K, text: str, limit: int) -> str:
    """`text` remembered in `cache` under `key` (emptied first when it holds over `limit`)."""
    if len(cache) > limit:
        cache.clear()
    cache[key] = text
    return text


def _format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_COSTS: dict[float, str] = {}  # a model's price repeats from job to job


def cost_text(value: float | None) -> str:
    """An amount of USD as report.csv writes it (to the millionth, no trailing zeros)."""
    if value is None:
        return ""
    text = _COSTS.get(value) if value else None  # 0.0 == -0.0, yet they print apart
    return text or _kept(_COSTS, value, f"{value:.6f}".rstrip("0").rstrip("."), 10_000)


_GUARDED: dict[str, str] = {}  # model ids: a sweep has a few


def _guarded(text: str) -> str:
    return _GUARDED.get(text) or _kept(_GUARDED, text, guard(text), 1000)


_ABSENT = object()
_NO_FILES = ("", "", "")


class Times(NamedTuple):
    """A chunk of jobs' times (`times`): when each was sent and when it finished, and its
    JobRow.queue_s and run_s; None where it has none."""

    submitted: list[float | None]
    finished: list[float | None]
    queue_s: list[float | None]
    run_s: list[float | None]


def times(rows: Sequence[JobRow]) -> Times:
    """The Times of `rows` (JobRow.queue_s and run_s inline, a chunk at once)."""
    submitted = [r.submitted_at for r in rows]
    started = [r.started_at for r in rows]
    finished = [r.finished_at for r in rows]
    # When each job started running, as JobRow.run_s counts it (else when it was sent).
    starts = [t or s for s, t in zip(submitted, started, strict=True)]
    return Times(
        submitted,
        finished,
        [
            None if s is None or t is None else max(0.0, t - s)
            for s, t in zip(submitted, started, strict=True)
        ],
        [
            None if e is None or a is None else max(0.0, e - a)
            for a, e in zip(starts, finished, strict=True)
        ],
    )


def lines(
    rows: Sequence[JobRow],
    costs: Sequence[Decimal | None],
    inputs: list[str],
    var_names: list[str],
    mirrored: Sequence[list[str]] | None = None,
) -> tuple[list[tuple[str, ...]], list[bool], Times]:
    """The cells of `rows` (a chunk of jobs) in report.csv's column order (reportcsv.header;
    empty where a job has no such field), which of the jobs succeeded without output, and
    their Times. `costs`: each job's actual costs known, from the ledger (None: none);
    `mirrored`, in a run with a mirror, each job's s3:// URLs there."""
    found = [[] if r.files else collect_urls(r.output) for r in rows]
    bare = [
        r.status == SUCCEEDED and not r.files and not f for r, f in zip(rows, found, strict=True)
    ]
    when = times(rows)
    # A job taken from the cache cost nothing, whatever its attempts say.
    shown_costs = [
        Decimal(0) if c is None and r.cached else c for r, c in zip(rows, costs, strict=True)
    ]
    files = [
        _file_cells(r) if r.files else ("", urls, "") if urls else _NO_FILES
        for r, urls in zip(rows, _urls_cells(found), strict=True)
    ]
    columns = [
        [r.job_id for r in rows],
        [_GUARDED.get(m) or _guarded(m) for m in [r.model_id for r in rows]],
        report_statuses([r.status for r in rows]),
        list(map(guard, _printable_all([r.request_id or "" for r in rows]))),
        [
            _error_cell(r, b) if r.error or r.files or b else ""
            for r, b in zip(rows, bare, strict=True)
        ],
        list(map(str, [r.attempts for r in rows])),
        list(map(timestamp, when.submitted)),
        list(map(timestamp, when.finished)),
        ["" if q is None else f"{q:.3f}" for q in when.queue_s],
        ["" if t is None else f"{t:.3f}" for t in when.run_s],
        ["" if c is None else cost_text(float(c)) for c in shown_costs],
        *map(list, zip(*files, strict=True)),
        ["true" if c else "false" for c in [r.cached for r in rows]],
        ["" if v is None else cost_text(v) for v in [r.saved_usd for r in rows]],
    ]
    if mirrored is not None:
        columns.append([guard(join_cell(u.replace(SEPARATOR, "%3B") for u in m)) for m in mirrored])
    if inputs:
        given = [r.inputs for r in rows]
        columns += [_field_column(given, name) for name in inputs]
    if var_names:
        given = [r.vars for r in rows]
        columns += [_field_column(given, name) for name in var_names]
    return list(zip(*columns, strict=True)), bare, when


def _field_column(given: list[dict[str, Any]], name: str) -> list[str]:
    """value_cell of each job's `name` in `given` ('' where it has none): a plain string or
    an int made a cell without a call."""
    return [
        v if type(v) is str and v[:1] not in FORMULA_START
        else "" if v is _ABSENT
        else str(v) if type(v) is int
        else value_cell(v)
        for v in map(dict.get, given, repeat(name), repeat(_ABSENT))
    ]  # fmt: skip


def _file_cells(row: JobRow) -> tuple[str, str, str]:
    """The output_files, output_urls and output_sha256 cells of a job with files."""
    done = [f for f in row.files if f.name and not f.error]
    return (
        guard(join_cell(printable(f.name) for f in done)) if done else "",
        _urls_cell([f.url for f in row.files]),
        join_cell(f.sha256 for f in done) if done else "",
    )


def _printable_all(texts: list[str]) -> list[str]:
    """printable of each of `texts` (a chunk's column): one search of them all when none
    holds a control character (nearly every chunk)."""
    return texts if is_printable("".join(texts)) else [printable(t) for t in texts]


def _urls_cells(found: list[list[str]]) -> list[str]:
    """_urls_cell of each job's URLs found (a chunk's; '' for none): one search of them all
    when none holds a control character or SEPARATOR (nearly every chunk)."""
    every = "".join([u for urls in found for u in urls])
    if SEPARATOR in every or not is_printable(every):
        return [_urls_cell(urls) if urls else "" for urls in found]
    return [guard(join_cell(urls)) if urls else "" for urls in found]


def _urls_cell(urls: list[str]) -> str:
    # SEPARATOR joins a cell's values; keep it out of the URLs themselves.
    return guard(join_cell([printable(u).replace(SEPARATOR, "%3B") for u in urls]))


def _error_cell(row: JobRow, bare: bool) -> str:
    parts = [row.error] if row.error else []
    if bare:
        parts.insert(0, NO_OUTPUT)
    parts += [f"output {i}: {f.error}" for i, f in enumerate(row.files, start=1) if f.error]
    return guard(printable("; ".join(parts), lines=True))

"""The report.csv format both ways: columns, the formula guard, multi-value cells, reading."""

from __future__ import annotations

import csv
import io
import itertools
import json
import operator
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchrun.errors import CompareError, StateError
from batchrun.store.atomic import open_atomic, write_text
from batchrun.util import localref

COLUMNS = [
    "job_id",
    "model_id",
    "status",
    "request_id",
    "error",
    "attempts",
    "submitted_at",
    "finished_at",
    "queue_s",
    "run_s",
    "cost_usd",
    "output_files",
    "output_urls",
    "output_sha256",
    "cached",  # "true" when the result came from the cross-run cache (cost_usd is then 0)
    "saved_usd",  # for a cached job: what its result cost when it was made
]
# After COLUMNS, in a run with outputs.mirror: each job's files in the bucket (s3:// URLs).
MIRROR_COLUMN = "mirror_urls"
# After those: one column per input field and per var name, in first-seen order.
INPUT_PREFIX = "input."
VAR_PREFIX = "var."
# A spreadsheet evaluates a cell starting with one of these; the guard puts a ' before it.
FORMULA_START = frozenset({"=", "+", "-", "@", "\t", "\r"})
# Joins the values of a multi-value cell (output files, URLs, hashes).
SEPARATOR = ";"


def header(inputs: Iterable[str], var_names: Iterable[str], *, mirror: bool = False) -> list[str]:
    """COLUMNS (and MIRROR_COLUMN), then input.<field> and var.<name> columns in the order
    given."""
    fixed = COLUMNS + [MIRROR_COLUMN] if mirror else COLUMNS
    return fixed + [INPUT_PREFIX + k for k in inputs] + [VAR_PREFIX + k for k in var_names]


def fields(path: Path) -> tuple[list[str], list[str]] | None:
    """The input fields and var names of the report.csv at PATH, as its header names them, in
    order; None when there is none to read."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            columns = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not columns or columns[: len(COLUMNS)] != COLUMNS:
        return None
    inputs = [c.removeprefix(INPUT_PREFIX) for c in columns if c.startswith(INPUT_PREFIX)]
    var_names = [c.removeprefix(VAR_PREFIX) for c in columns if c.startswith(VAR_PREFIX)]
    return inputs, var_names


def guard(text: str) -> str:
    """Defuse CSV formula injection: a spreadsheet would evaluate a cell starting with = + - @."""
    return "'" + text if text and text[0] in FORMULA_START else text


def unguard(cell: str) -> str:
    """Undo `guard`: drop a leading ' before = + - @ (tab, CR)."""
    if cell[:1] == "'" and cell[1:2] in FORMULA_START:
        return cell[1:]
    return cell


def value_cell(value: Any) -> str:
    """A user value as a cell: strings as-is (guarded), anything else as compact JSON."""
    if isinstance(value, str):
        return guard(value)
    if type(value) is int:  # a swept seed: what json.dumps would say, faster
        return str(value)
    local = localref.text(value)  # a local input file: its path
    if local is not None:
        return guard(local)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def join_cell(values: Iterable[str]) -> str:
    """Several values as one cell; the values must not contain SEPARATOR."""
    return SEPARATOR.join(values)


def split_cell(cell: str | None) -> list[str]:
    """A multi-value cell as a list (empty cell, empty list)."""
    return [part for part in (cell or "").split(SEPARATOR) if part]


def prefixed(row: dict[str, str], prefix: str) -> dict[str, str]:
    """The row's non-empty PREFIX<name> cells by name, unguarded (INPUT_PREFIX, VAR_PREFIX)."""
    # An empty cell means the job has no such field (multi-model sweeps).
    start = len(prefix)
    return {k[start:]: unguard(v) for k, v in row.items() if k.startswith(prefix) and v}


def render(columns: list[str], rows: Iterable[list[str]]) -> str:
    """The CSV text of a header and rows of cells (cells already formatted and guarded)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def write(path: Path, columns: list[str], rows: Iterable[list[str]]) -> Path:
    """Write a report.csv atomically."""
    return write_text(path, render(columns, rows))


class Rows:
    """Writes rows of cells into a report.csv being written (call it), or the lines of more
    rows another writer wrote to a file (`extend_from`, lines_to)."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self._text = text
        self._write = _fast_rows(text, csv.writer(text))

    def __call__(self, rows: Iterable[Sequence[str]]) -> None:
        self._write(rows)

    def offset(self) -> int:
        """Where the next line goes, in bytes from the file's start (a file being written:
        no decoder's state in it)."""
        return self._text.tell()

    def extend_from(self, path: Path, spans: Iterable[tuple[int, int]]) -> None:
        """The lines at each of SPANS (offset, size: Rows.offset) of the file at PATH, in
        that order."""
        self._text.flush()
        with open(path, "rb") as lines:
            for offset, size in spans:
                lines.seek(offset)
                self._text.buffer.write(lines.read(size))


@contextmanager
def writer(path: Path, columns: list[str]) -> Iterator[Rows]:
    """A report.csv written as its rows come: the block gets Rows, which writes rows of
    cells; the file appears whole at `path` when the block ends, not at all if it raises."""
    try:
        with open_atomic(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            try:
                csv.writer(text).writerow(columns)
                yield Rows(text)
            finally:
                text.detach()  # flushed into `raw`, which open_atomic closes
    except OSError as exc:
        raise StateError(
            f"{path}: cannot write it ({exc.strerror or exc}); free some space or fix the "
            "folder's permissions, then try again"
        ) from None


@contextmanager
def lines_to(path: Path) -> Iterator[Rows]:
    """Rows of a report.csv (no header) written to a file at PATH of their own, whole when
    the block ends, for a writer to add (Rows.extend_from)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags, 0o666), "wb") as raw:  # never through a link
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield Rows(text)
        finally:
            text.detach()  # flushed into `raw`


def _fast_rows(text: io.TextIOWrapper, out: Any) -> Callable[[Iterable[Sequence[str]]], None]:
    """csv.writer's writerows, several times faster for the usual rows: a row of two cells or
    more none of which holds a comma, a quote, a CR or a LF is its cells joined by commas
    (what the writer makes of it); the others go through the writer. The rows are looked at
    all at once, and one by one only when some are not usual."""

    def write_rows(rows: Iterable[Sequence[str]]) -> None:
        rows = list(rows)
        lines = [",".join(cells) for cells in rows]
        every = "".join(lines)
        # A line holds at least its cells' commas: as many in all, and none holds more.
        commas = sum(map(len, rows)) - len(rows)
        if rows and min(map(len, rows)) > 1 and _plain(every) and every.count(",") == commas:
            text.write("\r\n".join(lines) + "\r\n")
            return
        kept: list[str] = []
        for cells, line in zip(rows, lines, strict=True):
            # one empty cell: the writer writes ""
            if len(cells) > 1 and _plain(line) and line.count(",") == len(cells) - 1:
                kept.append(line + "\r\n")
                continue
            if kept:
                text.write("".join(kept))
                kept = []
            out.writerow(cells)
        if kept:
            text.write("".join(kept))

    return write_rows


def _plain(text: str) -> bool:
    """Whether `text` holds no quote, CR or LF (what csv.writer would quote, but commas)."""
    return '"' not in text and "\r" not in text and "\n" not in text


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows (dicts by column name; a short row's missing cells empty)."""
    columns, table = _cells(path)
    return columns, [dict(zip(columns, cells, strict=True)) for cells in table]


_Names = Callable[[list[str]], Sequence[str]]  # the columns to read, given the header


def _cells(path: Path, names: _Names | None = None) -> tuple[list[str], list[Sequence[str]]]:
    """The header and each row's cells (a short row's missing cells empty, cells past the
    header dropped); with `names`, the cells of the columns it names alone, in that order, a
    column the header lacks empty."""
    with open(path, encoding="utf-8", newline="") as fh:
        records = _records(fh)
        columns = next(records, [])
        width = len(columns)
        pick: Callable[[list[str]], Sequence[str]] = lambda cells: cells  # noqa: E731
        pad = False
        if names is not None:
            at = {name: i for i, name in enumerate(columns)}
            # A column the header lacks takes an empty cell put after the row's last.
            kept = [at.get(name, width) for name in names(columns)]
            pick, pad = _picker(kept), width in kept
        table = []
        for cells in records:
            if len(cells) != width:
                if not cells:
                    continue  # a blank line
                cells = (cells + [""] * width)[:width]  # cells past the header are dropped
            if pad:
                cells.append("")
            table.append(pick(cells))
        return columns, table


def _picker(kept: list[int]) -> Callable[[list[str]], Sequence[str]]:
    """The cells at `kept` of a row, as a tuple."""
    if len(kept) == 1:
        return lambda cells: (cells[kept[0]],)
    if not kept:
        return lambda cells: ()
    return operator.itemgetter(*kept)


def _records(lines: Iterator[str]) -> Iterator[list[str]]:
    """csv.reader's records of `lines` (a file opened with newline=""): a line without a quote
    (or a NUL, which csv refuses) holds no quoted cell, so it is split on commas directly,
    several times faster; the others go through csv.reader, which reads on as far as their
    quoted cells span."""
    lines = iter(lines)
    for line in lines:
        if '"' in line or "\0" in line:
            yield next(csv.reader(itertools.chain([line], lines)), [])
        else:
            text = line.rstrip("\r\n")
            yield text.split(",") if text else []


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a report.csv as dicts keyed by column name."""
    return read(path)[1]


def read_jobs(report: Path) -> dict[str, dict[str, str]]:
    """A batchrun report.csv's rows by job id; CompareError when it is not one."""
    return read_job_table(report)[1]


def read_job_table(report: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A batchrun report.csv's header and rows by job id; CompareError when it is not one."""
    columns, ids, table = _job_cells(report, None)
    rows = (dict(zip(columns, cells, strict=True)) for cells in table)
    return columns, dict(zip(ids, rows, strict=True))


def read_cells(report: Path, names: _Names) -> tuple[list[str], dict[str, Sequence[str]]]:
    """A batchrun report.csv's header and, by job id, each job's cells: its job id, then
    those of the columns `names` gives for the header, in that order (a column the header
    lacks empty); CompareError when it is not one."""
    columns, ids, table = _job_cells(report, lambda header: ["job_id", *names(header)])
    return columns, dict(zip(ids, table, strict=True))


def _job_cells(
    report: Path, names: _Names | None
) -> tuple[list[str], list[str], list[Sequence[str]]]:
    """The header, the job ids and _cells of a batchrun report.csv (`names`, when given,
    start with job_id); CompareError when it is not one, or a job id is empty or repeated."""
    try:
        columns, table = _cells(report, names)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CompareError(f"{report}: not a readable report.csv ({exc})") from exc
    if not columns:
        raise CompareError(f"{report}: empty file, not a batchrun report.csv")
    if "job_id" not in columns:
        raise CompareError(f"{report}: not a batchrun report: no job_id column in the header")
    # A column named twice reads as its last, as a row's dict holds it.
    at = 0 if names is not None else max(i for i, name in enumerate(columns) if name == "job_id")
    ids = list(map(operator.itemgetter(at), table))
    if "" in ids or len(set(ids)) != len(ids):
        seen: set[str] = set()
        # Numbered as a spreadsheet shows them: the header is row 1.
        for number, job_id in enumerate(ids, start=2):
            if not job_id:
                raise CompareError(f"{report}: row {number}: empty job_id")
            if job_id in seen:
                raise CompareError(f"{report}: row {number}: job_id {job_id} appears twice")
            seen.add(job_id)
    return columns, ids, table

"""report.html of any size: the contact sheet in pages of PAGE_CARDS jobs, written as the jobs
stream by (expansion order), so neither memory nor the page a browser opens grows with the sweep.

A sweep that fits one page gets report.html alone. A larger one gets report.html (page 1, with
the counts of every job and an index: each page, and on which pages each value of a swept field
is) and report-2.html, report-3.html, ... beside it, each laid out like the first (the layout is
chosen from the first SAMPLE jobs), each linking to the others. Thumbnails load lazily. Every
file is replaced atomically; pages a smaller sweep no longer has are removed.

A large report is made by two processes (Helper): the report's from the first page on, a forked
helper from the last page back, each taking one page at a time until none is left. The helper
draws its pages (Sheet.later, Sheet.draw) and hands back each one's counts and index values
(DrawnPage), which the sheet takes in page order (Sheet.take) before it writes page 1.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from batchrun.results.html_report import (
    SAMPLE,
    Layout,
    Live,
    banner,
    dimension_values,
    esc,
    field_keys,
    grids,
    heading,
    href,
    page,
    status_counts,
)
from batchrun.store.atomic import write_text
from batchrun.store.records import JobRow

PAGE_CARDS = 500  # jobs a page shows
INDEX_VALUES = 1000  # a swept field with more values than this is left out of the index
NEAR = 5  # a page links to the pages this near it (page 1 to every page)
HELPED_PAGES = 20  # a report of fewer pages is made by one process (Helper.gains)
_PAGE_NAME = re.compile(r"report-(\d+)\.html")


def page_name(number: int) -> str:
    """report.html for page 1, report-N.html for the others."""
    return "report.html" if number == 1 else f"report-{number}.html"


def more_pages(run_dir: Path) -> list[str]:
    """The names of the pages after the first in RUN_DIR (report-2.html, ...), in order."""
    found = [(_PAGE_NAME.fullmatch(p.name), p.name) for p in Path(run_dir).glob("report-*.html")]
    return [name for _, name in sorted((int(m[1]), n) for m, n in found if m)]


class AxisIndex:
    """On which pages each value of each laid-out field is, as ranges of pages."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = list(keys)
        self.pages: dict[str, dict[str, list[list[int]]]] = {k: {} for k in self.keys}
        self.dropped: list[str] = []  # fields with too many values to list

    def add(self, jobs: list[JobRow], number: int) -> None:
        self.add_values({key: dimension_values(jobs, key) for key in self.pages}, number)

    def add_values(self, found: dict[str, list[str]], number: int) -> None:
        """Page NUMBER's values of each field still indexed (`found`, in first-seen order; a
        field not there has more than INDEX_VALUES values, PageValues found)."""
        for key in list(self.pages):
            values = self.pages[key]
            if key not in found:
                del self.pages[key]
                self.dropped.append(key)
                continue
            for value in dict.fromkeys(found[key]):
                ranges = values.setdefault(value, [])
                if ranges and ranges[-1][1] >= number - 1:
                    ranges[-1][1] = number
                else:
                    ranges.append([number, number])
            if len(values) > INDEX_VALUES:
                del self.pages[key]
                self.dropped.append(key)

    def html(self) -> str:
        out = []
        for key, values in self.pages.items():
            if len(values) < 2:
                continue
            items = "".join(
                f"<li>{esc(v or '(not set)')}: {_ranges(r)}</li>" for v, r in values.items()
            )
            out.append(f"<details><summary>by {esc(key)} ({len(values)} values)</summary>"
                       f'<ul class="axis">{items}</ul></details>')  # fmt: skip
        if self.dropped:
            dropped = ", ".join(k for k in self.keys if k in self.dropped)  # however found
            out.append(f"<p>not indexed (over {INDEX_VALUES:,} values): {esc(dropped)}</p>")
        return "".join(out)


class PageValues:
    """What AxisIndex.add would take of a page (its values of each field), kept to be added
    to another sheet's index (Sheet.take), page after page in any order. A field is kept until
    it has shown more than INDEX_VALUES values: the pages after that leave it out, and the
    index they are added to drops it too (AxisIndex.add_values)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.seen: dict[str, set[str]] = {k: set() for k in keys}
        self.found: dict[str, list[str]] = {}  # of the page last added

    def add(self, jobs: list[JobRow], number: int) -> None:
        self.found = {}
        for key in list(self.seen):
            values = list(dict.fromkeys(dimension_values(jobs, key)))
            self.found[key] = values
            self.seen[key].update(values)
            if len(self.seen[key]) > INDEX_VALUES:
                del self.seen[key]


def _ranges(ranges: list[list[int]]) -> str:
    """'3, 5-9' as links to the first page of each range (the first few ranges)."""
    shown = [_link(a) if a == b else f"{_link(a)}&ndash;{_link(b)}" for a, b in ranges[:4]]
    more = f", &hellip; ({len(ranges) - 4} more ranges)" if len(ranges) > 4 else ""
    return ", ".join(shown) + more


def _link(number: int) -> str:
    return f'<a href="{page_name(number)}">{number}</a>'


def nav(number: int, pages: int, *, every: bool = False) -> str:
    """Links to the previous and next pages, the first and the last, and those near this one
    (`every`: to every page, as page 1 has them)."""
    parts = []
    if number > 1:
        parts.append(f'<a href="{page_name(number - 1)}" rel="prev">&larr; previous</a>')
    if number < pages:
        parts.append(f'<a href="{page_name(number + 1)}" rel="next">next &rarr;</a>')
    shown = range(1, pages + 1) if every else sorted(
        {1, pages} | set(range(max(1, number - NEAR), min(pages, number + NEAR) + 1))
    )  # fmt: skip
    numbers, last = [], 0
    for n in shown:
        if n > last + 1:
            numbers.append("&hellip;")
        numbers.append(f"<b>{n}</b>" if n == number else _link(n))
        last = n
    links = " | ".join(parts)
    return (
        f'<nav class="pages">page {number} of {pages}: {links} <span>{" ".join(numbers)}</span>'
        "</nav>"
    )


class Sheet:
    """Writes report.html (and its pages) of `total` jobs fed in expansion order with `add`;
    `finish` writes page 1 (and the index) last, once every job has been seen."""

    def __init__(
        self,
        run_dir: Path,
        total: int,
        keys: list[str],
        *,
        rows_key: str | None = None,
        cols_key: str | None = None,
        live: Live | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.title = f"batchrun: {self.run_dir.name}"
        self.pages = max(1, math.ceil(total / PAGE_CARDS))
        self.keys, self.rows_key, self.cols_key, self.live = keys, rows_key, cols_key, live
        self.layout: Layout | None = None
        self.index: AxisIndex | PageValues | None = None
        self.buffer: list[JobRow] = []
        self.counts: dict[str, int] = {}
        self.seen = 0
        self.written = 0  # pages done
        self.first: list[str] = []  # page 1's grids, written by finish

    def add(self, jobs: Iterable[JobRow]) -> None:
        jobs = list(jobs)
        self._count(status_counts(jobs))
        self.buffer += jobs
        if self.layout is None and len(self.buffer) >= SAMPLE:
            self._choose()
        if self.layout is not None:
            while len(self.buffer) >= PAGE_CARDS:
                self._flush(self.buffer[:PAGE_CARDS])
                del self.buffer[:PAGE_CARDS]

    def finish(self) -> Path:
        if self.layout is None:
            self._choose()
        while self.buffer or self.written == 0:
            self._flush(self.buffer[:PAGE_CARDS])
            del self.buffer[:PAGE_CARDS]
        self.pages = self.written
        body = [*heading(self.title, self.counts, sum(self.counts.values()))]
        if self.pages > 1:
            assert isinstance(self.index, AxisIndex)
            body += [nav(1, self.pages, every=True), self.index.html()]
        text = self._page(self.title, body + self.first)
        path = write_text(self.run_dir / page_name(1), text)
        self._remove_stale()
        return path

    def _choose(self) -> None:
        self.layout = Layout.choose(self.buffer[:SAMPLE], self.keys, self.rows_key, self.cols_key)
        self.index = AxisIndex(self.layout.axis_keys())

    def later(self, jobs: Iterable[JobRow]) -> Sheet:
        """This sheet to draw pages in another process (`draw`, Helper), laid out as this one
        will be (from the first SAMPLE of all its JOBS), for this one to `take`."""
        part = copy.copy(self)
        part.layout = Layout.choose(
            list(islice(jobs, SAMPLE)), self.keys, self.rows_key, self.cols_key
        )
        part.buffer, part.counts, part.first = [], {}, []
        part.index = PageValues(part.layout.axis_keys())
        return part

    def draw(self, number: int, jobs: list[JobRow]) -> DrawnPage:
        """Page NUMBER of its JOBS, drawn by a `later` part: what this sheet takes of it."""
        assert isinstance(self.index, PageValues)
        self._flush(jobs, number)
        return DrawnPage(number, status_counts(jobs), self.index.found)

    def take(self, drawn: DrawnPage) -> None:
        """A page a `later` part drew (the next one), as if this sheet had: its counts and
        index values."""
        assert isinstance(self.index, AxisIndex) and not self.buffer
        assert drawn.number == self.written + 1
        self._count(drawn.counts)
        self.index.add_values(drawn.found, drawn.number)
        self.written = drawn.number

    def _count(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.counts[status] = self.counts.get(status, 0) + n

    def _flush(self, jobs: list[JobRow], number: int | None = None) -> None:
        """Draw the page of JOBS: the next one, or page NUMBER (a `later` part's)."""
        assert self.layout is not None and self.index is not None
        if number is None:
            number = self.written = self.written + 1
        self.index.add(jobs, number)
        if number == 1:
            self.first = grids(jobs, self.layout, href)
            return
        title = f"{self.title}: page {number}"
        pages = max(self.pages, number)
        body = [f"<h1>{esc(title)}</h1>", nav(number, pages), *grids(jobs, self.layout, href)]
        # Not fsynced: 200 fsyncs would cost seconds at 100,000 jobs, and the pages are made
        # again from state.db by every write of the reports (page 1 is fsynced, the folder too).
        # A page that says what the file there says is left: most pages of a sweep where a few
        # jobs changed (replacing a file costs more than reading it).
        path, text = self.run_dir / page_name(number), self._page(title, body)
        if not _holds(path, text):
            write_text(path, text, durable=False)

    def _page(self, title: str, body: list[str]) -> str:
        live = self.live
        return page(title, banner(live) + "\n".join(body), refresh_s=live.refresh_s if live else 0)

    def _remove_stale(self) -> None:
        """Pages of an earlier, larger sweep."""
        for path in self.run_dir.glob("report-*.html"):
            found = _PAGE_NAME.fullmatch(path.name)
            if found and int(found[1]) > self.pages:
                path.unlink(missing_ok=True)


@dataclass
class DrawnPage:
    """A page a part of a sheet drew in another process (Sheet.draw): its number, its jobs'
    counts by status and its index values (PageValues.found)."""

    number: int
    counts: dict[str, int]
    found: dict[str, list[str]]


class Helper:
    """A second process that makes pages of a report from the last back, forked as the report
    begins, while the report's process makes them from the first on; `join` gives what the
    helper hands back (its work's value). The first pages, whose SAMPLE jobs the layout is
    chosen from, are the report's process's; every other page is taken, one at a time, from a
    pipe holding a byte for each (a byte read from a pipe goes to one reader): each is made
    once, by the process that comes to it first, however the machine shares its cores between
    the two. On a machine with a core to spare a large report is made in about 0.6 of the
    time. Should the helper fail (its read raises StaleRead when the jobs changed since the
    report's own read began), `join` gives None and the report's process makes its pages too.
    For a process with one thread (forked: any other thread is not there in the fork)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pages = math.ceil(total / PAGE_CARDS)
        self._own = self.pages  # the first pages: the report's process's without taking them
        self._pid: int | None = None
        self._answer = -1  # the pipe the helper answers on
        self._left = -1  # the pipe of the pages left to take, a byte each

    @staticmethod
    def gains(total: int) -> bool:
        """Whether a helper would make the report of `total` jobs sooner, and safely: not
        when it is small (the fork costs more), nor without a core to spare, nor without
        fork, nor in a process running other threads (what they hold would stay held in
        the fork)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        pages = math.ceil(total / PAGE_CARDS)
        alone = threading.active_count() == 1
        laid = pages > _laid_pages()  # pages are left once the layout's jobs are read
        return pages >= HELPED_PAGES and laid and cores > 1 and hasattr(os, "fork") and alone

    def size(self, number: int) -> int:
        """How many jobs page NUMBER has."""
        return min(PAGE_CARDS, self.total - (number - 1) * PAGE_CARDS)

    def first_pages(self) -> Iterator[int]:
        """In the report's process, once the helper is forked: the numbers of the pages it
        makes, in order (each but its own taken as it is asked for), until none is left."""
        yield from range(1, self._own + 1)
        number = self._own
        while self._take():
            number += 1
            yield number

    def last_pages(self) -> Iterator[int]:
        """In the helper: the numbers of the pages it makes, from the last back (each taken
        as it is asked for), until none is left."""
        number = self.pages
        while self._take():
            yield number
            number -= 1

    def _take(self) -> bool:
        return self._left >= 0 and os.read(self._left, 1) == b"p"

    def fork(self, work: Callable[[], object]) -> None:
        """Start the helper: it runs WORK, and hands its value back through a pipe."""
        left, put = os.pipe()
        os.set_blocking(put, False)
        try:  # a byte for each page either may make, as many as the pipe holds
            taken = os.write(put, b"p" * (self.pages - _laid_pages()))
        except BlockingIOError:
            taken = 0
        os.close(put)  # once every byte is read, a read gives b"": none left
        answer, told = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no process to spare: the report's makes every page
            for fd in (left, answer, told):
                os.close(fd)
            return
        self._own, self._left = self.pages - taken, left
        if pid == 0:  # the helper: its exit status says whether it did its work
            code = 1
            try:
                os.close(answer)
                data = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(told, "wb") as out:
                    out.write(data)
                code = 0
            finally:
                os._exit(code)  # nothing of the report's process is flushed or closed twice
        os.close(told)
        self._pid, self._answer = pid, answer

    def join(self) -> Any:
        """The value of the helper's work; None when it failed, or was not started. The
        pages not taken yet are taken first (a report given up: the helper stops sooner)."""
        if self._pid is None:
            return None
        while self._take():
            pass
        os.close(self._left)
        self._left = -1
        with os.fdopen(self._answer, "rb") as answer:
            data = answer.read()  # before the wait: a helper blocks on a full pipe
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if os.waitstatus_to_exitcode(status) != 0:
            return None
        return pickle.loads(data)  # written by a fork of this process: trusted

    def wait(self) -> None:
        """Wait for the helper, if one was started and not joined (a report given up)."""
        self.join()


def _laid_pages() -> int:
    """The first pages of a report, always its process's: their jobs (SAMPLE) lay it out."""
    return math.ceil(SAMPLE / PAGE_CARDS)


class StaleRead(Exception):
    """The jobs a helper read are not those of the report it helps: a run wrote meanwhile."""


def _holds(path: Path, text: str) -> bool:
    """Whether the file at PATH holds TEXT (UTF-8), byte for byte."""
    data = text.encode("utf-8")
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def write_html(
    run_dir: Path,
    rows: list[JobRow],
    *,
    rows_key: str | None = None,
    cols_key: str | None = None,
    live: Live | None = None,
) -> Path:
    """Write RUN_DIR/report.html (and its pages) of `rows` (in expansion order); its path."""
    sheet = Sheet(
        run_dir, len(rows), field_keys(rows), rows_key=rows_key, cols_key=cols_key, live=live
    )
    sheet.add(rows)
    return sheet.finish()

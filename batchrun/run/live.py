"""The reports while the run goes: report.csv, summary.json and report.html rewritten from the
run loop between two steps, every `run.report_every` seconds, only when a job changed since
the last write.

The loop only says what the reports should say of the run itself (the live line, its facts);
the files are written on a writer thread of their own, from the jobs as state.db holds them
(read through another connection: WAL lets it read while the loop writes), so the loop goes on
submitting and polling meanwhile. Each file is replaced atomically, so a reader never sees half
a report. A write that takes long (a very large run) spaces the next ones out: the writer
works at most about 1/SHARE of the time. The run's final report waits for the writer and
replaces the live one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

SHARE = 20  # at most 1/SHARE of the loop's time goes to live reports


class LiveReport:
    """Calls `write` from `tick` when `every` seconds passed since the last write (or since
    the start) and `changes()` differs from what it was then; `every` 0: never.

    `write` runs on the loop's thread and returns the slow part of the write, which runs on a
    writer thread while the loop goes on; a tick while it runs does nothing. `wait` waits for
    it (before the final report)."""

    def __init__(
        self,
        every: float,
        write: Callable[[], Callable[[], None]],
        changes: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self.write = write
        self.changes = changes
        self.clock = clock
        self.due = clock() + every
        self.written_at: int | None = None  # changes() at the last write
        self.writes = 0
        self.cost_s = 0.0  # how long the last write took
        self.writer: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the live reports, if anything

    @property
    def busy(self) -> bool:
        """A write is under way on the writer thread."""
        return self.writer is not None and self.writer.is_alive()

    def tick(self) -> None:
        if self.every <= 0 or self.busy:
            return
        now = self.clock()
        if now < self.due:
            return
        mark = self.changes()
        if mark == self.written_at:
            self.due = now + self.every
            return
        work = self.write()
        self.written_at = mark
        self.writes += 1
        self.due = math.inf  # set when the write is done
        self.writer = threading.Thread(
            target=self._run, args=(work, now), name="live-report", daemon=True
        )
        self.writer.start()

    def _run(self, work: Callable[[], None], started: float) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - the run goes on; its final report will say
            self.error, self.every = exc, 0
        done = self.clock()
        self.cost_s = done - started
        self.due = done + max(self.every, SHARE * self.cost_s)

    def wait(self) -> None:
        """Until the write under way (if any) is done."""
        if self.writer is not None:
            self.writer.join()

    @property
    def refresh_s(self) -> int:
        """How often a live report.html reloads itself: about as often as it is rewritten."""
        return max(5, math.ceil(self.every))


def waiting_text(at_server: int, wait: str, *, stopped: str = "") -> str:
    """What the run waits for: 'waiting on 12 jobs at the server', the rate limit's pause,
    why submits stopped; '' when it waits on nothing said."""
    parts = [f"waiting on {at_server} job{'s' if at_server != 1 else ''} at the server"]
    parts = parts if at_server else []
    return "; ".join([*parts, *(t for t in (wait, stopped) if t)])

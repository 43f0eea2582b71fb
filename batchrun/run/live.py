"""The reports while the run goes: report.csv, summary.json and report.html rewritten from the
run loop between two steps, every `run.report_every` seconds, only when a job changed since
the last write.

The rows come from the run's table in memory (nothing is read again from state.db but the
ledger), and each file is replaced atomically, so a reader never sees half a report. A write
that takes long (a very large run) spaces the next ones out: the loop spends at most about
1/SHARE of its time on them. The run's final report replaces the live one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

SHARE = 20  # at most 1/SHARE of the loop's time goes to live reports


class LiveReport:
    """Calls `write` from `tick` when `every` seconds passed since the last write (or since
    the start) and `changes()` differs from what it was then; `every` 0: never."""

    def __init__(
        self,
        every: float,
        write: Callable[[], None],
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

    def tick(self) -> None:
        if self.every <= 0:
            return
        now = self.clock()
        if now < self.due:
            return
        mark = self.changes()
        if mark == self.written_at:
            self.due = now + self.every
            return
        self.write()
        done = self.clock()
        self.cost_s = done - now
        self.written_at = mark
        self.writes += 1
        self.due = done + max(self.every, SHARE * self.cost_s)

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

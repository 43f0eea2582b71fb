"""Run progress: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from batchrun.records import REPORT_STATUSES, report_status


def report_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts per internal state as counts per reported status (submitting reads unknown),
    in REPORT_STATUSES order, zero counts left out."""
    merged: dict[str, int] = {}
    for state, n in counts.items():
        key = report_status(state)
        merged[key] = merged.get(key, 0) + n
    return {k: merged[k] for k in REPORT_STATUSES if merged.get(k)}


def describe(counts: Mapping[str, int]) -> str:
    """'succeeded 10, failed 1, running 3' (zero counts left out), in the report's words."""
    return ", ".join(f"{k} {n}" for k, n in report_counts(counts).items())


class Progress:
    """Shows done/total and per-state counts; silent with `quiet`."""

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.quiet = quiet
        self.interval = interval
        self.clock = clock
        self._last_line = clock()
        self._last_bar = 0.0
        self._bar = None
        if not quiet and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="job", file=self.stream, leave=True)

    def update(
        self, counts: Mapping[str, int], done: int, api_calls: int, *, force: bool = False
    ) -> None:
        if self.quiet:
            return
        now = self.clock()
        if self._bar is not None:
            if not force and now - self._last_bar < 0.1:
                return  # a redraw per event would cost more than the calls it reports
            self._last_bar = now
            self._bar.n = done
            self._bar.set_postfix_str(describe(counts), refresh=False)
            self._bar.refresh()
            return
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.line(counts, done, api_calls)

    def line(self, counts: Mapping[str, int], done: int, api_calls: int) -> None:
        print(
            f"batchrun: {done}/{self.total} done ({describe(counts)}); {api_calls} API calls",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def secs(seconds: float) -> str:
    """30m, 90s, 0.6s: a duration as the manifest would write it."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"

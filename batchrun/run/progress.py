"""Run progress: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from batchrun.store.records import REPORT_STATUSES, report_status
from batchrun.util.durations import duration


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


# A pause shorter than this passes before anyone reads the line. The limiter's own pause after
# a 429 without Retry-After is 1 s: a longer one is the server's Retry-After.
WAIT_SHOWN_S = 2.0


def server_wait(paused_for: Callable[[], float]) -> Callable[[], str]:
    """What the run waits for, from the rate limiter's `paused_for`: 'waiting 300 s: server
    rate limit (Retry-After)' during a pause of WAIT_SHOWN_S or more, else ''."""

    def text() -> str:
        left = paused_for()
        if left < WAIT_SHOWN_S:
            return ""
        return f"waiting {math.ceil(left)} s: server rate limit (Retry-After)"

    return text


class Progress:
    """Shows done/total, per-state counts, given `cost` the spend so far against the estimate
    (Budget.line), and given `waiting` what the run waits for (server_wait); silent with
    `quiet`. A wait shows at once in a log line, not only at the next interval."""

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        cost: Callable[[], str] | None = None,
        waiting: Callable[[], str] | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.quiet = quiet
        self.interval = interval
        self.clock = clock
        self.cost = cost
        self.waiting = waiting
        self.notes: list[Callable[[], str]] = []  # more to show when not '' (files to fetch)
        self._was_waiting = False
        self.started = clock()
        self._last_line = self.started
        self._last_bar = 0.0
        self._done_at_start: int | None = None  # jobs finished by earlier runs (resume)
        self._bar = None
        if not quiet and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="job", file=self.stream, leave=True)

    def update(
        self, counts: Mapping[str, int], done: int, api_calls: int, *, force: bool = False
    ) -> None:
        if self.quiet:
            return
        now = self.clock()
        if self._done_at_start is None:
            self._done_at_start = done
        if self._bar is not None:
            if not force and now - self._last_bar < 0.1:
                return  # a redraw per event would cost more than the calls it reports
            self._last_bar = now
            if self._bar.n == 0 and done:
                self._bar.initial = self._done_at_start  # tqdm's rate and ETA: this run's jobs
            self._bar.n = done
            self._bar.set_postfix_str(", ".join(self.parts(counts, api_calls)), refresh=False)
            self._bar.refresh()
            return
        wait = self.waiting() if self.waiting else ""
        starts = bool(wait) and not self._was_waiting
        self._was_waiting = bool(wait)
        if starts or now - self._last_line >= self.interval:
            self._last_line = now
            self.line(counts, done, api_calls)

    def parts(self, counts: Mapping[str, int], api_calls: int) -> list[str]:
        """What the bar shows after its own done/total, elapsed and ETA."""
        parts = [describe(counts), f"{api_calls} API calls"]
        parts += [self.cost()] if self.cost else []
        return parts + self._wait()

    def _wait(self) -> list[str]:
        """The notes, then what the run waits for; each only when it has something to say."""
        said = [note() for note in self.notes]
        wait = self.waiting() if self.waiting else ""
        return [text for text in (*said, wait) if text]

    def timing(self, done: int) -> str:
        """'elapsed 1m05s, ETA 2m10s' (the ETA from this run's jobs per second so far)."""
        elapsed = self.clock() - self.started
        text = f"elapsed {duration(elapsed)}"
        finished = done - (self._done_at_start or 0)
        left = self.total - done
        if left <= 0:
            return text
        if finished <= 0 or elapsed <= 0:
            return f"{text}, ETA ?"
        return f"{text}, ETA {duration(left * elapsed / finished)}"

    def line(self, counts: Mapping[str, int], done: int, api_calls: int) -> None:
        """A log line: `batchrun: 12/40 done (succeeded 12, running 8); 30 API calls;
        elapsed 15s, ETA 35s`."""
        if self._done_at_start is None:
            self._done_at_start = done
        head = f"{done}/{self.total} done ({describe(counts)})"
        parts = [head, f"{api_calls} API calls", self.timing(done)]
        if self.cost:
            parts.append(self.cost())
        parts += self._wait()
        print("batchrun: " + "; ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def is_terminal(stream: TextIO) -> bool:
    """A terminal a person watches: a tty with a size and a TERM that can redraw a line. A
    pseudo-terminal with no real one behind it (`script -qc` in CI: 0 columns) or TERM=dumb
    gets log lines, which show up in a CI log as they come; a redrawn bar would not."""
    try:
        if not stream.isatty():
            return False
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return False
    return columns > 0 and os.environ.get("TERM", "") not in ("", "dumb")

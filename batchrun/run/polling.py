"""When to read a job next: learned from the jobs already finished in this run.

Two schedules share what is learned. The minimal one (`PollPlanner.first_delay` /
`next_delay`) reads a job about once, when most jobs like it are done; the scheduler keeps it
for when the rate binds. Calls the rate allows beyond that go to the jobs most likely finished
since their last read (`finished_odds`), so a finished job's slot is freed soon after.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from datetime import datetime
from typing import Any

POLL_CAP = 30.0  # seconds; never wait longer than this between two reads of a job
_WINDOW = 200  # finished jobs remembered (per model, and for all models together)
MIN_SAMPLES = 3  # a model's own run times are used once this many are known
# Before any job finished, and for a job that outlives every one seen: run times are taken
# as log-uniform between these (a job as likely to take 1-2 s as 100-200 s).
PRIOR_LOW_S, PRIOR_HIGH_S = 0.25, 3600.0
TAIL = 0.05  # weight of that prior next to the run times seen
MIN_GAP_S, MAX_GAP_S = 0.05, 2.0  # between two reads of a job: 5% of its model's median run


class RunTimes:
    """Server-side run times of finished jobs, per model: the odds a job is done by an age."""

    def __init__(self) -> None:
        self._seen: dict[str | None, deque[float]] = {None: deque(maxlen=_WINDOW)}
        self._sorted: dict[str | None, list[float]] = {}
        self.learned = 0  # run times learned so far (a cheap "has anything changed")

    def learn(self, model: str | None, seconds: float) -> None:
        self.learned += 1
        for key in {None, model}:
            self._seen.setdefault(key, deque(maxlen=_WINDOW)).append(seconds)
            self._sorted.pop(key, None)

    def known(self, model: str | None) -> bool:
        """Enough of `model`'s own run times are known to go by."""
        return len(self._seen.get(model, ())) >= MIN_SAMPLES

    def samples(self, model: str | None = None) -> list[float]:
        """The run times to go by, sorted: the model's own once known, else every model's."""
        key = model if len(self._seen.get(model, ())) >= MIN_SAMPLES else None
        if len(self._seen[key]) < MIN_SAMPLES:
            return []
        if key not in self._sorted:
            self._sorted[key] = sorted(self._seen[key])
        return self._sorted[key]

    def cdf(self, model: str | None, seconds: float) -> float:
        """Probability a job of `model` finishes within `seconds` of starting."""
        prior = _prior_cdf(seconds)
        runs = self.samples(model)
        if not runs:
            return prior
        return (1.0 - TAIL) * _empirical_cdf(runs, seconds) + TAIL * prior

    def mean(self, model: str | None = None) -> float | None:
        runs = self.samples(model)
        return statistics.fmean(runs) if runs else None

    def quantile(self, model: str | None, q: float) -> float | None:
        runs = self.samples(model)
        if not runs:
            return None
        # statistics.quantiles(runs, n=100, method="inclusive")[i - 1]: that cut point alone
        # (all 99 were worked out, for each poll planned); runs holds MIN_SAMPLES or more
        i = min(99, int(q * 100))
        j, delta = divmod(i * (len(runs) - 1), 100)
        return (runs[j] * (100 - delta) + runs[j + 1] * delta) / 100

    def min_gap(self, model: str | None) -> float:
        """The least time between two reads of one job: 5% of a typical run, 50 ms-2 s."""
        median = self.quantile(model, 0.5)
        return MIN_GAP_S if median is None else min(MAX_GAP_S, max(MIN_GAP_S, 0.05 * median))


def finished_odds(
    runs: RunTimes, model: str | None, *, ran: float, ran_at_last_read: float
) -> float:
    """Probability a job that had run `ran_at_last_read` s unfinished at its last read (0: never
    read, or not started then) has finished now, having run `ran` s."""
    if ran <= 0:
        return 0.0
    before = runs.cdf(model, max(0.0, ran_at_last_read))
    left = 1.0 - before
    if left <= 1e-12:
        return 1.0
    return max(0.0, (runs.cdf(model, ran) - before) / left)


class PollPlanner:
    """Learns the server-side duration of jobs (created -> finished) and paces reads with it.

    Server timestamps are used, not the moment we noticed a job was done: the latter depends
    on when we polled and would feed back into ever later polls.
    """

    def __init__(self, poll_interval: float, *, cap: float = POLL_CAP) -> None:
        self.poll_interval = poll_interval
        self.cap = max(cap, poll_interval)
        self.runs = RunTimes()
        self._finishes: deque[float] = deque(maxlen=_WINDOW)  # our clock, for throughput

    def learn(
        self,
        result: dict[str, Any],
        now: float,
        *,
        model: str | None = None,
        queued_s: float = 0.0,
    ) -> None:
        """Record a finished job's result (its created_at/finished_at, when given), less the
        `queued_s` seconds it is known to have waited in the server's queue."""
        self._finishes.append(now)
        created = _epoch(result.get("created_at"))
        finished = _epoch(result.get("finished_at"))
        if created is not None and finished is not None and finished >= created:
            self.runs.learn(model, max(0.0, finished - created - queued_s))

    def typical(self, model: str | None = None) -> float | None:
        """A duration most jobs finish within (the 90th percentile), once 3 are known."""
        return self.runs.quantile(model, 0.9)

    def throughput(self) -> float | None:
        """Jobs the server finishes per second, seen over the recent window."""
        if len(self._finishes) < 3:
            return None
        span = self._finishes[-1] - self._finishes[0]
        return (len(self._finishes) - 1) / span if span > 0 else None

    def queue_wait(self, position: int) -> float:
        """Roughly how long a job at `position` in the server's queue waits to start."""
        rate = self.throughput()
        return position / rate if rate else position * self.poll_interval

    def first_delay(self, model: str | None = None) -> float:
        """First read after submitting: poll_interval, or later when jobs take longer."""
        typical = self.typical(model)
        return min(self.cap, max(self.poll_interval, typical or 0.0))

    def next_delay(
        self, *, age: float, queue_position: int | None = None, model: str | None = None
    ) -> float:
        """Delay before the next read of a job submitted `age` seconds ago and not finished."""
        if queue_position:
            return min(self.cap, max(self.poll_interval, self.queue_wait(queue_position)))
        typical = self.typical(model)
        if typical is not None and age < typical:
            # most jobs are done by `typical`: look then, even if sooner than poll_interval
            return min(self.cap, max(0.05, typical - age))
        # Past the typical duration: back off with age (a third of it), so a slow job costs
        # O(log) reads and is noticed at most a third of its age late.
        return min(self.cap, max(self.poll_interval, age / 3))


def _empirical_cdf(runs: list[float], seconds: float) -> float:
    """Piecewise linear through the n sorted run times, from 0 at the shortest (i / n at the
    i-th after it) to 1 one mean gap past the longest. The longest of n runs seen falls short
    of the longest there is by about that gap: a job that just outlived every run seen is most
    likely about to finish, not one of the long tail."""
    n = len(runs)
    i = bisect.bisect_right(runs, seconds)
    if i == 0:
        return 0.0
    if i == n:
        gap = (runs[-1] - runs[0]) / (n - 1)
        past = (seconds - runs[-1]) / gap if gap > 0 else 1.0
        return min(1.0, (n - 1 + past) / n)
    low, high = runs[i - 1], runs[i]
    step = (seconds - low) / (high - low) if high > low else 0.0
    return (i - 1 + step) / n


def _prior_cdf(seconds: float) -> float:
    if seconds <= PRIOR_LOW_S:
        return 0.0
    if seconds >= PRIOR_HIGH_S:
        return 1.0
    return math.log(seconds / PRIOR_LOW_S) / math.log(PRIOR_HIGH_S / PRIOR_LOW_S)


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

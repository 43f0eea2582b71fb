"""When to poll a job next: learned from the jobs already finished in this run."""

from __future__ import annotations

import statistics
from collections import deque
from datetime import datetime

POLL_CAP = 30.0  # seconds; never wait longer than this between two reads of a job
_WINDOW = 200  # finished jobs remembered


class PollPlanner:
    """Learns the server-side duration of jobs (created -> finished) and paces reads with it.

    Server timestamps are used, not the moment we noticed a job was done: the latter depends
    on when we polled and would feed back into ever later polls.
    """

    def __init__(self, poll_interval: float, *, cap: float = POLL_CAP) -> None:
        self.poll_interval = poll_interval
        self.cap = max(cap, poll_interval)
        self._durations: deque[float] = deque(maxlen=_WINDOW)
        self._finishes: deque[float] = deque(maxlen=_WINDOW)  # our clock, for throughput

    def learn(self, result: dict, now: float) -> None:
        """Record a finished job's result (its created_at/finished_at, when given)."""
        self._finishes.append(now)
        created = _epoch(result.get("created_at"))
        finished = _epoch(result.get("finished_at"))
        if created is not None and finished is not None and finished >= created:
            self._durations.append(finished - created)

    def typical(self) -> float | None:
        """A duration most jobs finish within (the 90th percentile), once 3 are known."""
        if len(self._durations) < 3:
            return None
        return statistics.quantiles(self._durations, n=10, method="inclusive")[-1]

    def throughput(self) -> float | None:
        """Jobs the server finishes per second, seen over the recent window."""
        if len(self._finishes) < 3:
            return None
        span = self._finishes[-1] - self._finishes[0]
        return (len(self._finishes) - 1) / span if span > 0 else None

    def first_delay(self) -> float:
        """First read after submitting: poll_interval, or later when jobs take longer."""
        typical = self.typical()
        return min(self.cap, max(self.poll_interval, typical or 0.0))

    def next_delay(self, *, age: float, queue_position: int | None = None) -> float:
        """Delay before the next read of a job submitted `age` seconds ago and not finished."""
        if queue_position:
            rate = self.throughput()
            per_job = 1.0 / rate if rate else self.poll_interval
            return min(self.cap, max(self.poll_interval, queue_position * per_job))
        typical = self.typical()
        if typical is not None and age < typical:
            # most jobs are done by `typical`: look then, even if sooner than poll_interval
            return min(self.cap, max(0.05, typical - age))
        # Past the typical duration: back off with age (a third of it), so a slow job costs
        # O(log) reads and is noticed at most a third of its age late.
        return min(self.cap, max(self.poll_interval, age / 3))


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

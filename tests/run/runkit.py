"""What the tests of the jobs at the server (test_flights.py) and of the scheduler
(test_scheduler.py) share: jobs of one model, an injected clock, learned run times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.grid import Job
from batchrun.plan.settings import RunSettings
from batchrun.run.flights import Flights
from batchrun.run.jobtable import JobTable
from batchrun.run.outcome import Outcome
from batchrun.run.parts import RunParts
from batchrun.run.polling import PollPlanner

MODEL = "google/nano-banana-2-lite/text-to-image"
VIDEO = "bytedance/seedance-2.5/text-to-video/1080p"
T0 = 1_800_000_000.0  # epoch seconds of "submitted at" in these tests


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def some_jobs(n: int, model: str = MODEL) -> list[Job]:
    return [Job(f"job{i:03d}", model, {"prompt": str(i)}, {}, 0, i) for i in range(n)]


def learn_uniform(planner: PollPlanner, model: str, low: float, high: float, n: int = 60) -> None:
    """n finished jobs of `model` whose server run times spread evenly over low-high."""
    for i in range(n):
        secs = low + (high - low) * i / (n - 1)
        body = {"created_at": "2026-01-01T00:00:00Z", "finished_at": iso(secs)}
        planner.learn(body, now=i * 0.2, model=model)


def iso(seconds: float) -> str:
    return (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


def answer(flights: Flights, job_id: str, at: float, body: dict[str, Any]) -> None:
    flights.polled(Outcome("poll", job_id, value={"request_id": f"r-{job_id}", **body}, at=at))


class FakeClient:
    calls: dict[str, int] = {}

    def submit(self, *args: Any) -> Any:  # pragma: no cover - only collected in these tests
        raise AssertionError("not sent in these tests")

    result = cancel = submit


def parts(table: JobTable, limiter: RateLimiter, run: RunSettings, clock: Clock) -> RunParts:
    return RunParts(table, FakeClient(), limiter, run, clock, clock)  # type: ignore[arg-type]

"""The threads that make the API calls: each waits for the rate limiter's rolling-window gate
(the moment the call really leaves), makes its call and puts the Outcome on the queue the
scheduler reads. Workers only talk HTTP; what an outcome means is decided by the scheduler."""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from batchrun.api.ratelimit import RateLimiter
from batchrun.run.outcome import API_CALLS, Outcome


class Workers:
    def __init__(self, size: int, limiter: RateLimiter, wall: Callable[[], float]) -> None:
        self.size = size
        self.limiter = limiter
        self.wall = wall
        self.busy = 0  # calls handed out whose outcome has not been collected
        self.results: queue.Queue[Outcome] = queue.Queue()  # downloads put theirs here too
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="batchrun-api")

    def call(self, kind: str, job_id: str, call: Callable[..., Any], *args: Any) -> None:
        self.busy += 1
        self._pool.submit(self._work, kind, job_id, call, *args)

    def collect(self, wait: float) -> list[Outcome]:
        """Wait up to `wait` seconds for an outcome, then take every one already back."""
        outcomes: list[Outcome] = []
        try:
            if wait > 0:
                outcomes.append(self.results.get(timeout=wait))
            while True:
                outcomes.append(self.results.get_nowait())
        except queue.Empty:
            pass
        self.busy -= sum(1 for o in outcomes if o.kind in API_CALLS)
        return outcomes

    def shutdown(self) -> None:
        """Wait for the calls already sent (their outcomes stay on the queue)."""
        # no cancel_futures: a submit handed to a worker is already marked SUBMITTING
        self._pool.shutdown(wait=True)

    def _work(self, kind: str, job_id: str, call: Callable[..., Any], *args: Any) -> None:
        self.limiter.gate()  # the rolling-window cap, on the moment the call really leaves
        sent = self.wall()
        try:
            self.results.put(Outcome(kind, job_id, call(*args), at=sent))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the scheduler
            self.results.put(Outcome(kind, job_id, error=exc, at=sent))

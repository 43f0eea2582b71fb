"""What the run loop's pieces (the scheduler, the jobs at the server) share: the job table,
the API client, the rate limiter, the run settings, the clocks, and where more jobs come from
when the table does not hold them all from the start."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from batchrun.api.client import Client
from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.settings import RunSettings
from batchrun.run.jobtable import JobTable
from batchrun.store.records import JobRow


class Feed(Protocol):
    """More jobs as the run goes (a shared sweep's claims, run/shared.py)."""

    def more(self, waiting: int | None) -> tuple[list[JobRow], list[JobRow]] | None:
        """(pending jobs to submit, jobs at the server to poll), or None: nothing now.
        `waiting`: pending jobs the run still holds (None: it submits no more)."""

    def done(self) -> bool:
        """No job is left for anyone: the run may end."""


@dataclass(frozen=True)
class RunParts:
    jobs: JobTable
    client: Client
    limiter: RateLimiter
    run: RunSettings
    clock: Callable[[], float] = time.monotonic  # intervals and deadlines
    wall: Callable[[], float] = time.time  # epoch seconds, as recorded
    feed: Feed | None = None
    # submit(model_id, inputs) -> request id: the client's, or one that makes local input
    # files sendable first (run/inputs.py)
    submit: Callable[[str, dict[str, Any]], str] | None = None

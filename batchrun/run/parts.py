"""What the run loop's pieces (the scheduler, the jobs at the server) share: the job table,
the API client, the rate limiter, the run settings and the clocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.api.client import Client
from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.settings import RunSettings
from batchrun.run.jobtable import JobTable


@dataclass(frozen=True)
class RunParts:
    jobs: JobTable
    client: Client
    limiter: RateLimiter
    run: RunSettings
    clock: Callable[[], float] = time.monotonic  # intervals and deadlines
    wall: Callable[[], float] = time.time  # epoch seconds, as recorded
    # submit(model_id, inputs) -> request id: the client's, or one that makes local input
    # files sendable first (run/inputs.py)
    submit: Callable[[str, dict[str, Any]], str] | None = None

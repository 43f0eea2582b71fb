"""Fault injection, reproducible from the seed: rate limit, 5xx, dropped connections, latency.

Per-call faults (error, drop) draw from one seeded `random.Random` per kind under a lock, so a
run that makes the same calls in the same order sees the same faults. Per-job faults (fail,
drift, malicious variant, run time) hash the job's input identity with the seed instead
(queue.py), which stays reproducible however concurrent clients interleave.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from batchrun.simulator.settings import SimSettings

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_HTML_503 = (
    b"<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><h1>Service Temporarily Unavailable</h1><p>Please retry later.</p></body></html>"
)


@dataclass(frozen=True)
class InjectedError:
    """A 5xx answer chosen by the error fault."""

    status: int
    body: bytes
    content_type: str
    retry_after: int | None = None


class RollingWindow:
    """At most `rate` calls in any one second, counted as the server receives them.

    A call is let through when fewer than `limit` calls were let through in the `window`
    seconds before it (limit = rate, window = 1 s for a whole rate of at least 1; a rate below
    1/s or with a fraction keeps its average: limit = max(1, floor(rate)), window = limit/rate).
    Refused calls do not count: they did no work."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.limit = max(1, math.floor(rate))
        self.window = self.limit / rate
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 when the call may proceed, else the seconds until it would."""
        with self._lock:
            now = self._clock()
            times = self._times
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) < self.limit:
                times.append(now)
                return 0.0
            return times[0] + self.window - now


class Faults:
    """Decides, call by call, which fault (if any) to inject."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        seed = self.settings.seed
        with self._lock:
            self._error_rng = random.Random(f"{seed}:error")
            self._drop_rng = random.Random(f"{seed}:drop")
            rate = self.settings.rate_limit
            self.limiter = RollingWindow(rate) if rate else None

    def throttle(self) -> int | None:
        """Retry-After seconds (an integer >= 1) when the call is over the rate, else None."""
        if self.limiter is None:
            return None
        wait = self.limiter.take()
        return max(1, math.ceil(wait)) if wait > 0 else None

    def error(self) -> InjectedError | None:
        """A 500/502/503 answer for this call, or None; some bodies are HTML like a proxy's."""
        if self.settings.error_rate <= 0:
            return None
        with self._lock:
            if self._error_rng.random() >= self.settings.error_rate:
                return None
            status = self._error_rng.choice((500, 502, 503))
            html = self._error_rng.random() < 0.5
        if status == 500:
            body = b'{"error_code": 500001, "error_message": "internal server error (simulated)"}'
            return InjectedError(500, body, "application/json")
        if status == 502:
            if html:
                return InjectedError(502, _HTML_502, "text/html")
            body = b'{"error_code": 500001, "error_message": "bad gateway (simulated)"}'
            return InjectedError(502, body, "application/json")
        if html:
            return InjectedError(503, _HTML_503, "text/html", retry_after=1)
        body = b'{"error_code": 500001, "error_message": "service unavailable (simulated)"}'
        return InjectedError(503, body, "application/json", retry_after=1)

    def drop(self) -> str | None:
        """None, or how to drop this call's connection: "silent" (no bytes) or "partial"."""
        if self.settings.drop_rate <= 0:
            return None
        with self._lock:
            if self._drop_rng.random() >= self.settings.drop_rate:
                return None
            return "partial" if self._drop_rng.random() < 0.5 else "silent"

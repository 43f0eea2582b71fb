"""One token bucket for every API call, with a global pause on 429 and adaptive slow-down.

The engine's scheduler asks `wait_time()` / `try_acquire()` and decides itself which call gets
a token (a submit before a poll); `acquire(priority)` is the blocking form for other callers and
threads, where a poll waits while a submit is waiting.

A burst (`burst_s` seconds' worth of calls) lets a caller that woke late catch up instead of
losing the tokens it slept through. Tokens handed out together leave together, and on a busy
machine worker threads bunch them further; so a sender calls `gate()` right before each call,
which holds it until the last second's sends number fewer than floor(rate) + 1, what a burst
of one allows. No second then holds more than the server's limit plus one (the engine runs
2% under the limit, which leaves a margin for the server's own jitter).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable

SUBMIT = 0  # higher priority (smaller number)
POLL = 1

MAX_PAUSE = 3600.0  # a Retry-After beyond an hour is a server bug, not a wish
EPSILON = 1e-6  # float slack, so a token due "now" is not missed by a rounding error


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before try `attempt` + 1 (attempt >= 1 failed): base * 2**(attempt-1),
    at most `cap`, times a random 0.5-1 so callers that failed together do not retry together."""
    return min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 64)) * rng.uniform(0.5, 1.0)


class RateLimiter:
    """Token bucket of `rate` calls/s (None = unlimited until a 429 says otherwise)."""

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float = 1.0,
        burst_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        decrease: float = 0.7,
        floor: float = 0.2,
        recovery_delay: float = 10.0,
        recovery_per_s: float = 0.02,
        default_pause: float = 1.0,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.configured = rate
        self.burst = max(1.0, burst)
        self.burst_s = burst_s  # seconds of calls that may be saved up (see the docstring)
        self.clock = clock
        self.sleep = sleep
        self.decrease = decrease
        self.floor = floor
        self.recovery_delay = recovery_delay
        self.recovery_per_s = recovery_per_s  # fraction of the ceiling regained per second
        self.default_pause = default_pause
        self.throttled_count = 0
        self._lock = threading.Lock()
        now = clock()
        self._tokens = self.burst
        self._refilled = now
        self._paused_until = now
        self._ceiling = rate  # where recovery stops
        self._lowered: float | None = None  # rate right after the last 429
        self._throttled_at: float | None = None
        self._recent: deque[float] = deque()  # acquisition times, to size an unknown rate
        self._sent: deque[float] = deque()  # gate() times in the last second
        self._waiting = [0, 0]  # blocked acquire() callers per priority

    # ---- the rate ----------------------------------------------------------------------

    def current_rate(self) -> float | None:
        """The rate in force now: the configured one, or lower while recovering from 429s."""
        with self._lock:
            return self._rate(self.clock())

    def _rate(self, now: float) -> float | None:
        if self._lowered is None or self._throttled_at is None:
            return self._ceiling
        ceiling = self._ceiling if self._ceiling is not None else self._lowered
        regained = now - self._throttled_at - self.recovery_delay
        if regained <= 0:
            return self._lowered
        return min(ceiling, self._lowered + ceiling * self.recovery_per_s * regained)

    def _refill(self, now: float) -> None:
        start = max(self._refilled, self._paused_until)
        if now > start:
            rate = self._rate(now)
            if rate is None:
                self._tokens = self.burst
            else:
                self._tokens = min(self._burst(rate), self._tokens + (now - start) * rate)
            self._refilled = now

    def _burst(self, rate: float) -> float:
        return max(self.burst, self.burst_s * rate)

    # ---- taking tokens ------------------------------------------------------------------

    def wait_time(self) -> float:
        """Seconds until a token is available (0.0: one is available now)."""
        with self._lock:
            return self._wait(self.clock())

    def _wait(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        self._refill(now)
        rate = self._rate(now)
        if rate is None:
            return 0.0
        wait = 0.0 if self._tokens >= 1.0 - EPSILON else (1.0 - self._tokens) / rate
        return 0.0 if wait <= 0.0 else max(EPSILON, wait)

    def try_acquire(self) -> bool:
        """Take a token if one is available now."""
        with self._lock:
            now = self.clock()
            if self._wait(now) > 0:
                return False
            self._take(now)
            return True

    def _take(self, now: float) -> None:
        if self._rate(now) is not None:
            self._tokens -= 1.0
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 2.0:
            self._recent.popleft()

    def acquire(self, priority: int = POLL) -> None:
        """Block (through the injected sleep) until a token is ours; polls yield to submits."""
        with self._lock:
            self._waiting[priority] += 1
        try:
            while True:
                with self._lock:
                    now = self.clock()
                    wait = self._wait(now)
                    outranked = any(self._waiting[p] for p in range(priority))
                    if wait <= 0 and not outranked:
                        self._take(now)
                        return
                self.sleep(min(wait, 0.05) if wait > 0 else 0.005)
        finally:
            with self._lock:
                self._waiting[priority] -= 1

    def gate(self) -> None:
        """Hold a call that has its token until sending it keeps every second within the cap.

        A no-op without a burst (the bucket alone keeps any second within rate + 1) or without
        a rate.
        """
        while True:
            with self._lock:
                now = self.clock()
                rate = self._rate(now)
                if rate is None or self.burst_s * rate <= 1.0:
                    return
                sent = self._sent
                while sent and now - sent[0] >= 1.0:
                    sent.popleft()
                if len(sent) < math.floor(rate + EPSILON) + 1:
                    sent.append(now)
                    return
                wait = max(EPSILON, sent[0] + 1.0 - now)
            self.sleep(wait)

    # ---- feedback from the server -------------------------------------------------------

    def throttled(self, retry_after: float | None) -> None:
        """A 429: pause every caller for Retry-After and lower the rate (once per burst of 429s)."""
        with self._lock:
            now = self.clock()
            self.throttled_count += 1
            pause = self.default_pause if retry_after is None else min(retry_after, MAX_PAUSE)
            self._paused_until = max(self._paused_until, now + pause)
            self._tokens = 0.0
            self._refilled = max(self._refilled, now)
            # Calls already in flight answer 429 together: that is one signal, not several.
            if self._throttled_at is not None and now - self._throttled_at < max(pause, 1.0):
                return
            rate = self._rate(now)
            if rate is None:
                # Unlimited so far: the rate that drew the 429 is the ceiling from now on.
                observed = len([t for t in self._recent if t >= now - 2.0]) / 2.0
                self._ceiling = max(self.floor, observed)
                rate = self._ceiling
            self._lowered = max(self.floor, rate * self.decrease)
            self._throttled_at = now

    def paused_for(self) -> float:
        """Seconds left of a Retry-After pause."""
        with self._lock:
            return max(0.0, self._paused_until - self.clock())

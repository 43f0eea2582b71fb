"""One token bucket for every API call, a rolling-window cap on sends, a pause on 429.

The engine's scheduler asks `wait_time()` / `try_acquire()` and decides itself which call gets
a token (a submit before a poll); `acquire(priority)` is the blocking form for other callers and
threads, where a poll waits while a submit is waiting.

A burst (`burst_s` seconds' worth of calls) lets a caller that woke late catch up instead of
losing the tokens it slept through. Tokens handed out together leave together, and on a busy
machine worker threads bunch them further; so a sender calls `gate()` right before each call.
The gate is the guarantee: with k = max(1, floor(rate)), at most k calls leave in any window of
W = max(1, k / rate) * (1 + margin) seconds. A server counting calls per rolling second then
sees at most `rate` of them as long as the network delays no call by `margin` seconds more
than another. The bucket paces at k / W, and a token is handed out only when the gate has room
for its call, counting the calls handed out that have not left yet: so calls do not pile up at
the gate, and the call the scheduler chooses now (a submit before a poll) is the next to leave.

A 429 pauses every caller for its Retry-After (the 429s of calls already in flight with it are
one episode) and widens the margin by `margin_step` (up to MAX_MARGIN): the server saw more
jitter than the margin allowed for. Only a second episode within `repeat_window` seconds lowers
the rate, by `decrease`; it climbs back to the configured rate within seconds.
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

MAX_MARGIN = 0.1
MAX_PAUSE = 3600.0  # a Retry-After beyond an hour is a server bug, not a wish
TAKEN_RECHECK = 0.001  # s: every call in the window is handed out, none has left yet
EPSILON = 1e-6  # float slack, so a token due "now" is not missed by a rounding error


# A refused submit or a failed read waits 0.5 s, 1 s, 2 s... (with jitter), at most 30 s.
CALL_BACKOFF_BASE_S = 0.5
CALL_BACKOFF_CAP_S = 30.0


def call_backoff(errors: int, rng: random.Random) -> float:
    """Seconds before an API call is tried again after `errors` failures in a row."""
    return backoff(errors, base=CALL_BACKOFF_BASE_S, cap=CALL_BACKOFF_CAP_S, rng=rng)


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before try `attempt` + 1 (attempt >= 1 failed): base * 2**(attempt-1),
    at most `cap`, times a random 0.5-1 so callers that failed together do not retry together."""
    return min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 64)) * rng.uniform(0.5, 1.0)


class RateLimiter:
    """Token bucket of `rate` calls/s (None = unlimited until a 429 says otherwise)."""

    # How a 429 lowers the rate and how it comes back.
    decrease = 0.85  # a second 429 episode within `repeat_window` s multiplies the rate by it
    repeat_window = 30.0
    floor = 0.2  # calls/s, the lowest it goes
    recovery_delay = 3.0  # s after the last 429 before the rate climbs back
    recovery_per_s = 0.05  # fraction of the ceiling regained per second
    default_pause = 1.0  # s, when a 429 brings no Retry-After

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float = 1.0,
        burst_s: float = 0.0,
        start_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.0,
        margin_step: float = 0.0,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.configured = rate
        self.burst = max(1.0, burst)
        self.burst_s = burst_s  # seconds of calls that may be saved up (see the docstring)
        self.clock = clock
        self.sleep = sleep
        self.margin = margin  # of the window, for the network's jitter (see the docstring)
        self.margin_step = margin_step
        self.throttled_count = 0
        self._lock = threading.Lock()
        now = clock()
        # The first calls (a run's first submits, one per slot) need not leave 1/rate s apart:
        # the bucket starts with `start_s` seconds of calls, at most k (the gate holds them).
        self._tokens = self.burst
        if rate is not None:
            self._tokens = max(self.burst, min(self._window(rate)[0], start_s * rate))
        self._refilled = now
        self._paused_until = now
        self._ceiling = rate  # where recovery stops
        self._lowered: float | None = None  # rate right after the last lowering
        self._throttled_at: float | None = None  # when the rate was last lowered
        self._episode_at: float | None = None  # when the latest 429 episode began
        self._episode_end = now  # 429s until then belong to that episode
        self._recent: deque[float] = deque()  # acquisition times, to size an unknown rate
        self._sent: deque[float] = deque()  # gate() times within the last window
        self._taken: deque[float] = deque()  # times of tokens taken whose call has not left
        self._waiting = [0, 0]  # blocked acquire() callers per priority
        # A window shared with other processes (a shared sweep's): given (k, W), takes one of
        # k calls per W seconds and returns 0.0, or how long until one is free. The gate
        # takes it, on the moment the call leaves.
        self.shared: Callable[[int, float], float] | None = None

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

    def _window(self, rate: float) -> tuple[int, float]:
        """(k, W): at most k sends in any W seconds keeps every rolling second within `rate`."""
        k = max(1, math.floor(rate + EPSILON))
        return k, max(1.0, k / rate) * (1.0 + self.margin)

    def _pace(self, now: float) -> float | None:
        """Tokens per second: the rate the gate lets through, k / W."""
        rate = self._rate(now)
        if rate is None:
            return None
        k, window = self._window(rate)
        return k / window

    def _refill(self, now: float) -> None:
        start = max(self._refilled, self._paused_until)
        if now > start:
            rate = self._pace(now)
            if rate is None:
                self._tokens = self.burst
            else:
                full = max(self._burst(rate), self._tokens)  # the start's tokens are kept
                self._tokens = min(full, self._tokens + (now - start) * rate)
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
        rate = self._pace(now)
        if rate is None:
            return 0.0
        wait = 0.0 if self._tokens >= 1.0 - EPSILON else (1.0 - self._tokens) / rate
        wait = max(wait, self._room(now))
        return 0.0 if wait <= 0.0 else max(EPSILON, wait)

    def _room(self, now: float) -> float:
        """Seconds until the gate would let one more call leave at once, counting the calls
        whose tokens are taken but that have not left yet. A token is handed out only then:
        otherwise calls queue at the gate, each a little behind the one k sends before it,
        and a submit waits there behind reads decided long before."""
        rate = self._rate(now)
        if rate is None:
            return 0.0
        k, window = self._window(rate)
        sent, taken = self._sent_within(now, window), self._taken
        while taken and now - taken[0] >= window:
            taken.popleft()  # taken but never sent: no longer held against the window
        first_out = len(sent) + len(taken) - k  # sends that must leave the window first
        if first_out < 0:
            return 0.0
        if first_out >= len(sent):
            return TAKEN_RECHECK  # room comes once the calls already handed out have left
        return sent[first_out] + window - now

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
            self._taken.append(now)
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 2.0:
            self._recent.popleft()

    def acquire(self, priority: int = POLL) -> None:
        """Block (through the injected sleep) until a token is ours and sending now keeps every
        window within the cap (gate); polls yield to submits. For callers that send at once
        (cancels), where the scheduler's own calls use try_acquire() and gate()."""
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
                        break
                self.sleep(min(wait, 0.05) if wait > 0 else 0.005)
        finally:
            with self._lock:
                self._waiting[priority] -= 1
        self.gate()

    def gate(self) -> None:
        """Hold a call that has its token until sending it keeps any window of W s within k
        (and, with a shared window, the window every process shares).

        A no-op without a rate. The send is counted the moment this returns.
        """
        while True:
            with self._lock:
                now = self.clock()
                rate = self._rate(now)
                if rate is None:
                    return
                k, window = self._window(rate)
                sent, shared = self._sent_within(now, window), self.shared
                if len(sent) < k and shared is None:
                    self._sent_one(now)
                    return
                wait = max(EPSILON, sent[-k] + window - now) if len(sent) >= k else 0.0
            if shared is not None and wait == 0.0:
                # Room here: the shared window decides (a database round trip, unlocked).
                wait = shared(k, window)
                if wait <= 0:
                    with self._lock:
                        self._sent_one(self.clock())
                    return
            self.sleep(wait)

    def _sent_within(self, now: float, window: float) -> deque[float]:
        """The send times of the last `window` seconds (older ones dropped)."""
        sent = self._sent
        while sent and now - sent[0] >= window:
            sent.popleft()
        return sent

    def _sent_one(self, now: float) -> None:
        self._sent.append(now)
        if self._taken:
            self._taken.popleft()

    # ---- feedback from the server -------------------------------------------------------

    def throttled(self, retry_after: float | None) -> None:
        """A 429: pause every caller for Retry-After; lower the rate only when 429s repeat."""
        with self._lock:
            now = self.clock()
            self.throttled_count += 1
            pause = self.default_pause if retry_after is None else min(retry_after, MAX_PAUSE)
            self._paused_until = max(self._paused_until, now + pause)
            self._tokens = 0.0
            self._refilled = max(self._refilled, now)
            # Calls already in flight answer 429 together: one episode, not several.
            if now < self._episode_end:
                self._episode_end = max(self._episode_end, now + 1.0)
                return
            previous, self._episode_at = self._episode_at, now
            self.margin = max(self.margin, min(MAX_MARGIN, self.margin + self.margin_step))
            self._episode_end = max(now + pause, now + 1.0)
            rate = self._rate(now)
            if rate is None:
                # Unlimited so far: the rate that drew the 429 is the ceiling from now on.
                observed = len([t for t in self._recent if t >= now - 2.0]) / 2.0
                self._ceiling = max(self.floor, observed)
                rate = self._ceiling
            elif previous is None or now - previous > self.repeat_window:
                return  # a first episode: the pause is the answer
            self._lowered = max(self.floor, rate * self.decrease)
            self._throttled_at = now

    def paused_for(self) -> float:
        """Seconds left of a Retry-After pause."""
        with self._lock:
            return max(0.0, self._paused_until - self.clock())

"""The token bucket with a fake clock: rate, Retry-After pause, adaptive slow-down, priority."""

from __future__ import annotations

import heapq
import random
import threading

import pytest

from batchrun.api.ratelimit import POLL, SUBMIT, RateLimiter, backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


TUNING = {"decrease", "repeat_window", "floor", "recovery_delay", "recovery_per_s", "default_pause"}


def limiter(rate: float | None, **kw) -> tuple[RateLimiter, FakeClock]:
    """A limiter on a fake clock; the 429 tuning (class constants) set on this one."""
    clock = FakeClock()
    tuning = {k: kw.pop(k) for k in TUNING & kw.keys()}
    lim = RateLimiter(rate, clock=clock, sleep=clock.sleep, **kw)
    for name, value in tuning.items():
        setattr(lim, name, value)
    return lim, clock


def calls_in(lim: RateLimiter, clock: FakeClock, seconds: float, step: float = 0.001) -> int:
    """How many tokens a greedy caller gets in `seconds` of fake time."""
    end = clock.now + seconds
    n = 0
    while clock.now < end:
        if lim.try_acquire():
            n += 1
        else:
            clock.sleep(step)
    return n


@pytest.mark.parametrize("rate", [0.5, 2.0, 10.0, 50.0])
def test_rate_is_honoured(rate):
    lim, clock = limiter(rate)
    n = calls_in(lim, clock, 20.0)
    # burst of 1 at the start, then `rate` per second
    assert abs(n - (1 + rate * 20)) <= 1


def test_no_window_of_one_second_exceeds_rate_plus_burst():
    lim, clock = limiter(5.0)
    times = []
    end = clock.now + 10
    while clock.now < end:
        if lim.try_acquire():
            times.append(clock.now)
        clock.sleep(0.003)
    worst = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert worst <= 5 + 1


def _late_caller(
    lim: RateLimiter, clock: FakeClock, seconds: float, lateness: float
) -> list[float]:
    """Wakes `lateness` s after each token is due, takes all it can, sends each via gate()."""
    times: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        while lim.try_acquire():
            lim.gate()
            times.append(clock.now)
        clock.sleep(lim.wait_time() + lateness)
    return times


def test_burst_lets_a_late_caller_keep_the_rate():
    lim, clock = limiter(100.0)
    assert len(_late_caller(lim, clock, 10.0, 0.005)) < 700  # burst 1: lateness costs tokens
    for lateness, at_least in [(0.0, 995), (0.005, 995), (0.05, 950)]:
        lim, clock = limiter(100.0, burst_s=0.1)
        assert len(_late_caller(lim, clock, 10.0, lateness)) >= at_least


@pytest.mark.parametrize("rate", [4.9, 9.8, 49.0, 98.0])
def test_a_burst_never_puts_more_than_rate_plus_one_into_a_second(rate):
    """Idle (the bucket fills), then greedy, late, or idle again: every 1-s window <= rate+1."""
    lim, clock = limiter(rate, burst_s=0.1)
    times: list[float] = []
    for idle, lateness in [(2.0, 0.0), (0.0, 0.03), (0.3, 0.0), (0.05, 0.08), (1.0, 0.001)]:
        clock.sleep(idle)
        times += _late_caller(lim, clock, 3.0, lateness)
    worst = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert worst <= int(rate) + 1
    assert worst <= rate / 0.98 + 1  # the engine's headroom: within the server's limit + 1


def test_gate_holds_bunched_sends_to_the_cap():
    """Tokens taken over time but sent all at once (a busy machine) still leave <= k per W."""
    for burst_s in (0.1, 0.0):  # the gate holds with or without a burst
        lim, clock = limiter(98.0, burst_s=burst_s)
        for _ in range(150):
            lim.gate()  # 150 calls reach the gate at once
        assert clock.now - 1000.0 >= 1.0  # 98 left at once; the rest waited a second


def _arrivals(rate: float, seconds: float, seed: int, margin: float, jitter: float) -> list[float]:
    """Calls sent through try_acquire() + gate() by late, bunching workers; each arrives at
    the server after a random network delay of 0..jitter seconds."""
    rng = random.Random(seed)
    lim, clock = limiter(rate, burst_s=0.1, margin=margin)
    arrivals: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        taken = 0
        while lim.try_acquire():
            taken += 1
        for _ in range(taken):  # the workers send them one after another, some late
            clock.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.005)]))
            lim.gate()
            arrivals.append(clock.now + rng.uniform(0.0, jitter))
        clock.sleep(lim.wait_time() + rng.choice([0.0, 0.001, rng.uniform(0.0, 0.15)]))
    return sorted(arrivals)


def _worst_rolling_second(times: list[float], span: float = 1.0) -> int:
    """The most calls in any window of `span` seconds."""
    j, worst = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - span:
            j += 1
        worst = max(worst, i - j + 1)
    return worst


@pytest.mark.parametrize("rate", [0.5, 3.0, 7.5, 40.0, 100.0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_rolling_second_of_arrivals_holds_more_than_the_rate(rate, seed):
    """The server's view: arrival times (send + 0-30 ms jitter) in any rolling 1 s <= rate
    (below 1/s: at most one call in any 1/rate seconds)."""
    arrivals = _arrivals(rate, 30.0, seed, margin=0.03, jitter=0.03)
    assert _worst_rolling_second(arrivals) <= max(1.0, rate)
    if rate < 1:
        assert _worst_rolling_second(arrivals, span=1 / rate) == 1
    # and the gate costs little of the pace, even with late wake-ups losing some tokens
    k = max(1, int(rate))
    assert len(arrivals) >= 0.8 * 30.0 * k / max(1.0, k / rate) - 1


def test_without_the_margin_jitter_can_overfill_a_second():
    """The margin is what absorbs the network's jitter (so the test above can fail)."""
    worst = max(
        _worst_rolling_second(_arrivals(40.0, 30.0, seed, margin=0.0, jitter=0.03))
        for seed in (1, 2, 3)
    )
    assert worst > 40


def test_a_token_comes_only_when_its_call_can_leave_at_once():
    """Calls leave 0-2 ms after their token at full pace, and now and then one 50 ms late (a
    worker thread that woke late): a token is handed out only when the gate has room for its
    call, so no call waits there. Otherwise the late call's lag passes to the call k sends
    after it, and on: a submit decided now waits behind reads decided before it."""
    rng = random.Random(7)
    lim, clock = limiter(100.0, margin=0.04)
    leaving: list[float] = []  # when each call whose token is taken reaches the gate
    longest_wait, sent = 0.0, 0
    end = clock.now + 10.0
    while clock.now < end:
        if lim.try_acquire():
            late = 0.05 if rng.random() < 0.02 else rng.uniform(0.0, 0.002)
            heapq.heappush(leaving, clock.now + late)
            continue
        clock.now = min([clock.now + max(lim.wait_time(), 0.0005), *leaving[:1]])
        while leaving and leaving[0] <= clock.now:
            heapq.heappop(leaving)
            before = clock.now
            lim.gate()
            longest_wait = max(longest_wait, clock.now - before)
            sent += 1
    assert longest_wait <= 0.002
    assert sent >= 0.97 * 10.0 * 100 / 1.04  # the pace kept: k calls per W


@pytest.mark.parametrize(("rate", "at_once"), [(100.0, 20), (40.0, 8), (2.0, 1)])
def test_the_bucket_starts_with_start_s_of_calls_then_paces(rate, at_once):
    """A run's first submits fill its slots together (start_s = 0.2: a fifth of a second's
    calls, at least one); after them the calls are paced, and no rolling window of W s ever
    holds more than k sends."""
    lim, clock = limiter(rate, start_s=0.2, margin=0.04)
    clock.sleep(0.001)  # tokens taken a moment later are still there
    taken = 0
    while lim.try_acquire():
        taken += 1
    assert taken == at_once
    sends = [clock.now] * taken
    for _ in range(taken):
        lim.gate()
    end = clock.now + 5.0
    while clock.now < end:
        if lim.try_acquire():
            lim.gate()
            sends.append(clock.now)
        else:
            clock.sleep(max(lim.wait_time(), 0.0005))
    k, window = max(1, int(rate)), max(1.0, 1 / rate) * 1.04
    assert _worst_rolling_second(sends, span=window) <= k
    assert len(sends) <= at_once + 5.0 * k / window + 1  # the start's tokens are not refilled


def test_wait_time_says_when_the_next_token_comes():
    lim, clock = limiter(4.0)
    assert lim.wait_time() == 0.0
    assert lim.try_acquire()
    assert lim.wait_time() == pytest.approx(0.25)
    assert not lim.try_acquire()
    clock.sleep(0.25)
    assert lim.try_acquire()


def test_unlimited_never_waits():
    lim, clock = limiter(None)
    assert all(lim.try_acquire() for _ in range(1000))
    assert lim.current_rate() is None


def test_retry_after_pauses_everyone_then_resumes():
    lim, clock = limiter(10.0)
    lim.throttled(3.0)
    assert lim.wait_time() == pytest.approx(3.0)
    assert lim.paused_for() == pytest.approx(3.0)
    clock.sleep(2.9)
    assert not lim.try_acquire()
    clock.sleep(0.1)
    # no burst saved up during the pause; a first 429 episode leaves the rate as it was
    assert lim.wait_time() == pytest.approx(1 / 10.0)
    clock.sleep(1 / 10.0)
    assert lim.try_acquire()
    assert lim.current_rate() == 10.0


def test_missing_retry_after_uses_default_pause():
    lim, clock = limiter(10.0, default_pause=1.5)
    lim.throttled(None)
    assert lim.paused_for() == pytest.approx(1.5)


def test_a_burst_of_429s_is_one_episode_and_honours_the_longest_retry_after():
    lim, clock = limiter(10.0)
    lim.throttled(1.0)
    clock.sleep(0.05)
    lim.throttled(2.0)  # another call in flight with it: its Retry-After holds everyone too
    assert lim.paused_for() == pytest.approx(2.0)
    clock.sleep(0.3)
    lim.throttled(1.0)
    assert lim.throttled_count == 3
    assert lim.current_rate() == 10.0  # one episode: not lowered


def test_only_a_repeated_episode_lowers_the_rate_and_it_recovers_within_seconds():
    lim, clock = limiter(10.0, recovery_delay=3.0, recovery_per_s=0.05)
    lim.throttled(1.0)
    clock.sleep(20)
    lim.throttled(1.0)  # a second episode within 30 s: lower by 15%
    lim.throttled(1.0)  # (its companions do not lower it again)
    assert lim.current_rate() == pytest.approx(8.5)
    clock.sleep(3)
    assert lim.current_rate() == pytest.approx(8.5)  # holds for recovery_delay
    clock.sleep(1)
    assert lim.current_rate() == pytest.approx(8.5 + 10 * 0.05)
    clock.sleep(2)
    assert lim.current_rate() == pytest.approx(10.0)  # back within 6 s, never above
    clock.sleep(100)
    lim.throttled(1.0)  # 120 s after the last episode: a first one again
    assert lim.current_rate() == pytest.approx(10.0)


def test_a_lowered_rate_narrows_the_gate():
    lim, clock = limiter(10.0)
    lim.throttled(0.0)
    clock.sleep(5)
    lim.throttled(0.0)
    assert lim.current_rate() == pytest.approx(8.5)
    start = clock.now
    for _ in range(16):
        lim.gate()
    assert clock.now - start == pytest.approx(1.0)  # 8 per second now, not 10
    lim.gate()
    assert clock.now - start == pytest.approx(2.0)


def test_floor():
    lim, clock = limiter(1.0, floor=0.5)
    for _ in range(10):
        lim.throttled(0.0)
        clock.sleep(2)
    assert lim.current_rate() == pytest.approx(0.5)


def test_unlimited_learns_a_ceiling_from_the_first_429():
    lim, clock = limiter(None, recovery_delay=0, recovery_per_s=1.0)
    for _ in range(40):  # 20 calls/s for 2 s
        assert lim.try_acquire()
        clock.sleep(0.05)
    lim.throttled(0.0)
    assert lim.current_rate() == pytest.approx(20 * 0.85, rel=0.1)
    clock.sleep(100)
    assert lim.current_rate() == pytest.approx(20, rel=0.1)


def test_blocking_acquire_uses_injected_sleep():
    lim, clock = limiter(2.0)
    start = clock.now
    for _ in range(5):
        lim.acquire(SUBMIT)
    assert clock.now - start == pytest.approx(2.0, abs=0.06)


def _until(condition, seconds: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_polls_wait_while_a_submit_waits():
    """A poll never takes the token a waiting submit needs (real threads, real clock)."""
    lim = RateLimiter(20.0)
    order: list[str] = []

    def take(priority: int, name: str) -> None:
        for _ in range(3):
            lim.acquire(priority)
            order.append(name)

    with lim._lock:
        lim._waiting[SUBMIT] += 1  # a submit is already waiting when the poller arrives
    poller = threading.Thread(target=take, args=(POLL, "poll"))
    poller.start()
    _until(lambda: lim._waiting[POLL] == 1)
    submitter = threading.Thread(target=take, args=(SUBMIT, "submit"))
    submitter.start()
    _until(lambda: lim._waiting[SUBMIT] == 2)
    with lim._lock:
        lim._waiting[SUBMIT] -= 1
    poller.join(5)
    submitter.join(5)
    assert order == ["submit"] * 3 + ["poll"] * 3


class _Rng(random.Random):
    """A Random whose uniform() gives one end of the range."""

    def __init__(self, end: str) -> None:
        super().__init__()
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return a if self.end == "low" else b


@pytest.mark.parametrize(
    ("attempt", "high", "low"),
    [
        (1, 1.0, 0.5),
        (2, 2.0, 1.0),
        (3, 4.0, 2.0),
        (5, 16.0, 8.0),
        (6, 30.0, 15.0),
        (500, 30.0, 15.0),
    ],
)
def test_backoff_doubles_from_base_up_to_cap_with_jitter(attempt, high, low):
    assert backoff(attempt, base=1.0, cap=30.0, rng=_Rng("high")) == high
    assert backoff(attempt, base=1.0, cap=30.0, rng=_Rng("low")) == low


def test_backoff_jitter_comes_from_the_given_rng():
    delays = [backoff(4, base=0.5, cap=30.0, rng=random.Random(7)) for _ in range(3)]
    assert delays == [delays[0]] * 3
    assert 2.0 <= delays[0] <= 4.0


def test_a_429_episode_widens_the_margin_up_to_a_cap():
    """The server saw more jitter than the margin allowed for: the window grows a little."""
    lim, clock = limiter(10.0, margin=0.04, margin_step=0.02)
    lim.throttled(0.0)
    lim.throttled(0.0)  # the same episode: once
    assert lim.margin == pytest.approx(0.06)
    for _ in range(5):
        clock.sleep(60)
        lim.throttled(0.0)
    assert lim.margin == pytest.approx(0.1)
    start = clock.now
    for _ in range(11):
        lim.gate()
    assert clock.now - start == pytest.approx(1.1)  # 10 per 1.1 s now


def test_acquire_keeps_every_rolling_window_within_the_cap():
    """Cancels go through acquire(): a full bucket's burst must not overfill a window."""
    lim, clock = limiter(10.0, burst_s=0.5, margin=0.0)
    clock.sleep(5)  # the bucket fills
    sent = []
    for _ in range(40):
        lim.acquire()
        sent.append(clock.now)
    busiest = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
    assert busiest <= 10, busiest

"""The simulator's rate limit: at most R calls in any rolling second, 429 + Retry-After above."""

from __future__ import annotations

import random

import pytest
from simhelpers import SimClient

from batchrun.simulator.faults import RollingWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_r_calls_pass_then_the_next_waits_until_the_first_leaves_the_second() -> None:
    clock = FakeClock()
    limiter = RollingWindow(10, clock=clock)
    for _ in range(10):  # 10 calls 50 ms apart: 100.00 ... 100.45
        assert limiter.take() == 0.0
        clock.now += 0.05
    assert limiter.take() == pytest.approx(0.5)  # at 100.50: the first leaves at 101.00
    clock.now = 100.999
    assert limiter.take() == pytest.approx(0.001)
    clock.now = 101.0  # the first call is exactly one second old: it no longer counts
    assert limiter.take() == 0.0
    assert limiter.take() == pytest.approx(0.05)  # the second leaves at 101.05


def test_refused_calls_do_not_count() -> None:
    clock = FakeClock()
    limiter = RollingWindow(2, clock=clock)
    limiter.take(), limiter.take()
    for _ in range(50):
        assert limiter.take() > 0
    clock.now += 1.0
    assert limiter.take() == 0.0 and limiter.take() == 0.0


@pytest.mark.parametrize("rate", [1, 7, 40, 100])
def test_no_rolling_second_ever_holds_more_than_r_accepted_calls(rate: int) -> None:
    clock = FakeClock()
    limiter = RollingWindow(rate, clock=clock)
    rng = random.Random(rate)
    accepted: list[float] = []
    for _ in range(5000):
        clock.now += rng.expovariate(3 * rate)  # arrivals at about three times the rate
        if limiter.take() == 0.0:
            accepted.append(clock.now)
    j = 0
    for i, t in enumerate(accepted):  # every window [t, t + 1) starting at an accepted call
        while j < len(accepted) and accepted[j] < t + 1.0:
            j += 1
        assert j - i <= rate, f"{j - i} calls in the second from {t}"
    # and the limit is reached, not merely respected: R calls in some second
    assert max(sum(1 for u in accepted if t <= u < t + 1.0) for t in accepted[:200]) == rate


def test_a_rate_below_one_per_second_keeps_its_average() -> None:
    clock = FakeClock()
    limiter = RollingWindow(0.5, clock=clock)  # 30/min: one call per two seconds
    assert limiter.take() == 0.0
    assert limiter.take() == pytest.approx(2.0)
    clock.now += 2.0
    assert limiter.take() == 0.0


def test_over_http_the_r_plus_first_call_in_a_second_is_a_429_with_retry_after(make_sim) -> None:
    client = SimClient(make_sim(rate_limit="5/s"))
    answers = [client.get("/v1/models") for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [429]
    refused = answers[-1]
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error_code"] == 429
    stats = client.sim.stats()
    assert stats["throttled"] == 1 and stats["calls"]["catalog"] == 6

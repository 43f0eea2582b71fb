"""The run times a run's polls are paced by (run/polling.py)."""

from __future__ import annotations

import statistics

from hypothesis import given, strategies as st

from batchrun.run import polling
from batchrun.run.polling import RunTimes

_SECONDS = st.floats(min_value=0, max_value=1e5, allow_nan=False)


@given(st.lists(_SECONDS, min_size=3, max_size=300), st.integers(min_value=1, max_value=100))
def test_a_quantile_is_the_cut_point_statistics_gives(seconds: list[float], percent: int) -> None:
    runs = RunTimes()
    for s in seconds:
        runs.learn("m", s)
    kept = sorted(seconds[-polling._WINDOW :])  # the window remembered
    cuts = statistics.quantiles(kept, n=100, method="inclusive")
    assert runs.quantile("m", percent / 100) == cuts[min(98, int(percent / 100 * 100) - 1)]

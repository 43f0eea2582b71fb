"""max_in_flight when the manifest leaves it out, and the note when it makes a run slot-bound."""

from __future__ import annotations

import pytest

from batchrun.run.inflight import needed_in_flight, slot_warning


@pytest.mark.parametrize(
    ("rate", "mean_run_s", "expected"),
    [
        (40.0, None, 60),  # before any run time: 20 jobs/s x 2 s x 1.5
        (100.0, 1.0, 83),  # 50 jobs/s x 1.1 s x 1.5
        (40.0, 2.0, 63),
        (40.0, 40.0, 500),  # video-like jobs: capped
        (1.0, 0.2, 4),  # at least a few
        (None, 1.0, 20),  # no rate limit: nothing to derive it from
    ],
)
def test_needed_in_flight_follows_littles_law(rate, mean_run_s, expected):
    assert needed_in_flight(rate, mean_run_s) == expected


def test_a_max_in_flight_that_halves_the_rate_is_named_with_one_that_would_not_bind():
    note = slot_warning(20, 100.0, 1.0)
    assert note == (
        "note: max_in_flight 20 allows about 18 jobs/s (jobs take about 1.1 s); "
        "rate_limit 100/s allows 50. max_in_flight: 83 would not bind"
    )


@pytest.mark.parametrize(
    ("max_in_flight", "rate", "mean_run_s"),
    [
        (40, 40.0, 1.0),  # both bind about equally: no note
        (12, 40.0, 1.0),  # 10.9 jobs/s of 20: more than half
        (20, None, 1.0),  # no rate limit
    ],
)
def test_no_note_unless_slot_bound_by_a_wide_margin(max_in_flight, rate, mean_run_s):
    assert slot_warning(max_in_flight, rate, mean_run_s) is None

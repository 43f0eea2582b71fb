"""How many jobs to keep in flight: enough that the rate, not the slots, binds.

By Little's law a run doing X jobs a second, each in flight T seconds, holds X * T jobs in
flight. The rate allows X = R / 2 (a submit and a read per job), so `needed_in_flight` is
R / 2 * T with room to spare; until a run time is known T is taken as FIRST_GUESS_S.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

ROOM = 1.5
FIRST_GUESS_S = 2.0
READ_DELAY_S = 0.1  # from a job's finish to the read that frees its slot, about
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 4, 500
UNLIMITED = 20  # without a rate limit there is nothing to derive it from
SLOT_CHECK_AFTER = 10  # finished jobs before an explicit max_in_flight is judged
SLOT_BOUND = 0.5  # warn when the slots allow less than this share of the rate's jobs/s


def needed_in_flight(rate: float | None, mean_run_s: float | None) -> int:
    """max_in_flight that lets `rate` (calls/s) bind for jobs running `mean_run_s` on average."""
    if rate is None:
        return UNLIMITED
    in_flight_s = FIRST_GUESS_S if mean_run_s is None else mean_run_s + READ_DELAY_S
    needed = math.ceil(rate / 2 * in_flight_s * ROOM)
    return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, needed))


def slot_warning(max_in_flight: int, rate: float | None, mean_run_s: float) -> str | None:
    """A note when `max_in_flight` makes the run slot-bound by a wide margin, else None."""
    if rate is None:
        return None
    in_flight_s = mean_run_s + READ_DELAY_S
    slots_allow = max_in_flight / in_flight_s
    if slots_allow >= SLOT_BOUND * rate / 2:
        return None
    return (
        f"note: max_in_flight {max_in_flight} allows about {slots_allow:.0f} jobs/s (jobs take "
        f"about {in_flight_s:.1f} s); rate_limit {rate:g}/s allows {rate / 2:g}. "
        f"max_in_flight: {needed_in_flight(rate, mean_run_s)} would not bind"
    )


class InFlightCap:
    """The max_in_flight in force, `cap()`: the manifest's, or one derived from the rate and
    the run times learned so far (`runs`: .learned, .mean()), recomputed as they are learned."""

    def __init__(
        self,
        explicit: int | None,
        rate: float | None,
        runs: Any,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.explicit, self.rate, self.runs, self.echo = explicit, rate, runs, echo
        self._derived: tuple[int, int] = (-1, 0)  # (run times learned, cap)
        self._checked = False

    def __call__(self) -> int:
        if self.explicit is not None:
            return self.explicit
        learned, cap = self._derived
        if learned != self.runs.learned:
            cap = needed_in_flight(self.rate, self.runs.mean())
            self._derived = (self.runs.learned, cap)
        return cap

    def check(self) -> None:
        """Once enough jobs finished: say so when the manifest's max_in_flight makes the run
        slot-bound."""
        if self._checked or self.runs.learned < SLOT_CHECK_AFTER:
            return
        self._checked = True
        mean = self.runs.mean()
        if self.explicit is None or mean is None or self.echo is None:
            return
        note = slot_warning(self.explicit, self.rate, mean)
        if note:
            self.echo(note)

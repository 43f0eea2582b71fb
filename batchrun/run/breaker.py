"""The submit circuit breaker: what a run of refused or unreadable submits means.

- Until the API has accepted one submit this run (and again after an answer we could not
  read), submits go one at a time: a bad token, an empty balance or a server that answers
  nonsense costs one request, not one per worker.
- Submits certainly refused (a 5xx the server promises it did not act on) wait a backoff that
  grows with each one in a row; after MAX_SUBMIT_REFUSALS in a row the run stops submitting.
- An answer that refuses the account (auth, no balance) stops submitting at once.
- MAX_AMBIGUOUS_SUBMITS submits in a row with no answer we could read (a gateway's 502, a
  captive portal's page; each may have been billed) stop submitting.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from batchrun.api import answers as api_answers
from batchrun.api.ratelimit import call_backoff
from batchrun.errors import ApiError
from batchrun.run.policy import (
    ACCEPTED,
    AMBIGUOUS,
    HOLD,
    REFUSED,
    SEND,
    STOP,
    Decision,
    JobsView,
    Policy,
    Told,
)
from batchrun.store.records import JobRow

# A flaky server trips it ~0.1% of runs.
MAX_AMBIGUOUS_SUBMITS = 6
MAX_SUBMIT_REFUSALS = 6  # consecutive refused submits (about 30 s) before giving up on the server
_ONE_AT_A_TIME = Decision(HOLD, "one submit at a time until the API accepts one")


class SubmitBreaker(Policy):
    def __init__(
        self,
        clock: Callable[[], float],
        wall: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self._random = rng or random.Random()
        self.accepted = False  # the API accepted a submit since the last unreadable answer
        self.sent = 0  # submits in the air
        self.refusals = 0  # certainly refused, in a row
        self.not_before = 0.0  # clock time the next submit may leave (after a refusal)
        self.ambiguous = 0  # unreadable answers in a row
        self._ambiguous_at = 0.0  # epoch seconds the last one counted came back

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        if not self.accepted and self.sent:
            return _ONE_AT_A_TIME
        wait = self.not_before - self.clock()
        if wait > 0:
            return Decision(HOLD, "backing off after a refused submit", wait=wait)
        return SEND

    def sending(self, job: JobRow) -> None:
        self.sent += 1

    def told(self, event: Told) -> Decision | None:
        if event.what == ACCEPTED:
            self.sent -= 1
            self.accepted = True
            self.refusals = self.ambiguous = 0
        elif event.what == REFUSED:
            self.sent -= 1
            return self._refused(event)
        elif event.what == AMBIGUOUS:
            self.sent -= 1
            return self._ambiguous(event)
        return None

    def _refused(self, event: Told) -> Decision | None:
        assert event.error is not None
        if event.verdict == api_answers.STOP:  # the account cannot submit (auth, balance)
            return Decision(STOP, str(event.error), error=event.error)
        if event.verdict != api_answers.RETRY:
            return None
        self.refusals += 1
        self.not_before = self.clock() + call_backoff(self.refusals, self._random)
        if self.refusals > MAX_SUBMIT_REFUSALS:
            return Decision(STOP, str(event.error), error=event.error)
        return None

    def _ambiguous(self, event: Told) -> Decision | None:
        # Only submits sent after the previous unreadable answer count (those in the air with
        # it are one sample of the server, not several).
        self.accepted = False
        if event.at >= self._ambiguous_at:
            self.ambiguous += 1
            self._ambiguous_at = self.wall()
        if self.ambiguous != MAX_AMBIGUOUS_SUBMITS:
            return None
        why = _why(event.error)
        error = ApiError(
            f"{self.ambiguous} submits in a row got no answer we could read (last: {why}); "
            "each may have been billed, so no more are sent. Check the API base, proxy and "
            "network, then rerun (jobs not yet sent are submitted then; --resubmit-unknown "
            "sends the ambiguous ones again)"
        )
        return Decision(STOP, str(error), error=error)


def _why(exc: BaseException | None) -> str:
    return str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"

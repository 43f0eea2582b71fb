"""run/policy.py and run/breaker.py: the submit policies as one, and the submit circuit breaker."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from batchrun.api import answers as api_answers
from batchrun.errors import ApiError, AuthError, InvalidInputError, ServerError, TransportError
from batchrun.run import policy
from batchrun.run.breaker import MAX_AMBIGUOUS_SUBMITS, MAX_SUBMIT_REFUSALS, SubmitBreaker
from batchrun.run.budget import Budget
from batchrun.run.policy import Decision, Policies, Policy, Told
from batchrun.run.refusals import ModelRefusals
from batchrun.store.records import JobRow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Table:
    def __init__(self, *rows: JobRow) -> None:
        self.rows = {r.job_id: r for r in rows}
        self.counts: Counter[str] = Counter(r.status for r in rows)


class Says(Policy):
    """A policy that says what it is told to, and writes down what it heard."""

    def __init__(self, decision: Decision, stop_on: str = "") -> None:
        self.decision = decision
        self.stop_on = stop_on
        self.asked: list[str] = []
        self.heard: list[str] = []

    def ask(self, job: JobRow, jobs: policy.JobsView) -> Decision:
        self.asked.append(job.job_id)
        return self.decision

    def told(self, event: Told) -> Decision | None:
        self.heard.append(event.what)
        if event.what == self.stop_on:
            return Decision(policy.STOP, f"stop from {self.decision.reason}")
        return None


JOB = JobRow("j0", 0, "m/a", {})


def test_the_first_policy_that_does_not_say_go_decides_and_the_rest_are_not_asked():
    go, hold, aside = (Says(Decision(policy.GO)), Says(Decision(policy.HOLD, "h")),
                       Says(Decision(policy.SET_ASIDE, "a")))  # fmt: skip
    both = Policies(go, hold, aside)
    assert both.ask(JOB, Table(JOB)).reason == "h"
    assert (go.asked, hold.asked, aside.asked) == (["j0"], ["j0"], [])
    assert Policies(go, Says(Decision(policy.GO))).ask(JOB, Table(JOB)).say == policy.GO


def test_every_policy_hears_every_outcome_and_the_first_stop_is_kept():
    first = Says(Decision(policy.GO, "first"), stop_on=policy.FINISHED)
    second = Says(Decision(policy.GO, "second"), stop_on=policy.FINISHED)
    both = Policies(first, second)
    assert both.told(Told(policy.ACCEPTED, JOB)) is None
    stop = both.told(Told(policy.FINISHED, JOB))
    assert stop is not None and stop.reason == "stop from first"
    assert first.heard == second.heard == [policy.ACCEPTED, policy.FINISHED]


def test_the_breaker_sends_one_at_a_time_until_a_submit_is_accepted():
    clock = Clock()
    breaker = SubmitBreaker(clock, clock)
    table = Table(JOB)
    assert breaker.ask(JOB, table).say == policy.GO
    breaker.sending(JOB)
    assert breaker.ask(JOB, table).say == policy.HOLD  # the first is still in the air
    breaker.told(Told(policy.ACCEPTED, JOB))
    breaker.sending(JOB)
    breaker.sending(JOB)
    assert breaker.ask(JOB, table).say == policy.GO  # accepted once: as many as allowed
    breaker.told(Told(policy.AMBIGUOUS, JOB, error=TransportError("reset"), at=clock.now))
    assert breaker.ask(JOB, table).say == policy.HOLD  # an unreadable answer: one at a time


def test_refused_submits_back_off_and_too_many_in_a_row_stop_submitting():
    clock = Clock()
    breaker = SubmitBreaker(clock, clock)
    refused = ServerError("503 busy", status=503)
    for _ in range(MAX_SUBMIT_REFUSALS):
        breaker.sending(JOB)
        said = breaker.told(Told(policy.REFUSED, JOB, verdict=api_answers.RETRY, error=refused))
        assert said is None
        hold = breaker.ask(JOB, Table(JOB))
        assert hold.say == policy.HOLD and hold.wait is not None and 0 < hold.wait <= 30
        clock.now += hold.wait
    breaker.sending(JOB)
    stop = breaker.told(Told(policy.REFUSED, JOB, verdict=api_answers.RETRY, error=refused))
    assert stop is not None and stop.say == policy.STOP and stop.error is refused


def test_an_answer_refusing_the_account_stops_at_once():
    clock = Clock()
    breaker = SubmitBreaker(clock, clock)
    breaker.sending(JOB)
    auth = AuthError("401 invalid token")
    stop = breaker.told(Told(policy.REFUSED, JOB, verdict=api_answers.STOP, error=auth))
    assert stop is not None and stop.error is auth


@pytest.mark.parametrize("together", [False, True])
def test_unreadable_answers_stop_after_a_row_of_separate_samples(together):
    """Submits in the air with an unreadable answer are one sample of the server, not several:
    only the ones sent after the previous unreadable answer came back count."""
    clock = Clock()
    breaker = SubmitBreaker(clock, clock)
    stops = []
    for _ in range(MAX_AMBIGUOUS_SUBMITS * 2):
        breaker.sending(JOB)
        sent = clock.now
        clock.now += 1
        error = ApiError("502 from a gateway")
        said = breaker.told(Told(policy.AMBIGUOUS, JOB, error=error, at=sent - 5 * together))
        stops.append(said)
    fired = [i for i, s in enumerate(stops) if s is not None]
    if together:
        assert fired == []  # every answer was sent before the last one came back
    else:
        assert fired == [MAX_AMBIGUOUS_SUBMITS - 1]  # once, at the sixth in a row
        assert "6 submits in a row" in str(stops[fired[0]].error)  # type: ignore[union-attr]


def test_a_model_refused_for_every_job_is_set_aside_and_the_others_go():
    refusals = ModelRefusals()
    a, b = JobRow("a0", 0, "m/a", {}), JobRow("b0", 1, "m/b", {})
    table = Table(a, b)
    refusals.sending(a)
    assert refusals.ask(a, table).say == policy.HOLD  # one of a model at a time, at first
    assert refusals.ask(b, table).say == policy.GO
    unknown = InvalidInputError("unknown model", status=400, error_code=400001)
    refusals.told(Told(policy.REFUSED, a, verdict=api_answers.FAILED, error=unknown))
    assert refusals.ask(a, table).say == policy.SET_ASIDE
    assert refusals.ask(b, table).say == policy.GO


def test_the_budget_holds_what_does_not_fit_yet_and_stops_at_what_never_will():
    rows = [JobRow(f"j{i}", i, "m/a", {}) for i in range(3)]
    budget = Budget.for_folder(Decimal("0.10"), lambda m, i: Decimal("0.04"), [], rows)
    table = Table(*rows)
    for row in rows[:2]:
        assert budget.ask(row, table).say == policy.GO
        budget.sending(row)
    assert budget.ask(rows[2], table).say == policy.HOLD  # 0.08 held: 0.02 left
    budget.told(Told(policy.FINISHED, rows[0], state="succeeded", cost=0.04))
    budget.told(Told(policy.CANCELLED, rows[1]))
    assert budget.ask(rows[2], table).say == policy.GO
    budget.sending(rows[2])
    budget.told(Told(policy.FINISHED, rows[2], state="succeeded", cost=0.04))
    assert budget.ask(rows[1], table).say == policy.STOP  # 0.08 spent: never fits again

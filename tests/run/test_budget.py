"""budget.Budget: the reservation table, the cap, unpriced models, and what a resume counts."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from batchrun.api import answers as api_answers
from batchrun.run.budget import Budget, estimate_of
from batchrun.run.money_text import estimate_text, progress_cost, unknown_cost_note
from batchrun.store import state as st
from batchrun.store.ledger import ACCEPTED, CACHED, CANCELLED, REFUSED, UNKNOWN, Attempt
from batchrun.store.records import JobRow

PRICED, UNPRICED = "m/priced", "m/unpriced"


def estimate(model_id: str, inputs: Mapping[str, Any]) -> Decimal | None:
    return Decimal("0.04") if model_id == PRICED else None


def row(job_id: str, model: str = PRICED, status: str = st.PENDING, **kw: object) -> JobRow:
    return JobRow(job_id, 0, model, {}, status=status, **kw)  # type: ignore[arg-type]


def budget(cap: str | None, *rows: JobRow, ledger: tuple[Attempt, ...] = ()) -> Budget:
    """The budget of a folder holding `rows`, whose ledger holds `ledger`, running them all."""
    rows = rows or tuple(row(f"j{i}") for i in range(10))
    b = Budget.for_folder(None if cap is None else Decimal(cap), estimate, ledger, rows)
    b.est_total, b.unpriced = estimate_of(estimate, (r for r in rows if not r.cached))
    return b


def attempt(job_id: str, answer: str, model: str = PRICED, **kw: object) -> Attempt:
    est = Decimal("0.04") if model == PRICED else None
    return Attempt(job_id, 1, model, answer, estimate=est, **kw)  # type: ignore[arg-type]


def send(b: Budget, job_id: str) -> bool:
    if not b.admits(job_id):
        return False
    b.reserve(job_id)
    return True


def test_never_sends_past_the_cap_and_reaches_it_only_when_nothing_can_come_back():
    b = budget("0.10")
    assert [send(b, f"j{i}") for i in range(3)] == [True, True, False]
    assert b.reserved == Decimal("0.08") and not b.reached  # j2 may fit once one costs less
    b.settle("j0", st.SUCCEEDED, 0.04)
    assert not send(b, "j2") and not b.reached  # 0.04 spent + 0.04 held: j1 may cost less
    b.settle("j1", st.SUCCEEDED, 0.04)
    assert not send(b, "j2") and b.reached  # 0.08 spent + 0.04 > 0.10, whatever comes back
    assert b.spent == Decimal("0.08")


def test_a_cap_that_is_a_multiple_of_the_price_is_used_exactly():
    b = budget("0.20")
    sent = 0
    for i in range(10):
        if send(b, f"j{i}"):
            sent += 1
            b.settle(f"j{i}", st.SUCCEEDED, 0.04)
    assert sent == 5 and b.spent == Decimal("0.20") and b.reached


@pytest.mark.parametrize(
    ("verdict", "spent"),
    [
        (api_answers.THROTTLED, "0"),
        (api_answers.RETRY, "0"),
        (api_answers.STOP, "0"),
        (api_answers.FAILED, "0"),
        (api_answers.AMBIGUOUS, "0.04"),  # unknown: it may have been billed
    ],
)
def test_a_failed_submit_releases_or_keeps_its_reservation(verdict, spent):
    b = budget("1")
    send(b, "j0")
    b.submit_failed("j0", verdict)
    assert (b.reserved, b.spent) == (Decimal(0), Decimal(spent))


@pytest.mark.parametrize(
    ("outcome", "spent", "maybe"),
    [
        ((st.SUCCEEDED, 0.03), "0.03", "0"),  # settled to the actual cost
        ((st.FAILED, 0.0), "0", "0"),  # a failed attempt the API did not bill
        ((st.FAILED, None), "0.04", "0.04"),  # billed for all we know: the estimate
        ((st.CANCELLED, None), "0", "0"),
    ],
)
def test_a_result_settles_the_reservation(outcome, spent, maybe):
    b = budget("1")
    send(b, "j0")
    b.settle("j0", *outcome)
    assert (b.reserved, b.spent, b.maybe) == (Decimal(0), Decimal(spent), Decimal(maybe))


def test_given_up_jobs_keep_their_reservation_as_spent_maybe():
    b = budget("1")
    send(b, "j0")
    b.keep("j0")
    b.keep("j0")  # twice (a give-up after a cancel answer) counts once
    assert (b.reserved, b.spent, b.maybe) == (Decimal(0), Decimal("0.04"), Decimal("0.04"))


def test_each_attempt_of_a_retried_job_is_reserved_again():
    b = budget("0.08", row("j0"))
    assert send(b, "j0")
    b.settle("j0", st.FAILED, 0.04)  # this API bills failures
    assert send(b, "j0") and b.reserved == Decimal("0.04")
    b.settle("j0", st.FAILED, 0.04)
    assert not send(b, "j0") and b.reached and b.spent == Decimal("0.08")


def test_an_unpriced_model_runs_one_job_at_a_time_until_its_first_cost():
    rows = [row(f"u{i}", UNPRICED) for i in range(6)]
    b = budget("1.00", *rows)
    assert send(b, "u0")
    assert b.reserved == Decimal("1.00")  # holds all the room: its cost is unknown
    assert not b.admits("u1") and not b.reached
    b.settle("u0", st.SUCCEEDED, 0.25)
    assert [send(b, f"u{i}") for i in range(1, 5)] == [True, True, True, False]
    assert b.reserved == Decimal("0.75")  # the highest actual cost seen, for each
    for i in range(1, 4):
        b.settle(f"u{i}", st.SUCCEEDED, 0.25)
    assert not send(b, "u4") and b.reached and b.spent == Decimal("1.00")


def test_an_unpriced_job_waits_while_others_hold_the_room():
    rows = [row("p0"), row("u0", UNPRICED)]
    b = budget("0.04", *rows)
    assert send(b, "p0")
    assert not b.admits("u0") and not b.reached
    b.settle("p0", st.SUCCEEDED, 0.04)
    assert not b.admits("u0") and b.reached  # nothing left for it


def test_no_cap_admits_everything_and_counts_the_spend():
    b = budget(None)
    assert all(send(b, f"j{i}") for i in range(10))
    b.settle("j0", st.SUCCEEDED, 0.04)
    assert b.spent == Decimal("0.04") and progress_cost(b) == "$0.04 spent, est. $0.40"


def test_what_earlier_runs_paid_counts_as_spent_on_resume():
    rows = [
        row("paid", status=st.SUCCEEDED, request_id="r1"),
        row("no-cost", status=st.FAILED, request_id="r2"),  # taken by the server: maybe paid
        row("unknown", status=st.UNKNOWN),
        row("refused", status=st.FAILED),  # refused at submit: no request id, not paid
        row("cancelled", status=st.CANCELLED, request_id="r3"),
        row("flying", status=st.RUNNING, request_id="r4"),  # polled again: held
        row("todo"),
        row("u-done", UNPRICED, status=st.SUCCEEDED, request_id="r5"),
        row("u-todo", UNPRICED),
    ]
    books = (
        attempt("paid", ACCEPTED, request_id="r1", actual=Decimal("0.05"), finished_at=1.0),
        attempt("no-cost", ACCEPTED, request_id="r2", finished_at=1.0),
        attempt("unknown", UNKNOWN),
        attempt("refused", REFUSED),
        attempt("cancelled", CANCELLED, request_id="r3", finished_at=1.0),
        attempt("flying", ACCEPTED, request_id="r4"),
        attempt("u-done", ACCEPTED, UNPRICED, request_id="r5", actual=Decimal("0.25")),
    )
    b = budget("1", *rows, ledger=books)
    # no-cost and unknown count at the best estimate: the higher of the price (0.04) and the
    # highest actual cost seen for the model (0.05); the flying one is held at it
    assert b.spent == Decimal("0.05") + Decimal("0.05") * 2 + Decimal("0.25")
    assert b.maybe == Decimal("0.10") and b.reserved == Decimal("0.05")
    assert b.unpriced == 2 and b.est_total == Decimal("0.04") * 7
    b.reserve("u-todo")
    assert b.reserved == Decimal("0.30")  # an unpriced model learnt in an earlier run


def test_an_earlier_attempt_of_a_retried_job_still_counts():
    # The job's row shows its second request only; the ledger has both attempts.
    rows = [row("j0", status=st.SUCCEEDED, request_id="r2"), row("j1")]
    books = (
        attempt("j0", ACCEPTED, request_id="r1", actual=Decimal("0.04"), finished_at=1.0),
        Attempt("j0", 2, PRICED, ACCEPTED, request_id="r2", actual=Decimal("0.04")),
    )
    b = budget("0.10", *rows, ledger=books)
    assert b.spent == Decimal("0.08")
    assert not send(b, "j1") and b.reached  # 0.08 + 0.04 > 0.10


def test_a_lost_attempt_of_an_unpriced_model_holds_all_the_room_on_resume():
    rows = [row("u0", UNPRICED, status=st.UNKNOWN), row("u1", UNPRICED), row("p0")]
    b = budget("1.00", *rows, ledger=(attempt("u0", UNKNOWN, UNPRICED),))
    assert b.unknown_cost == 1
    assert not b.admits("u1") and not b.admits("p0") and b.reached
    assert "u/unpriced" not in unknown_cost_note(b)  # names the model as the ledger has it
    assert UNPRICED in unknown_cost_note(b)


def test_a_result_without_a_cost_of_an_unpriced_model_keeps_holding_the_room():
    rows = [row(f"u{i}", UNPRICED) for i in range(3)]
    b = budget("1.00", *rows)
    assert send(b, "u0")
    b.settle("u0", st.SUCCEEDED, None)  # billed, nothing says for how much
    assert not b.admits("u1") and b.reached and b.unknown_cost == 1


def test_cache_hits_teach_nothing_about_a_models_price():
    rows = [row("u0", UNPRICED, status=st.SUCCEEDED, cached=True), row("u1", UNPRICED)]
    books = (attempt("u0", CACHED, UNPRICED, actual=Decimal(0), saved=Decimal("0.30")),)
    b = budget("1.00", *rows, ledger=books)
    assert send(b, "u1")
    assert b.reserved == Decimal("1.00")  # still learning: it holds all the room, not $0


def test_a_stale_low_price_reserves_the_highest_actual_cost_seen():
    rows = [row("j0", status=st.SUCCEEDED, request_id="r1"), row("j1"), row("j2")]
    books = (attempt("j0", ACCEPTED, request_id="r1", actual=Decimal("0.10"), finished_at=1.0),)
    b = budget("1.00", *rows, ledger=books)
    assert send(b, "j1") and b.reserved == Decimal("0.10")  # not the catalog's 0.04


def test_the_progress_line_shows_spend_estimate_and_cap():
    b = budget("0.30", row("j0"), row("u0", UNPRICED))
    send(b, "j0")
    b.settle("j0", st.SUCCEEDED, 0.04)
    assert progress_cost(b) == "$0.04 spent, est. $0.04 + 1 unpriced (cap $0.30)"


def test_the_estimate_says_so_when_no_job_has_a_price():
    assert estimate_text(Decimal("1.5"), 0) == "est. $1.50"
    assert estimate_text(Decimal("1.5"), 2) == "est. $1.50 + 2 unpriced"
    assert estimate_text(Decimal(0), 6) == "no estimate: 6 jobs unpriced"
    assert estimate_text(Decimal(0), 1) == "no estimate: 1 job unpriced"
    assert estimate_text(Decimal(0), 0) == "est. $0.00"  # every job from the cache

"""The run's budget (`--max-cost` / `run.max_cost_usd`): what the run folder has spent, what its
jobs in flight may still cost, and whether the next submit fits under the cap.

Before a job's submit its estimate is reserved; a submit that would take spent + reserved past
the cap is not sent. A job's result settles its reservation to the actual cost the API gives
(`include_cost=true`). Amounts are exact decimals.

What each outcome of an attempt does to its reservation (the table `test_budget.py` checks):

    submit certainly not accepted (429, 503, refused, no balance)  released
    submit ambiguous (the job becomes `unknown`)                    kept, as spent-maybe
    result succeeded or failed                                      settled to its cost
    cancelled while queued                                          released
    given up on (job_timeout, request gone, left on the server)     kept, as spent-maybe

A model without a price (or a duration "auto") is learnt: its jobs run one at a time, each
holding all the room left under the cap, until the first actual cost arrives; then each
reserves the highest actual cost seen for that model. On resume, whatever earlier runs of the
folder paid counts as spent: a recorded cost, else the estimate of a job the server took
(succeeded, failed, timed out or unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from batchrun.api import answers as api_answers
from batchrun.catalog.pricing import Estimator, usd
from batchrun.errors import InsufficientBalanceError
from batchrun.store import state as st
from batchrun.store.state import JobRow

if TYPE_CHECKING:
    from batchrun.plan.build import Plan

Estimate = Callable[[str, Mapping[str, Any]], "Decimal | None"]  # (model id, inputs)

_ZERO = Decimal(0)
# Jobs an earlier run had the server take and that have no recorded cost: they may have paid.
_MAYBE_PAID = frozenset({st.SUCCEEDED, st.FAILED, st.TIMED_OUT})


def amount(cost: float | None) -> Decimal | None:
    """An API cost (a float in USD) as the exact decimal it was written as."""
    return None if cost is None else Decimal(repr(float(cost)))


@dataclass(frozen=True)
class _Job:
    model_id: str
    estimate: Decimal | None


class Budget:
    """Spent, reserved and the cap (None: no cap, only counting) of one run folder."""

    def __init__(self, cap: Decimal | None, estimate: Estimate) -> None:
        self.cap = cap
        self._estimate = estimate
        self.spent = _ZERO  # actual costs, plus `maybe`
        self.maybe = _ZERO  # part of `spent` that may or may not have been billed
        self.reserved = _ZERO
        self.reached = False  # a job did not fit even with nothing in flight
        self.est_total = _ZERO  # the estimate of the run's jobs that have one
        self.unpriced = 0  # how many of the run's jobs have none
        self._held: dict[str, Decimal] = {}
        self._jobs: dict[str, _Job] = {}
        self._highest: dict[str, Decimal] = {}  # model id -> highest actual cost seen
        self._learning: dict[str, str] = {}  # unpriced model id -> its job in flight

    @classmethod
    def for_folder(
        cls,
        cap: Decimal | None,
        estimate: Estimate,
        every: Iterable[JobRow],
        run: Iterable[JobRow],
    ) -> Budget:
        """The budget of a folder holding `every` row, about to run the jobs `run` (whose
        QUEUED/RUNNING ones it polls again: their reservations are held until they finish)."""
        budget = cls(cap, estimate)
        every = list(every)
        for row in every:
            budget._know(row)
            if row.cost_usd is not None and row.status in (st.SUCCEEDED, st.FAILED):
                budget._learn(row.model_id, amount(row.cost_usd))
        polled = []
        for row in run:
            if row.cached:  # taken from the cache: costs nothing
                continue
            est = budget._job(row.job_id).estimate
            if est is None:
                budget.unpriced += 1
            else:
                budget.est_total += est
            if row.status in (st.QUEUED, st.RUNNING) and row.request_id:
                polled.append(row.job_id)
        ids = set(polled)
        for row in every:
            if row.job_id not in ids:
                budget._count_earlier(row)
        for job_id in polled:  # once all that was spent is known (the room of a learnt model)
            budget.reserve(job_id)
        return budget

    @classmethod
    def unlimited(cls) -> Budget:
        """No cap and no estimates: only counts what the results cost."""
        return cls(None, lambda model_id, inputs: None)

    # ---- asked before a submit ----------------------------------------------------------

    def admits(self, job_id: str) -> bool:
        """Whether the job's submit may be sent now (then `reserve` it); sets `reached` when
        it will never fit this run."""
        if self.cap is None or job_id in self._held:
            return True
        room = self.cap - self.spent - self.reserved
        cost = self._reservation(job_id)
        if cost is None:  # a model still being learnt
            model = self._job(job_id).model_id
            if model in self._learning:
                return False  # its one job in flight brings the first actual cost
            if self.spent >= self.cap:
                self.reached = True
            return room > 0
        if self.spent + cost > self.cap:
            self.reached = True  # even once every job in flight came back at no cost
            return False
        return cost <= room

    def reserve(self, job_id: str) -> None:
        """Hold the job's reservation: called as its submit is handed out (after `admits`)."""
        if job_id in self._held:
            return
        cost = self._reservation(job_id)
        if cost is None:
            self._learning[self._job(job_id).model_id] = job_id
            # Nothing else may start while its cost is unknown: it holds all the room left.
            cost = _ZERO if self.cap is None else max(_ZERO, self.cap - self.spent - self.reserved)
        self._held[job_id] = cost
        self.reserved += cost

    # ---- told after an outcome ----------------------------------------------------------

    def submit_failed(self, job_id: str, verdict: str) -> None:
        """A submit came back with an error sorted by api_answers.submit_verdict."""
        if verdict == api_answers.AMBIGUOUS:
            self.keep(job_id)
        else:
            self.release(job_id)

    def settle(self, job_id: str, state: str, cost: float | None) -> None:
        """An attempt finished (SUCCEEDED, FAILED or CANCELLED) with the API's cost, if any."""
        if state == st.CANCELLED:
            self.release(job_id)
            return
        held = self._drop(job_id)
        actual = amount(cost)
        if actual is None:
            # Billed, but for how much we were not told: the estimate (else what was held).
            actual = self._reservation(job_id)
            actual = held if actual is None else actual
            self.maybe += actual
        else:
            self._learn(self._job(job_id).model_id, actual)
        self.spent += actual

    def release(self, job_id: str) -> None:
        """The attempt was certainly not billed."""
        self._drop(job_id)

    def keep(self, job_id: str) -> None:
        """The attempt may have been billed and no cost will come: count it as spent-maybe."""
        if job_id not in self._held:
            return
        held = self._drop(job_id)
        cost = self._reservation(job_id)
        cost = held if cost is None else cost
        self.spent += cost
        self.maybe += cost

    # ---- read -------------------------------------------------------------------------

    def line(self) -> str:
        """`$0.48 spent, est. $1.20 (cap $1.00)`, for the progress line."""
        text = f"{usd(self.spent)} spent, {estimate_text(self.est_total, self.unpriced)}"
        if self.cap is not None:
            text += f" (cap {usd(self.cap)})"
        return text

    # ---- inside -----------------------------------------------------------------------

    def _know(self, row: JobRow) -> None:
        self._jobs[row.job_id] = _Job(row.model_id, self._estimate(row.model_id, row.inputs))

    def _job(self, job_id: str) -> _Job:
        return self._jobs.get(job_id) or _Job("", None)

    def _reservation(self, job_id: str) -> Decimal | None:
        """The job's estimate, else the highest actual cost seen for its model, else None."""
        job = self._job(job_id)
        if job.estimate is not None:
            return job.estimate
        return self._highest.get(job.model_id)

    def _learn(self, model_id: str, actual: Decimal | None) -> None:
        if actual is not None and actual > self._highest.get(model_id, Decimal(-1)):
            self._highest[model_id] = actual

    def _drop(self, job_id: str) -> Decimal:
        held = self._held.pop(job_id, _ZERO)
        self.reserved -= held
        model = self._job(job_id).model_id
        if self._learning.get(model) == job_id:
            del self._learning[model]
        return held

    def _count_earlier(self, row: JobRow) -> None:
        """What an earlier run of the folder spent on this job (one this run does not poll)."""
        if row.cost_usd is not None and row.status not in (st.QUEUED, st.RUNNING):
            self.spent += amount(row.cost_usd) or _ZERO
            return
        in_flight = row.status in (st.QUEUED, st.RUNNING) and bool(row.request_id)
        if in_flight or row.status == st.UNKNOWN or (row.status in _MAYBE_PAID and row.request_id):
            cost = self._reservation(row.job_id) or _ZERO
            self.spent += cost
            self.maybe += cost


def plan_estimator(plan: Plan) -> Estimate:
    """What a job of any model of the run folder costs (its schema found the plan's way)."""
    estimators = plan.estimators()

    def estimate(model_id: str, inputs: Any) -> Decimal | None:
        found = estimators.get(model_id)
        if found is None:
            schemas = plan.schemas
            found = estimators[model_id] = Estimator(
                schemas.price(model_id), schemas.input_schema(model_id)
            )
        return found(inputs)

    return estimate


def estimate_text(est_total: Decimal, unpriced: int) -> str:
    """`est. $1.00`, `est. $1.00 + 3 unpriced`, or, when no job has a price, `no estimate: 3
    jobs unpriced` (never a bare `est. $0.00` beside jobs that will cost money)."""
    if unpriced and not est_total:
        return f"no estimate: {unpriced} job{'s' if unpriced != 1 else ''} unpriced"
    return f"est. {usd(est_total)}" + (f" + {unpriced} unpriced" if unpriced else "")


def cost_text(rows: list[JobRow], budget: Budget) -> str:
    """`Cost $0.80 (est. $1.00, cap $1.00)`: what the results cost, beside the plan's quote."""
    actual = sum((amount(r.cost_usd) or Decimal(0) for r in rows), Decimal(0))
    est = estimate_text(budget.est_total, budget.unpriced)
    if budget.cap is not None:
        est += f", cap {usd(budget.cap)}"
    return f"Cost {usd(actual)} ({est})"


def no_balance(
    exc: InsufficientBalanceError, rows: list[JobRow], again: str
) -> InsufficientBalanceError:
    """The API's refusal, said plainly: what did not run and how to go on (rerun `again`)."""
    not_run = sum(1 for r in rows if r.status == st.PENDING)
    return InsufficientBalanceError(
        f"{exc.message}: insufficient balance, the account cannot pay for more jobs; "
        f"stopped submitting, {not_run} job{'s' if not_run != 1 else ''} not run. "
        f"Top up the RunComfy balance, then rerun: {again or 'the same command'}",
        endpoint=exc.endpoint,
        status=exc.status,
        error_code=exc.error_code,
    )

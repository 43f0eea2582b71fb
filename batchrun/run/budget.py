"""The run's budget (`--max-cost` / `run.max_cost_usd`): what the run folder has spent, what its
jobs in flight may still cost, and whether the next submit fits under the cap.

Money comes from the ledger (store/ledger.py) and only from it: the budget starts from the
folder's attempts (every run's, every retry's, jobs no longer in the manifest too), and is the
one place the scheduler and the jobs at the server report an attempt's outcome, which it writes
to the ledger as it counts it. Before a job's submit its reservation is held; a submit that
would take spent + reserved past the cap is not sent. Amounts are exact decimals.

What each outcome of an attempt does to its reservation (the table `test_budget.py` checks):

    submit certainly not accepted (429, 503, refused, no balance)  released (ledger: refused)
    submit ambiguous (the job becomes `unknown`)                    kept, as spent-maybe
    result succeeded or failed                                      settled to its cost
    cancelled while queued                                          released (ledger: cancelled)
    given up on (job_timeout, request gone, left on the server)     kept, as spent-maybe

A reservation is the higher of the job's catalog estimate and the highest actual cost seen for
its model in the folder (a stale low price never under-reserves). A model with no price (or a
duration "auto") is learnt: its jobs run one at a time, each holding all the room left under
the cap, until the first actual cost arrives. An attempt of such a model that may have been
billed and that no cost tells about (lost, or results without a cost) keeps holding all the
room: under a cap nothing more is sent, so the server bills at most one job past the cap.
Cache hits cost nothing and teach nothing about a model's price.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from batchrun.api import answers as api_answers
from batchrun.catalog.pricing import Estimator
from batchrun.run import policy
from batchrun.run.policy import Decision, JobsView, Told
from batchrun.store import ledger, state as st
from batchrun.store.records import JobRow

if TYPE_CHECKING:
    from batchrun.plan.build import Plan

Estimate = Callable[[str, Mapping[str, Any]], "Decimal | None"]  # (model id, inputs)

_ZERO = Decimal(0)
_WAIT_FOR_FLIGHTS = Decision(policy.HOLD, "waiting for the jobs in flight to settle their cost")


class LedgerWriter(Protocol):
    """Where the budget writes what became of an attempt (a StateStore)."""

    def close_attempt(
        self, job_id: str, *, answer: str | None = None, actual: Decimal | None = None
    ) -> None: ...


def amount(cost: float | None) -> Decimal | None:
    """An API cost (a float in USD) as the exact decimal it was written as."""
    return None if cost is None else Decimal(repr(float(cost)))


@dataclass(frozen=True)
class _Job:
    model_id: str
    estimate: Decimal | None


class Budget(policy.Policy):
    """Spent, reserved and the cap (None: no cap, only counting) of one run folder; a submit
    policy (run/policy.py): a job that does not fit is held, and once one will never fit this
    run, submitting stops."""

    def __init__(
        self,
        cap: Decimal | None,
        estimate: Estimate,
        books: ledger.Books | None = None,
        writer: LedgerWriter | None = None,
        jobs: Callable[[str], JobRow | None] | None = None,
    ) -> None:
        """`jobs`: the row of a job the run holds (the job table's), for its model and
        estimate; None: only the jobs made known with `know`."""
        self.cap = cap
        self._estimate = estimate
        self._rows = jobs
        self.books = books or ledger.Books()
        self.writer = writer
        self.spent = self.books.spent  # what the ledger counts, plus this run's settled attempts
        self.maybe = self.books.estimated  # part of `spent` that may or may not have been billed
        # Attempts that may have been billed and that nothing tells the cost of (an unpriced
        # model's, lost or without a cost): under a cap each holds all the room left.
        self.unknown_cost = len(self.books.unknown_cost)
        self.reserved = _ZERO
        self.reached = False  # a job did not fit even with nothing in flight
        self.est_total = _ZERO  # the estimate of the run's jobs that have one
        self.unpriced = 0  # how many of the run's jobs have none
        self._held: dict[str, Decimal] = {}
        self._jobs: dict[str, _Job] = {}
        self._learning: dict[str, str] = {}  # unpriced model id -> its job in flight

    @classmethod
    def for_folder(
        cls,
        cap: Decimal | None,
        estimate: Estimate,
        attempts: Iterable[ledger.Attempt],
        polled: Iterable[JobRow],
        writer: LedgerWriter | None = None,
        jobs: Callable[[str], JobRow | None] | None = None,
        settled: Iterable[tuple[ledger.Attempt, int]] = (),
    ) -> Budget:
        """The budget of a folder whose ledger holds `attempts` (and those `settled` counts,
        see ledger.books_of: none of them in flight), about to poll again the jobs
        `polled` (QUEUED/RUNNING: their reservations are held until they finish). Jobs are
        known by `jobs` (the run's table) or made known with `know`; `est_total` and
        `unpriced` are the caller's to set (estimate_of)."""
        polled = list(polled)
        ids = {
            (r.job_id, r.request_id)
            for r in polled
            if r.status in (st.QUEUED, st.RUNNING) and r.request_id and not r.cached
        }
        attempts = list(attempts)
        held = [a for a in attempts if a.in_flight and (a.job_id, a.request_id) in ids]
        rest = [a for a in attempts if not (a.in_flight and (a.job_id, a.request_id) in ids)]
        books = ledger.books_of([*settled, *((a, 1) for a in rest)])
        budget = cls(cap, estimate, books, writer, jobs)
        for a in held:  # what they teach of prices counts; their cost is held, not spent
            budget._learn(a.model_id, a.actual)
        for row in polled:
            if row.status not in st.TERMINAL:
                budget.know(row)
        for a in held:  # once all that was spent is known (the room of a learnt model)
            budget.reserve(a.job_id)
        return budget

    # ---- the submit policy ------------------------------------------------------------

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        if self.admits(job.job_id):
            return policy.SEND
        if self.reached:
            return Decision(policy.STOP, "the cost budget")
        return _WAIT_FOR_FLIGHTS

    def sending(self, job: JobRow) -> None:
        self.reserve(job.job_id)

    def told(self, event: Told) -> Decision | None:
        job_id, what = event.job.job_id, event.what
        if what == policy.REFUSED:
            self.submit_failed(job_id, event.verdict)
        elif what == policy.AMBIGUOUS:
            self.submit_failed(job_id, api_answers.AMBIGUOUS)
        elif what == policy.FINISHED:
            self.settle(job_id, event.state, event.cost)
        elif what == policy.CANCELLED:
            self.release(job_id)
        elif what in (policy.GIVEN_UP, policy.LEFT):
            self.keep(job_id, given_up=what == policy.GIVEN_UP)
        return None

    # ---- asked before a submit ----------------------------------------------------------

    def admits(self, job_id: str) -> bool:
        """Whether the job's submit may be sent now (then `reserve` it); sets `reached` when
        it will never fit this run."""
        if self.cap is None or job_id in self._held:
            return True
        if self.unknown_cost:
            self.reached = True  # an attempt of unknown cost holds all the room
            return False
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

    def estimate(self, job_id: str) -> Decimal | None:
        """The job's catalog estimate, recorded with its attempt in the ledger."""
        return self._job(job_id).estimate

    # ---- told after an outcome (each written to the ledger) -----------------------------

    def submit_failed(self, job_id: str, verdict: str) -> None:
        """A submit came back with an error sorted by api_answers.submit_verdict (an ambiguous
        one is recorded `unknown` with the job's own transition)."""
        if verdict == api_answers.AMBIGUOUS:
            self._keep(job_id)
        else:
            self._write(job_id, answer=ledger.REFUSED)
            self._drop(job_id)

    def settle(self, job_id: str, state: str, cost: float | None) -> None:
        """An attempt finished (SUCCEEDED, FAILED or CANCELLED) with the API's cost, if any."""
        actual = amount(cost)
        if state == st.CANCELLED:
            self.release(job_id)
            return
        self._write(job_id, actual=actual)
        self._drop(job_id)
        if actual is None:
            # Billed, but for how much we were not told: the best estimate, else (a model
            # nothing priced) what was held, and it keeps holding the room.
            best = self._reservation(job_id)
            if best is None:
                self.unknown_cost += 1
                return
            self.maybe += best
            self.spent += best
            return
        self._learn(self._job(job_id).model_id, actual)
        self.spent += actual

    def release(self, job_id: str) -> None:
        """The attempt was cancelled while queued: certainly not billed."""
        self._write(job_id, answer=ledger.CANCELLED)
        self._drop(job_id)

    def keep(self, job_id: str, *, given_up: bool = True) -> None:
        """The attempt may have been billed and no cost will come this run: count it as
        spent-maybe (`given_up`: nothing more will be learnt of it; else it is left on the
        server, for the next run to read)."""
        if given_up:
            self._write(job_id)
        self._keep(job_id)

    # ---- read -------------------------------------------------------------------------

    def unknown_cost_models(self) -> list[str]:
        """The models of the attempts of unknown cost (see `unknown_cost`)."""
        return sorted({a.model_id for a in self.books.unknown_cost}) or sorted(self._learning)

    # ---- inside -----------------------------------------------------------------------

    def _write(self, job_id: str, **outcome: Any) -> None:
        if self.writer is not None:
            self.writer.close_attempt(job_id, **outcome)

    def _keep(self, job_id: str) -> None:
        if job_id not in self._held:
            return
        self._drop(job_id)
        cost = self._reservation(job_id)
        if cost is None:
            self.unknown_cost += 1  # it keeps holding the room
            return
        self.spent += cost
        self.maybe += cost

    def know(self, row: JobRow) -> None:
        """Remember the job (its model and estimate) whatever the table holds."""
        self._jobs[row.job_id] = _Job(row.model_id, self._estimate(row.model_id, row.inputs))

    def _job(self, job_id: str) -> _Job:
        """The job's model and estimate: remembered, or from its row in the run's table (a
        job the budget is asked about is one the run holds: pending, in flight, finishing)."""
        known = self._jobs.get(job_id)
        if known is not None:
            return known
        row = None if self._rows is None else self._rows(job_id)
        if row is None:
            return _Job("", None)
        return _Job(row.model_id, self._estimate(row.model_id, row.inputs))

    def _reservation(self, job_id: str) -> Decimal | None:
        """The higher of the job's estimate and the highest actual cost seen for its model;
        None when neither is known."""
        job = self._job(job_id)
        return self.books.best(job.model_id, job.estimate)

    def _learn(self, model_id: str, actual: Decimal | None) -> None:
        if actual is not None and actual > self.books.highest.get(model_id, Decimal(-1)):
            self.books.highest[model_id] = actual

    def _drop(self, job_id: str) -> Decimal:
        held = self._held.pop(job_id, _ZERO)
        self.reserved -= held
        model = self._job(job_id).model_id
        if self._learning.get(model) == job_id:
            del self._learning[model]
        return held


def estimate_of(estimate: Estimate, rows: Iterable[JobRow]) -> tuple[Decimal, int]:
    """The estimate of the jobs `rows` that have one, and how many have none."""
    total, unpriced = _ZERO, 0
    for row in rows:
        est = estimate(row.model_id, row.inputs)
        if est is None:
            unpriced += 1
        else:
            total += est
    return total, unpriced


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

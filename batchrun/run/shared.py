"""A run that is one worker of a sweep shared through PostgreSQL (store/shared.py).

The worker runs the ordinary scheduler on the jobs it claims: `SharedFeed` hands it pages of
pending jobs (and the accepted jobs of workers whose lease lapsed) as it goes and renews its
leases; `SharedAccount`, a submit policy, reserves each submit's slot and room in the sweep's
one account and gives back what an attempt did not spend; the rate limiter takes every call
from the sweep's rate window. Files land in this worker's run folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from batchrun.api.client import Client
from batchrun.catalog.pricing import plain
from batchrun.errors import BudgetReached
from batchrun.plan.build import Plan
from batchrun.plan.settings import RunSettings
from batchrun.results.report import write_report
from batchrun.run import policy
from batchrun.run.budget import Budget, amount, estimate_of, plan_estimator
from batchrun.run.ending import EndCounts, say_how_it_ended
from batchrun.run.engine import (
    EXIT_INTERRUPTED,
    RunOptions,
    file_planner,
    install_interrupt,
    run_limiter,
    run_progress,
)
from batchrun.run.inputs import check_ready, submitter
from batchrun.run.jobtable import JobTable
from batchrun.run.parts import RunParts
from batchrun.run.policy import Decision, JobsView, Told
from batchrun.run.scheduler import Scheduler
from batchrun.run.sharedgate import SharedGate
from batchrun.store import records
from batchrun.store.output_urls import needs_files
from batchrun.store.records import JobRow
from batchrun.store.shared import SharedState, SharedStateLost
from batchrun.util.safetext import printable

PAGE = 20  # pending jobs claimed at a time (more when many are in flight)
CLAIM_EVERY_S = 0.5  # when nothing is left to submit here: look for work this often
SWEEP_CHECK_S = 1.0
# The shared rate window is counted when a call takes its place, on the database's clock; the
# call reaches the API a little later, later still from a busy machine: the window is this
# much longer than the limiter's own, so no second the API counts holds more than the limit.
SHARED_SLACK_S = 0.1  # how often a worker with nothing to do asks whether the sweep is done


def page_size(settings: RunSettings) -> int:
    """Pending jobs a worker claims at a time: about what it can send in two seconds, so
    the first worker does not take a small sweep whole."""
    if settings.max_in_flight is not None:
        return max(1, min(PAGE, settings.max_in_flight))
    if settings.rate_limit is not None:
        return max(1, min(PAGE, round(settings.rate_limit * 2)))
    return PAGE


class SharedFeed:
    """The scheduler's supply of jobs from the sweep (Scheduler's `feed`)."""

    def __init__(
        self, state: SharedState, *, lease_s: float, clock: Callable[[], float], page: int = PAGE
    ) -> None:
        self.state = state
        self.lease_s = lease_s
        self.clock = clock
        self.page = page
        now = clock()
        self._renewed = now
        self._claimed = now - CLAIM_EVERY_S
        self._checked = now - SWEEP_CHECK_S
        self._unfinished: int | None = None

    def more(self, waiting: int | None) -> tuple[list[JobRow], list[JobRow]] | None:
        """New jobs for this worker: (pending to submit, taken over to poll), or None when it
        is not time to look. `waiting`: pending jobs it still holds (None: it submits no
        more, so it takes over only)."""
        now = self.clock()
        if now - self._renewed >= self.lease_s / 3:
            self.state.renew(self.lease_s)
            self._renewed = now
        low = waiting is not None and waiting < self.page // 2
        if now - self._claimed < CLAIM_EVERY_S and not (low and waiting == 0):
            return None
        if now - self._claimed < CLAIM_EVERY_S / 5:
            return None
        self._claimed = now
        claimed = self.state.claim(self.page if low else 0, self.lease_s)
        return claimed.pending, claimed.taken_over

    def done(self) -> bool:
        """Nothing is left for any worker (asked at most once a second): a worker with nothing
        to do stays until then, to take over what a lost worker leaves."""
        now = self.clock()
        if self._unfinished is None or now - self._checked >= SWEEP_CHECK_S:
            self._unfinished = self.state.unfinished()
            self._checked = now
        return self._unfinished == 0


class SharedAccount(policy.Policy):
    """The sweep's cost cap and in-flight slots, shared by every worker: a submit goes only
    when its reservation holds. Asked last but the breaker, it is the one policy that writes
    when asked (a reservation, kept for that job until its attempt is over, so asking again
    is free); what it reserved for jobs not sent is given back when the worker stops."""

    def __init__(
        self,
        state: SharedState,
        estimate: Callable[[str], Decimal | None],
        max_in_flight: int | None,
    ) -> None:
        self.state = state
        self.estimate = estimate
        self.max_in_flight = max_in_flight
        self.reached = False

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        estimate = self.estimate(job.job_id)
        if self.state.reserve(job.job_id, job.model_id, estimate, self.max_in_flight):
            return policy.SEND
        cap, spent, reserved, _ = self.state.money()
        if cap is not None and reserved == 0:  # nothing held anywhere will come back
            self.reached = True
            return Decision(
                policy.STOP,
                f"the sweep's cost cap ${cap} is reached (spent ${spent})",
                error=BudgetReached(
                    f"the sweep's cost cap (${cap}) is reached: spent ${spent} across every "
                    "worker; raise run.max_cost_usd (or --max-cost) to run the rest"
                ),
            )
        return Decision(policy.HOLD, "waiting for room under the sweep's cap", wait=0.25)

    def told(self, event: Told) -> Decision | None:
        job = event.job.job_id
        if event.what == policy.FINISHED:
            billed = event.state != records.CANCELLED  # cancelled at the server: not billed
            self.state.settle(job, amount(event.cost), billed=billed)
        elif event.what in (policy.REFUSED, policy.CANCELLED):
            self.state.settle(job, None, billed=False)
        elif event.what in (policy.AMBIGUOUS, policy.GIVEN_UP):
            self.state.settle(job, None)  # may be billed: what it holds is spent
        return None

    def explain(self, not_sent: Counter[str]) -> list[str]:
        if not self.reached:
            return []
        left = sum(not_sent.values())
        return [f"{left} job(s) not sent: the sweep's cost cap is reached"]


def run_shared(plan: Plan, options: RunOptions, url: str) -> int:
    """Work the plan's sweep with the other workers given the same manifest and `url`; returns
    the exit code as run_batch does (the sweep's cap reached: BudgetReached)."""
    settings = plan.manifest.run
    check_ready(plan.manifest.uploads, plan.manifest.has_local)  # before anything is sent
    run_dir = Path(options.run_dir or plan.manifest.outputs.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    worker = f"{host}:{os.getpid()}:{secrets.token_hex(3)}"
    state = SharedState.connect(url, sweep=plan.manifest.name, worker=worker)
    state.on_lost = lambda message: options.echo(f"warning: {message}")
    state.files_at = (str(run_dir.resolve()), host)
    try:
        state.open_sweep(plan.manifest.sha256, options.origin, settings.max_cost_usd)
        added = state.add_jobs(plan.jobs)
        if added and added < len(plan.jobs):
            options.echo(f"{added} new job(s) added to the shared sweep {plan.manifest.name!r}")
        state.set_meta(**_sweep_meta(plan, options))
        if options.resubmit_unknown:
            state.requeue([records.UNKNOWN])
        if options.retry_failed:
            state.requeue([records.FAILED, records.TIMED_OUT])
        state.join(str(run_dir.resolve()), host, settings.lease_s, canary=settings.canary)
        return _Worker(plan, options, run_dir, state).execute()
    finally:
        with contextlib.suppress(SharedStateLost):  # gone: its leases lapse instead
            state.let_go()
        state.close()


def _sweep_meta(plan: Plan, options: RunOptions) -> dict[str, str]:
    """What `status --state` and `export` say of the sweep, as a run folder's meta does."""
    meta = {
        "name": plan.manifest.name,
        "manifest": str(plan.manifest.path),
        "manifest_sha256": plan.manifest.sha256,
        "api_base": options.api_base,
        "origin": options.origin,
    }
    mark = options.plan_mark
    if mark is not None:
        meta.update(est_cost_usd=plain(mark.est_usd), unpriced_jobs=str(mark.unpriced))
    cap = plan.manifest.run.max_cost_usd
    if cap is not None:
        meta["max_cost_usd"] = plain(cap)
    return meta


class _Worker:
    def __init__(self, plan: Plan, options: RunOptions, run_dir: Path, state: SharedState):
        self.plan, self.opts, self.run_dir, self.state = plan, options, run_dir, state
        self.echo: Callable[[str], None] = lambda text: options.echo(printable(text, lines=True))
        self.started = options.clock()

    def execute(self) -> int:
        opts, state, settings = self.opts, self.state, self.plan.manifest.run
        claimed = state.claim(page_size(settings), settings.lease_s)
        rows = [*claimed.pending, *claimed.taken_over]
        client = Client(opts.api_base, opts.token, session=opts.session)
        limiter = run_limiter(settings, opts)
        limiter.shared = state.rate_window(slack_s=SHARED_SLACK_S)
        every = state.rows(in_manifest_only=True)
        estimate = plan_estimator(self.plan)
        # The sweep's every unfinished job is known, for the estimate of those claimed later.
        budget = Budget.for_folder(None, estimate, state.attempts(), every, state)
        budget.est_total, budget.unpriced = estimate_of(
            estimate, (r for r in every if not r.cached)
        )
        account = SharedAccount(state, budget.estimate, settings.max_in_flight)
        gate = SharedGate(state, halt=settings.halt, canary=settings.canary, clock=opts.clock)
        progress = run_progress(len(every), opts, budget, limiter)
        feed = SharedFeed(
            state, lease_s=settings.lease_s, clock=opts.clock, page=page_size(settings)
        )
        parts = RunParts(
            JobTable(state, rows), client, limiter, settings, opts.clock, opts.wall, feed=feed,
            submit=submitter(self.plan, client.submit),
        )  # fmt: skip
        download = self.plan.manifest.outputs.download
        sched = Scheduler(
            parts, policies=[gate, budget, account], estimate=budget.estimate,
            plan_files=file_planner(self.plan, self.run_dir, opts.api_base) if download else None,
            progress=progress, echo=self.echo, workers=opts.workers,
            download_workers=opts.download_workers,
        )  # fmt: skip
        sched.seed(rows, needs_files=lambda r: download and needs_files(self.run_dir, r))
        restore = install_interrupt(sched, handle_signals=opts.handle_signals)
        try:
            sched.run()
        finally:
            restore()
            progress.close()
        client.close()
        return self._conclude(sched, budget, account)

    def _conclude(self, sched: Scheduler, budget: Budget, account: SharedAccount) -> int:
        if sched.stop.is_set():
            still = len(sched.at_server.flights)
            self.echo(
                f"interrupted: {still} request(s) of this worker still on the server (another "
                f"worker polls them once its lease lapses); resume with: "
                f"{self.opts.resume_command or 'batchrun run MANIFEST --state URL'}"
            )
            return EXIT_INTERRUPTED
        if sched.fatal is not None and getattr(sched.fatal, "exit_code", 1) != 1:
            raise sched.fatal
        rows = self.state.rows(in_manifest_only=True)
        attempts = self.state.attempts()
        write_report(
            self.run_dir, rows, attempts,
            facts={"name": self.plan.manifest.name, "manifest": str(self.plan.manifest.path),
                   "origin": self.opts.origin or self.opts.api_base,
                   "elapsed_s": round(self.opts.clock() - self.started, 3)},
        )  # fmt: skip
        # The sweep's money as its ledger says once every worker's attempts are in.
        estimate = plan_estimator(self.plan)
        books = Budget.for_folder(None, estimate, attempts, rows)
        books.est_total, books.unpriced = estimate_of(estimate, (r for r in rows if not r.cached))
        return say_how_it_ended(
            EndCounts.of(rows), sched, books, run_dir=self.run_dir,
            elapsed=self.opts.clock() - self.started, left_out=None, quiet=self.opts.quiet,
            echo=self.echo,
        )  # fmt: skip

"""The run loop: one scheduler thread decides what happens next, a few workers make the calls.

The scheduler owns every state transition (so they happen in a known order, each committed
before anything depends on it) and hands each API call to a worker only once the shared rate
limiter gave it a token: a submit first when a job waits and the in-flight cap allows, else a
call due on the minimal schedule (about one read per job, when it is most likely done), else a
spare read: a token no submit can use now is lost a moment later, so it goes to the job most
likely finished since its last read, freeing its slot sooner. When the rate binds, submits take
every token and reads keep to the minimal schedule. Workers only talk HTTP and put their
outcome on a queue. What a submit's outcome means is decided here; the jobs at the server
(reads, cancels, job_timeout) are kept by flights.Flights.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from batchrun.api import answers as api_answers
from batchrun.api.client import Client
from batchrun.api.ratelimit import RateLimiter, backoff
from batchrun.errors import ApiError, AuthError, RateLimitedError, UnreachableError
from batchrun.plan.settings import RunSettings
from batchrun.run.budget import Budget
from batchrun.run.downloads import Downloads, PlanFiles
from batchrun.run.flights import BACKOFF_BASE_S, BACKOFF_CAP_S, Flight, Flights, Outcome
from batchrun.run.halt import Gate
from batchrun.run.inflight import InFlightCap
from batchrun.run.jobtable import JobTable
from batchrun.run.pending import PendingJobs
from batchrun.run.progress import Progress
from batchrun.run.refusals import ModelRefusals
from batchrun.store import state as st
from batchrun.store.records import JobRow
from batchrun.store.state import StateStore

# Submits in a row with no answer we could read (a gateway's 502, a captive portal's page)
# before we stop submitting: each may have been billed. A flaky server trips it ~0.1% of runs.
MAX_AMBIGUOUS_SUBMITS = 6
MAX_SUBMIT_REFUSALS = 6  # consecutive refused submits (about 30 s) before giving up on the server
STOP_CHECK = 0.2  # seconds; the loop never sleeps longer, so Ctrl-C is noticed at once
SPARE_RECHECK = 0.02  # no spare read worth a token yet: look again soon (the odds grow)
# This one thread hands out every token; when it wakes late (a busy machine), the tokens due
# meanwhile are kept, up to this many seconds' worth (the limiter's gate still caps every
# rolling second at the rate).
CATCH_UP_S = 0.1

# Fatal errors that stop every call, not only submits.
STOP_ALL = (AuthError, UnreachableError)


class Scheduler:
    """Drives submit / poll / cancel / download for one run until nothing is left to do."""

    def __init__(
        self,
        *,
        store: StateStore,
        client: Client,
        limiter: RateLimiter,
        run: RunSettings,
        jobs: Iterable[JobRow],
        plan_files: PlanFiles | None = None,
        progress: Progress | None = None,
        budget: Budget | None = None,
        echo: Callable[[str], None] | None = None,
        workers: int = 16,
        download_workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        gate: Gate | None = None,
    ) -> None:
        self.client = client
        self.gate = gate or Gate()  # sweep control (halt.py): which pending job may go
        self.refusals = ModelRefusals()  # models the API refused for every job (refusals.py)
        self.limiter = limiter
        limiter.burst_s = max(limiter.burst_s, CATCH_UP_S)
        self.run_settings = run
        self.progress = progress
        self.budget = budget or Budget.unlimited()  # budget hook: see _budget_admits
        self.budget.bind(store)  # it writes each attempt's outcome to the ledger
        self.echo = echo
        self.workers = workers
        self.clock = clock
        self.wall = wall
        self.jobs = JobTable(store, jobs)
        self.pending = PendingJobs(
            lambda job_id: self.jobs.rows[job_id].model_id, self._expected_run
        )
        self.submitting = 0
        self.busy = 0
        self.submit_open = True
        self.submit_not_before = 0.0
        self.submit_refusals = 0
        self.submit_ambiguous = 0  # consecutive ambiguous submits (the circuit breaker)
        self._ambiguous_at = 0.0  # when the last one counted came back
        # Until the server has accepted one submit this run, submits go one at a time: a bad
        # token, an empty balance or a schema the server disagrees with costs one refused
        # request, not one per worker.
        self.submit_accepted = False
        self.fatal: BaseException | None = None
        self.reach = api_answers.Reachability(clock)
        self._results: queue.Queue[Outcome] = queue.Queue()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="batchrun-api")
        self.downloads = Downloads(
            plan_files,
            self.jobs,
            self._results,
            workers=download_workers,
            stop=self._stop,
            clock=clock,
        )
        self._random = random.Random()
        self.server = Flights(
            jobs=self.jobs,
            limiter=limiter,
            run=run,
            clock=clock,
            wall=wall,
            retry=self._back_to_pending,
            download=self.downloads.start,
            fatal=self._stop_submitting,
            budget=self.budget,
        )
        runs = self.server.planner.runs
        self.max_in_flight = InFlightCap(run.max_in_flight, run.rate_limit, runs, echo)

    @property
    def flights(self) -> dict[str, Flight]:
        """Jobs the server is still working on, by job id."""
        return self.server.flights

    @property
    def abandoned(self) -> set[str]:
        """Jobs left on the server, no longer polled this run."""
        return self.server.abandoned

    # ---- setup --------------------------------------------------------------------------

    def add_pending(self, job_ids: Iterable[str]) -> None:
        self.pending.extend(job_ids)

    def add_flight(self, row: JobRow) -> None:
        """A job submitted by an earlier run: read it again now."""
        self.refusals.answered(row.model_id, accepted=True)  # the API took one of its model's
        self.server.resume(row)

    def add_download(self, job_id: str) -> None:
        """A succeeded job of an earlier run with files missing: download them.

        Its stored URLs may have gone stale since (expired, or served by a restarted server on
        another port), so one /result call first fetches the current ones.
        """
        request_id = self.jobs.rows[job_id].request_id
        if not request_id:
            self.downloads.start(job_id)
            return
        self.server.refresh(job_id, request_id)

    def request_stop(self) -> None:
        """Ctrl-C: stop submitting and polling; calls already sent are still recorded.

        Safe in a signal handler: it only sets an event, which the loop checks at least every
        STOP_CHECK seconds.
        """
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.downloads.send()
            while not self._stop.is_set() and not self._finished():
                wait = self._dispatch_what_we_can()
                self._apply_next(wait)
        finally:
            self._wind_down()

    def _gated_pending(self) -> bool:
        """Hook for sweep control (halt.py): set aside the pending jobs the gate holds back
        (halted, or waiting for their model's canaries); is any job left to submit?"""
        while self.pending and (
            self.refusals.holds(self.jobs.rows[self.pending[0]].model_id)
            or not self.gate.admit(self.pending[0], self.jobs)
        ):
            self.pending.popleft()
        return bool(self.pending)

    def _finished(self) -> bool:
        if isinstance(self.fatal, STOP_ALL):
            return self.busy == 0 and not self.downloads.busy
        can_submit = self.submit_open and bool(self.pending)
        return not (can_submit or self.server or self.busy or self.downloads.busy)

    def _dispatch_what_we_can(self) -> float:
        """Start every call allowed now; return how long to wait before trying again."""
        submits: list[str] = []
        wait = self._take_calls(submits)
        if submits:
            # Committed (one fsync for all) before any leaves: from here on, a crash leaves
            # each of them an ambiguous submit, never a silent second one.
            with self.jobs.batch(durable=True):
                for job_id in submits:
                    self.jobs.mark_submitting(job_id, self.budget.estimate(job_id))
            submit = self.client.submit
            for job_id in submits:
                row = self.jobs.rows[job_id]
                self._pool.submit(self._work, "submit", job_id, submit, row.model_id, row.inputs)
        return wait

    def _take_calls(self, submits: list[str]) -> float:
        """Hand out the calls the limiter allows now; submits are only collected in `submits`."""
        while True:
            if self.busy >= self.workers or isinstance(self.fatal, STOP_ALL):
                return STOP_CHECK  # a worker's outcome wakes us sooner
            now = self.clock()
            due = self.server.due_in(now)
            submit_ready = self._submit_ready()
            waits = [STOP_CHECK]
            if submit_ready and now < self.submit_not_before:
                waits.append(self.submit_not_before - now)
                submit_ready = False
            poll_ready = due is not None and due <= 0
            if due is not None and not poll_ready:
                waits.append(due)
            token_wait = self.limiter.wait_time()
            if token_wait > 0:
                if submit_ready or poll_ready or self.flights:
                    return max(token_wait, 0.001)
                return max(0.0, min(waits))
            if submit_ready:
                if not self.limiter.try_acquire():
                    return 0.001
                self.budget.reserve(self.pending[0])  # budget hook
                self.refusals.sending(self.jobs.rows[self.pending[0]].model_id)
                submits.append(self.pending.popleft())
                self.submitting += 1
                self.busy += 1
            elif poll_ready:
                if not self.limiter.try_acquire():
                    return 0.001
                self._start_call(*self.server.pop_due())
            else:
                # Without a rate limit no token is spare: reads keep to the minimal schedule.
                spare = None
                if self.limiter.configured is not None:
                    spare = self.server.spare_read(self.wall(), for_a_slot=bool(self.pending))
                if spare is None:
                    if self.flights:
                        waits.append(SPARE_RECHECK)
                    return max(0.0, min(waits))
                if not self.limiter.try_acquire():
                    self.server.unread(spare[1])
                    return 0.001
                self._start_call(*spare)

    def _submit_ready(self) -> bool:
        """A job waits, the in-flight cap allows one more, and nothing holds submits back
        (the sweep gate, the budget)."""
        return bool(
            self.submit_open
            and self._gated_pending()
            and len(self.flights) + self.submitting < self.max_in_flight()
            and (self.submit_accepted or self.submitting == 0)
            and self.refusals.may_send(self.jobs.rows[self.pending[0]].model_id)
            and self._budget_admits()
        )

    def _expected_run(self, model: str) -> float | None:
        """Mean run time of `model`'s jobs, once some of its own have finished."""
        runs = self.server.planner.runs
        return runs.mean(model) if runs.known(model) else None

    def _apply_next(self, wait: float) -> None:
        """Wait up to `wait` for an outcome, then apply it and every other one already back."""
        outcomes: list[Outcome] = []
        try:
            wait = min(wait, STOP_CHECK)
            if wait > 0:
                outcomes.append(self._results.get(timeout=wait))
        except queue.Empty:
            pass
        self._apply_all(outcomes)
        self.pending.extend(self.gate.released(self.jobs))  # hook: canaries passed (halt.py)
        self.downloads.send()
        self._show()

    def _apply_all(self, outcomes: list[Outcome], *, flush: bool = False) -> None:
        """Apply these and whatever else is back, with one commit for all their transitions
        (and for the files landed since the last time they were recorded, when due)."""
        while True:
            try:
                outcomes.append(self._results.get_nowait())
            except queue.Empty:
                break
        flush = flush or self.downloads.flush_due()
        if not (outcomes or flush):
            return
        with self.jobs.batch(durable=any(o.kind == "submit" for o in outcomes)):
            for outcome in outcomes:
                self._apply(outcome)
            if flush:
                self.downloads.flush()
        self.max_in_flight.check()

    def _wind_down(self) -> None:
        """Wait for calls already sent (their request ids must be recorded), then stop;
        record the files that landed."""
        # no cancel_futures: a submit handed to a worker is already marked SUBMITTING
        self._pool.shutdown(wait=True)
        self._apply_all([])
        self.downloads.close()
        self._apply_all([], flush=True)
        if self.progress:
            self._show(force=True)

    # ---- starting calls -----------------------------------------------------------------

    def _start_call(self, kind: str, job_id: str, request_id: str) -> None:
        call = self.client.cancel if kind == "cancel" else self.client.result
        self.busy += 1
        self._pool.submit(self._work, kind, job_id, call, request_id)

    def _work(self, kind: str, job_id: str, call: Callable[..., Any], *args: Any) -> None:
        self.limiter.gate()  # the rolling-window cap, on the moment the call really leaves
        sent = self.wall()
        try:
            self._results.put(Outcome(kind, job_id, call(*args), at=sent))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the scheduler
            self._results.put(Outcome(kind, job_id, error=exc, at=sent))

    # ---- applying outcomes --------------------------------------------------------------

    def _apply(self, o: Outcome) -> None:
        if o.kind in ("plan", "file"):
            self.downloads.apply(o)
            return
        self.busy -= 1
        self._note_reach(o)
        if o.kind == "submit":
            self.submitting -= 1
            self._submitted(o)
        elif o.kind == "poll":
            self.server.polled(o)
        elif o.kind == "refresh":
            self.server.refreshed(o)
        else:
            self.server.cancelled(o)

    def _submitted(self, o: Outcome) -> None:
        job_id, exc = o.job_id, o.error
        verdict = None if exc is None else api_answers.submit_verdict(exc)
        accepted = exc is None or verdict == api_answers.KEPT
        self.refusals.answered(self.jobs.rows[job_id].model_id, accepted=accepted)
        if accepted:
            request_id = str(o.value if not isinstance(exc, ApiError) else exc.request_id)
            self.submit_refusals = 0
            self.submit_ambiguous = 0
            self.submit_accepted = True
            self.jobs.record_request_id(job_id, request_id, o.at)
            if exc is not None:
                self.jobs.record_error(job_id, str(exc))
            self.server.submitted(job_id, request_id, o.at)
            return
        assert exc is not None and verdict is not None
        self.budget.submit_failed(job_id, verdict)  # budget hook
        if verdict == api_answers.THROTTLED:
            assert isinstance(exc, RateLimitedError)
            self.limiter.throttled(exc.retry_after)
            self._back_to_pending(job_id, str(exc))
        elif verdict == api_answers.RETRY:
            self.submit_refusals += 1
            if self.submit_refusals > MAX_SUBMIT_REFUSALS:
                self.fatal = exc
                self.submit_open = False
            self.submit_not_before = self.clock() + self._backoff(self.submit_refusals)
            self._back_to_pending(job_id, str(exc))
        elif verdict == api_answers.STOP:
            # Nothing was accepted; stop submitting (auth: stop everything).
            self._stop_submitting(exc)
            self._back_to_pending(job_id, str(exc))
        elif verdict == api_answers.FAILED:
            self.jobs.record_result(job_id, st.FAILED, finished_at=o.at, error=str(exc))
            self.refusals.note(self.jobs.rows[job_id].model_id, exc)  # hook: refusals.py
        else:
            why = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            error = api_answers.AMBIGUOUS_SUBMIT.format(why=why)
            self.jobs.mark_unknown(job_id, error)
            # One at a time again until a submit is accepted; a few in a row: stop submitting.
            # Only submits sent after the previous ambiguous answer count (those already in
            # flight with it are one sample of the server, not several).
            self.submit_accepted = False
            if o.at >= self._ambiguous_at:
                self.submit_ambiguous += 1
                self._ambiguous_at = self.wall()
            if self.submit_ambiguous >= MAX_AMBIGUOUS_SUBMITS and self.submit_open:
                self._stop_submitting(
                    ApiError(
                        f"{self.submit_ambiguous} submits in a row got no answer we could read "
                        f"(last: {why}); each may have been billed, so no more are sent. Check "
                        "the API base, proxy and network, then rerun (jobs not yet sent are "
                        "submitted then; --resubmit-unknown sends the ambiguous ones again)"
                    )
                )

    # ---- budget hook (batchrun/run/budget.py) -------------------------------------------

    def _budget_admits(self) -> bool:
        """Whether the next job's submit fits under the cost cap; at the cap, stop submitting
        (jobs in flight still finish)."""
        if self.budget.admits(self.pending[0]):
            return True
        if self.budget.reached:
            self.submit_open = False
        return False

    def _note_reach(self, o: Outcome) -> None:
        """A dead base URL is not failed jobs: calls that could not connect, in a row, for
        long enough stop the run with UnreachableError."""
        cause = self.reach.note(getattr(o.error, "unreachable", ""))
        if cause and not isinstance(self.fatal, STOP_ALL):
            self._stop_submitting(UnreachableError.at(self.client.base_url, cause))

    def _stop_submitting(self, exc: BaseException) -> None:
        self.fatal = exc
        self.submit_open = False

    def _back_to_pending(self, job_id: str, error: str) -> None:
        self.jobs.mark_pending(job_id, error)
        self.pending.appendleft(job_id)

    # ---- helpers ------------------------------------------------------------------------

    def _backoff(self, errors: int) -> float:
        return backoff(errors, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S, rng=self._random)

    def _show(self, force: bool = False) -> None:
        if self.progress is not None:
            calls = sum(self.client.calls.values())
            self.progress.update(+self.jobs.counts, self.jobs.done(), calls, force=force)

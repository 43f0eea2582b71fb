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

import threading
from collections.abc import Callable, Iterable
from decimal import Decimal

from batchrun.api import answers as api_answers
from batchrun.errors import AuthError, UnreachableError
from batchrun.run import policy
from batchrun.run.breaker import SubmitBreaker
from batchrun.run.downloads import DownloadPool, PlanFiles
from batchrun.run.flights import Flights
from batchrun.run.inflight import InFlightCap
from batchrun.run.jobtable import DONE
from batchrun.run.outcome import Outcome
from batchrun.run.parts import RunParts
from batchrun.run.pending import PendingJobs
from batchrun.run.policy import Policies, SubmitPolicy, Told
from batchrun.run.progress import Progress
from batchrun.run.refusals import ModelRefusals
from batchrun.run.workers import Workers
from batchrun.store import state as st
from batchrun.store.records import JobRow

STOP_CHECK = 0.2  # seconds; the loop never sleeps longer, so Ctrl-C is noticed at once
SPARE_RECHECK = 0.02  # no spare read worth a token yet: look again soon (the odds grow)
# This one thread hands out every token; when it wakes late (a busy machine), the tokens due
# meanwhile are kept, up to this many seconds' worth (the limiter's gate still caps every
# rolling second at the rate).
CATCH_UP_S = 0.1

# Fatal errors that stop every call, not only submits.
STOP_ALL = (AuthError, UnreachableError)


class Scheduler:
    """Drives submit / poll / cancel / download for one run until nothing is left to do.

    `policies` (run/policy.py: the sweep gate, the budget) are asked before each submit, after
    the model refusals and before the submit circuit breaker every run has, and told every
    outcome.
    """

    def __init__(
        self,
        parts: RunParts,
        *,
        policies: Iterable[SubmitPolicy] = (),
        estimate: Callable[[str], Decimal | None] = lambda job_id: None,
        plan_files: PlanFiles | None = None,
        progress: Progress | None = None,
        echo: Callable[[str], None] | None = None,
        workers: int = 16,
        download_workers: int = 4,
    ) -> None:
        client, limiter, run = parts.client, parts.limiter, parts.run
        clock, wall = parts.clock, parts.wall
        self.client = client
        self.submit = parts.submit or client.submit
        self._reads = {"poll": client.result, "refresh": client.result, "cancel": client.cancel}
        self.estimate = estimate  # recorded with each attempt in the ledger (the budget's)
        self.limiter = limiter
        limiter.burst_s = max(limiter.burst_s, CATCH_UP_S)
        self.progress = progress
        self.clock, self.wall = clock, wall
        self.jobs = parts.jobs
        self.refusals = ModelRefusals()  # models the API refused for every job
        self.policy = Policies(self.refusals, *policies, SubmitBreaker(clock, wall))
        self.feed = parts.feed
        self.submit_open = True
        self.submitting = 0
        self.fatal: BaseException | None = None
        self.reach = api_answers.Reachability(clock)
        self.stop = threading.Event()  # Ctrl-C: see request_stop
        self.workers = Workers(workers, limiter, wall)
        self.downloads = DownloadPool(
            plan_files,
            self.jobs,
            self.workers.results,
            workers=download_workers,
            stop=self.stop,
            clock=clock,
        )
        self.at_server = Flights(
            parts,
            retry=self._back_to_pending,
            download=self.downloads.start,
            fatal=self._stop_submitting,
            tell=self._tell,
        )
        runs = self.at_server.planner.runs
        self.pending = PendingJobs(
            lambda job_id: self.jobs.rows[job_id].model_id,
            lambda model: runs.mean(model) if runs.known(model) else None,
        )
        self.max_in_flight = InFlightCap(run.max_in_flight, run.rate_limit, runs, echo)
        # Called between two steps of the loop (the live report): quick, or rarely slow.
        self.between_steps: list[Callable[[], None]] = []

    def seed(self, rows: Iterable[JobRow], *, needs_files: Callable[[JobRow], bool]) -> None:
        """What this run has to do about the jobs of earlier runs: submit the pending ones,
        read again the ones at the server, fetch the files of succeeded ones (`needs_files`)."""
        pending = []
        for row in rows:
            if row.status == st.PENDING:
                pending.append(row.job_id)
            elif row.status in (st.QUEUED, st.RUNNING) and row.request_id:
                self._tell(Told(policy.RESUMED, row))
                self.at_server.resume(row)
            elif row.status == st.SUCCEEDED and needs_files(row):
                # Its stored URLs may have gone stale since (expired, or served by a restarted
                # server on another port), so one /result call first fetches the current ones.
                if row.request_id:
                    self.at_server.refresh(row.job_id, row.request_id)
                else:
                    self.downloads.start(row.job_id)
        self.pending.extend(pending)

    def request_stop(self) -> None:
        """Ctrl-C: stop submitting and polling; calls already sent are still recorded.

        Safe in a signal handler: it only sets an event, which the loop checks at least every
        STOP_CHECK seconds.
        """
        self.stop.set()

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._refill()
            self.downloads.send()
            while not self.stop.is_set() and not self._finished():
                self._apply(self.workers.collect(min(self._dispatch(), STOP_CHECK)))
                self.pending.extend(self.policy.released(self.jobs))  # e.g. canaries passed
                self._let_go()
                self._refill()
                self.downloads.send()
                self._show()
                for step in self.between_steps:
                    step()
        finally:
            self._wind_down()

    def _let_go(self) -> None:
        """The jobs this run is done with leave the table (state.db holds them): memory holds
        what is in flight, not what the sweep has done."""
        for job_id in self.jobs.take_settled():
            row = self.jobs.rows.get(job_id)
            if row is None or row.status not in DONE or job_id in self.at_server.flights:
                continue
            if not (self.downloads.holds(job_id) or self.policy.watching(job_id)):
                self.jobs.forget(job_id)

    def _finished(self) -> bool:
        if isinstance(self.fatal, STOP_ALL):
            return self.workers.busy == 0 and not self.downloads.busy
        can_submit = self.submit_open and bool(self.pending)
        if can_submit or self.at_server or self.workers.busy or self.downloads.busy:
            return False
        return self.feed is None or not self.submit_open or self.feed.done()

    def _refill(self) -> None:
        """More jobs from the feed: pending ones to submit, others' to poll."""
        if self.feed is None:
            return
        got = self.feed.more(len(self.pending) if self.submit_open else None)
        if not got:
            return
        pending, taken_over = got
        self.jobs.add([*pending, *taken_over])
        for row in taken_over:
            self._tell(Told(policy.RESUMED, row))
            self.at_server.resume(row)
        self.pending.extend(r.job_id for r in pending)

    def _dispatch(self) -> float:
        """Start every call allowed now; return how long to wait before trying again."""
        submits: list[str] = []
        wait = self._take_calls(submits)
        if submits:
            # Committed (one fsync for all) before any leaves: from here on, a crash leaves
            # each of them an ambiguous submit, never a silent second one.
            with self.jobs.batch(durable=True):
                for job_id in submits:
                    self.jobs.mark_submitting(job_id, self.estimate(job_id))
            for job_id in submits:
                row = self.jobs.rows[job_id]
                self.workers.call("submit", job_id, self.submit, row.model_id, row.inputs)
        return wait

    def _take_calls(self, submits: list[str]) -> float:
        """Hand out the calls the limiter allows now; submits are only collected in `submits`."""
        while True:
            if self.workers.busy + len(submits) >= self.workers.size or isinstance(
                self.fatal, STOP_ALL
            ):
                return STOP_CHECK  # a worker's outcome wakes us sooner
            now = self.clock()
            due = self.at_server.due_in(now)
            submit, hold = self._next_submit()
            waits = [STOP_CHECK] if hold is None else [STOP_CHECK, hold]
            poll_ready = due is not None and due <= 0
            if due is not None and not poll_ready:
                waits.append(due)
            token_wait = self.limiter.wait_time()
            if token_wait > 0:
                if submit or poll_ready or self.at_server.flights:
                    return max(token_wait, 0.001)
                return max(0.0, min(waits))
            if submit:
                if not self.limiter.try_acquire():
                    return 0.001
                job_id = self.pending.popleft()
                self.policy.sending(self.jobs.rows[job_id])
                submits.append(job_id)
                self.submitting += 1
            elif poll_ready:
                if not self.limiter.try_acquire():
                    return 0.001
                kind, job_id, request_id = self.at_server.pop_due()
                self.workers.call(kind, job_id, self._reads[kind], request_id)
            else:
                wait = self._spare_read()
                if wait is not None:
                    return max(0.0, min(*waits, wait))

    def _spare_read(self) -> float | None:
        """Start the read a token no submit can use is best spent on (None: started); else
        how long before looking again. Without a rate limit no token is spare: reads keep to
        the minimal schedule."""
        spare = None
        if self.limiter.configured is not None:
            spare = self.at_server.spare_read(self.wall(), for_a_slot=bool(self.pending))
        if spare is None:
            return SPARE_RECHECK if self.at_server.flights else STOP_CHECK
        if not self.limiter.try_acquire():
            self.at_server.unread(spare[1])
            return 0.001
        kind, job_id, request_id = spare
        self.workers.call(kind, job_id, self._reads[kind], request_id)
        return None

    def _next_submit(self) -> tuple[bool, float | None]:
        """Whether the next pending job may be submitted now (the policies are asked, in
        order, and the in-flight cap); else how long before asking again (None: when an
        outcome comes back). Jobs a policy sets aside are dropped from `pending`."""
        while self.submit_open and self.pending:
            if len(self.at_server.flights) + self.submitting >= self.max_in_flight():
                return False, None
            decision = self.policy.ask(self.jobs.rows[self.pending[0]], self.jobs)
            if decision.say == policy.GO:
                return True, None
            if decision.say == policy.SET_ASIDE:
                job_id = self.pending.popleft()  # it stays pending in state.db
                if not self.policy.watching(job_id):
                    self.jobs.forget(job_id)
            elif decision.say == policy.HOLD:
                return False, decision.wait
            elif self.submit_open:  # STOP: no more submits (jobs in flight still finish)
                self._stop_submitting(decision.error)
        return False, None

    # ---- applying outcomes --------------------------------------------------------------

    def _apply(self, outcomes: list[Outcome], *, flush: bool = False) -> None:
        """Apply these outcomes with one commit for all their transitions (and for the files
        landed since the last time they were recorded, when due)."""
        flush = flush or self.downloads.flush_due()
        if not (outcomes or flush):
            return
        with self.jobs.batch(durable=any(o.kind == "submit" for o in outcomes)):
            for o in outcomes:
                if o.kind in ("plan", "file"):
                    self.downloads.apply(o)
                    continue
                # A dead base URL is not failed jobs: calls that could not connect, in a row,
                # for long enough stop the run.
                cause = self.reach.note(getattr(o.error, "unreachable", ""))
                if cause and not isinstance(self.fatal, STOP_ALL):
                    self._stop_submitting(UnreachableError.at(self.client.base_url, cause))
                if o.kind == "submit":
                    self.submitting -= 1
                    self.at_server.answered(o)
                elif o.kind == "poll":
                    self.at_server.polled(o)
                elif o.kind == "refresh":
                    self.at_server.refreshed(o)
                else:
                    self.at_server.cancelled(o)
            if flush:
                self.downloads.flush()
        self.max_in_flight.check()

    def _tell(self, event: Told) -> None:
        """What became of an attempt, for every policy (the one place they are told)."""
        decision = self.policy.told(event)
        if decision is not None and self.submit_open:  # STOP
            self._stop_submitting(decision.error)

    def _stop_submitting(self, exc: BaseException | None) -> None:
        self.submit_open = False
        if exc is not None:
            self.fatal = exc

    def _back_to_pending(self, job_id: str, error: str) -> None:
        self.jobs.mark_pending(job_id, error)
        self.pending.appendleft(job_id)

    def _wind_down(self) -> None:
        """Wait for calls already sent (their request ids must be recorded), then stop;
        record the files that landed."""
        self.workers.shutdown()
        self._apply(self.workers.collect(0))
        self.downloads.close()
        self._apply(self.workers.collect(0), flush=True)
        if self.progress:
            self._show(force=True)

    def _show(self, force: bool = False) -> None:
        if self.progress is not None:
            calls = sum(self.client.calls.values())
            self.progress.update(+self.jobs.counts, self.jobs.done(), calls, force=force)

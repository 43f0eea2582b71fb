"""The jobs at the server: when each is read next, what its answers do, and its job_timeout.

The scheduler hands out the calls (`due_in` / `pop_due` on the minimal schedule, `spare_read`
for a call the rate allows but no submit can use) and brings their outcomes back here; every
transition goes through the job table, so it is committed before anything depends on it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.api import answers as api_answers
from batchrun.api.ratelimit import call_backoff
from batchrun.errors import ApiError, AuthError, NotFoundError, RateLimitedError
from batchrun.run import policy
from batchrun.run.outcome import Outcome
from batchrun.run.parts import RunParts
from batchrun.run.policy import Told
from batchrun.run.polling import PollPlanner, finished_odds
from batchrun.store import state as st
from batchrun.store.records import JobRow
from batchrun.util.durations import secs

# A spare call reads a job only when the odds it finished since its last read are at least
# this: below, the read would almost surely be wasted.
MIN_ODDS = 0.02
# At the batch's end (nothing left to submit) the last job's read ends the run, and the odds
# of a job that outlived every run seen are small however long it runs. So there each job is
# also read once this many seconds times the jobs in flight: 10 such reads a second for all.
GAP_PER_FLIGHT_S = 0.1
MAX_POLL_ERRORS = 40  # consecutive failed reads of one job before we stop polling it
# A request we submitted and recorded that the server says it does not know (404) may just not
# be visible yet (a replica behind): read again with backoff until it has been missing for
# NOT_FOUND_READS reads and NOT_FOUND_GRACE_S since its submit, then leave it for
# --resubmit-unknown (it may have run and been billed).
NOT_FOUND_READS = 3
NOT_FOUND_GRACE_S = 180.0


@dataclass
class Flight:
    """A job with a request id that the server is (as far as we know) still working on."""

    job_id: str
    request_id: str
    submitted_at: float  # epoch seconds
    status: str  # QUEUED or RUNNING
    errors: int = 0  # consecutive failed calls
    cancelling: bool = False
    last_error: str = ""  # of the latest failed call, so a give-up can say why
    model: str | None = None
    reading: bool = False  # a read (or cancel) of it is on its way
    read_at: float | None = None  # epoch seconds the latest answered read was sent
    started_by: float | None = None  # it was running by then (an estimate when queued first)
    queued_at: float | None = None  # last read that found it in the server's queue
    queue_position: int | None = None  # ... and where
    due_seq: int = -1  # its live entry in the schedule (older ones are stale)
    not_found: int = 0  # reads answered 404 (request unknown) since the last good one


class Flights:
    """Jobs in flight (`flights`), /result refreshes of finished jobs, and the calls due on
    them (poll, cancel, refresh) in the order they fall due."""

    def __init__(
        self,
        parts: RunParts,
        *,
        retry: Callable[[str, str], None],
        download: Callable[[str], None],
        fatal: Callable[[BaseException], None],
        tell: Callable[[Told], None] = lambda event: None,
        rng: random.Random | None = None,
    ) -> None:
        self.jobs = parts.jobs
        self.limiter = parts.limiter
        self.run_settings = run = parts.run
        self.clock = parts.clock
        self.wall = parts.wall
        self._retry = retry  # back to the submit queue, with this error
        self._download = download  # a succeeded job's files to fetch
        self._fatal = fatal  # the account cannot go on (auth)
        self._tell = tell  # what became of each attempt, for the submit policies (policy.py)
        self._random = rng or random.Random()
        self.planner = PollPlanner(run.poll_interval)
        self.flights: dict[str, Flight] = {}
        self.refreshing: dict[str, str] = {}  # job id -> request id whose /result is re-read
        self.abandoned: set[str] = set()  # still on the server, no longer polled this run
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        """Anything left to wait for at the server."""
        return bool(self.flights or self.refreshing)

    # ---- adding ---------------------------------------------------------------------

    def resume(self, row: JobRow) -> None:
        """A job submitted by an earlier run: read it again now."""
        assert row.request_id
        submitted = row.submitted_at or self.wall()
        flight = Flight(row.job_id, row.request_id, submitted, row.status, model=row.model_id)
        self.flights[row.job_id] = flight
        self._schedule(0.0, "poll", row.job_id)

    def submitted(self, job_id: str, request_id: str, at: float) -> None:
        """A submit the server accepted (its request id already recorded)."""
        model = self.jobs.rows[job_id].model_id
        self.flights[job_id] = Flight(job_id, request_id, at, st.QUEUED, model=model)
        self._schedule(self.planner.first_delay(model), "poll", job_id)

    def refresh(self, job_id: str, request_id: str) -> None:
        """Read a finished job's /result again (for current output URLs), then download."""
        self.refreshing[job_id] = request_id
        heapq.heappush(self._heap, (self.clock(), next(self._seq), "refresh", job_id, request_id))

    # ---- handing out calls ----------------------------------------------------------

    def due_in(self, now: float) -> float | None:
        """Seconds until the next call falls due (<= 0: due now); None when none is waiting."""
        self._drop_stale()
        return self._heap[0][0] - now if self._heap else None

    def pop_due(self) -> tuple[str, str, str]:
        """The next call: (kind, job id, request id). Call `due_in` first."""
        _, _, kind, job_id, request_id = heapq.heappop(self._heap)
        flight = self.flights.get(job_id)
        if flight is not None and kind != "refresh":
            flight.reading = True
        return kind, job_id, request_id

    def spare_read(self, now: float, *, for_a_slot: bool) -> tuple[str, str, str] | None:
        """A read for a call no submit can use: the job most likely finished since its last
        read (at least MIN_ODDS), none read within its model's minimum gap, none twice at once.
        `now` is epoch seconds; `for_a_slot`: submits wait for a free slot. None when no read
        is worth the call, or when a freed slot would only queue one more job at the server
        (it holds some of ours in its queue: its concurrency binds, not our slots)."""
        best: Flight | None = None
        best_odds = MIN_ODDS
        runs = self.planner.runs
        every = math.inf if for_a_slot else GAP_PER_FLIGHT_S * len(self.flights)
        for flight in self.flights.values():
            if for_a_slot and flight.status == st.QUEUED and flight.queue_position:
                return None
            if flight.reading or flight.cancelling or flight.errors:
                continue  # a failed read waits for its backoff, on the schedule
            since = math.inf if flight.read_at is None else now - flight.read_at
            if since < min(every, runs.min_gap(flight.model)):
                continue
            odds = self.odds(flight, now)
            if not for_a_slot and since >= every and odds > 0.0:
                odds = max(odds, MIN_ODDS * (1.0 + odds))  # due at the batch's end
            if odds > best_odds:
                best, best_odds = flight, odds
        if best is None:
            return None
        best.reading = True
        return "poll", best.job_id, best.request_id

    def unread(self, job_id: str) -> None:
        """A spare read handed out but not sent after all."""
        flight = self.flights.get(job_id)
        if flight is not None:
            flight.reading = False

    def odds(self, flight: Flight, now: float) -> float:
        """Probability `flight` finished since its last read, at `now` (epoch seconds)."""
        start = self._start(flight)
        last = flight.read_at if flight.read_at is not None else start
        ran_before = max(0.0, last - start)
        return finished_odds(
            self.planner.runs, flight.model, ran=now - start, ran_at_last_read=ran_before
        )

    def _start(self, flight: Flight) -> float:
        """When the job started running (or will, when last seen queued), as best we know."""
        if flight.started_by is not None:
            return flight.started_by
        if flight.status == st.QUEUED and flight.queued_at is not None:
            return flight.queued_at + self.planner.queue_wait(flight.queue_position or 1)
        return flight.submitted_at

    def _schedule(self, delay: float, kind: str, job_id: str) -> None:
        flight = self.flights[job_id]
        flight.due_seq = seq = next(self._seq)
        heapq.heappush(self._heap, (self.clock() + delay, seq, kind, job_id, flight.request_id))

    def _drop_stale(self) -> None:
        """Forget entries of jobs that finished, were resubmitted or rescheduled since, or are
        being read now (the read's answer schedules the next one)."""
        while self._heap:
            _, seq, kind, job_id, request_id = self._heap[0]
            if kind == "refresh":
                if self.refreshing.get(job_id) == request_id:
                    return
            else:
                flight = self.flights.get(job_id)
                if (
                    flight is not None
                    and flight.request_id == request_id
                    and flight.due_seq == seq
                    and not flight.reading
                ):
                    return
            heapq.heappop(self._heap)

    # ---- applying outcomes ----------------------------------------------------------

    def answered(self, o: Outcome) -> None:
        """A submit's answer: the job is at the server (it is read from now on), back to
        pending (certainly not accepted), failed (the API refused it) or unknown."""
        job_id, exc = o.job_id, o.error
        row = self.jobs.rows[job_id]
        verdict = api_answers.KEPT if exc is None else api_answers.submit_verdict(exc)
        if verdict == api_answers.KEPT:
            request_id = str(exc.request_id if isinstance(exc, ApiError) else o.value)
            self.jobs.record_request_id(job_id, request_id, o.at)
            if exc is not None:
                self.jobs.record_error(job_id, str(exc))
            self._tell(Told(policy.ACCEPTED, row, at=o.at))
            self.submitted(job_id, request_id, o.at)
            return
        assert exc is not None
        if verdict == api_answers.AMBIGUOUS:
            why = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            self.jobs.mark_unknown(job_id, api_answers.AMBIGUOUS_SUBMIT.format(why=why))
            self._tell(Told(policy.AMBIGUOUS, row, error=exc, at=o.at))
            return
        self._tell(Told(policy.REFUSED, row, verdict=verdict, error=exc, at=o.at))
        if verdict == api_answers.FAILED:
            self.jobs.record_result(job_id, st.FAILED, finished_at=o.at, error=str(exc))
            return
        if isinstance(exc, RateLimitedError):  # THROTTLED
            self.limiter.throttled(exc.retry_after)
        self._retry(job_id, str(exc))  # RETRY, STOP: sent again when submits may go

    def polled(self, o: Outcome) -> None:
        flight = self.flights.get(o.job_id)
        if flight is None:
            return
        flight.reading = False
        if o.error is not None:
            self._call_failed(flight, "poll", o.error)
            return
        flight.errors = 0
        flight.not_found = 0
        flight.last_error = ""
        answer = api_answers.read_answer(o.value)
        if answer.terminal:
            self._finish(flight, answer, o.value)
            return
        self._seen(flight, answer, o.at)
        now = self.wall()
        new = answer.state
        if new != flight.status or (
            new == st.RUNNING and self.jobs.rows[o.job_id].started_at is None
        ):
            self.jobs.record_status(o.job_id, new, started_at=now if new == st.RUNNING else None)
            flight.status = new
        if self._timed_out(flight, now):
            return
        age = now - flight.submitted_at
        delay = self.planner.next_delay(
            age=age, queue_position=answer.queue_position, model=flight.model
        )
        self._schedule(self._until_deadline(flight, now, delay), "poll", o.job_id)

    def _seen(self, flight: Flight, answer: api_answers.Answer, at: float) -> None:
        """What a read sent at `at` says about when the job started."""
        flight.read_at = at
        if answer.state == st.QUEUED:
            flight.queued_at = at
            flight.queue_position = answer.queue_position
        elif flight.started_by is None:
            # Running by `at`: since the last read that found it queued, else (never seen
            # queued) taken as since it was submitted.
            queued = flight.queued_at
            flight.started_by = flight.submitted_at if queued is None else (queued + at) / 2

    def _finish(self, flight: Flight, answer: api_answers.Answer, body: dict[str, Any]) -> None:
        job_id = flight.job_id
        now = self.wall()
        # Its time in the server's queue, as far as our reads saw it, is no part of its run.
        start = flight.started_by or flight.queued_at or flight.submitted_at
        queued_s = max(0.0, start - flight.submitted_at)
        self.planner.learn(body, self.clock(), model=flight.model, queued_s=queued_s)
        del self.flights[job_id]
        row = self.jobs.rows[job_id]  # every attempt may be billed: the cost is told
        self._tell(Told(policy.FINISHED, row, state=answer.state, cost=answer.cost_usd))
        # Attempts are counted in state.db, over runs: a killed run's rerun grants no more.
        if answer.state == st.FAILED and row.retries_used <= self.run_settings.retries:
            self._retry(job_id, f"attempt failed: {answer.error}; retrying")
            return
        self.jobs.record_result(
            job_id,
            answer.state,
            finished_at=now,
            output=answer.output,
            error=answer.error,
            cost_usd=answer.cost_usd,
        )
        if answer.state == st.SUCCEEDED:
            self._download(job_id)

    def _timed_out(self, flight: Flight, now: float) -> bool:
        """At job_timeout: cancel a queued job, give up on a running one."""
        limit = self.run_settings.job_timeout
        if limit is None or now - flight.submitted_at < limit:
            return False
        if flight.status == st.QUEUED and not flight.cancelling:
            flight.cancelling = True
            self._schedule(0.0, "cancel", flight.job_id)
            return True
        self._give_up(flight, f"gave up after job_timeout ({secs(limit)}): still running")
        return True

    def _give_up(self, flight: Flight, error: str) -> None:
        if flight.last_error:
            error = f"{error}; last error: {flight.last_error}"
        del self.flights[flight.job_id]
        self._tell(Told(policy.GIVEN_UP, self.jobs.rows[flight.job_id]))  # may still be billed
        self.jobs.record_result(flight.job_id, st.TIMED_OUT, finished_at=self.wall(), error=error)

    def cancelled(self, o: Outcome) -> None:
        flight = self.flights.get(o.job_id)
        if flight is None:
            return
        flight.reading = False
        limit = secs(self.run_settings.job_timeout or 0)
        if o.error is not None and not isinstance(o.error, NotFoundError):
            self._call_failed(flight, "cancel", o.error)
            return
        outcome = "" if o.error else str(o.value.get("outcome", ""))
        if outcome == "cancelled":
            self._tell(Told(policy.CANCELLED, self.jobs.rows[o.job_id]))
            self._give_up(flight, f"cancelled: still queued after job_timeout ({limit})")
        else:
            self._give_up(
                flight,
                f"gave up after job_timeout ({limit}): the server would not cancel it "
                f"({outcome or 'request not found'})",
            )

    def _call_failed(self, flight: Flight, kind: str, exc: BaseException) -> None:
        if isinstance(exc, AuthError):
            self._fatal(exc)
            self._stop_polling(flight, str(exc))
            return
        flight.errors += 1
        flight.last_error = str(exc)
        if isinstance(exc, NotFoundError):
            flight.not_found += 1
            age = self.wall() - flight.submitted_at
            if flight.not_found >= NOT_FOUND_READS and age >= NOT_FOUND_GRACE_S:
                del self.flights[flight.job_id]
                self._tell(Told(policy.GIVEN_UP, self.jobs.rows[flight.job_id]))
                error = st.not_found_error(f"{exc}; {flight.not_found} reads over {age:.0f}s")
                self.jobs.record_result(
                    flight.job_id, st.FAILED, finished_at=self.wall(), error=error
                )
                return
            # job_timeout does not apply: a cancel of a request the server does not know
            # is pointless, and the reads above end within NOT_FOUND_GRACE_S anyway.
            self._schedule(self._backoff(flight.not_found), kind, flight.job_id)
            return
        if isinstance(exc, RateLimitedError):
            self.limiter.throttled(exc.retry_after)
            delay = 0.0  # the limiter's pause holds every call
        else:
            delay = self._backoff(flight.errors)
            if flight.errors > MAX_POLL_ERRORS:
                self._stop_polling(flight, f"{exc} (after {flight.errors} tries)")
                return
        if kind == "poll" and self._timed_out(flight, self.wall()):
            return
        self._schedule(delay, kind, flight.job_id)

    def _stop_polling(self, flight: Flight, error: str) -> None:
        """Leave a job on the server (its request id stays; the next run polls it again)."""
        self.flights.pop(flight.job_id, None)
        self._tell(Told(policy.LEFT, self.jobs.rows[flight.job_id]))
        self.abandoned.add(flight.job_id)
        self.jobs.record_error(flight.job_id, error)

    def refreshed(self, o: Outcome) -> None:
        request_id = self.refreshing.pop(o.job_id, None)
        if request_id is None:
            return
        if isinstance(o.error, RateLimitedError):
            self.limiter.throttled(o.error.retry_after)
            self.refreshing[o.job_id] = request_id
            heapq.heappush(
                self._heap, (self.clock(), next(self._seq), "refresh", o.job_id, request_id)
            )
            return
        row = self.jobs.rows[o.job_id]
        answer = api_answers.read_answer(o.value) if o.error is None else None
        if answer and answer.state == st.SUCCEEDED and answer.output not in (None, row.output):
            cost = row.cost_usd if row.cost_usd is not None else answer.cost_usd
            at = row.finished_at or o.at
            self.jobs.record_result(
                o.job_id,
                st.SUCCEEDED,
                finished_at=at,
                output=answer.output,
                error=row.error,
                cost_usd=cost,
            )
        # Any other answer (expired, an error): the stored URLs are all there is to try.
        self._download(o.job_id)

    # ---- helpers ------------------------------------------------------------------------

    def _until_deadline(self, flight: Flight, now: float, delay: float) -> float:
        limit = self.run_settings.job_timeout
        if limit is None:
            return delay
        return max(0.0, min(delay, flight.submitted_at + limit - now))

    def _backoff(self, errors: int) -> float:
        return call_backoff(errors, self._random)

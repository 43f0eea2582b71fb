"""The jobs at the server: when each is read next, what its answers do, and its job_timeout.

The scheduler hands out the calls (`due_in` / `pop_due`) and brings their outcomes back here;
every transition goes through the job table, so it is committed before anything depends on it.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun import api_answers, state as st
from batchrun.errors import AuthError, NotFoundError, RateLimitedError
from batchrun.jobtable import JobTable
from batchrun.manifest import RunSettings
from batchrun.polling import PollPlanner
from batchrun.progress import secs
from batchrun.ratelimit import RateLimiter, backoff
from batchrun.state import JobRow

MAX_POLL_ERRORS = 40  # consecutive failed reads of one job before we stop polling it
# A request we submitted and recorded that the server says it does not know (404) may just not
# be visible yet (a replica behind): read again with backoff until it has been missing for
# NOT_FOUND_READS reads and NOT_FOUND_GRACE_S since its submit, then leave it for
# --resubmit-unknown (it may have run and been billed).
NOT_FOUND_READS = 3
NOT_FOUND_GRACE_S = 180.0
BACKOFF_BASE_S = 0.5  # a refused submit or a failed read: 0.5 s, 1 s, 2 s... (with jitter)
BACKOFF_CAP_S = 30.0


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
    not_found: int = 0  # reads answered 404 (request unknown) since the last good one


@dataclass
class Outcome:
    """What a worker brings back from one call."""

    kind: str  # submit | poll | cancel | refresh | download
    job_id: str
    value: Any = None
    error: BaseException | None = None
    at: float = 0.0  # epoch seconds the call was sent


class Flights:
    """Jobs in flight (`flights`), /result refreshes of finished jobs, and the calls due on
    them (poll, cancel, refresh) in the order they fall due."""

    def __init__(
        self,
        *,
        jobs: JobTable,
        limiter: RateLimiter,
        run: RunSettings,
        clock: Callable[[], float],
        wall: Callable[[], float],
        retry: Callable[[str, str], None],
        download: Callable[[str], None],
        fatal: Callable[[BaseException], None],
        rng: random.Random | None = None,
    ) -> None:
        self.jobs = jobs
        self.limiter = limiter
        self.run_settings = run
        self.clock = clock
        self.wall = wall
        self._retry = retry  # back to the submit queue, with this error
        self._download = download  # a succeeded job's files to fetch
        self._fatal = fatal  # the account cannot go on (auth)
        self._random = rng or random.Random()
        self.planner = PollPlanner(run.poll_interval)
        self.flights: dict[str, Flight] = {}
        self.refreshing: dict[str, str] = {}  # job id -> request id whose /result is re-read
        self.abandoned: set[str] = set()  # still on the server, no longer polled this run
        self.submits: Counter[str] = Counter()  # accepted submits per job this run
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._seq = itertools.count()

    def __bool__(self) -> bool:
        """Anything left to wait for at the server."""
        return bool(self.flights or self.refreshing)

    # ---- adding ---------------------------------------------------------------------

    def resume(self, row: JobRow) -> None:
        """A job submitted by an earlier run: read it again now."""
        assert row.request_id
        flight = Flight(row.job_id, row.request_id, row.submitted_at or self.wall(), row.status)
        self.flights[row.job_id] = flight
        self._schedule(0.0, "poll", row.job_id)

    def submitted(self, job_id: str, request_id: str, at: float) -> None:
        """A submit the server accepted (its request id already recorded)."""
        self.submits[job_id] += 1
        self.flights[job_id] = Flight(job_id, request_id, at, st.QUEUED)
        self._schedule(self.planner.first_delay(), "poll", job_id)

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
        return kind, job_id, request_id

    def _schedule(self, delay: float, kind: str, job_id: str) -> None:
        rid = self.flights[job_id].request_id
        heapq.heappush(self._heap, (self.clock() + delay, next(self._seq), kind, job_id, rid))

    def _drop_stale(self) -> None:
        """Forget heap entries of jobs that finished (or were resubmitted) since."""
        while self._heap:
            _, _, kind, job_id, request_id = self._heap[0]
            if kind == "refresh":
                live = self.refreshing.get(job_id)
            else:
                flight = self.flights.get(job_id)
                live = flight.request_id if flight is not None else None
            if live == request_id:
                return
            heapq.heappop(self._heap)

    # ---- applying outcomes ----------------------------------------------------------

    def polled(self, o: Outcome) -> None:
        flight = self.flights.get(o.job_id)
        if flight is None:
            return
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
        delay = self.planner.next_delay(age=age, queue_position=answer.queue_position)
        self._schedule(self._until_deadline(flight, now, delay), "poll", o.job_id)

    def _finish(self, flight: Flight, answer: api_answers.Answer, body: dict) -> None:
        job_id = flight.job_id
        now = self.wall()
        self.planner.learn(body, self.clock())
        del self.flights[job_id]
        if answer.state == st.FAILED and self.submits[job_id] <= self.run_settings.retries:
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
        self.jobs.record_result(flight.job_id, st.TIMED_OUT, finished_at=self.wall(), error=error)

    def cancelled(self, o: Outcome) -> None:
        flight = self.flights.get(o.job_id)
        if flight is None:
            return
        limit = secs(self.run_settings.job_timeout or 0)
        if o.error is not None and not isinstance(o.error, NotFoundError):
            self._call_failed(flight, "cancel", o.error)
            return
        outcome = "" if o.error else str(o.value.get("outcome", ""))
        if outcome == "cancelled":
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
        return backoff(errors, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S, rng=self._random)

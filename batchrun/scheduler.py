"""The run loop: one scheduler thread decides what happens next, a few workers make the calls.

The scheduler owns every state transition (so they happen in a known order, each committed
before anything depends on it) and hands each API call to a worker only once the shared rate
limiter gave it a token: a submit first when a job waits and the in-flight cap allows, else the
poll that is due soonest. Workers only talk HTTP and put their outcome on a queue.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batchrun import api_answers, state as st
from batchrun.client import Client
from batchrun.errors import (
    ApiError,
    AuthError,
    NotFoundError,
    RateLimitedError,
)
from batchrun.jobtable import JobTable
from batchrun.manifest import RunSettings
from batchrun.polling import PollPlanner
from batchrun.progress import Progress, secs
from batchrun.ratelimit import RateLimiter, backoff
from batchrun.state import JobRow, OutputFile, StateStore

MAX_SUBMIT_REFUSALS = 6  # consecutive refused submits (about 30 s) before giving up on the server
STOP_CHECK = 0.2  # seconds; the loop never sleeps longer, so Ctrl-C is noticed at once
MAX_POLL_ERRORS = 40  # consecutive failed reads of one job before we stop polling it
# This one thread hands out every token; when it wakes late (a busy machine), the tokens due
# meanwhile are kept, up to this many seconds' worth (the limiter caps any second at rate+1).
CATCH_UP_S = 0.1
BACKOFF_BASE_S = 0.5  # a refused submit or a failed read: 0.5 s, 1 s, 2 s... (with jitter)
BACKOFF_CAP_S = 30.0

Fetch = Callable[[str, Any, list[OutputFile]], list[OutputFile]]


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


@dataclass
class _Outcome:
    kind: str  # submit | poll | cancel | download
    job_id: str
    value: Any = None
    error: BaseException | None = None
    at: float = 0.0  # epoch seconds the call was sent


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
        fetch: Fetch | None = None,
        progress: Progress | None = None,
        workers: int = 16,
        download_workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.limiter = limiter
        limiter.burst_s = max(limiter.burst_s, CATCH_UP_S)
        self.run_settings = run
        self.fetch = fetch
        self.progress = progress
        self.workers = workers
        self.clock = clock
        self.wall = wall
        self.planner = PollPlanner(run.poll_interval)
        self.jobs = JobTable(store, jobs)
        self.pending: deque[str] = deque()
        self.flights: dict[str, Flight] = {}
        self.submits_this_run: Counter[str] = Counter()
        self.submitting = 0
        self.busy = 0
        self.downloading = 0
        self.submit_open = True
        self.submit_not_before = 0.0
        self.submit_refusals = 0
        # Until the server has accepted one submit this run, submits go one at a time: a bad
        # token, an empty balance or a schema the server disagrees with costs one refused
        # request, not one per worker.
        self.submit_accepted = False
        self.fatal: BaseException | None = None
        self.abandoned: set[str] = set()  # still on the server, no longer polled this run
        self.refreshing: dict[str, str] = {}  # job id -> request id whose /result is re-read
        self._heap: list[tuple[float, int, str, str, str]] = []
        self._seq = itertools.count()
        self._results: queue.Queue[_Outcome] = queue.Queue()
        self._downloads: list[str] = []  # job ids to download once their state is committed
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="batchrun-api")
        self._dl_pool = ThreadPoolExecutor(download_workers, thread_name_prefix="batchrun-dl")
        self._random = random.Random()

    # ---- setup --------------------------------------------------------------------------

    def add_pending(self, job_ids: Iterable[str]) -> None:
        self.pending.extend(job_ids)

    def add_flight(self, row: JobRow) -> None:
        """A job submitted by an earlier run: read it again now."""
        assert row.request_id
        flight = Flight(row.job_id, row.request_id, row.submitted_at or self.wall(), row.status)
        self.flights[row.job_id] = flight
        self._schedule(0.0, "poll", row.job_id)

    def add_download(self, job_id: str) -> None:
        """A succeeded job of an earlier run with files missing: download them.

        Its stored URLs may have gone stale since (expired, or served by a restarted server on
        another port), so one /result call first fetches the current ones.
        """
        request_id = self.jobs.rows[job_id].request_id
        if not request_id:
            self._start_download(job_id)
            return
        self.refreshing[job_id] = request_id
        heapq.heappush(self._heap, (self.clock(), next(self._seq), "refresh", job_id, request_id))

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
            self._send_downloads()
            while not self._stop.is_set() and not self._finished():
                wait = self._dispatch_what_we_can()
                self._apply_next(wait)
        finally:
            self._wind_down()

    def _finished(self) -> bool:
        if isinstance(self.fatal, AuthError):
            return self.busy == 0 and self.downloading == 0
        can_submit = self.submit_open and bool(self.pending)
        return not (can_submit or self.flights or self.refreshing or self.busy or self.downloading)

    def _dispatch_what_we_can(self) -> float:
        """Start every call allowed now; return how long to wait before trying again."""
        submits: list[str] = []
        wait = self._take_calls(submits)
        if submits:
            # Committed (one fsync for all) before any leaves: from here on, a crash leaves
            # each of them an ambiguous submit, never a silent second one.
            with self.jobs.batch(durable=True):
                for job_id in submits:
                    self.jobs.mark_submitting(job_id)
            submit = self.client.submit
            for job_id in submits:
                row = self.jobs.rows[job_id]
                self._pool.submit(self._work, "submit", job_id, submit, row.model_id, row.inputs)
        return wait

    def _take_calls(self, submits: list[str]) -> float:
        """Hand out the calls the limiter allows now; submits are only collected in `submits`."""
        while True:
            if self.busy >= self.workers or isinstance(self.fatal, AuthError):
                return STOP_CHECK  # a worker's outcome wakes us sooner
            self._drop_stale()
            now = self.clock()
            submit_ready = (
                self.submit_open
                and self.pending
                and len(self.flights) + self.submitting < self.run_settings.max_in_flight
                and (self.submit_accepted or self.submitting == 0)
            )
            waits = [STOP_CHECK]
            if submit_ready and now < self.submit_not_before:
                waits.append(self.submit_not_before - now)
                submit_ready = False
            poll_ready = bool(self._heap) and self._heap[0][0] <= now
            if self._heap and not poll_ready:
                waits.append(self._heap[0][0] - now)
            if not (submit_ready or poll_ready):
                return max(0.0, min(waits))
            token_wait = self.limiter.wait_time()
            if token_wait > 0 or not self.limiter.try_acquire():
                return max(token_wait, 0.001)
            if submit_ready:
                submits.append(self.pending.popleft())
                self.submitting += 1
                self.busy += 1
            else:
                _, _, kind, job_id, _ = heapq.heappop(self._heap)
                self._start_call(kind, job_id)

    def _apply_next(self, wait: float) -> None:
        """Wait up to `wait` for an outcome, then apply it and every other one already back."""
        outcomes: list[_Outcome] = []
        try:
            wait = min(wait, STOP_CHECK)
            if wait > 0:
                outcomes.append(self._results.get(timeout=wait))
        except queue.Empty:
            pass
        self._apply_all(outcomes)
        self._send_downloads()
        self._show()

    def _apply_all(self, outcomes: list[_Outcome]) -> None:
        """Apply these and whatever else is back, with one commit for all their transitions."""
        while True:
            try:
                outcomes.append(self._results.get_nowait())
            except queue.Empty:
                break
        if not outcomes:
            return
        with self.jobs.batch(durable=any(o.kind == "submit" for o in outcomes)):
            for outcome in outcomes:
                self._apply(outcome)

    def _wind_down(self) -> None:
        """Wait for calls already sent (their request ids must be recorded), then stop."""
        self._dl_pool.shutdown(wait=False, cancel_futures=True)
        # no cancel_futures: a submit handed to a worker is already marked SUBMITTING
        self._pool.shutdown(wait=True)
        self._apply_all([])
        self._dl_pool.shutdown(wait=True)
        self._apply_all([])
        if self.progress:
            self._show(force=True)

    # ---- starting calls -----------------------------------------------------------------

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

    def _start_call(self, kind: str, job_id: str) -> None:
        if kind == "refresh":
            request_id = self.refreshing[job_id]
        else:
            request_id = self.flights[job_id].request_id
        call = self.client.cancel if kind == "cancel" else self.client.result
        self.busy += 1
        self._pool.submit(self._work, kind, job_id, call, request_id)

    def _work(self, kind: str, job_id: str, call: Callable[..., Any], *args: Any) -> None:
        if kind != "download":
            self.limiter.gate()  # the 1-second cap, on the moment the call really leaves
        sent = self.wall()
        try:
            self._results.put(_Outcome(kind, job_id, call(*args), at=sent))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the scheduler
            self._results.put(_Outcome(kind, job_id, error=exc, at=sent))

    def _start_download(self, job_id: str) -> None:
        """Queued: it starts once the transitions applied with it are committed."""
        if self.fetch is None or self._stop.is_set():
            return
        self.downloading += 1
        self._downloads.append(job_id)

    def _send_downloads(self) -> None:
        if self.fetch is None or self._stop.is_set():
            return
        for job_id in self._downloads:
            row = self.jobs.rows[job_id]
            args = (job_id, row.output, row.files)
            self._dl_pool.submit(self._work, "download", job_id, self.fetch, *args)
        self._downloads.clear()

    # ---- applying outcomes --------------------------------------------------------------

    def _apply(self, o: _Outcome) -> None:
        if o.kind == "download":
            self.downloading -= 1
            self._downloaded(o)
            return
        self.busy -= 1
        if o.kind == "submit":
            self.submitting -= 1
            self._submitted(o)
        elif o.kind == "poll":
            self._polled(o)
        elif o.kind == "refresh":
            self._refreshed(o)
        else:
            self._cancelled(o)

    def _submitted(self, o: _Outcome) -> None:
        job_id, exc = o.job_id, o.error
        if exc is None:
            self.submit_refusals = 0
            self.submit_accepted = True
            self.jobs.record_request_id(job_id, o.value, o.at)
            self.submits_this_run[job_id] += 1
            self.flights[job_id] = Flight(job_id, o.value, o.at, st.QUEUED)
            self._schedule(self.planner.first_delay(), "poll", job_id)
            return
        verdict = api_answers.submit_verdict(exc)
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
            self.fatal = exc
            self.submit_open = False
            self._back_to_pending(job_id, str(exc))
        elif verdict == api_answers.FAILED:
            self.jobs.record_result(job_id, st.FAILED, finished_at=o.at, error=str(exc))
        else:
            why = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            error = api_answers.AMBIGUOUS_SUBMIT.format(why=why)
            self.jobs.mark_unknown(job_id, error)

    def _back_to_pending(self, job_id: str, error: str) -> None:
        self.jobs.mark_pending(job_id, error)
        self.pending.appendleft(job_id)

    def _polled(self, o: _Outcome) -> None:
        flight = self.flights.get(o.job_id)
        if flight is None:
            return
        if o.error is not None:
            self._call_failed(flight, "poll", o.error)
            return
        flight.errors = 0
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
        if answer.state == st.FAILED and self.submits_this_run[job_id] <= self.run_settings.retries:
            self._back_to_pending(job_id, f"attempt failed: {answer.error}; retrying")
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
            self._start_download(job_id)

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

    def _cancelled(self, o: _Outcome) -> None:
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
            self.fatal = exc
            self.submit_open = False
            self._stop_polling(flight, str(exc))
            return
        if isinstance(exc, NotFoundError):
            del self.flights[flight.job_id]
            error = f"request unknown or expired on the server: {exc}"
            self.jobs.record_result(flight.job_id, st.FAILED, finished_at=self.wall(), error=error)
            return
        flight.errors += 1
        flight.last_error = str(exc)
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

    def _refreshed(self, o: _Outcome) -> None:
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
        self._start_download(o.job_id)

    def _downloaded(self, o: _Outcome) -> None:
        if o.error is not None:
            files = [OutputFile(url="", error=f"download failed: {o.error}")]
        else:
            files = o.value
        self.jobs.record_files(o.job_id, files)

    # ---- helpers ------------------------------------------------------------------------

    def _until_deadline(self, flight: Flight, now: float, delay: float) -> float:
        limit = self.run_settings.job_timeout
        if limit is None:
            return delay
        return max(0.0, min(delay, flight.submitted_at + limit - now))

    def _backoff(self, errors: int) -> float:
        return backoff(errors, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S, rng=self._random)

    def _show(self, force: bool = False) -> None:
        if self.progress is not None:
            calls = sum(self.client.calls.values())
            self.progress.update(+self.jobs.counts, self.jobs.done(), calls, force=force)

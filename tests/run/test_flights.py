"""Which job a spare call reads, and when: the learned run times, ages, statuses and queue
positions decide it. Injected clocks throughout; nothing here sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from runkit import MODEL, T0, VIDEO, Clock, answer, learn_uniform, parts, some_jobs

from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.grid import Job
from batchrun.plan.settings import RunSettings
from batchrun.run.flights import MIN_ODDS, Flights
from batchrun.run.jobtable import JobTable
from batchrun.run.polling import RunTimes, finished_odds
from batchrun.store.state import StateStore


@pytest.fixture
def store(tmp_path: Path):
    with StateStore.open(tmp_path / "run") as s:
        yield s


def _flights(store: StateStore, jobs: list[Job], clock: Clock, **run) -> Flights:
    store.add_jobs(jobs)
    table = JobTable(store, store.rows())
    return Flights(
        parts(table, RateLimiter(100.0, clock=clock), RunSettings(**run), clock),
        retry=lambda job_id, error: None,
        download=lambda job_id: None,
        fatal=lambda exc: None,
    )


def _submit(flights: Flights, job_id: str, at: float) -> None:
    flights.jobs.mark_submitting(job_id)
    flights.jobs.record_request_id(job_id, f"r-{job_id}", at)
    flights.submitted(job_id, f"r-{job_id}", at)


def test_a_spare_call_reads_the_job_most_likely_finished_not_the_latest(store):
    clock = Clock()
    flights = _flights(store, some_jobs(3), clock)
    learn_uniform(flights.planner, MODEL, 0.5, 1.5)
    _submit(flights, "job000", T0)  # oldest: 1.2 s at the moment of choice
    _submit(flights, "job001", T0 + 0.9)  # newest: 0.3 s, shorter than any run seen
    _submit(flights, "job002", T0 + 0.3)  # 0.9 s
    clock.now = T0 + 1.2
    assert flights.spare_read(clock.now, for_a_slot=True) == ("poll", "job000", "r-job000")
    assert flights.spare_read(clock.now, for_a_slot=True) == ("poll", "job002", "r-job002")
    assert (
        flights.spare_read(clock.now, for_a_slot=True) is None
    )  # job001 cannot be done yet: no wasted read


def test_never_two_reads_of_one_job_at_once_and_a_gap_between_reads(store):
    clock = Clock()
    flights = _flights(store, some_jobs(1), clock)
    learn_uniform(flights.planner, MODEL, 0.5, 1.5)
    _submit(flights, "job000", T0)
    clock.now = T0 + 1.0
    assert flights.spare_read(clock.now, for_a_slot=True) is not None
    assert flights.spare_read(clock.now, for_a_slot=True) is None  # its read is still on the way
    answer(flights, "job000", clock.now, {"status": "in_progress"})
    gap = flights.planner.runs.min_gap(MODEL)
    assert gap == pytest.approx(0.05)  # 5% of a 1 s median
    clock.now += gap / 2
    assert flights.spare_read(clock.now, for_a_slot=True) is None
    clock.now += gap
    assert flights.spare_read(clock.now, for_a_slot=True) is not None


def test_a_queued_job_is_not_read_before_its_expected_start(store):
    clock = Clock()
    flights = _flights(store, some_jobs(1), clock)
    learn_uniform(flights.planner, MODEL, 1.0, 3.0)  # the server finishes 5 jobs a second
    _submit(flights, "job000", T0)
    clock.now = T0 + 1.0
    answer(flights, "job000", T0 + 1.0, {"status": "in_queue", "queue_position": 30})
    # 30 ahead at 5/s: it starts about 6 s later; no read before then
    assert flights.planner.queue_wait(30) == pytest.approx(6.0)
    for now in (2.0, 4.0, 6.5, 6.95):
        assert flights.spare_read(T0 + now, for_a_slot=False) is None, now
    clock.now = T0 + 8.5
    # While the server queues our jobs its concurrency binds, not our slots: a read that
    # frees a slot for a waiting submit would only queue one more. With none waiting, read.
    assert flights.spare_read(clock.now, for_a_slot=True) is None
    assert flights.spare_read(clock.now, for_a_slot=False) == ("poll", "job000", "r-job000")
    # and the minimal schedule waits for the queue too
    assert flights.planner.next_delay(age=1.0, queue_position=30) == pytest.approx(6.0)


def test_a_job_seen_running_late_is_timed_from_its_start_not_its_submit(store):
    """Seen queued at 4 s and running at 6 s: it started about 5 s, so at 6.3 s it has run
    about 1.3 s, not 6.3 s."""
    clock = Clock()
    flights = _flights(store, some_jobs(2), clock)
    learn_uniform(flights.planner, MODEL, 1.0, 3.0)
    _submit(flights, "job000", T0)
    answer(flights, "job000", T0 + 4.0, {"status": "in_queue", "queue_position": 1})
    answer(flights, "job000", T0 + 6.0, {"status": "in_progress"})
    flight = flights.flights["job000"]
    assert flight.started_by == pytest.approx(T0 + 5.0)
    clock.now = T0 + 6.3
    assert flights.odds(flight, clock.now) < 0.2
    assert flights.odds(flight, T0 + 8.0) > 0.9


def test_each_model_is_timed_by_its_own_run_times(store):
    clock = Clock()
    jobs = some_jobs(1) + [Job("video", VIDEO, {"prompt": "v"}, {}, 0, 1)]
    flights = _flights(store, jobs, clock)
    learn_uniform(flights.planner, MODEL, 0.5, 1.5)
    learn_uniform(flights.planner, VIDEO, 20.0, 60.0)
    _submit(flights, "video", T0)  # older, but a video is nowhere near done at 5 s
    _submit(flights, "job000", T0 + 3.8)
    clock.now = T0 + 5.0
    assert flights.spare_read(clock.now, for_a_slot=True) == ("poll", "job000", "r-job000")
    assert flights.spare_read(clock.now, for_a_slot=True) is None
    assert flights.planner.runs.min_gap(VIDEO) == pytest.approx(2.0)  # 5% of 40 s, capped


def test_run_time_odds_are_conditional_on_the_last_read():
    runs = RunTimes()
    for i in range(101):
        runs.learn(MODEL, 1.0 + i / 100)  # uniform 1-2 s
    assert finished_odds(runs, MODEL, ran=0.5, ran_at_last_read=0.0) < 0.01
    assert finished_odds(runs, MODEL, ran=1.5, ran_at_last_read=0.0) == pytest.approx(0.5, abs=0.05)
    # unfinished at 1.5 s: by 1.75 s half of what was left has finished
    assert finished_odds(runs, MODEL, ran=1.75, ran_at_last_read=1.5) == pytest.approx(
        0.5, abs=0.05
    )
    # older than any run seen: the long-tailed prior keeps reads spaced by age, not stopped
    assert 0.0 < finished_odds(runs, MODEL, ran=3.0, ran_at_last_read=2.5) < 0.05
    assert finished_odds(runs, MODEL, ran=6.0, ran_at_last_read=2.5) > 0.02


def test_a_job_that_just_outlived_every_run_seen_is_most_likely_about_to_finish():
    """40 runs seen spread over 1-2 s (the longest there is, 2.02 s, not yet seen): a job
    unfinished at 2.00 s is about to finish, so it is read as soon as a spare call allows,
    not left to the long-tailed prior (seconds between reads, a slot idle meanwhile)."""
    runs = RunTimes()
    for i in range(40):
        runs.learn(MODEL, 1.0 + i / 39)
    assert finished_odds(runs, MODEL, ran=2.02, ran_at_last_read=2.0) > 0.25
    assert finished_odds(runs, MODEL, ran=2.0, ran_at_last_read=1.95) > 0.25
    # a job of the tail: past the runs seen by far more than their spacing
    assert finished_odds(runs, MODEL, ran=3.1, ran_at_last_read=3.0) < MIN_ODDS


# ---- the scheduler: which call a token goes to -------------------------------------------


def test_the_last_long_jobs_are_read_more_often_than_their_models_gap(store):
    """20 videos in flight: 2 s between reads of each; the last one: its odds decide."""
    clock = Clock()
    videos = [Job(f"v{i:02d}", VIDEO, {"prompt": str(i)}, {}, 0, i) for i in range(20)]
    flights = _flights(store, videos, clock)
    learn_uniform(flights.planner, VIDEO, 20.0, 60.0)
    for job in videos:
        _submit(flights, job.job_id, T0)
        answer(flights, job.job_id, T0 + 50.0, {"status": "in_progress"})
    clock.now = T0 + 50.3
    assert flights.spare_read(clock.now, for_a_slot=False) is None  # 2 s apart while 20 run
    for job in videos[1:]:
        del flights.flights[job.job_id]
    assert flights.spare_read(clock.now, for_a_slot=False) == ("poll", "v00", "r-v00")


# ---- retries: counted in state.db, over runs ------------------------------------------


def _rerun(store: StateStore, clock: Clock, retried: list[str], retries: int) -> Flights:
    """The jobs at the server of a new run of the folder (a rerun after a kill): its table
    read from state.db, failed attempts sent back to the queue as the scheduler does."""
    table = JobTable(store, store.rows())

    def retry(job_id: str, error: str) -> None:
        retried.append(job_id)
        table.mark_pending(job_id, error)

    return Flights(
        parts(table, RateLimiter(100.0, clock=clock), RunSettings(retries=retries), clock),
        retry=retry,
        download=lambda job_id: None,
        fatal=lambda exc: None,
    )


def _fail(flights: Flights, job_id: str, at: float) -> None:
    answer(flights, job_id, at, {"status": "failed", "error": "out of memory"})


def test_a_job_restored_in_flight_with_attempts_used_gets_only_the_retries_left(store):
    # A first run sent the job, it failed, the retry was sent, then the run was killed.
    clock = Clock()
    first = _flights(store, some_jobs(1), clock, retries=2)
    _submit(first, "job000", T0)
    first.jobs.mark_pending("job000", "attempt failed")
    _submit(first, "job000", T0 + 1)
    retried: list[str] = []
    again = _rerun(store, clock, retried, retries=2)
    again.resume(again.jobs.rows["job000"])
    _fail(again, "job000", T0 + 2)  # its second attempt: one retry of two is left
    assert retried == ["job000"]
    _submit(again, "job000", T0 + 3)
    _fail(again, "job000", T0 + 4)
    assert retried == ["job000"]  # three attempts billed: 1 + retries, no more
    row = store.get("job000")
    assert (row.status, row.attempts, row.retries_used) == ("failed", 3, 3)


def test_a_job_left_pending_after_a_failed_attempt_is_not_granted_a_fresh_allowance(store):
    # Killed between a failed attempt and its resubmit: the job is pending with one attempt.
    clock = Clock()
    first = _flights(store, some_jobs(1), clock, retries=1)
    _submit(first, "job000", T0)
    first.jobs.mark_pending("job000", "attempt failed: out of memory; retrying")
    retried: list[str] = []
    again = _rerun(store, clock, retried, retries=1)
    assert again.jobs.rows["job000"].status == "pending"
    _submit(again, "job000", T0 + 1)
    _fail(again, "job000", T0 + 2)
    assert retried == []  # its one retry was this attempt
    assert (store.get("job000").status, store.get("job000").attempts) == ("failed", 2)


def test_retry_failed_grants_a_fresh_allowance_from_the_attempts_so_far(store):
    clock = Clock()
    first = _flights(store, some_jobs(2), clock, retries=1)
    for at in (T0, T0 + 1):
        _submit(first, "job000", at)
    _fail(first, "job000", T0 + 2)  # 2 attempts: the allowance is spent
    assert store.get("job000").status == "failed"
    assert store.requeue(["failed", "timed_out"]) == 1  # --retry-failed
    row = store.get("job000")
    assert (row.status, row.attempts, row.retries_from, row.retries_used) == ("pending", 2, 2, 0)
    assert store.get("job001").retries_from == 0  # a job not sent again keeps its count
    retried: list[str] = []
    again = _rerun(store, clock, retried, retries=1)
    _submit(again, "job000", T0 + 3)
    _fail(again, "job000", T0 + 4)
    assert retried == ["job000"]  # a fresh allowance: one retry
    _submit(again, "job000", T0 + 5)
    _fail(again, "job000", T0 + 6)
    assert retried == ["job000"]
    assert store.get("job000").attempts == 4

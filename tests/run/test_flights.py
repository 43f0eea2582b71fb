"""Which job a spare call reads, and when: the learned run times, ages, statuses and queue
positions decide it. Injected clocks throughout; nothing here sleeps."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.grid import Job
from batchrun.plan.settings import RunSettings
from batchrun.run import policy
from batchrun.run.flights import Flights
from batchrun.run.jobtable import JobTable
from batchrun.run.outcome import Outcome
from batchrun.run.parts import RunParts
from batchrun.run.pending import PendingJobs
from batchrun.run.policy import Told
from batchrun.run.polling import PollPlanner, RunTimes, finished_odds
from batchrun.run.scheduler import Scheduler
from batchrun.store.state import StateStore

MODEL = "google/nano-banana-2-lite/text-to-image"
VIDEO = "bytedance/seedance-2.5/text-to-video/1080p"
T0 = 1_800_000_000.0  # epoch seconds of "submitted at" in these tests


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _jobs(n: int, model: str = MODEL) -> list[Job]:
    return [Job(f"job{i:03d}", model, {"prompt": str(i)}, {}, 0, i) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    with StateStore.open(tmp_path / "run") as s:
        yield s


def _learn_uniform(planner: PollPlanner, model: str, low: float, high: float, n: int = 60) -> None:
    """n finished jobs of `model` whose server run times spread evenly over low-high."""
    for i in range(n):
        secs = low + (high - low) * i / (n - 1)
        body = {"created_at": "2026-01-01T00:00:00Z", "finished_at": _iso(secs)}
        planner.learn(body, now=i * 0.2, model=model)


def _iso(seconds: float) -> str:
    return (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


def _flights(store: StateStore, jobs: list[Job], clock: Clock, **run) -> Flights:
    store.add_jobs(jobs)
    table = JobTable(store, store.rows())
    return Flights(
        _parts(table, RateLimiter(100.0, clock=clock), RunSettings(**run), clock),
        retry=lambda job_id, error: None,
        download=lambda job_id: None,
        fatal=lambda exc: None,
    )


def _submit(flights: Flights, job_id: str, at: float) -> None:
    flights.jobs.mark_submitting(job_id)
    flights.jobs.record_request_id(job_id, f"r-{job_id}", at)
    flights.submitted(job_id, f"r-{job_id}", at)


def _answer(flights: Flights, job_id: str, at: float, body: dict) -> None:
    flights.polled(Outcome("poll", job_id, value={"request_id": f"r-{job_id}", **body}, at=at))


def test_a_spare_call_reads_the_job_most_likely_finished_not_the_latest(store):
    clock = Clock()
    flights = _flights(store, _jobs(3), clock)
    _learn_uniform(flights.planner, MODEL, 0.5, 1.5)
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
    flights = _flights(store, _jobs(1), clock)
    _learn_uniform(flights.planner, MODEL, 0.5, 1.5)
    _submit(flights, "job000", T0)
    clock.now = T0 + 1.0
    assert flights.spare_read(clock.now, for_a_slot=True) is not None
    assert flights.spare_read(clock.now, for_a_slot=True) is None  # its read is still on the way
    _answer(flights, "job000", clock.now, {"status": "in_progress"})
    gap = flights.planner.runs.min_gap(MODEL)
    assert gap == pytest.approx(0.05)  # 5% of a 1 s median
    clock.now += gap / 2
    assert flights.spare_read(clock.now, for_a_slot=True) is None
    clock.now += gap
    assert flights.spare_read(clock.now, for_a_slot=True) is not None


def test_a_queued_job_is_not_read_before_its_expected_start(store):
    clock = Clock()
    flights = _flights(store, _jobs(1), clock)
    _learn_uniform(flights.planner, MODEL, 1.0, 3.0)  # the server finishes 5 jobs a second
    _submit(flights, "job000", T0)
    clock.now = T0 + 1.0
    _answer(flights, "job000", T0 + 1.0, {"status": "in_queue", "queue_position": 30})
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
    flights = _flights(store, _jobs(2), clock)
    _learn_uniform(flights.planner, MODEL, 1.0, 3.0)
    _submit(flights, "job000", T0)
    _answer(flights, "job000", T0 + 4.0, {"status": "in_queue", "queue_position": 1})
    _answer(flights, "job000", T0 + 6.0, {"status": "in_progress"})
    flight = flights.flights["job000"]
    assert flight.started_by == pytest.approx(T0 + 5.0)
    clock.now = T0 + 6.3
    assert flights.odds(flight, clock.now) < 0.2
    assert flights.odds(flight, T0 + 8.0) > 0.9


def test_each_model_is_timed_by_its_own_run_times(store):
    clock = Clock()
    jobs = _jobs(1) + [Job("video", VIDEO, {"prompt": "v"}, {}, 0, 1)]
    flights = _flights(store, jobs, clock)
    _learn_uniform(flights.planner, MODEL, 0.5, 1.5)
    _learn_uniform(flights.planner, VIDEO, 20.0, 60.0)
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


# ---- the scheduler: which call a token goes to -------------------------------------------


def _parts(table: JobTable, limiter: RateLimiter, run: RunSettings, clock: Clock) -> RunParts:
    return RunParts(table, _Client(), limiter, run, clock, clock)  # type: ignore[arg-type]


class _Client:
    calls: dict[str, int] = {}

    def submit(self, *args):  # pragma: no cover - submits are only collected in these tests
        raise AssertionError("not sent in these tests")

    result = cancel = submit


def _scheduler(
    store: StateStore, n: int, clock: Clock, **run: Any
) -> tuple[Scheduler, list[tuple[str, str]]]:
    """A scheduler whose calls are only written down (kind, job id) in the list returned."""
    store.add_jobs(_jobs(n))
    limiter = RateLimiter(40.0, clock=clock, sleep=lambda s: None)
    sched = Scheduler(
        _parts(JobTable(store, store.rows()), limiter, RunSettings(rate_limit=40.0, **run), clock),
        workers=64,
    )
    started: list[tuple[str, str]] = []
    sched.workers.call = lambda kind, job_id, *call: started.append((kind, job_id))  # type: ignore[method-assign]
    _learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
    return sched, started


def _in_flight(sched: Scheduler, job_id: str, at: float) -> None:
    row = sched.jobs.rows[job_id]
    sched.policy.sending(row)
    sched.jobs.mark_submitting(job_id)
    sched.jobs.record_request_id(job_id, f"r-{job_id}", at)
    sched.at_server.submitted(job_id, f"r-{job_id}", at)
    sched.policy.told(Told(policy.ACCEPTED, row, at=at))


def test_when_submits_wait_for_tokens_no_spare_read_takes_one(store):
    clock = Clock()
    sched, started = _scheduler(store, 40, clock, max_in_flight=100)
    for i in range(10):
        _in_flight(sched, f"job{i:03d}", T0 - 1.3)  # likely finished, one even due on schedule
    sched.pending.extend(f"job{i:03d}" for i in range(10, 40))
    try:
        submits: list[str] = []
        clock.now = T0
        for _ in range(40):  # 0.4 s of the rate's tokens as they come: fewer than 30
            sched._take_calls(submits)
            clock.now += 0.01
        assert 14 <= len(submits) < 30
        assert started == []  # every token went to a submit
        sched.pending.clear()  # nothing left to submit: the next token reads a job
        clock.now += 0.05
        sched._take_calls(submits)
        assert started and started[0][0] == "poll"
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_submits_first_then_spare_tokens_read_the_likely_finished(store):
    clock = Clock()
    sched, started = _scheduler(store, 5, clock, max_in_flight=3)
    _in_flight(sched, "job000", T0 - 0.1)  # surely still running
    _in_flight(sched, "job001", T0 - 1.4)  # most likely finished
    _in_flight(sched, "job002", T0 - 0.9)
    sched.pending.extend(["job003", "job004"])
    sched.at_server._heap.clear()
    try:
        clock.now = T0
        submits: list[str] = []
        sched._take_calls(submits)
        assert submits == []  # slots full: no submit can use the token
        assert started == [("poll", "job001")]  # not the newest, nor blindly the next
        started.clear()
        rng = random.Random(3)
        for _ in range(8):
            clock.now += rng.uniform(0.02, 0.04)
            sched._take_calls(submits)
        read = [job for _, job in started]
        assert "job000" not in read  # 0.1-0.42 s old: below any run time seen
        assert read.count("job001") == 0  # its read is still on the way
        assert "job002" in read
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_a_job_still_running_is_read_again_at_the_odds_not_at_poll_interval(store):
    """Slots bind: a job found running at 1.0 s is read again well before poll_interval (2 s)."""
    clock = Clock()
    sched, started = _scheduler(store, 1, clock, max_in_flight=1)
    _in_flight(sched, "job000", T0)
    sched.at_server._heap.clear()
    try:
        submits: list[str] = []
        clock.now = T0 + 1.0
        sched._take_calls(submits)
        assert started == [("poll", "job000")]
        _answer(sched.at_server, "job000", clock.now, {"status": "in_progress"})
        sched.at_server._heap.clear()
        started.clear()
        while not started:
            clock.now += 0.01
            sched._take_calls(submits)
        assert clock.now - (T0 + 1.0) < 0.3
        assert started == [("poll", "job000")]
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_max_in_flight_left_out_is_derived_and_follows_the_run_times(store):
    clock = Clock()
    store.add_jobs(_jobs(1))
    sched = Scheduler(
        _parts(
            JobTable(store, store.rows()),
            RateLimiter(40.0, clock=clock),
            RunSettings(rate_limit=40.0),
            clock,
        ),
    )
    try:
        assert sched.max_in_flight() == 60  # 20 jobs/s x 2 s (a first guess) x 1.5
        _learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
        assert sched.max_in_flight() == 33  # 20 jobs/s x 1.1 s x 1.5
        _learn_uniform(sched.at_server.planner, MODEL, 4.0, 6.0, n=200)
        assert sched.max_in_flight() == 153
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_a_slot_bound_max_in_flight_is_noted_once(store):
    clock = Clock()
    store.add_jobs(_jobs(1))
    notes: list[str] = []
    sched = Scheduler(
        _parts(
            JobTable(store, store.rows()),
            RateLimiter(100.0, clock=clock),
            RunSettings(rate_limit=100.0, max_in_flight=20),
            clock,
        ),
        echo=notes.append,
    )
    try:
        unknown = Outcome("poll", "job000", value={"status": "in_progress"})
        _learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5, n=5)
        sched._apply([unknown])
        assert notes == []  # not judged on the first few jobs
        _learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5, n=10)
        sched._apply([unknown])
        sched._apply([unknown])
        assert notes == [
            "note: max_in_flight 20 allows about 18 jobs/s (jobs take about 1.1 s); "
            "rate_limit 100/s allows 50. max_in_flight: 83 would not bind"
        ]
        assert sched.max_in_flight() == 20  # the manifest's value stands
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_pending_jobs_go_longest_model_first_once_known():
    models = {"a1": "img", "a2": "img", "a3": "img", "b1": "vid", "b2": "vid", "c1": "edit"}
    expected: dict[str, float] = {}
    pending = PendingJobs(models.__getitem__, expected.get)
    pending.extend(models)
    # nothing known: the models take turns, so each is learned soon
    assert [pending.popleft(), pending.popleft(), pending.popleft()] == ["a1", "b1", "c1"]
    expected.update(img=1.0, vid=40.0, edit=3.0)
    assert pending.popleft() == "b2"  # the longest first
    pending.appendleft("c1")  # a refused submit goes next among its model's
    assert [pending.popleft() for _ in range(3)] == ["c1", "a2", "a3"]
    assert not pending


def test_one_model_is_first_in_first_out():
    pending = PendingJobs(lambda job_id: "m", lambda model: 1.0)
    pending.extend(["j1", "j2", "j3"])
    pending.appendleft("j0")
    assert [pending.popleft() for _ in range(len(pending))] == ["j0", "j1", "j2", "j3"]


def test_the_last_long_jobs_are_read_more_often_than_their_models_gap(store):
    """20 videos in flight: 2 s between reads of each; the last one: its odds decide."""
    clock = Clock()
    videos = [Job(f"v{i:02d}", VIDEO, {"prompt": str(i)}, {}, 0, i) for i in range(20)]
    flights = _flights(store, videos, clock)
    _learn_uniform(flights.planner, VIDEO, 20.0, 60.0)
    for job in videos:
        _submit(flights, job.job_id, T0)
        _answer(flights, job.job_id, T0 + 50.0, {"status": "in_progress"})
    clock.now = T0 + 50.3
    assert flights.spare_read(clock.now, for_a_slot=False) is None  # 2 s apart while 20 run
    for job in videos[1:]:
        del flights.flights[job.job_id]
    assert flights.spare_read(clock.now, for_a_slot=False) == ("poll", "v00", "r-v00")


def test_without_a_rate_limit_no_token_is_spare(store):
    """Unlimited: reads keep to the minimal schedule (no rate says how many are welcome)."""
    clock = Clock()
    store.add_jobs(_jobs(1))
    sched = Scheduler(
        _parts(
            JobTable(store, store.rows()),
            RateLimiter(None, clock=clock),
            RunSettings(rate_limit=None),
            clock,
        ),
    )
    started: list[str] = []
    sched.workers.call = lambda kind, job_id, *call: started.append(job_id)  # type: ignore[method-assign]
    _learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
    try:
        _in_flight(sched, "job000", T0)
        clock.now = T0 + 1.2  # likely done, but its first read is due at 2 s (poll_interval)
        sched._take_calls([])
        assert started == []
        clock.now = T0 + 2.0
        sched._take_calls([])
        assert started == ["job000"]
    finally:
        sched.workers.shutdown()
        sched.downloads.close()

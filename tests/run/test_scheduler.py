"""The scheduler's choices: which call a rate-limit token goes to (a submit, a read on the
schedule, a spare read), the in-flight cap and the order of pending jobs. Injected clocks
throughout; nothing here sleeps."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from runkit import MODEL, T0, Clock, answer, learn_uniform, parts, some_jobs

from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.settings import RunSettings
from batchrun.run import policy
from batchrun.run.jobtable import JobTable
from batchrun.run.outcome import Outcome
from batchrun.run.pending import PendingJobs
from batchrun.run.policy import Told
from batchrun.run.scheduler import Scheduler
from batchrun.store.state import StateStore


@pytest.fixture
def store(tmp_path: Path):
    with StateStore.open(tmp_path / "run") as s:
        yield s


def _scheduler(
    store: StateStore, n: int, clock: Clock, **run: Any
) -> tuple[Scheduler, list[tuple[str, str]]]:
    """A scheduler whose calls are only written down (kind, job id) in the list returned."""
    store.add_jobs(some_jobs(n))
    limiter = RateLimiter(40.0, clock=clock, sleep=lambda s: None)
    sched = Scheduler(
        parts(JobTable(store, store.rows()), limiter, RunSettings(rate_limit=40.0, **run), clock),
        workers=64,
    )
    started: list[tuple[str, str]] = []
    sched.workers.call = lambda kind, job_id, *call: started.append((kind, job_id))  # type: ignore[method-assign]
    learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
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
        answer(sched.at_server, "job000", clock.now, {"status": "in_progress"})
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
    store.add_jobs(some_jobs(1))
    sched = Scheduler(
        parts(
            JobTable(store, store.rows()),
            RateLimiter(40.0, clock=clock),
            RunSettings(rate_limit=40.0),
            clock,
        ),
    )
    try:
        assert sched.max_in_flight() == 60  # 20 jobs/s x 2 s (a first guess) x 1.5
        learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
        assert sched.max_in_flight() == 33  # 20 jobs/s x 1.1 s x 1.5
        learn_uniform(sched.at_server.planner, MODEL, 4.0, 6.0, n=200)
        assert sched.max_in_flight() == 153
    finally:
        sched.workers.shutdown()
        sched.downloads.close()


def test_a_slot_bound_max_in_flight_is_noted_once(store):
    clock = Clock()
    store.add_jobs(some_jobs(1))
    notes: list[str] = []
    sched = Scheduler(
        parts(
            JobTable(store, store.rows()),
            RateLimiter(100.0, clock=clock),
            RunSettings(rate_limit=100.0, max_in_flight=20),
            clock,
        ),
        echo=notes.append,
    )
    try:
        unknown = Outcome("poll", "job000", value={"status": "in_progress"})
        learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5, n=5)
        sched._apply([unknown])
        assert notes == []  # not judged on the first few jobs
        learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5, n=10)
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


def test_without_a_rate_limit_no_token_is_spare(store):
    """Unlimited: reads keep to the minimal schedule (no rate says how many are welcome)."""
    clock = Clock()
    store.add_jobs(some_jobs(1))
    sched = Scheduler(
        parts(
            JobTable(store, store.rows()),
            RateLimiter(None, clock=clock),
            RunSettings(rate_limit=None),
            clock,
        ),
    )
    started: list[str] = []
    sched.workers.call = lambda kind, job_id, *call: started.append(job_id)  # type: ignore[method-assign]
    learn_uniform(sched.at_server.planner, MODEL, 0.5, 1.5)
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

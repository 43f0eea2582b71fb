"""The job queue: FIFO behind the account's concurrency, run times from the seed, cancel only
while queued.

One scheduler thread moves jobs in_queue -> in_progress -> completed; `concurrency == 0` starts
every job at once. Per-job draws (run time, failure) hash the input identity, the seed and the
job's occurrence (n-th submit of the same identity), so they do not depend on thread timing and
a resubmitted job gets a fresh draw.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchrun.simulator.outputs import fraction
from batchrun.simulator.settings import SimSettings

IN_QUEUE, IN_PROGRESS, COMPLETED, CANCELLED = "in_queue", "in_progress", "completed", "cancelled"


@dataclass
class Job:
    """One submitted request."""

    request_id: str
    model_id: str
    inputs: dict[str, Any]
    identity: str
    seq: int  # submit order, FIFO key
    occurrence: int  # 0 for the first submit of this identity, 1 for the second...
    run_time: float
    fails: bool
    created_at: float  # wall clock
    state: str = IN_QUEUE
    started_at: float | None = None  # monotonic
    ends_at: float = 0.0  # monotonic, while running
    finished_at: float | None = None  # wall clock
    finished_mono: float | None = None
    succeeded: bool = False
    output: Any = None
    error: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def draw_run_time(settings: SimSettings, model_id: str, identity: str, occurrence: int) -> float:
    u = fraction(settings.seed, "run_time", identity, occurrence)
    return settings.run_time_of(model_id).draw(u, settings.run_time_jitter)


def draws_failure(settings: SimSettings, identity: str, occurrence: int) -> bool:
    return fraction(settings.seed, "fail", identity, occurrence) < settings.fail_rate


class JobQueue:
    """Holds every job; the scheduler thread runs them; `on_finish` builds outputs."""

    def __init__(
        self,
        settings: SimSettings,
        on_finish: Callable[[Job], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._on_finish = on_finish
        self._clock = clock
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queued: list[int] = []  # seqs of queued jobs, ascending
        self._by_seq: dict[int, Job] = {}
        self._running: list[tuple[float, int, Job]] = []  # heap by end time
        self._seq = 0
        self._occurrences: Counter[str] = Counter()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="sim-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._cond:
            self._jobs.clear()
            self._queued.clear()
            self._by_seq.clear()
            self._running.clear()
            self._occurrences.clear()
            self._seq = 0
            self._cond.notify_all()

    def submit(self, model_id: str, inputs: dict[str, Any], identity: str) -> Job:
        with self._cond:
            occurrence = self._occurrences[identity]
            self._occurrences[identity] += 1
            job = Job(
                request_id=str(uuid.uuid4()),
                model_id=model_id,
                inputs=inputs,
                identity=identity,
                seq=self._seq,
                occurrence=occurrence,
                run_time=draw_run_time(self.settings, model_id, identity, occurrence),
                fails=draws_failure(self.settings, identity, occurrence),
                created_at=time.time(),
            )
            self._seq += 1
            self._jobs[job.request_id] = job
            self._by_seq[job.seq] = job
            self._queued.append(job.seq)
            self._cond.notify_all()
        return job

    def adopt(self, job: Job, now_wall: float) -> None:
        """A job reloaded from the state_dir journal, in the state it would have reached had it
        kept running while the simulator was down: started at its submit, no concurrency limit."""
        now = self._clock()
        with self._cond:
            self._seq = max(self._seq, job.seq + 1)
            self._occurrences[job.identity] = max(
                self._occurrences[job.identity], job.occurrence + 1
            )
            self._jobs[job.request_id] = job
            if job.state == CANCELLED:
                job.finished_mono = now - max(0.0, now_wall - (job.finished_at or now_wall))
                return
            job.state = IN_PROGRESS
            job.started_at = now - max(0.0, now_wall - job.created_at)
            job.ends_at = now + (job.created_at + job.run_time - now_wall)
            heapq.heappush(self._running, (job.ends_at, job.seq, job))
            self._cond.notify_all()

    def get(self, request_id: str) -> Job | None:
        """The job, or None when unknown or expired (`expire_after` past its finish)."""
        job = self._jobs.get(request_id)
        if job is None:
            return None
        expire = self.settings.expire_after
        if expire is not None and job.finished_mono is not None:
            if self._clock() >= job.finished_mono + expire:
                return None
        return job

    def position(self, job: Job) -> int | None:
        """1-based place in the FIFO while queued."""
        with self._cond:
            if job.state != IN_QUEUE:
                return None
            return bisect.bisect_right(self._queued, job.seq)

    def cancel(self, job: Job) -> str:
        """`cancelled` when the job was still queued, else `not_cancellable`."""
        with self._cond:
            if job.state != IN_QUEUE:
                return "not_cancellable"
            i = bisect.bisect_left(self._queued, job.seq)
            if i < len(self._queued) and self._queued[i] == job.seq:
                del self._queued[i]
            self._by_seq.pop(job.seq, None)
            job.state = CANCELLED
            job.finished_at = time.time()
            job.finished_mono = self._clock()
            return "cancelled"

    def counts(self) -> dict[str, int]:
        with self._cond:
            counts = Counter(j.state for j in self._jobs.values())
            failed = sum(1 for j in self._jobs.values() if j.state == COMPLETED and j.fails)
        out = {s: counts.get(s, 0) for s in (IN_QUEUE, IN_PROGRESS, COMPLETED, CANCELLED)}
        out["failed"] = failed
        out["succeeded"] = out[COMPLETED] - failed
        return out

    def run_times(self) -> dict[str, Any]:
        """What the finished jobs took, as the server ran them: how many, the sum and the longest
        run (start to finish), and the wall-clock times of the first submit and first and last
        finish (epoch seconds; None before any)."""
        with self._cond:
            jobs = list(self._jobs.values())
        done = [j for j in jobs if j.state == COMPLETED and j.started_at is not None]
        runs = [(j.finished_mono or 0.0) - (j.started_at or 0.0) for j in done]
        finished = [j.finished_at for j in done if j.finished_at is not None]
        return {
            "jobs": len(done),
            "total_s": round(sum(runs), 6),
            "max_s": round(max(runs), 6) if runs else 0.0,
            "first_submit_at": min((j.created_at for j in jobs), default=None),
            "first_finished_at": min(finished, default=None),
            "last_finished_at": max(finished, default=None),
        }

    def _loop(self) -> None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                while self._running and self._running[0][0] <= now:
                    _, _, job = heapq.heappop(self._running)
                    self._finish(job, now)
                limit = self.settings.concurrency
                while self._queued and (limit == 0 or len(self._running) < limit):
                    job = self._by_seq.pop(self._queued.pop(0))
                    job.state = IN_PROGRESS
                    job.started_at = now
                    job.ends_at = now + job.run_time
                    heapq.heappush(self._running, (job.ends_at, job.seq, job))
                if self._running and self._running[0][0] <= now:
                    continue  # zero run times: finish them right away
                timeout = self._running[0][0] - now if self._running else None
                self._cond.wait(timeout)

    def _finish(self, job: Job, now: float) -> None:
        try:
            self._on_finish(job)
        finally:
            # The state flips last, so a client never sees `completed` without its output.
            # It finished at its end time: a job reloaded after a restart may end in the past.
            job.succeeded = not job.fails
            ended = min(job.ends_at, now)
            job.finished_at = time.time() - (now - ended)
            job.finished_mono = ended
            job.state = COMPLETED

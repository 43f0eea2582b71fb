"""The run's downloads, as the scheduler keeps them: every job's files share `workers` threads,
one file per thread at a time, and each file is recorded soon after it lands.

A job's files are planned (named, the ones on disk skipped: jobfiles.plan) by a worker, then
handed out file by file, taking turns between jobs, so a job of 10,000 files neither waits
for one thread nor holds back the job after it. Workers only talk HTTP and write files; what
came back is applied on the scheduler's thread, which owns the StateStore: each job's settled
files are rewritten at most every FLUSH_S seconds (and once when its last file is back), so a
killed run keeps what landed up to a second before. After a stop no transfer starts, the ones
in progress are abandoned, the run waits at most GRACE_S for them, then records every file not
fetched as interrupted and removes the jobs' temporary files (even one a stuck read holds).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from batchrun.fetch.jobfiles import JobFiles
from batchrun.run.jobtable import JobTable
from batchrun.run.outcome import Outcome
from batchrun.store.records import SUCCEEDED, JobRow, OutputFile

# A job's output, its files recorded so far -> its files planned (engine: Downloader.plan).
PlanFiles = Callable[[str, Any, list[OutputFile]], JobFiles]
# A job and its files, all settled -> what its expectations find wrong ('' when nothing).
Judge = Callable[[JobRow, list[OutputFile]], str]
FLUSH_S = 1.0  # settled files wait at most this long to be recorded (about 20 ms per 10,000)
GRACE_S = 2.0  # after a stop, how long the run waits for transfers being abandoned
FILES_SHOWN = 10  # fewer files to fetch go unmentioned on the progress line
WAKE_S = 0.2  # an idle worker looks at the stop event this often (a signal cannot notify)


class DownloadPool:
    """Jobs whose files are being fetched. The public methods run on the scheduler's thread;
    the workers (`_work` and what it calls) reach the scheduler only through its `results`
    queue."""

    def __init__(
        self,
        plan: PlanFiles | None,
        jobs: JobTable,
        results: queue.Queue[Outcome],
        *,
        workers: int,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        judge: Judge | None = None,
    ) -> None:
        self.plan = plan
        self.judge = judge
        self.jobs = jobs
        self.workers = workers
        self.clock = clock
        self._results = results
        self._stop = stop  # the scheduler's: set by request_stop, perhaps in a signal handler
        self._closing = threading.Event()
        self._queued: list[str] = []  # jobs to plan once the transitions with them are committed
        self._jobs: dict[str, JobFiles | None] = {}  # job -> its files (None: being planned)
        self._left: dict[str, int] = {}  # job -> transfers not back yet
        self._dirty: set[str] = set()  # jobs with settled files not recorded yet
        self._flushed_at = clock()
        # shared with the workers, under _cv:
        self._cv = threading.Condition()
        self._plans: deque[tuple[str, Any, list[OutputFile]]] = deque()
        self._turns: deque[tuple[JobFiles, int]] = deque()  # (job, its next task), in turn
        self._running = 0  # workers planning or transferring
        self._threads: list[threading.Thread] = []

    @property
    def busy(self) -> int:
        """Jobs whose files are not all settled."""
        return len(self._jobs)

    def note(self) -> str:
        """'9,588 files to download' for the progress line, while FILES_SHOWN or more are."""
        left = sum(f.results.count(None) for f in self._jobs.values() if f is not None)
        return f"{left:,} files to download" if left >= FILES_SHOWN else ""

    def stopped(self) -> bool:
        return self._stop.is_set() or self._closing.is_set()

    def start(self, job_id: str) -> None:
        """Queued: it starts once the transitions applied with it are committed (`send`)."""
        if self.plan is None or self.stopped() or job_id in self._jobs:
            return
        self._jobs[job_id] = None
        self._queued.append(job_id)

    def send(self) -> None:
        if self.plan is None or self.stopped() or not self._queued:
            return
        with self._cv:
            for job_id in self._queued:
                row = self.jobs.rows[job_id]
                self._plans.append((job_id, row.output, row.files))
            self._cv.notify_all()
        self._queued.clear()
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name="batchrun-dl", daemon=True)
            thread.start()
            self._threads.append(thread)

    def apply(self, o: Outcome) -> None:
        """A job's plan or one of its files is back."""
        if o.kind == "plan":
            if o.error is not None:
                error = OutputFile(url="", error=f"download failed: {o.error}")
                self.jobs.record_files(o.job_id, [error])
                del self._jobs[o.job_id]
                return
            files = self._jobs[o.job_id] = o.value
            self._left[o.job_id] = len(files.todo)
            if self._closing.is_set():  # planned as the run closed: cut short with the rest
                files.abandon()
        else:
            files = self._jobs[o.job_id]
            assert files is not None
            index, result = o.value
            files.results[index] = result
            self._left[o.job_id] -= 1
        self._dirty.add(o.job_id)
        if not self._left[o.job_id]:
            self._record(o.job_id)
            self._judge(o.job_id)
            del self._jobs[o.job_id], self._left[o.job_id]

    def flush_due(self) -> bool:
        return bool(self._dirty) and self.clock() - self._flushed_at >= FLUSH_S

    def flush(self) -> None:
        """Record every job's files settled so far (call inside a state batch)."""
        for job_id in list(self._dirty):
            self._record(job_id)
        self._flushed_at = self.clock()

    def close(self, grace: float = GRACE_S) -> None:
        """No transfer starts from now on; wait up to `grace` seconds for those in progress
        (after a stop they are being abandoned). A worker stuck longer is left behind: its
        thread is a daemon, and the file it brings is fetched by the next run."""
        deadline = time.monotonic() + grace
        with self._cv:
            self._closing.set()
            self._cv.notify_all()
            while self._running and time.monotonic() < deadline:
                self._cv.wait(max(0.0, min(WAKE_S, deadline - time.monotonic())))
        # Jobs still here were cut short: each of their URLs gets a record (the files not
        # fetched say so) once flushed, and no temporary file of theirs is left.
        for job_id, files in self._jobs.items():
            if files is not None:
                files.abandon()
                self._dirty.add(job_id)

    def holds(self, job_id: str) -> bool:
        """Whether the job's files are still on their way (or not judged yet)."""
        return job_id in self._jobs

    def _judge(self, job_id: str) -> None:
        """Every file of the job settled: a job whose files fail its expectations is failed,
        in the same commit as the record of its files. Reads only the files' headers, on the
        scheduler's thread."""
        files, row = self._jobs[job_id], self.jobs.rows[job_id]
        if self.judge is None or files is None or row.status != SUCCEEDED:
            return
        error = self.judge(row, files.landed())
        if error:
            self.jobs.fail_expectations(job_id, error)

    def _record(self, job_id: str) -> None:
        files = self._jobs[job_id]
        self._dirty.discard(job_id)
        if files is None:
            return
        files.sync()  # the renames reach the disk before the record of them
        self.jobs.record_files(job_id, files.landed())

    # ---- the workers' side --------------------------------------------------------------

    def _next(self) -> Callable[[], None] | None:
        """The next plan to make or file to fetch (None: stop); taken under _cv."""
        while not self.stopped():
            if self._plans:
                return partial(self._plan, *self._plans.popleft())
            if self._turns:
                files, index = self._turns.popleft()
                if index + 1 < len(files.todo):
                    self._turns.append((files, index + 1))  # the next job's turn first
                return partial(self._transfer, files, index)
            self._cv.wait(WAKE_S)
        return None

    def _work(self) -> None:
        while True:
            with self._cv:
                step = self._next()
                if step is None:
                    return
                self._running += 1
            try:
                step()
            finally:
                with self._cv:
                    self._running -= 1
                    self._cv.notify_all()

    def _plan(self, job_id: str, output: Any, existing: list[OutputFile]) -> None:
        assert self.plan is not None
        try:
            files = self.plan(job_id, output, existing)
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the scheduler
            self._results.put(Outcome("plan", job_id, error=exc))
            return
        # The plan reaches the scheduler before any of its files (one FIFO queue).
        self._results.put(Outcome("plan", job_id, files))
        if files.todo:
            with self._cv:
                self._turns.append((files, 0))
                self._cv.notify_all()

    def _transfer(self, files: JobFiles, index: int) -> None:
        task = files.todo[index]
        try:
            result = files.transfer(task, self.stopped)
        except BaseException as exc:  # noqa: BLE001 - transfer never raises; if it did, say so
            result = OutputFile(url=task.url, error=f"download failed: {exc}")
        self._results.put(Outcome("file", files.job_id, (task.index, result)))

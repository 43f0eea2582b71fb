"""DownloadPool: a run's file transfers share its download threads, take turns between jobs,
stop on a stop, and are recorded at most FLUSH_S seconds after they land."""

from __future__ import annotations

import http.server
import os
import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batchrun.fetch.download import Downloader
from batchrun.fetch.jobfiles import INTERRUPTED, FileTask, JobDir, JobFiles, Stopped
from batchrun.run.downloads import FLUSH_S, DownloadPool
from batchrun.run.outcome import Outcome
from batchrun.store.records import OutputFile


class FakeJobs:
    """What DownloadPool uses of a JobTable: the rows and record_files."""

    def __init__(self, *job_ids: str) -> None:
        self.rows = {j: SimpleNamespace(output=None, files=[]) for j in job_ids}
        self.recorded: list[tuple[str, list[OutputFile]]] = []

    def record_files(self, job_id: str, files: list[OutputFile]) -> None:
        self.recorded.append((job_id, files))
        self.rows[job_id].files = files


class Transfers:
    """A fetch_one that counts the transfers running at once; each waits for `release`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.started: list[tuple[str, int]] = []
        self.release = threading.Event()

    def __call__(self, files: JobFiles, task: FileTask, stopped: Stopped) -> OutputFile:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.started.append((files.job_id, task.index))
        self.release.wait(10)
        with self.lock:
            self.active -= 1
        return OutputFile(url=task.url, name=f"files/{files.job_id}/{task.name}", sha256="s")


def planner(tmp_path: Path, sizes: dict[str, int], fetch_one: Any) -> Any:
    def plan(job_id: str, output: Any, existing: list[OutputFile]) -> JobFiles:
        n = sizes[job_id]
        files = JobFiles(JobDir(tmp_path / "files", job_id), tmp_path, [None] * n, fetch_one)
        files.todo = [FileTask(i, f"https://h/{job_id}/{i}", f"{i}.png") for i in range(n)]
        return files

    return plan


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def drain(downloads: DownloadPool, results: queue.Queue[Outcome], until: Any) -> None:
    deadline = time.monotonic() + 10
    while not until():
        assert time.monotonic() < deadline, "outcomes did not come back"
        try:
            downloads.apply(results.get(timeout=0.1))
        except queue.Empty:
            pass


def test_files_share_the_download_threads_and_jobs_take_turns(tmp_path: Path) -> None:
    transfers = Transfers()
    jobs = FakeJobs("aaaaaa", "bbbbbb")
    results: queue.Queue[Outcome] = queue.Queue()
    plan = planner(tmp_path, {"aaaaaa": 30, "bbbbbb": 2}, transfers)
    downloads = DownloadPool(plan, jobs, results, workers=3, stop=threading.Event())  # type: ignore[arg-type]
    downloads.start("aaaaaa")
    downloads.start("bbbbbb")
    downloads.start("aaaaaa")  # already under way: not twice
    downloads.send()
    assert wait_for(lambda: transfers.active == 3)
    transfers.release.set()
    drain(downloads, results, lambda: not downloads.busy)
    downloads.close()
    assert transfers.peak == 3
    assert len(transfers.started) == 32
    # the small job is not held back behind the big one's 30 files
    assert transfers.started.index(("bbbbbb", 1)) < transfers.started.index(("aaaaaa", 20))
    final = dict(jobs.recorded)
    assert [f.url for f in final["aaaaaa"]] == [f"https://h/aaaaaa/{i}" for i in range(30)]


def test_settled_files_are_recorded_every_second_and_when_the_job_is_done(
    tmp_path: Path,
) -> None:
    now = [100.0]
    jobs = FakeJobs("cccccc")
    results: queue.Queue[Outcome] = queue.Queue()
    plan = planner(tmp_path, {"cccccc": 3}, Transfers())
    downloads = DownloadPool(
        plan,
        jobs,  # type: ignore[arg-type]  # the part of a JobTable DownloadPool uses
        results,
        workers=1,
        stop=threading.Event(),
        clock=lambda: now[0],
    )
    files = plan("cccccc", None, [])
    downloads._jobs["cccccc"] = None  # as start() leaves it
    downloads.apply(Outcome("plan", "cccccc", files))
    got = [OutputFile(url=t.url, name=t.name, sha256="s") for t in files.todo]
    downloads.apply(Outcome("file", "cccccc", (2, got[2])))
    downloads.apply(Outcome("file", "cccccc", (0, got[0])))
    now[0] += FLUSH_S / 2
    assert not downloads.flush_due() and jobs.recorded == []
    now[0] += FLUSH_S / 2
    assert downloads.flush_due()
    downloads.flush()
    assert jobs.recorded == [("cccccc", [got[0], got[2]])]  # in URL order
    assert not downloads.flush_due()
    downloads.apply(Outcome("file", "cccccc", (1, got[1])))  # the last one: recorded at once
    assert jobs.recorded[-1] == ("cccccc", got)
    assert downloads.busy == 0 and not downloads.flush_due()


def test_after_a_stop_no_transfer_starts(tmp_path: Path) -> None:
    transfers = Transfers()
    stop = threading.Event()
    jobs = FakeJobs("dddddd")
    results: queue.Queue[Outcome] = queue.Queue()
    plan = planner(tmp_path, {"dddddd": 50}, transfers)
    downloads = DownloadPool(plan, jobs, results, workers=2, stop=stop)  # type: ignore[arg-type]
    downloads.start("dddddd")
    downloads.send()
    assert wait_for(lambda: transfers.active == 2)
    stop.set()
    transfers.release.set()
    downloads.close()
    while not results.empty():
        downloads.apply(results.get_nowait())
    downloads.flush()
    assert len(transfers.started) == 2
    [(job_id, files)] = jobs.recorded
    # what landed is kept, every other URL is recorded as not fetched; the job is not done
    assert [bool(f.name) for f in files] == [True] * 2 + [False] * 48
    assert {f.error for f in files[2:]} == {INTERRUPTED} and downloads.busy == 1
    downloads.start("eeeeee")  # stopped: nothing new is queued
    assert downloads.busy == 1


def test_a_plan_that_fails_is_recorded_as_the_jobs_error(tmp_path: Path) -> None:
    def plan(job_id: str, output: Any, existing: list[OutputFile]) -> JobFiles:
        raise ValueError("no such folder")

    jobs = FakeJobs("ffffff")
    results: queue.Queue[Outcome] = queue.Queue()
    downloads = DownloadPool(plan, jobs, results, workers=1, stop=threading.Event())  # type: ignore[arg-type]
    downloads.start("ffffff")
    downloads.send()
    drain(downloads, results, lambda: not downloads.busy)
    downloads.close()
    assert jobs.recorded == [
        ("ffffff", [OutputFile(url="", error="download failed: no such folder")])
    ]


@pytest.mark.parametrize("workers", [1, 4])
def test_close_without_downloads_returns_at_once(workers: int) -> None:
    jobs: Any = FakeJobs()  # the part of a JobTable a DownloadPool uses
    downloads = DownloadPool(None, jobs, queue.Queue(), workers=workers, stop=threading.Event())
    downloads.start("aaaaaa")
    started = time.monotonic()
    downloads.close()
    assert downloads.busy == 0 and time.monotonic() - started < 1.0


# ---- a stop with a real Downloader: a body stalled mid-way, a retry's long wait -----------


class StallingFiles:
    """A file server on 127.0.0.1: each answer sends its headers and 100 of 1,000 bytes, then
    stalls until `release` (or, with `busy`, answers 503 Retry-After: 60)."""

    def __init__(self, busy: bool = False) -> None:
        self.release = threading.Event()
        self.gets = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.gets += 1
                if busy:
                    self.send_response(503)
                    self.send_header("Retry-After", "60")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                owner.release.wait(30)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_stop_during_a_stalled_body_leaves_no_part_and_records_every_url(
    tmp_path: Path,
) -> None:
    server = StallingFiles()
    job_id = "abababababababab"
    urls = [f"{server.base}/a{i}.png" for i in range(6)]
    downloader = Downloader(allow_hosts=["127.0.0.1"])
    jobs = FakeJobs(job_id)
    results: queue.Queue[Outcome] = queue.Queue()
    stop = threading.Event()
    downloads = DownloadPool(
        lambda j, output, existing: downloader.plan(tmp_path, j, urls, existing),
        jobs,  # type: ignore[arg-type]
        results,
        workers=4,
        stop=stop,
    )
    try:
        downloads.start(job_id)
        downloads.send()
        folder = tmp_path / "files" / job_id
        assert wait_for(lambda: folder.is_dir() and len(os.listdir(folder)) == 4)
        while not results.empty():  # the scheduler applies the plan as it comes
            downloads.apply(results.get_nowait())
        stop.set()
        started = time.monotonic()
        downloads.close(grace=0.5)  # every transfer is stuck in a read: none returns
        took = time.monotonic() - started
        while not results.empty():
            downloads.apply(results.get_nowait())
        downloads.flush()
    finally:
        server.close()
    assert took < 1.5, took
    assert os.listdir(folder) == []  # the four stalled transfers' .part files are gone
    [(_, files)] = jobs.recorded
    assert [f.url for f in files] == urls and {f.error for f in files} == {INTERRUPTED}
    assert server.gets == 4  # no transfer started after the stop


def test_a_stop_ends_a_retrys_wait_and_sends_nothing_more(tmp_path: Path) -> None:
    server = StallingFiles(busy=True)
    downloader = Downloader(allow_hosts=["127.0.0.1"], retries=3)
    files = downloader.plan(tmp_path, "cdcdcdcdcdcdcdcd", [f"{server.base}/b.png"])
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    try:
        result = files.transfer(files.todo[0], stop.is_set)  # 503, then 60 s to wait
    finally:
        server.close()
    assert time.monotonic() - started < 1.5
    assert result.error == INTERRUPTED and server.gets == 1


def test_the_note_counts_the_files_still_to_fetch(tmp_path: Path) -> None:
    jobs = FakeJobs("aaaaaa", "bbbbbb")
    plan = planner(tmp_path, {"aaaaaa": 12, "bbbbbb": 3}, Transfers())
    downloads = DownloadPool(plan, jobs, queue.Queue(), workers=1, stop=threading.Event())  # type: ignore[arg-type]
    assert downloads.note() == ""
    for job_id in ("aaaaaa", "bbbbbb"):
        downloads._jobs[job_id] = None  # as start() leaves it
        downloads.apply(Outcome("plan", job_id, plan(job_id, None, [])))
    assert downloads.note() == "15 files to download"
    for i in range(6):
        downloads.apply(Outcome("file", "aaaaaa", (i, OutputFile(url="u", name="n", sha256="s"))))
    assert downloads.note() == ""  # 9 left: under FILES_SHOWN

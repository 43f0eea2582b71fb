"""outputs.mirror: a run's downloaded files, checked against the sha256 recorded when they
landed, and its reports copied to PREFIX/<run name>/ in a bucket.

Each object is recorded in state.db (store/mirrored.py) as soon as the store took it, so a
killed run sends nothing twice; an object already in the bucket with the same size and sha256
is skipped (fetch/bucket.py), so another folder or a lost record costs a HEAD, not an upload.
What could not be copied after the bucket's retries is listed, and the run exits 1; the same
command finishes it without calling the API (every job is finished by then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import BucketError
from batchrun.fetch.bucket import Bucket, file_sha256
from batchrun.results.html_pages import more_pages
from batchrun.results.report import MirrorFacts
from batchrun.store.mirrored import Mirrored, urls_by_job
from batchrun.store.records import JobRow
from batchrun.store.state import StateStore

REPORTS = ("report.csv", "summary.json", "report.html")
WORKERS = 4  # uploads at once
SHOWN = 10  # files not copied listed by name; the rest are counted


@dataclass(frozen=True)
class NotMirrored:
    """A file left out of the bucket: its name in the run folder, its s3:// URL and why."""

    name: str
    url: str
    why: str


@dataclass(frozen=True)
class _File:
    job_id: str  # '' for a report
    name: str  # relative to the run folder
    sha256: str  # as recorded when it landed ('' for a report: worked out when sent)
    size: int


class Mirror:
    """The mirror of one run folder in `bucket`, under PREFIX/`run_name`/."""

    def __init__(
        self,
        bucket: Bucket,
        store: StateStore,
        run_dir: Path,
        run_name: str,
        *,
        workers: int = WORKERS,
    ) -> None:
        self.bucket = bucket
        self.store = store
        self.run_dir = run_dir
        self.run_name = run_name
        self.workers = workers
        self.known = {m.url: m for m in store.mirrored()}
        self.failed: list[NotMirrored] = []
        self.files_sent = 0  # the jobs' files uploaded this run
        self.reports_sent = 0

    @property
    def to(self) -> str:
        """s3://BUCKET/PREFIX/<run name>."""
        return self.bucket.url(self.run_name)

    def url(self, name: str) -> str:
        return self.bucket.url(f"{self.run_name}/{name}")

    # ---- copying ------------------------------------------------------------------------

    def copy_files(self, rows: Iterable[JobRow]) -> None:
        """Copy every downloaded file of `rows` not in the bucket yet."""
        files = [
            _File(row.job_id, f.name, f.sha256, f.size)
            for row in rows
            for f in row.files
            if f.name and not f.error
        ]
        self.files_sent += self._copy([f for f in files if not self._has(f)])

    def copy_reports(self) -> None:
        """Copy report.csv, summary.json and report.html and its pages (after they were
        written)."""
        files = []
        for name in [*REPORTS, *more_pages(self.run_dir)]:
            path = self.run_dir / name
            if path.is_file():
                files.append(_File("", name, file_sha256(path), path.stat().st_size))
        self.reports_sent += self._copy([f for f in files if not self._has(f)])

    def _has(self, f: _File) -> bool:
        known = self.known.get(self.url(f.name))
        return known is not None and (known.sha256, known.size) == (f.sha256, f.size)

    def _copy(self, files: list[_File]) -> int:
        """Upload `files` in parallel, recording each on this thread as the store takes it;
        how many were sent (the others were there already, or failed)."""
        if not files:
            return 0
        sent = 0
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(self._send, f) for f in files]
            for future in as_completed(futures):
                outcome, was_sent = future.result()
                if isinstance(outcome, NotMirrored):
                    self.failed.append(outcome)
                    continue
                self.store.record_mirrored(outcome)
                self.known[outcome.url] = outcome
                sent += was_sent
        self.failed.sort(key=lambda n: n.name)
        return sent

    def _send(self, f: _File) -> tuple[Mirrored | NotMirrored, bool]:
        """One file checked and sent (a worker's part: no state.db here)."""
        url = self.url(f.name)
        path = self.run_dir / f.name
        try:
            size = path.stat().st_size
            sha = file_sha256(path)
        except OSError as exc:
            why = f"cannot be read ({exc.strerror}); rerun to download it again"
            return NotMirrored(f.name, url, why), False
        if f.sha256 and (sha, size) != (f.sha256, f.size):
            why = (
                "changed since it was downloaded (its sha256 is not the one recorded), so it "
                "was not copied; delete it and rerun to download it again"
            )
            return NotMirrored(f.name, url, why), False
        try:
            sent = self.bucket.mirror(path, f"{self.run_name}/{f.name}", sha256=sha)
        except BucketError as exc:
            return NotMirrored(f.name, url, str(exc)), False
        return Mirrored(url, f.job_id, f.name, sha, size, time.time()), sent

    # ---- what it says -------------------------------------------------------------------

    def urls(self) -> dict[str, list[str]]:
        """Each job's s3:// URLs in the bucket (report.csv's mirror_urls)."""
        return urls_by_job(self.known.values())

    def facts(self) -> MirrorFacts:
        """summary.json's `mirror`."""
        files = sum(1 for m in self.known.values() if m.job_id)
        missing = sum(1 for n in self.failed if n.name not in REPORTS)
        return {
            "to": self.to,
            "files": files,
            "files_sent_this_run": self.files_sent,
            "not_mirrored": missing,
        }

    def say(self, echo: Callable[[str], None], *, quiet: bool = False) -> None:
        """The mirror's line: what is in the bucket, or what is not and how to finish."""
        if self.failed:
            n = len(self.failed)
            echo(
                f"mirror: {n} file{'s' if n != 1 else ''} not copied to {self.to}; rerun the "
                "same command to finish (finished jobs are not sent to the API again):"
            )
            for item in self.failed[:SHOWN]:
                echo(f"  {item.name}: {item.why}")
            if n > SHOWN:
                echo(f"  ... and {n - SHOWN} more")
            return
        if not quiet:
            files = self.facts()["files"]
            echo(
                f"mirror: {files} file{'s' if files != 1 else ''} and the reports in {self.to} "
                f"({self.files_sent + self.reports_sent} sent this run)"
            )

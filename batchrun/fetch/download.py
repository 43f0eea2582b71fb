"""Download a job's output files safely into files/<job_id>/.

Safety rules (DESIGN.md "Downloads"): only http(s) URLs on allowed hosts (output_urls), never
an Authorization header, streamed to `<name>.part` with a size cap, sha256 while streaming,
fsynced and renamed, names sanitised so none can leave the job's folder.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from batchrun.api import proxies as netenv
from batchrun.api.ratelimit import backoff
from batchrun.fetch.jobfiles import INTERRUPTED, FileTask, JobDir, JobFiles, Stopped, plan
from batchrun.store.atomic import open_atomic
from batchrun.store.output_urls import refusal, safe_name, with_ext
from batchrun.store.records import OutputFile

CHUNK = 1024 * 1024
DEADLINE_S = 900.0  # one file, headers to last byte: a trickle cannot hold a run for ever
MAX_REDIRECTS = 5
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
PAUSE_SLICE_S = 0.2  # a wait before a retry looks for a stop this often
# Downloads stop while less than this is free on the run folder's disk, so state.db can still
# record every request id and result: we stop downloading, never recording.
MIN_FREE_BYTES = 50 * 1024**2
_JOB_ID = re.compile(r"^[0-9a-f]{6,64}$")


class _Retry(Exception):
    """A download attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fail(Exception):
    """A download failed for good; the message goes into OutputFile.error."""


class Downloader:
    """Fetches output URLs into a run folder; one instance per run."""

    def __init__(
        self,
        *,
        allow_hosts: list[str],
        max_file_bytes: int = 2 * 1024**3,
        session: requests.Session | None = None,
        retries: int = 3,
        timeout: float = 60.0,
        deadline: float = DEADLINE_S,
        sleep: Callable[[float], None] | None = None,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self.allow_hosts = list(allow_hosts)
        self.min_free_bytes = min_free_bytes
        self.max_file_bytes = max_file_bytes
        # A fresh session by default, never the API client's. A given session is left as it is
        # (it may be shared); every request strips Authorization instead (see `_open`).
        # Ours reads proxies and the CA bundle once (netenv), and so never reads ~/.netrc.
        self._own_session = session is None
        self.session = session if session is not None else netenv.session()
        self._settings: dict[str, dict[str, Any]] = {}  # origin -> proxies/verify/... for send
        self._roots: dict[Path, Path] = {}  # run_dir -> its resolved files/ folder
        self._roots_lock = threading.Lock()
        self.retries = retries
        self.timeout = timeout
        self.deadline = deadline
        # A given `sleep` (tests) takes each wait whole; by default a wait is real time, cut
        # short by a stop.
        self.sleep = sleep
        self._random = random.Random()

    def fetch(
        self,
        run_dir: Path,
        job_id: str,
        urls: list[str],
        existing: Sequence[OutputFile] = (),
        keys: Mapping[str, str] | None = None,
    ) -> list[OutputFile]:
        """Download each URL (one after another) into run_dir/files/<job_id>/; never raises
        per file. `plan` and `JobFiles.transfer` do the same a file at a time.

        `keys` (url -> output key, from `output_keys`) names files whose URL has no usable name.
        """
        files = self.plan(run_dir, job_id, urls, existing, keys)
        for task in files.todo:
            files.results[task.index] = files.transfer(task)
        files.sync()
        return files.landed()

    def plan(
        self,
        run_dir: Path,
        job_id: str,
        urls: list[str],
        existing: Sequence[OutputFile] = (),
        keys: Mapping[str, str] | None = None,
    ) -> JobFiles:
        """A job's files (jobfiles.plan): what needs no request, and the transfers to make,
        each named already; `JobFiles.transfer` makes one, from any thread."""
        if not _JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} is not a lowercase hex id")
        job = JobDir(self._files_root(Path(run_dir)), job_id)
        return plan(job, Path(run_dir), urls, existing, keys, self.allow_hosts, self._transfer)

    def _transfer(self, files: JobFiles, task: FileTask, stopped: Stopped) -> OutputFile:
        if stopped() or netenv.interrupted():
            return OutputFile(url=task.url, error=INTERRUPTED)
        full = self._disk_nearly_full(files.run_dir)
        if full:
            return OutputFile(url=task.url, error=full)
        return self._download(files.job, task, stopped)

    def _files_root(self, run_dir: Path) -> Path:
        """run_dir/files with every symlink above it resolved, worked out once per run folder."""
        with self._roots_lock:
            root = self._roots.get(run_dir)
            if root is None:
                root = self._roots[run_dir] = run_dir.resolve() / "files"
            return root

    def _disk_nearly_full(self, path: Path) -> str:
        """Why not to write another byte under `path` ('' when there is room)."""
        free = free_bytes(path)
        if free is None or free >= self.min_free_bytes:
            return ""
        return (
            f"not downloaded: the disk is nearly full ({free // 1024**2} MB free; batchrun keeps "
            f"{self.min_free_bytes // 1024**2} MB for its state); free some space and rerun "
            "to fetch it"
        )

    def _download(self, job: JobDir, task: FileTask, stopped: Stopped) -> OutputFile:
        url = task.url
        attempt = 0
        not_found = 0
        while True:
            if attempt and (stopped() or netenv.interrupted()):  # no new request after a stop
                return OutputFile(url=url, error=INTERRUPTED)
            try:
                name, sha, size = self._attempt(job, task, stopped)
                rel = f"files/{job.job_id}/{name}"
                return OutputFile(url=url, name=rel, sha256=sha, size=size)
            except _Fail as exc:
                return OutputFile(url=url, error=str(exc))
            except _Retry as exc:
                if str(exc).startswith("expired"):
                    not_found += 1
                    if not_found > 1:
                        return OutputFile(url=url, error=str(exc))
                attempt += 1
                if attempt > self.retries:
                    return OutputFile(url=url, error=f"{exc} (after {attempt} attempts)")
                delay = backoff(attempt, base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S, rng=self._random)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, BACKOFF_CAP_S * 2))
                self._pause(delay, stopped)

    def _pause(self, seconds: float, stopped: Stopped) -> None:
        """Wait before a retry; a stop ends the wait (and the retry then sees it)."""
        if self.sleep is not None:
            self.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while not (stopped() or netenv.interrupted()):
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, PAUSE_SLICE_S))

    def _open(self, url: str) -> requests.Response:
        """GET with redirects followed by hand, re-checking every hop's host."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                prepared = self._prepare(url)
                resp = self.session.send(
                    prepared,
                    allow_redirects=False,
                    timeout=self.timeout,
                    **self._send_settings(url),
                )
            except requests.RequestException as exc:
                raise _Retry(f"connection error: {type(exc).__name__}") from None
            if not resp.is_redirect:
                return resp
            location = urljoin(url, resp.headers.get("Location", ""))
            resp.close()
            why = refusal(location, self.allow_hosts)
            if why:
                raise _Fail(f"redirect {why}")
            url = location
        raise _Fail(f"more than {MAX_REDIRECTS} redirects")

    def _prepare(self, url: str) -> requests.PreparedRequest:
        """A GET as Session.request prepares it, minus Authorization and the per-call merging.

        No auth is ever prepared (so neither ~/.netrc nor a session's auth applies), and an
        Authorization header a given session carries is dropped.
        """
        p = requests.PreparedRequest()
        p.method = "GET"
        p.prepare_url(url, None)  # a server's URL: requests' checks and quoting apply
        headers = netenv.str_headers(self.session.headers)
        headers.pop("Authorization", None)  # never, even when a given session carries one
        headers["Accept-Encoding"] = "identity"
        p.headers = headers
        p.prepare_cookies(self.session.cookies)
        p.prepare_body(None, None)
        p.hooks = self.session.hooks
        return p

    def _send_settings(self, url: str) -> dict[str, Any]:
        """Proxies, CA bundle, stream: what requests works out per call, once per origin."""
        try:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
        except ValueError:
            origin = url
        found = self._settings.get(origin)
        if found is None:
            merged = self.session.merge_environment_settings(url, {}, True, None, None)
            proxies = dict(merged["proxies"])
            if self._own_session:  # trust_env is off on ours: the environment's proxies here
                proxies = {**netenv.env_proxies(url), **proxies}
            found = {**merged, "proxies": proxies}
            self._settings[origin] = found
        return found

    def _attempt(self, job: JobDir, task: FileTask, stopped: Stopped) -> tuple[str, str, int]:
        with self._open(task.url) as resp:
            status = resp.status_code
            if status == 404 or status == 410:
                raise _Retry(f"expired (HTTP {status})")
            if status == 429 or status >= 500:
                wait = netenv.strict_seconds(resp.headers.get("Retry-After"))
                raise _Retry(f"HTTP {status}", wait)
            if status != 200:
                raise _Fail(f"HTTP {status}")
            expected = netenv.strict_int(resp.headers.get("Content-Length"))
            if expected is not None and expected > self.max_file_bytes:
                raise _Fail(f"larger than the {self.max_file_bytes}-byte cap")
            content_type = resp.headers.get("Content-Type", "")
            name = with_ext(task.name, content_type) if task.bare else task.name
            try:
                # Defence in depth: no symlinked folder or odd name may lead outside the run.
                if safe_name(name) != name or not job.ready():
                    raise _Fail(f"refused: name {name!r} leaves the job folder")
                sha, size = self._stream(resp, job.path / name, expected, stopped)
            except OSError as exc:
                raise _Fail(f"write failed: {exc.strerror or exc}") from None
            job.written = True
            return name, sha, size

    def _chunks(
        self, resp: requests.Response, deadline: float, stopped: Stopped
    ) -> Iterator[bytes]:
        """The body as it arrives (one socket read each, so a trickle cannot stall a chunk),
        until the deadline or a stop signal."""
        while True:
            if netenv.interrupted() or stopped():
                raise _Fail(INTERRUPTED)
            if time.monotonic() > deadline:
                raise _Retry(f"not complete within {self.deadline:g}s")
            try:
                chunk = resp.raw.read1(CHUNK, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as exc:  # the socket, not the disk
                raise _Retry(f"body cut short: {type(exc).__name__}") from None
            if not chunk:
                return
            yield chunk

    def _stream(
        self,
        resp: requests.Response,
        final: Path,
        expected: int | None,
        stopped: Stopped,
    ) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        # Not the folder: JobFiles.sync fsyncs it once for many files.
        with open_atomic(final, sync_dir=False, hidden=True) as fh:
            deadline = time.monotonic() + self.deadline
            try:
                for chunk in self._chunks(resp, deadline, stopped):
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise _Fail(f"larger than the {self.max_file_bytes}-byte cap")
                    full = self._disk_nearly_full(final.parent)
                    if full:
                        raise _Fail(full)
                    digest.update(chunk)
                    fh.write(chunk)
            except requests.RequestException as exc:
                raise _Retry(f"body cut short ({size} bytes): {type(exc).__name__}") from None
            encoded = resp.headers.get("Content-Encoding", "identity") != "identity"
            if expected is not None and not encoded and size != expected:
                raise _Retry(f"body cut short ({size} of {expected} bytes)")
        return digest.hexdigest(), size


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `path`'s file system (None: unknown)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize

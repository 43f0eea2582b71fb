"""Disk faults: a download whose write fails midway (ENOSPC) leaves neither a partial file under
its final name nor a `.part`, and the next fetch gets the whole file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batchrun.fetch import download
from batchrun.fetch.download import Downloader
from batchrun.store import atomic

from .conftest import TOKEN, part_files, read_report, sha256_file, split_cell, sweep, write_manifest

JOB_ID = "0123abcd4567ef89"
# Several CHUNKs, so the failure happens in the middle of the body.
BODY = hashlib.sha256(b"seed").digest() * (3 * download.CHUNK // 32 + 7)


class _Handler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[str]:
    _Handler.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _FullDisk:
    """Wraps a file: the second write() raises ENOSPC (once per test), as a full disk would."""

    failures_left = 1

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._writes = 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        if self._writes == 2 and _FullDisk.failures_left > 0:
            _FullDisk.failures_left -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def test_write_error_midway_leaves_nothing_and_next_fetch_completes(
    file_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdopen = os.fdopen
    opened: list[str] = []

    def full_disk_fdopen(fd: int, mode: str = "r", *args: Any, **kw: Any) -> Any:
        fh = real_fdopen(fd, mode, *args, **kw)
        if "w" in mode:
            opened.append(str(fd))
            return _FullDisk(fh)
        return fh

    _FullDisk.failures_left = 1
    # Downloads write through the one atomic writer, which opens its .part with os.fdopen.
    monkeypatch.setattr(os, "fdopen", full_disk_fdopen)
    run_dir = tmp_path / "run"
    url = f"{file_server}/files/out/image.png"
    dl = Downloader(allow_hosts=["127.0.0.1"], retries=2, sleep=lambda s: None)

    first = dl.fetch(run_dir, JOB_ID, [url])
    job_dir = run_dir / "files" / JOB_ID
    assert opened, "the fault was never injected: the atomic writer no longer uses os.fdopen"
    assert _FullDisk.failures_left == 0
    assert len(first) == 1
    assert first[0].error, f"a failed write was reported as success: {first[0]}"
    assert not first[0].sha256
    assert not (job_dir / "image.png").exists(), "a partial file kept its final name"
    assert part_files(run_dir) == [], "a .part file was left behind"

    # The next fetch (what the next run does with the recorded result) gets the whole file.
    second = dl.fetch(run_dir, JOB_ID, [url], existing=first)
    assert len(second) == 1 and not second[0].error, second
    final = run_dir / second[0].name
    assert final.is_file()
    assert sha256_file(final) == second[0].sha256 == hashlib.sha256(BODY).hexdigest()
    assert final.stat().st_size == len(BODY) == second[0].size
    assert part_files(run_dir) == []
    print(
        f"disk fault: 1 ENOSPC injected at write 2 of {len(BODY)} bytes; "
        f"files verified: 1; server hits: {_Handler.hits}; .part left: 0"
    )


def test_crash_leftover_part_is_removed_and_refetched(file_server: str, tmp_path: Path) -> None:
    """A `.part` left by a killed process is not mistaken for a file, and is replaced."""
    run_dir = tmp_path / "run"
    job_dir = run_dir / "files" / JOB_ID
    job_dir.mkdir(parents=True)
    (job_dir / "image.png.part").write_bytes(BODY[:1000])
    dl = Downloader(allow_hosts=["127.0.0.1"], retries=0, sleep=lambda s: None)
    [got] = dl.fetch(run_dir, JOB_ID, [f"{file_server}/x/image.png"])
    assert not got.error, got
    assert sha256_file(run_dir / got.name) == hashlib.sha256(BODY).hexdigest()
    assert part_files(run_dir) == []


def test_run_with_a_failed_write_keeps_no_partial_and_next_run_fetches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through `batchrun run` (in-process, so the write can be made to fail): the
    first run reports the file as not downloaded, the second run downloads it."""
    from batchrun.cli import main
    from batchrun.simulator import SimSettings, Simulator

    real_open_atomic = atomic.open_atomic

    @contextlib.contextmanager
    def full_disk_open_atomic(*args: Any, **kw: Any) -> Any:
        with real_open_atomic(*args, **kw) as fh:
            yield _FullDisk(fh)

    # PNGs of the simulator are small (one chunk): fail on the first write instead.
    monkeypatch.setattr(_FullDisk, "write", _fail_first_write)
    _FullDisk.failures_left = 1
    # The downloader's writer only: the run's other files (reports) are written as usual.
    monkeypatch.setattr(download, "open_atomic", full_disk_open_atomic)
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    n_jobs = 3
    manifest = write_manifest(tmp_path / "disk.yaml", sweep(n_jobs))
    run_dir = tmp_path / "run"
    with Simulator(SimSettings(token=TOKEN, run_time=0.05, concurrency=0)) as sim:
        args = ["run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "-q"]
        first_code = main(args)
        assert _FullDisk.failures_left == 0, "the fault was never injected"
        rows = read_report(run_dir)
        missing = [r for r in rows if len(split_cell(r["output_files"])) == 0]
        assert len(missing) == 1, rows
        assert missing[0]["error"], "the failed write is not reported"
        assert part_files(run_dir) == []
        job_dir = run_dir / "files" / missing[0]["job_id"]
        assert not job_dir.exists() or not any(job_dir.iterdir()), list(job_dir.iterdir())

        second_code = main(args)
        served = sim.files()
        submits = sim.stats()["submits"]
    rows = read_report(run_dir)
    verified = 0
    for r in rows:
        assert r["status"] == "succeeded", r
        for name, sha, url in zip(
            split_cell(r["output_files"]),
            split_cell(r["output_sha256"]),
            split_cell(r["output_urls"]),
            strict=True,
        ):
            assert sha256_file(run_dir / name) == sha == served[url]
            verified += 1
    assert verified == n_jobs
    assert part_files(run_dir) == []
    assert submits == n_jobs, "the second run resubmitted jobs instead of only downloading"
    assert second_code == 0
    print(
        f"disk fault in a run: exit codes {first_code} then {second_code}, 1 ENOSPC injected, "
        f"files verified {verified}, submits {submits}, .part left 0"
    )


def _fail_first_write(self: _FullDisk, data: bytes) -> int:
    self._writes += 1
    if _FullDisk.failures_left > 0:
        _FullDisk.failures_left -= 1
        raise OSError(errno.ENOSPC, "No space left on device")
    return int(self._fh.write(data))

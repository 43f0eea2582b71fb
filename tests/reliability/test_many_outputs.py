"""Issue 15, class 10: one result with 10,000 output files.

The files download several at a time (never more than the run's download threads), each is
recorded soon after it lands, and a signal ends the run within seconds with what landed kept:
a rerun fetches only the rest.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import (
    batchrun_cmd,
    clean_env,
    part_files,
    read_report,
    split_cell,
    state_rows,
    wait_until,
)
from .hostile_api import PNG, Call, HostileApi, Reply, manifest_for

N_FILES = 10_000
# A signal half way: what landed is kept, the rest fetched by the rerun. The count only needs
# to keep the transfers busy when the signal comes (the 10,000-file scale is the test above).
SIGNAL_FILES = 2_000
DOWNLOAD_WORKERS = 4  # the run's default


class ManyOutputs:
    """Answers every /result with `n_files` output URLs on the same server; counts the file
    answers being made at once (each takes a moment, as a real server's does)."""

    def __init__(
        self, *, n_files: int = N_FILES, slow_after: int | None = None, slow: str = "trickled"
    ) -> None:
        self.n_files = n_files
        self.slow_after = slow_after  # file calls after this many are slow:
        self.slow = slow  # "trickled" bodies, or "stalled" before their headers
        self.release = threading.Event()  # a stalled answer goes on
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.api = HostileApi(self.answer)
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body for the client's delayed ACK (40 ms a file on loopback), as no real server does.
        self.api.server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]

    def urls(self, request_id: str) -> list[str]:
        return [self.api.file_url(f"{request_id}/{i}.png") for i in range(self.n_files)]

    def answer(self, call: Call) -> Reply | None:
        if call.kind == "result":
            body = {
                "request_id": call.request_id,
                "status": "succeeded",
                "output": {"images": self.urls(call.request_id)},
            }
            return Reply(body=body)
        if call.kind != "file":
            return None
        png = PNG + call.path.encode()  # a different sha256 per file
        if self.slow_after is not None and call.n > self.slow_after:
            if self.slow == "stalled":
                self.release.wait(60)
            else:
                return Reply(body=png, headers={"Content-Type": "image/png"}, trickle_s=0.05)
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        self.api.stopping.wait(0.001)  # the server's own latency, so overlapping calls meet
        with self.lock:
            self.active -= 1
        return Reply(body=png, headers={"Content-Type": "image/png"})


def start_run(tmp_path: Path, api: HostileApi) -> subprocess.Popen[str]:
    cmd = batchrun_cmd(
        "run", str(tmp_path / "m.yaml"), "--api-base", api.base_url,
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    return subprocess.Popen(
        cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, float]:
    """Wait for the child: (exit code, stderr, its peak RSS in MB).

    The peak is the child's own VmHWM, sampled while it runs: its rusage ru_maxrss would
    start from the RSS of this (test) process, which the child is forked from.
    """
    assert proc.stderr is not None and proc.stdout is not None
    err: list[str] = []
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.wait(0.02):
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))

    threads = [
        threading.Thread(target=lambda: err.append(proc.stderr.read())),  # type: ignore[union-attr]
        threading.Thread(target=proc.stdout.read),
        threading.Thread(target=sample),
    ]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    done.set()
    for thread in threads:
        thread.join()
    return proc.returncode, "".join(err), peak[0] / 1024


def recorded(run_dir: Path) -> list[dict[str, object]]:
    """The files state.db holds for the run's only job."""
    rows = state_rows(run_dir)
    return json.loads(rows[0]["files"] or "[]") if rows else []


def landed(files: list[dict[str, object]]) -> list[dict[str, object]]:
    return [f for f in files if f["sha256"] and not f["error"]]


@pytest.mark.slow
def test_ten_thousand_outputs_download_in_parallel_and_all_are_recorded(tmp_path: Path) -> None:
    manifest_for(tmp_path, 1, download=True)
    server = ManyOutputs()
    with server.api as api:
        started = time.monotonic()
        code, err, rss_mb = finish(start_run(tmp_path, api), timeout=300)
        took = time.monotonic() - started
    run_dir = tmp_path / "run"
    print(
        f"\n10,000 outputs: {took:.1f}s, peak {server.peak} file answers at once "
        f"(download threads {DOWNLOAD_WORKERS}), peak RSS {rss_mb:.0f} MB"
    )
    assert code == 0, err[-2000:]
    assert api.calls["file"] == N_FILES  # each file fetched once
    assert 1 < server.peak <= DOWNLOAD_WORKERS
    assert rss_mb < 300
    files = recorded(run_dir)
    assert len(landed(files)) == N_FILES
    csv.field_size_limit(10 * 1024**2)  # one cell lists 10,000 names
    [row] = read_report(run_dir)
    names = split_cell(row["output_files"])
    # URL order and names as one after another would give them
    assert names == [f"files/{row['job_id']}/{i}.png" for i in range(N_FILES)]
    assert all((run_dir / n).is_file() for n in names[:: N_FILES // 100])
    assert part_files(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "slow"),
    [(signal.SIGTERM, "trickled"), (signal.SIGTERM, "stalled"), (signal.SIGKILL, "trickled")],
)
def test_a_signal_half_way_keeps_what_landed_and_a_rerun_fetches_the_rest(
    tmp_path: Path, sig: int, slow: str
) -> None:
    n_files = SIGNAL_FILES
    half = n_files // 2
    manifest_for(tmp_path, 1, download=True)
    run_dir = tmp_path / "run"
    server = ManyOutputs(n_files=n_files, slow_after=half, slow=slow)
    with server.api as api:
        proc = start_run(tmp_path, api)
        try:
            # Recorded while the run goes on, not only once the job's last file is back.
            assert wait_until(lambda: len(landed(recorded(run_dir))) >= half, 240, interval=0.25)
            assert wait_until(lambda: api.calls["file"] >= half + DOWNLOAD_WORKERS, timeout=30)
            sent = time.monotonic()
            proc.send_signal(sig)
            code, err, _ = finish(proc, timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
        first_gets = api.calls["file"]
        kept = landed(recorded(run_dir))
        leftover_parts = part_files(run_dir)
        server.slow_after = None
        server.release.set()
        code2, err2, _ = finish(start_run(tmp_path, api), timeout=300)
        second_gets = api.calls["file"] - first_gets
    print(
        f"\n{signal.Signals(sig).name}, file answers {slow}, {len(kept)} of {n_files:,} files "
        f"landed: exit {code} in {took:.2f}s; the rerun made "
        f"{second_gets} file requests"
    )
    if sig != signal.SIGKILL:
        assert code == 130, err[-2000:]
        assert took < 5.0
        assert "Traceback" not in err
        assert leftover_parts == []  # transfers abandoned, their temporary files removed
    assert len(kept) == half  # every file served whole is recorded; none cut off is
    assert code2 == 0, err2[-2000:]
    assert second_gets == n_files - half
    files = recorded(run_dir)
    assert len(landed(files)) == n_files
    kept_names = {f["url"]: f["name"] for f in kept}
    assert all(kept_names.get(f["url"], f["name"]) == f["name"] for f in files)
    assert part_files(run_dir) == []

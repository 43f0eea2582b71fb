"""The progress a person reads in CI: elapsed and ETA in every line, log lines whenever no
real terminal redraws a bar, and the last line's totals and elapsed time."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.run import progress
from batchrun.run.progress import Progress
from batchrun.util import durations


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_give_elapsed_and_an_eta_from_jobs_per_second() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress(40, stream=out, interval=5.0, clock=clock)
    bar.update({"pending": 40}, 0, 0)
    clock.now += 5
    bar.update({"succeeded": 10, "running": 5, "pending": 25}, 10, 22)
    clock.now += 5
    bar.update({"succeeded": 20, "pending": 20}, 20, 44)
    assert out.getvalue().splitlines() == [
        "batchrun: 10/40 done (succeeded 10, running 5, pending 25); 22 API calls; "
        "elapsed 5s, ETA 15s",
        "batchrun: 20/40 done (succeeded 20, pending 20); 44 API calls; elapsed 10s, ETA 10s",
    ]


def test_the_eta_counts_only_this_runs_jobs_on_resume() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress(100, stream=out, interval=1.0, clock=clock)
    bar.update({"succeeded": 90, "pending": 10}, 90, 0)  # done by an earlier run
    clock.now += 65
    bar.update({"succeeded": 95, "pending": 5}, 95, 10)
    assert out.getvalue().endswith("; elapsed 1m05s, ETA 1m05s\n")


def test_notes_show_when_they_have_something_to_say() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress(1, stream=out, interval=1.0, clock=clock)
    left = ["9,990 files to download"]
    bar.notes.append(lambda: left[0])
    clock.now += 1
    bar.update({"succeeded": 1}, 1, 2)
    left[0] = ""
    clock.now += 1
    bar.update({"succeeded": 1}, 1, 2)
    assert [line.rsplit("; ", 1)[-1] for line in out.getvalue().splitlines()] == [
        "9,990 files to download",
        "elapsed 2s",
    ]


def test_no_eta_before_the_first_job_finishes() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress(3, stream=out, interval=1.0, clock=clock)
    bar.update({"pending": 3}, 0, 0)
    clock.now += 2
    bar.update({"queued": 3}, 0, 3)
    assert out.getvalue().endswith("; elapsed 2s, ETA ?\n")


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.6, "1m00s"), (3725, "1h02m")])
def test_duration(seconds: float, text: str) -> None:
    assert durations.duration(seconds) == text


def test_a_pty_with_no_terminal_behind_it_gets_lines(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    main_fd, sub_fd = pty.openpty()  # no window size: 0 columns, as under `script -qc` in CI
    with os.fdopen(sub_fd, "w") as stream:
        assert stream.isatty()
        assert not progress.is_terminal(stream)
    os.close(main_fd)


def test_term_dumb_gets_lines(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    main_fd, sub_fd = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(sub_fd, "w") as stream:
        assert not progress.is_terminal(stream)
        monkeypatch.setenv("TERM", "xterm")
        assert progress.is_terminal(stream)
    os.close(main_fd)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")
def test_run_under_script_prints_lines_and_a_final_line_with_elapsed(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "name": "pty",
        "run": {"rate_limit": "50/s", "poll_interval": "50ms"},
        "models": [
            {"id": "google/nano-banana-2-lite/text-to-image", "matrix": {"prompt": ["a", "b"]}}
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    cmd = f"{sys.executable} -m batchrun run {path} --run-dir {tmp_path / 'r'} --simulate"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm"}
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        ["script", "-qc", cmd, "/dev/null"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.replace("\r\n", "\n").splitlines()
    last = [line for line in lines if line.startswith("2 jobs: ")]
    assert last and re.match(
        r"2 jobs: succeeded 2\. Cost \$[0-9.]+ \(.*\)\. Elapsed \d+s\.", last[0]
    )
    assert last[0].endswith(f"s. Report: {tmp_path / 'r' / 'report.csv'}")
    assert "\r" not in proc.stdout.replace("\r\n", "\n")  # no bar redrawn in place

"""Two `run` processes on one run folder: the second exits at once with a clear message, the
first finishes unharmed."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from testing.cli import batchrun_cmd

from .conftest import (
    SimFactory,
    check_run_folder,
    clean_env,
    plan_jobs,
    state_rows,
    sweep,
    wait_until,
    write_manifest,
)

N_JOBS = 40


@pytest.mark.slow
def test_second_run_on_same_folder_is_refused(simulator: SimFactory, tmp_path: Path) -> None:
    sim = simulator("--seed", "2", "--workers", "2", "--run-time", "0.3")
    manifest = write_manifest(tmp_path / "conc.yaml", sweep(N_JOBS, run={"max_in_flight": 8}))
    planned = plan_jobs(manifest)
    run_dir = tmp_path / "run"
    cmd = batchrun_cmd(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--quiet"
    )
    first = subprocess.Popen(
        cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The first run is under way once it has recorded a request id.
        def under_way() -> bool:
            return first.poll() is not None or any(r.get("request_id") for r in state_rows(run_dir))

        assert wait_until(under_way, 60)
        assert first.poll() is None, "the first run ended before the second could start"
        started = time.monotonic()
        second = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
        still_running = first.poll() is None
        out1, err1 = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    message = second.stdout + second.stderr
    print(
        f"\nconcurrency: second run exit {second.returncode} in {took:.2f}s: "
        f"{second.stderr.strip()[:200]!r}; first run exit {first.returncode}"
    )
    assert second.returncode == 2, message
    # "run folder in use by pid N" (naming the folder in between is fine).
    assert re.search(rf"run folder (\S.* )?in use by pid {first.pid}\b", message), message
    assert "Traceback" not in message
    assert took < 5.0
    assert still_running, "the first run did not survive the second's start"
    assert first.returncode == 0, err1[-3000:]
    check = check_run_folder(run_dir, sim, planned, set())
    assert check.by_status == {"succeeded": N_JOBS}
    assert check.duplicates == []
    print(f"first run: statuses {check.by_status}, files verified {check.files_verified}")

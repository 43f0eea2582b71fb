"""Fault soak: 500 jobs through 5xx, dropped connections, failed jobs, a 429 limit below the
configured rate and slow answers. The run completes with exit 1, each failed job carries the
API's own error message, nothing is lost and nothing is paid for twice."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from testing.cli import batchrun_cmd
from tests.reliability.conftest import (
    TOKEN,
    SimFactory,
    ambiguous_jobs,
    check_run_folder,
    clean_env,
    plan_jobs,
    read_report,
    sweep,
    write_manifest,
)

N_JOBS = 500
SEED = 4242


def api_error_message(base_url: str, request_id: str) -> str:
    """The error message the API gives for a failed request, asked directly (the simulator
    injects faults into these calls too, so retry until a real answer comes)."""
    url = f"{base_url}/v1/requests/{request_id}/result"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            body: Any = r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            body = None
        if isinstance(body, dict) and body.get("status") == "failed":
            error = body["error"]
            return str(error["message"] if isinstance(error, dict) else error)
        time.sleep(0.2)
    raise AssertionError(f"could not read the result of {request_id}")


@pytest.mark.slow
def test_fault_soak_completes_with_every_failure_explained(
    simulator: SimFactory, tmp_path: Path
) -> None:
    sim = simulator(
        "--seed", str(SEED), "--workers", "0", "--run-time", "0.1",
        "--error-rate", "0.10", "--drop-rate", "0.05", "--fail-rate", "0.05",
        "--rate-limit", "40/s", "--slow", "0.02",
    )  # fmt: skip
    # The configured rate is above the simulator's limit: 429s must be met and honoured.
    manifest = write_manifest(
        tmp_path / "soak.yaml",
        sweep(N_JOBS, run={"rate_limit": "150/s", "max_in_flight": 80, "retries": 0}),
    )
    planned = plan_jobs(manifest)
    run_dir = tmp_path / "run"
    cmd = batchrun_cmd(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--quiet"
    )
    started = time.monotonic()
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - started
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    assert res.returncode == 1, f"exit {res.returncode}: {out[-3000:]}"
    assert TOKEN not in out

    ambiguous = ambiguous_jobs(run_dir)
    check = check_run_folder(run_dir, sim, planned, ambiguous)
    rows = {r["job_id"]: r for r in read_report(run_dir)}
    stats = sim.stats()
    faults = stats["faults"]

    # Every call the simulator saw is one batchrun counted (none hidden, none invented).
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["api_calls"]["total"] == stats["api_calls"], (summary["api_calls"], stats)
    failed = [r for r in rows.values() if r["status"] == "failed"]
    for r in failed:
        assert r["request_id"], r
        message = api_error_message(sim.base_url, r["request_id"])
        assert message in r["error"], f"job {r['job_id']}: {message!r} not in {r['error']!r}"
    # Every job ends succeeded or failed, except ambiguous submits, which the report explains.
    for job_id, r in rows.items():
        if job_id in ambiguous:
            assert r["status"] == "unknown" and r["error"], r
        else:
            assert r["status"] in ("succeeded", "failed"), r
    # What the simulator ran and what the report says agree (nothing lost).
    # (The server also ran the ambiguous submits, whose answers never arrived.)
    n_failed, n_ok = check.by_status.get("failed", 0), check.by_status.get("succeeded", 0)
    assert n_failed <= stats["jobs"]["failed"] <= n_failed + len(ambiguous), stats["jobs"]
    assert n_ok <= stats["jobs"]["succeeded"] <= n_ok + len(ambiguous), stats["jobs"]

    print(
        f"\nfault soak: jobs {check.jobs} in {elapsed:.1f}s, exit {res.returncode}, "
        f"statuses {check.by_status}, failed with the API's message {len(failed)}, "
        f"faults injected {faults}, throttled {stats['throttled']}, "
        f"ambiguous {len(ambiguous)}, duplicates explained {check.explained_duplicates}, "
        f"unexplained duplicates found {len(check.duplicates)}, "
        f"files verified {check.files_verified}"
    )
    assert failed, "the fail rate produced no failed job"
    assert stats["throttled"] > 0, "the 429 limit was never hit: lower it"
    assert faults.get("error_500", 0) + faults.get("error_502", 0) + faults.get("error_503", 0)
    assert faults.get("drop_silent", 0) + faults.get("drop_partial", 0) > 0
    assert check.duplicates == [], f"submitted twice without being ambiguous: {check.duplicates}"

    # The ambiguous ones complete with --resubmit-unknown, and still nothing else is resubmitted.
    if ambiguous:
        res2 = subprocess.run(
            [*cmd, "--resubmit-unknown"], env=clean_env(), capture_output=True, text=True,
            timeout=240,
        )  # fmt: skip
        assert res2.returncode in (0, 1), res2.stderr[-3000:]
        after = check_run_folder(run_dir, sim, planned, ambiguous | ambiguous_jobs(run_dir))
        assert after.duplicates == []
        print(f"after --resubmit-unknown: statuses {after.by_status}")

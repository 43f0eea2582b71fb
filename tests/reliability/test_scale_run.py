"""A run's memory is bounded by what is in flight, not by the sweep (its peak RSS at two sweep
sizes), and SIGKILL at random moments of a million-job run loses nothing and pays nothing
twice, judged on the simulator's books."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testing.cli import batchrun_cmd

from .conftest import (
    SimFactory,
    canonical_identity,
    clean_env,
    integrity,
    own_peak_rss_mb,
    write_manifest,
)

T2I = "google/nano-banana-2-lite/text-to-image"
SEED = 20261204


def big_sweep(jobs: int, out: Path, **run: Any) -> dict[str, Any]:
    """`jobs` jobs as vars a (250) x b: a small file that expands big; no downloads."""
    return {
        "version": 1,
        "name": "big",
        "run": {
            "max_jobs": jobs,
            "rate_limit": "1000/s",
            "max_in_flight": 100,
            "poll_interval": "50ms",
            "retries": 0,
            "report_every": 0,
            **run,
        },
        "outputs": {"dir": str(out), "download": False},
        "vars": {"a": list(range(250)), "b": list(range(jobs // 250))},
        "models": [{"id": T2I, "inputs": {"prompt": "scale prompt {a}-{b}"}}],
    }


@pytest.mark.slow
def test_a_runs_peak_memory_does_not_grow_with_the_sweep(simulator: SimFactory, tmp_path: Path):
    sim = simulator("--workers", "0", "--run-time", "0.01", "--rate-limit", "5000/s")
    peaks = {}
    for jobs in (2_000, 20_000):
        manifest = write_manifest(
            tmp_path / f"m{jobs}.yaml",
            big_sweep(jobs, tmp_path / f"run{jobs}", rate_limit="2000/s"),
        )
        cmd = batchrun_cmd("run", str(manifest), "--api-base", sim.base_url, "--quiet")
        code, peaks[jobs] = own_peak_rss_mb(cmd, timeout=240)
        assert code == 0
        with sqlite3.connect(tmp_path / f"run{jobs}" / "state.db") as db:
            done = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'").fetchone()
        assert done[0] == jobs
    grown = peaks[20_000] - peaks[2_000]
    print(f"\npeak RSS of a run: 2,000 jobs {peaks[2_000]:.1f} MB, 20,000 jobs "
          f"{peaks[20_000]:.1f} MB (+{grown:.1f} MB for 10x the jobs)")  # fmt: skip
    # 18,000 more jobs held in memory would take well over 18 MB (a row with its inputs,
    # output and files is about 2 KB in Python); in pages the run holds a few hundred.
    assert grown < 12, peaks


def submitted(run_dir: Path) -> int:
    """Jobs of the folder that got a request id (read with SQL, not the rows)."""
    if not (run_dir / "state.db").exists():
        return 0
    conn = sqlite3.connect(f"file:{run_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM jobs WHERE request_id IS NOT NULL").fetchone()[0]
        )
    except sqlite3.OperationalError:  # not made yet
        return 0
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_of_a_million_job_run(simulator: SimFactory, tmp_path: Path):
    rng = random.Random(SEED)
    jobs = 1_000_000
    sim = simulator("--seed", str(SEED), "--workers", "0", "--run-time", "0.05",
                    "--rate-limit", "2000/s")  # fmt: skip
    run_dir = tmp_path / "run"
    manifest = write_manifest(tmp_path / "big.yaml", big_sweep(jobs, run_dir))
    cmd = batchrun_cmd("run", str(manifest), "--api-base", sim.base_url, "--quiet")
    log = (tmp_path / "runs.log").open("w")
    seen, kills = [0], 0
    for _ in range(3):  # each run killed once it has sent a seeded number more submits
        target = seen[-1] + rng.randint(100, 1500)
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 300  # the first run adds a million jobs first
            while submitted(run_dir) < target and proc.poll() is None:
                assert time.monotonic() < deadline, f"no progress to {target} submits in 300 s"
                time.sleep(rng.uniform(0.05, 0.3))
            assert proc.poll() is None, f"the run ended by itself: {proc.returncode}"
            proc.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        assert integrity(run_dir) == "ok"
        seen.append(submitted(run_dir))
        assert seen[-1] > seen[-2], f"a rerun did not continue: {seen}"
    log.close()

    stats = sim.stats()
    conn = sqlite3.connect(f"file:{run_dir / 'state.db'}?mode=ro", uri=True)
    try:
        count, places = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT position) FROM jobs WHERE in_manifest = 1"
        ).fetchone()
        rows = conn.execute(
            "SELECT (SELECT name FROM names WHERE ref = jobs.model_id), inputs, status, "
            "request_id FROM jobs WHERE status <> 'pending'"
        ).fetchall()
    finally:
        conn.close()
    assert count == places == jobs  # every job of the plan, each at its place, once
    known = {canonical_identity(m, json.loads(i)): (s, r) for m, i, s, r in rows}
    per_identity = stats["submits_per_identity"]
    # Nothing paid twice: no input was ever accepted twice by the server.
    assert max(per_identity.values()) == 1
    # Nothing lost: every submit the server accepted is a job state.db does not count as
    # still to send (it has the request id, or the job is left ambiguous, never resent).
    lost = [ident for ident in per_identity if ident not in known]
    assert lost == [], f"{len(lost)} accepted submits are pending in state.db: {lost[:3]}"
    with_ids = sum(1 for s, r in known.values() if r)
    ambiguous = sum(1 for s, r in known.values() if not r and s in ("submitting", "unknown"))
    assert len(per_identity) <= with_ids + ambiguous
    print(f"\nmillion-job kill: kills {kills}, submits seen {seen[1:]}, server accepted "
          f"{stats['submits']}, with a request id {with_ids}, ambiguous {ambiguous}")  # fmt: skip
    assert "Traceback" not in (tmp_path / "runs.log").read_text()

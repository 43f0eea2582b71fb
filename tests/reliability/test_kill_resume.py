"""Kill/resume: a real `batchrun run` process SIGKILLed at >= 10 seeded random points of a 300-job
run on a faulty simulator, restarted each time, loses nothing and pays for nothing twice."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testing.cli import batchrun_cmd

from .conftest import (
    TOKEN,
    SimFactory,
    ambiguous_jobs,
    canonical_identity,
    check_run_folder,
    clean_env,
    integrity,
    plan_jobs,
    state_rows,
    sweep,
    wait_until,
    write_manifest,
)

N_JOBS = 300
KILLS = 12
SEED = 20261129
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}


def progress(run_dir: Path) -> int:
    """Submitted jobs + finished jobs (0 .. 2 * N_JOBS): where in the run we are."""
    rows = state_rows(run_dir)
    return sum(bool(r.get("request_id")) for r in rows) + sum(r["status"] in TERMINAL for r in rows)


def kill_point(proc: subprocess.Popen[bytes], kind: str, point: float, run_dir: Path) -> Any:
    """A condition: the kill point is reached (or the process ended by itself)."""
    start = time.monotonic()

    def reached() -> bool:
        if proc.poll() is not None:
            return True
        if kind == "time":
            return time.monotonic() - start >= point
        return progress(run_dir) >= point

    return reached


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(simulator: SimFactory, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sim = simulator(
        "--seed", str(SEED), "--workers", "0", "--run-time", "0.15",
        "--error-rate", "0.05", "--drop-rate", "0.02", "--rate-limit", "1000/s",
    )  # fmt: skip
    manifest = write_manifest(
        tmp_path / "kill.yaml",
        sweep(N_JOBS, run={"rate_limit": "400/s", "max_in_flight": 60, "retries": 0}),
    )
    planned = plan_jobs(manifest)
    assert len(planned) == N_JOBS
    run_dir = tmp_path / "run"
    cmd = batchrun_cmd(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--quiet"
    )
    log = (tmp_path / "runs.log").open("w")
    ambiguous: set[str] = set()
    # Kill points: two at seeded instants during start-up, the rest at seeded progress marks
    # (kept below the end: jobs left ambiguous have no request id and never finish here).
    early = sorted(rng.uniform(0.05, 0.8) for _ in range(2))
    marks = sorted(rng.sample(range(1, 2 * N_JOBS - 80), KILLS - len(early)))
    points = [("time", t) for t in early] + [("progress", float(m)) for m in marks]
    kills, exits, at = 0, [], []
    for kind, point in points:
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=log)
        try:
            reached = wait_until(kill_point(proc, kind, point, run_dir), 60)
            assert reached, f"no progress towards {kind} {point} within 60 s"
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                at.append(progress(run_dir))
        finally:
            if proc.poll() is None:  # also when an assertion above failed: leave no orphan
                proc.kill()
            proc.wait(timeout=30)
        exits.append(proc.returncode)
        # A run that ended by itself must have ended cleanly (0 all done, 1 some not).
        assert proc.returncode in (-signal.SIGKILL, 0, 1), f"run exited {proc.returncode}"
        if (run_dir / "state.db").exists():
            assert integrity(run_dir) == "ok", f"state.db damaged by the kill at {at[-1:]}"
        ambiguous |= ambiguous_jobs(run_dir)

    # Finish: runs with --resubmit-unknown until the batch is complete (bounded).
    final_codes = []
    # Each run with --resubmit-unknown may submit once more each job ambiguous at its start;
    # nothing else may ever be submitted a second time.
    resubmittable: Counter[str] = Counter()
    for _ in range(4):
        ambiguous |= ambiguous_jobs(run_dir)
        resubmittable.update(ambiguous_jobs(run_dir))
        res = subprocess.run(
            [*cmd, "--resubmit-unknown"], env=clean_env(), capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip
        final_codes.append(res.returncode)
        assert "Traceback" not in res.stderr, res.stderr
        ambiguous |= ambiguous_jobs(run_dir)
        if res.returncode == 0:
            break
    log.close()
    assert final_codes[-1] == 0, f"final runs exited {final_codes}: {res.stderr[-2000:]}"

    check = check_run_folder(run_dir, sim, planned, ambiguous)
    stats = sim.stats()
    faults = stats["faults"]
    print(
        f"\nkill/resume: jobs {check.jobs}, kills {kills} (at progress {at}), "
        f"restarts {len(points) + len(final_codes)}, final exit codes {final_codes}, "
        f"statuses {check.by_status}, faults injected {faults}, "
        f"submits {stats['submits']}, jobs ever ambiguous {len(ambiguous)}, "
        f"duplicates explained by ambiguity {check.explained_duplicates}, "
        f"unexplained duplicates found {len(check.duplicates)}, "
        f"files verified {check.files_verified}"
    )
    assert kills >= 10, f"only {kills} kills landed (exits {exits})"
    assert check.by_status == {"succeeded": N_JOBS}, check.by_status
    assert check.duplicates == [], f"submitted twice without being ambiguous: {check.duplicates}"
    job_of = {canonical_identity(j["model_id"], j["inputs"]): j["job_id"] for j in planned}
    over = {
        job_of[ident]: n
        for ident, n in stats["submits_per_identity"].items()
        if n > 1 + resubmittable[job_of[ident]]
    }
    assert over == {}, f"resubmitted without --resubmit-unknown: {over}"
    assert check.files_verified >= N_JOBS
    assert sum(faults.values()) > 0, "no faults were injected: the test proves less than it says"
    logged = (tmp_path / "runs.log").read_text()
    assert TOKEN not in logged
    assert "Traceback" not in logged, logged[-3000:]

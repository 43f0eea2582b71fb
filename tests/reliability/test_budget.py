"""`run --max-cost X` against a standalone simulator: it never bills more than X (with faults and
with a kill too), uses the cap, stops with exit 4, and a higher cap finishes paying each job
once. The simulator's own count of what it billed (`/_sim/stats`) is the judge."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from testing.cli import batchrun_cmd

from .conftest import (
    MODEL,
    SimFactory,
    SimProcess,
    clean_env,
    read_report,
    run_cli,
    sweep,
    write_manifest,
)

PRICE = Decimal("0.04")  # the simulator's price of MODEL, per image


def _priced_sweep(tmp_path: Path, sim: SimProcess, jobs: int, **run: object) -> Path:
    """A manifest with MODEL's priced schema pulled from the simulator beside it."""
    manifest = write_manifest(
        tmp_path / "sweep.yaml", sweep(jobs, run=dict(run), outputs={"download": False})
    )
    pulled = run_cli(
        *("models", "pull", MODEL, "--dir", str(tmp_path / "schemas" / "models")),
        *("--api-base", sim.base_url),
    )
    assert pulled.returncode == 0, pulled.stderr
    return manifest


def _run(manifest: Path, sim: SimProcess, run_dir: Path, cap: str, *extra: str):
    return run_cli(
        *("run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir)),
        *("--max-cost", cap, "--quiet", *extra),
    )


def _billed(sim: SimProcess) -> tuple[Decimal, dict]:
    """What the simulator billed once every job it accepted has finished."""
    deadline = time.monotonic() + 30
    while True:
        stats = sim.stats()
        jobs = stats["jobs"]
        if not (jobs.get("in_queue") or jobs.get("in_progress")):
            return Decimal(repr(stats["billed_usd"])), stats
        assert time.monotonic() < deadline, f"simulator jobs still running: {jobs}"
        time.sleep(0.05)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_cap_stops_with_exit_4_and_a_higher_cap_finishes_paying_each_job_once(
    tmp_path: Path, simulator: SimFactory
) -> None:
    sim = simulator("--run-time", "0.2", "--workers", "0")
    manifest, run_dir = _priced_sweep(tmp_path, sim, 20), tmp_path / "run"

    first = _run(manifest, sim, run_dir, "0.40")
    assert first.returncode == 4, first.stderr
    assert first.stderr.splitlines() == [
        "warning: the plan's estimate $0.80 is over the --max-cost cap of $0.40: the run will "
        "stop at the cap with jobs not run (exit 4)",
        "error: stopped at the cost budget: spent $0.40 of the $0.40 cap; 10 jobs not run. "
        "Rerun with a higher cap (--max-cost or run.max_cost_usd) to continue; jobs already "
        "paid are not paid again",
    ]
    billed, stats = _billed(sim)
    assert Decimal("0.36") <= billed <= Decimal("0.40")  # at least 90% of the cap, never over
    summary = _summary(run_dir)
    assert Decimal(repr(summary["cost_usd"])) == billed
    assert (summary["est_cost_usd"], summary["max_cost_usd"]) == (0.8, 0.4)
    assert summary["stopped_at_budget"] is True

    second = _run(manifest, sim, run_dir, "1.00")
    assert second.returncode == 0, second.stderr
    billed, stats = _billed(sim)
    assert billed == 20 * PRICE
    assert len(stats["billed"]) == 20 and stats["duplicate_submits"] == 0
    assert Decimal(repr(_summary(run_dir)["cost_usd"])) == billed
    rows = read_report(run_dir)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert sum(Decimal(r["cost_usd"]) for r in rows) == billed
    assert {r["request_id"] for r in rows} == set(stats["billed"])


@pytest.mark.slow
def test_cap_holds_with_faults_on_the_wire_and_failing_jobs(
    tmp_path: Path, simulator: SimFactory
) -> None:
    sim = simulator(
        *("--run-time", "0.1", "--workers", "0", "--seed", "7"),
        *("--error-rate", "0.1", "--drop-rate", "0.05", "--fail-rate", "0.2"),
    )
    manifest = _priced_sweep(tmp_path, sim, 30, retries=2)
    run_dir = tmp_path / "run"
    for cap in ("0.40", "0.60", "0.80"):
        result = _run(manifest, sim, run_dir, cap)
        assert result.returncode in (1, 4), result.stderr
        assert "Traceback" not in result.stderr
        billed, stats = _billed(sim)
        assert billed <= Decimal(cap), (cap, stats)
    print(f"\nbudget with faults: billed ${billed} of the $0.80 cap; faults {stats['faults']}")


@pytest.mark.slow
def test_cap_holds_across_a_kill_and_the_rerun(tmp_path: Path, simulator: SimFactory) -> None:
    sim = simulator("--run-time", "0.3", "--workers", "0")
    manifest = _priced_sweep(tmp_path, sim, 40, max_in_flight=8)
    run_dir = tmp_path / "run"
    cmd = batchrun_cmd(
        *("run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir)),
        *("--max-cost", "0.80", "--quiet"),
    )
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while sim.stats()["submits"] < 8:
        assert time.monotonic() < deadline and proc.poll() is None, "no submits"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    again = _run(manifest, sim, run_dir, "0.80")
    # exit 4 at the cap; 1 when the kill left a submit unknown (it counts as spent-maybe)
    assert again.returncode in (1, 4), again.stderr
    billed, stats = _billed(sim)
    assert Decimal("0.72") <= billed <= Decimal("0.80")
    assert stats["duplicate_submits"] == 0

    last = _run(manifest, sim, run_dir, "2.00")
    assert last.returncode in (0, 1), last.stderr
    billed, stats = _billed(sim)
    assert billed <= 40 * PRICE and stats["duplicate_submits"] == 0  # nothing paid twice
    rows = read_report(run_dir)
    if last.returncode == 0:
        assert sum(Decimal(r["cost_usd"]) for r in rows) == billed == 40 * PRICE

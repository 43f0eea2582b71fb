"""The overhead section: no rate limit anywhere; jobs/s, CPU per job, peak RSS."""

from __future__ import annotations

from typing import Any

from harness import (
    Bench,
    Measured,
    SimCounts,
    batchrun_cmd,
    log,
    per_job,
    read_json,
    run_measured,
    sim_delta,
    simulator,
    token_env,
    write_manifest,
)


def _overhead_median(
    b: Bench, n: int, *, download: bool, tag: str
) -> tuple[Measured, SimCounts, list[float]]:
    """`overhead_repeats` runs (a shared machine's syscall cost varies from run to run): the
    run of median CPU time, its counts, and every run's CPU ms per job in run order."""
    runs = [
        _overhead_run(b, n, download=download, tag=f"{tag}-{i}")
        for i in range(1, b.params.overhead_repeats + 1)
    ]
    per_job = [round(1000 * m.cpu_s / n, 3) for m, _ in runs]
    m, counts = sorted(runs, key=lambda run: run[0].cpu_s)[len(runs) // 2]
    return m, counts, per_job


def _overhead_run(b: Bench, n: int, *, download: bool, tag: str) -> tuple[Measured, SimCounts]:
    p = b.params
    run_dir = b.tmp / f"overhead-{tag}"
    manifest = write_manifest(
        b.tmp / f"overhead-{tag}.yaml", name="overhead", prompts=n, out_dir=run_dir,
        download=download,
        run={"rate_limit": "unlimited", "max_in_flight": p.overhead_in_flight,
             "poll_interval": f"{int(p.overhead_run_time * 1000)}ms"},
    )  # fmt: skip
    log_path = b.tmp / f"sim-overhead-{tag}.log"
    with simulator(run_time=p.overhead_run_time, rate_limit=None, log_path=log_path) as sim:
        before = sim.stats()
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet",
            profile=b.profile(f"overhead-{tag}"),
        )  # fmt: skip
        m = run_measured(cmd, timeout=300, env=token_env())
        return m, sim_delta(before, sim.stats())


def bench_overhead(b: Bench) -> dict[str, Any]:
    """No rate limit anywhere: how fast and how cheaply batchrun itself turns jobs over.

    Beside the run itself (downloads on, as a user runs it): the same without downloads, and
    a 1-job run for the fixed cost (interpreter, imports, manifest), to say where CPU goes."""
    n, repeats = b.params.overhead_jobs, b.params.overhead_repeats
    log(f"overhead: {n} jobs, {b.params.overhead_run_time} s run time, no rate limit, x{repeats}")
    m, counts, runs = _overhead_median(b, n, download=True, tag="full")
    log(f"  {n / m.wall_s:.1f} jobs/s, CPU ms/job {runs} (median); same, no downloads")
    bare, _, bare_runs = _overhead_median(b, n, download=False, tag="bare")
    one, _ = _overhead_run(b, 1, download=False, tag="one")
    out = {
        "jobs": n,
        "rc": max(m.rc, bare.rc, one.rc),
        "wall_s": round(m.wall_s, 3),
        "jobs_per_s": round(n / m.wall_s, 1),
        "cpu_s": round(m.cpu_s, 3),
        "user_s": round(m.user_s, 3),
        "sys_s": round(m.sys_s, 3),
        "cpu_ms_per_job": round(1000 * m.cpu_s / n, 3),
        "cpu_ms_per_job_runs": runs,
        "maxrss_mb": round(m.maxrss_mb, 1),
        "fixed_cpu_s_one_job_run": round(one.cpu_s, 3),
        "cpu_ms_per_job_no_downloads": round(1000 * bare.cpu_s / n, 3),
        "cpu_ms_per_job_no_downloads_runs": bare_runs,
        "cpu_ms_per_job_marginal": round(1000 * (m.cpu_s - one.cpu_s) / (n - 1), 3),
        "cpu_ms_per_job_marginal_no_downloads": round(1000 * (bare.cpu_s - one.cpu_s) / (n - 1), 3),
        "calls_per_job": round(counts.api_calls / n, 3),
        "calls_per_job_by_endpoint": per_job(counts, n),
        "statuses": read_json(b.tmp / "overhead-full-1" / "summary.json").get("statuses"),
    }
    if out["rc"] != 0:
        out["stderr_tail"] = (m.stderr + bare.stderr + one.stderr)[-2000:]
    log(f"  no downloads {out['cpu_ms_per_job_no_downloads']} ms CPU/job; fixed {one.cpu_s:.2f} s")
    return out

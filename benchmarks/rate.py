"""The rate section: batchrun against the rate limit, and the hand-written baseline on the
same scenario (benchmarks/baseline.py, 16 and 64 threads)."""

from __future__ import annotations

import json
import sys
from typing import Any

from harness import (
    HERE,
    MODEL,
    Bench,
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


def bench_rate(b: Bench) -> dict[str, Any]:
    """batchrun against the rate limit: makespan vs 2N/R + run time, calls per job, 429s."""
    p = b.params
    n, rate = p.rate_jobs, p.rate
    run_dir = b.tmp / "rate-run"
    run = {"rate_limit": f"{rate:g}/s", "max_in_flight": int(2 * rate), "poll_interval": "1s"}
    manifest = write_manifest(
        b.tmp / "rate.yaml", name="rate", prompts=n, out_dir=run_dir, download=True, run=run
    )
    log(f"rate-bound: batchrun, {n} jobs at {rate:g}/s (ideal {p.ideal_s:.1f} s)")
    with simulator(run_time=p.run_time, rate_limit=rate, log_path=b.tmp / "sim-rate.log") as sim:
        before = sim.stats()
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet",
            profile=b.profile("rate"),
        )  # fmt: skip
        m = run_measured(cmd, timeout=max(120.0, 10 * p.ideal_s), env=token_env())
        counts = sim_delta(before, sim.stats())
    summary = read_json(run_dir / "summary.json")
    makespan = (summary.get("durations") or {}).get("makespan_s")
    out = {
        "jobs": n,
        "rate_limit": rate,
        "manifest_run": run,
        "ideal_s": round(p.ideal_s, 3),
        "rc": m.rc,
        "wall_s": round(m.wall_s, 3),
        "makespan_s": makespan,
        "efficiency": round(p.ideal_s / m.wall_s, 3),
        "efficiency_makespan": round(p.ideal_s / makespan, 3) if makespan else None,
        "api_calls": counts.api_calls,
        "calls_per_job": round(counts.api_calls / n, 3),
        "calls_per_job_by_endpoint": per_job(counts, n),
        "throttled_429": counts.throttled,
        "peak_rate_1s": counts.peak_rate_1s,
        "max_submits_per_identity": counts.max_submits_per_identity,
        "summary_api_calls": summary.get("api_calls"),
        "statuses": summary.get("statuses"),
        "cpu_s": round(m.cpu_s, 3),
        "maxrss_mb": round(m.maxrss_mb, 1),
    }
    if m.rc != 0:
        out["stderr_tail"] = m.stderr[-2000:]
    log(
        f"  wall {m.wall_s:.2f} s, efficiency {out['efficiency']}, "
        f"{out['calls_per_job']} calls/job, {counts.throttled} x 429, rc {m.rc}"
    )
    return out


def bench_baseline(b: Bench) -> dict[str, Any]:
    """The hand-written thread-pool script on the same scenario, with 16 and 64 threads."""
    p = b.params
    n, rate = p.rate_jobs, p.rate
    prompts = b.prompts_file(n)
    out: dict[str, Any] = {}
    for threads in p.threads:
        log(f"rate-bound: hand-written baseline, {threads} threads, {n} jobs")
        log_path = b.tmp / f"sim-baseline-{threads}.log"
        with simulator(run_time=p.run_time, rate_limit=rate, log_path=log_path) as sim:
            before = sim.stats()
            cmd = [
                sys.executable, str(HERE / "baseline.py"), "--api-base", sim.url, "--model", MODEL,
                "--prompts", str(prompts), "--threads", str(threads),
                "--out-dir", str(b.tmp / f"baseline-{threads}"), "--timeout", "600",
            ]  # fmt: skip
            m = run_measured(cmd, timeout=660, env=token_env())
            counts = sim_delta(before, sim.stats())
        own = json.loads(m.stdout.strip().splitlines()[-1]) if m.stdout.strip() else {}
        row = {
            "threads": threads,
            "rc": m.rc,
            "wall_s": round(m.wall_s, 3),
            "makespan_s": own.get("makespan_s"),
            "efficiency": round(p.ideal_s / m.wall_s, 3),
            "api_calls": counts.api_calls,
            "calls_per_job": round(counts.api_calls / n, 3),
            "calls_per_job_by_endpoint": per_job(counts, n),
            "throttled_429": counts.throttled,
            "peak_rate_1s": counts.peak_rate_1s,
            "outcomes": own.get("outcomes"),
            "errors": own.get("errors"),
            "cpu_s": round(m.cpu_s, 3),
        }
        rate_row = b.results.get("rate")
        if rate_row and rate_row.get("wall_s"):
            row["batchrun_speedup"] = round(m.wall_s / rate_row["wall_s"], 3)
            row["batchrun_calls_ratio"] = round(rate_row["calls_per_job"] / row["calls_per_job"], 3)
        log(f"  wall {m.wall_s:.2f} s, {row['calls_per_job']} calls/job, {counts.throttled} x 429")
        out[str(threads)] = row
    return out

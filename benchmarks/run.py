"""batchrun benchmarks: throughput against the rate limit, overhead, and scale.

    python benchmarks/run.py [--quick] [--out FILE] [--only SECTION,...] [--profile DIR]

Sections: rate (batchrun against the rate limit), baseline (the hand-written thread-pool
script, 16 and 64 threads), overhead (no rate limit: jobs/s, CPU per job), plan, state
(state.db of 100,000 jobs, resume, report) and transitions (cost of one state change at
1,000 vs 100,000 jobs). `--profile DIR` runs each batchrun under a per-thread CPU profiler
and leaves one pstats file per step in DIR (`python -m pstats DIR/overhead-full-1.prof`).

Starts the simulator (`batchrun simulate`) in its own process on 127.0.0.1 for each scenario,
runs `batchrun` (and the hand-written baseline, benchmarks/baseline.py) as child processes, and
measures wall time, API calls (from the simulator's /_sim/stats), 429s, and the child's own CPU
time and peak RSS (os.wait4 rusage). Prints a table and writes every figure to a JSON file
(benchmarks/results.json by default) with the machine described and a pass/fail per target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "google/nano-banana-2-lite/text-to-image"
TOKEN = "bench-token"
API_ENDPOINTS = ("submit", "status", "result", "cancel")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- child processes, measured -------------------------------------------------------------


@dataclass
class Measured:
    """A finished child process: exit code, wall time, its own CPU time and peak RSS."""

    rc: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    stdout: str
    stderr: str
    timed_out: bool = False


def run_measured(cmd: list[str], *, timeout: float, env: dict | None = None) -> Measured:
    """Run `cmd`, reap it with os.wait4 so the rusage is this child's alone; kill at timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        reaped: dict[str, Any] = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(end=time.perf_counter(), status=status, usage=usage)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            proc.kill()
            waiter.join(10)
        proc.returncode = os.waitstatus_to_exitcode(reaped["status"])
        usage = reaped["usage"]
        out.seek(0)
        err.seek(0)
        return Measured(
            rc=proc.returncode,
            wall_s=reaped["end"] - start,
            cpu_s=usage.ru_utime + usage.ru_stime,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out,
        )


def batchrun_cmd(*args: str, profile: Path | None = None) -> list[str]:
    if profile is not None:  # every thread, CPU time: see worker_profile
        return [sys.executable, __file__, "--worker", "profile", str(profile), *args]
    return [sys.executable, "-m", "batchrun", *args]


def has_command(name: str) -> bool:
    probe = subprocess.run(batchrun_cmd(name, "--help"), capture_output=True, cwd=REPO)
    return probe.returncode == 0


def token_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RUNCOMFY_TOKEN"] = TOKEN
    env.pop("RUNCOMFY_MODEL_API_BASE", None)
    return env


# ---- the simulator ----------------------------------------------------------------------------


class Simulator:
    """`batchrun simulate` in its own process (one per measurement, so counters start at 0)."""

    def __init__(self, *, run_time: float, rate_limit: float | None, log_path: Path) -> None:
        # Every job takes exactly `run_time` (no jitter), so the ideal makespan holds.
        config = log_path.with_suffix(".yaml")
        settings = {"workers": 0, "token": TOKEN, "seed": 1, "run_time": run_time}
        settings |= {
            "run_time_jitter": 0,
            "rate_limit": f"{rate_limit:g}/s" if rate_limit else None,
        }
        config.write_text(yaml.safe_dump(settings))
        cmd = batchrun_cmd("simulate", "--port", "0", "--config", str(config))
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=REPO)
        self.url = self._read_url(timeout=20)
        # Drain stdout so a chatty simulator never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def _read_url(self, timeout: float) -> str:
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        line = box[0].decode(errors="replace") if box else ""
        m = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not m:
            self.stop()
            raise RuntimeError(f"simulator did not print its URL (first line: {line!r})")
        return m.group(0)

    def _drain(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read(65536), b""):
            self.log.write(chunk)

    def stats(self) -> dict[str, Any]:
        resp = self.session.get(self.url + "/_sim/stats", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SimCounts:
    """What the simulator saw between two /_sim/stats snapshots."""

    calls: dict[str, int]  # per endpoint: submit, status, result, cancel, catalog, files
    throttled: int
    peak_rate_1s: float | None
    max_submits_per_identity: int | None

    @property
    def api_calls(self) -> int:
        return sum(self.calls.get(k, 0) for k in API_ENDPOINTS)


def _endpoint_counts(stats: dict[str, Any]) -> dict[str, int]:
    """Calls per endpoint (submit, status, result, cancel, catalog, files) of a stats snapshot."""
    return {str(k): int(v) for k, v in (stats.get("calls") or {}).items()}


def sim_delta(before: dict[str, Any], after: dict[str, Any]) -> SimCounts:
    b, a = _endpoint_counts(before), _endpoint_counts(after)
    submits = after.get("submits_per_identity") or {}
    values = list(submits.values()) if isinstance(submits, dict) else []
    return SimCounts(
        calls={k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b))},
        throttled=int(after.get("throttled", 0)) - int(before.get("throttled", 0)),
        peak_rate_1s=after.get("peak_rate_1s"),
        max_submits_per_identity=max(values) if values else None,
    )


# ---- manifests --------------------------------------------------------------------------------


def write_manifest(
    path: Path, *, name: str, prompts: int, run: dict[str, Any], out_dir: Path, download: bool
) -> Path:
    """A sweep of `prompts` distinct prompts over one model (distinct inputs, distinct jobs)."""
    doc = {
        "version": 1,
        "name": name,
        "run": run,
        "outputs": {"dir": str(out_dir), "download": download},
        "models": [
            {"id": MODEL, "matrix": {"prompt": [f"benchmark prompt {i}" for i in range(prompts)]}}
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def write_scale_manifest(path: Path, *, jobs: int, out_dir: Path) -> Path:
    """`jobs` jobs as the product of two template vars: a small file that expands big."""
    a = 250
    b = jobs // a
    doc = {
        "version": 1,
        "name": "scale",
        "run": {"max_jobs": jobs * 2},
        "outputs": {"dir": str(out_dir), "download": False},
        "vars": {"a": list(range(a)), "b": list(range(b))},
        "models": [{"id": MODEL, "inputs": {"prompt": "scale prompt {a}-{b}"}}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Params:
    """Sizes of every scenario; `--quick` shrinks them."""

    quick: bool
    rate_jobs: int
    rate: float
    run_time: float = 1.0
    threads: tuple[int, ...] = (16, 64)
    overhead_jobs: int = 2000
    overhead_run_time: float = 0.2
    overhead_in_flight: int = 200
    overhead_repeats: int = 3  # runs of each overhead scenario; the median is the figure
    scale_jobs: int = 100_000
    transition_sizes: tuple[int, ...] = (1_000, 100_000)
    transitions: int = 1_000
    cap_s: float = 300.0  # longest any one scale step may take (then killed, figure = "> cap")

    @classmethod
    def make(cls, quick: bool) -> Params:
        if quick:
            return cls(
                quick, rate_jobs=300, rate=50, overhead_jobs=500, scale_jobs=20_000, cap_s=40.0
            )
        return cls(quick, rate_jobs=1000, rate=100)

    @property
    def ideal_s(self) -> float:
        return 2 * self.rate_jobs / self.rate + self.run_time


@dataclass
class Bench:
    """Shared context of one benchmark run: sizes, a scratch folder, results so far."""

    params: Params
    tmp: Path
    profile_dir: Path | None
    results: dict[str, Any] = field(default_factory=dict)

    def profile(self, name: str) -> Path | None:
        return None if self.profile_dir is None else self.profile_dir / f"{name}.prof"

    def prompts_file(self, n: int) -> Path:
        path = self.tmp / f"prompts-{n}.txt"
        path.write_text("".join(f"benchmark prompt {i}\n" for i in range(n)))
        return path


def _per_job(counts: SimCounts, jobs: int) -> dict[str, float]:
    return {k: round(v / jobs, 3) for k, v in counts.calls.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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
    with Simulator(run_time=p.run_time, rate_limit=rate, log_path=b.tmp / "sim-rate.log") as sim:
        before = sim.stats()
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet",
            profile=b.profile("rate"),
        )  # fmt: skip
        m = run_measured(cmd, timeout=max(120.0, 10 * p.ideal_s), env=token_env())
        counts = sim_delta(before, sim.stats())
    summary = _read_json(run_dir / "summary.json")
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
        "calls_per_job_by_endpoint": _per_job(counts, n),
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
        with Simulator(run_time=p.run_time, rate_limit=rate, log_path=log_path) as sim:
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
            "calls_per_job_by_endpoint": _per_job(counts, n),
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
    with Simulator(run_time=p.overhead_run_time, rate_limit=None, log_path=log_path) as sim:
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
        "calls_per_job_by_endpoint": _per_job(counts, n),
        "statuses": _read_json(b.tmp / "overhead-full-1" / "summary.json").get("statuses"),
    }
    if out["rc"] != 0:
        out["stderr_tail"] = (m.stderr + bare.stderr + one.stderr)[-2000:]
    log(f"  no downloads {out['cpu_ms_per_job_no_downloads']} ms CPU/job; fixed {one.cpu_s:.2f} s")
    return out


def bench_plan(b: Bench) -> dict[str, Any]:
    """`batchrun plan --json` of a sweep of `scale_jobs` jobs: wall time and peak RSS."""
    n = b.params.scale_jobs
    manifest = write_scale_manifest(b.tmp / "scale.yaml", jobs=n, out_dir=b.tmp / "scale-run")
    log(f"scale: plan --json of {n} jobs")
    m = run_measured(batchrun_cmd("plan", str(manifest), "--json"), timeout=b.params.cap_s)
    text = m.stdout.strip()
    try:
        parsed = json.loads(text)
        listed = len(parsed) if isinstance(parsed, list) else len(parsed.get("jobs", []))
    except ValueError:
        listed = sum(1 for line in text.splitlines() if line.startswith("{"))
    out = {
        "jobs": n,
        "rc": m.rc,
        "jobs_listed": listed,
        "wall_s": round(m.wall_s, 3),
        "cpu_s": round(m.cpu_s, 3),
        "maxrss_mb": round(m.maxrss_mb, 1),
    }
    if m.rc != 0:
        out["stderr_tail"] = m.stderr[-2000:]
    log(f"  {m.wall_s:.2f} s, {m.maxrss_mb:.0f} MB RSS, {listed} jobs listed, rc {m.rc}")
    return out


def bench_state(b: Bench) -> dict[str, Any]:
    """state.db of `scale_jobs` jobs: creation; then a resume where every job succeeded."""
    n = b.params.scale_jobs
    run_dir = b.tmp / "scale-run"
    manifest = b.tmp / "scale.yaml"
    if not manifest.exists():
        write_scale_manifest(manifest, jobs=n, out_dir=run_dir)
    log(f"scale: state.db of {n} jobs, built with StateStore.add_jobs, all marked succeeded")
    with Simulator(run_time=1.0, rate_limit=None, log_path=b.tmp / "sim-scale.log") as sim:
        cmd = [
            sys.executable, __file__, "--worker", "state-build", str(manifest), str(run_dir),
            sim.url,
        ]  # fmt: skip
        m = run_measured(cmd, timeout=600)
        if m.rc != 0:
            raise RuntimeError(f"state-build worker failed:\n{m.stderr[-3000:]}")
        built = json.loads(m.stdout.strip().splitlines()[-1])
        log(f"  add_jobs {built['add_jobs_s']} s, {built['db_mb']} MB; resume with `batchrun run`")
        before = sim.stats()
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet",
            profile=b.profile("resume"),
        )  # fmt: skip
        resume = run_measured(cmd, timeout=b.params.cap_s, env=token_env())
        counts = sim_delta(before, sim.stats())
    log(f"  resume {resume.wall_s:.2f} s (rc {resume.rc}); `batchrun report`")
    report = run_measured(batchrun_cmd("report", str(run_dir)), timeout=b.params.cap_s)
    out = {
        "jobs": n,
        # A step killed at the cap still gives a figure (at least the cap): not an error.
        "rc": max((m.rc for m in (resume, report) if not m.timed_out), default=0),
        "resume_timed_out": resume.timed_out,
        "report_timed_out": report.timed_out,
        **built,
        "resume_wall_s": round(resume.wall_s, 3),
        "resume_cpu_s": round(resume.cpu_s, 3),
        "resume_maxrss_mb": round(resume.maxrss_mb, 1),
        "resume_api_calls": counts.api_calls,
        "report_wall_s": round(report.wall_s, 3),
        "report_maxrss_mb": round(report.maxrss_mb, 1),
    }
    for name, proc in (("resume", resume), ("report", report)):
        if proc.rc != 0 and not proc.timed_out:
            out[f"{name}_stderr_tail"] = proc.stderr[-2000:]
    log(f"  report {report.wall_s:.2f} s (rc {report.rc})")
    return out


def bench_transitions(b: Bench) -> dict[str, Any]:
    """One job's state transitions on a 1,000-job vs a 100,000-job state.db: O(1) or not."""
    p = b.params
    out: dict[str, Any] = {"transitions_per_size": p.transitions * 4}
    for size in p.transition_sizes:
        log(f"scale: {p.transitions} jobs x 4 transitions on a state.db of {size:,} jobs")
        folder = b.tmp / f"transitions-{size}"
        cmd = [
            sys.executable, __file__, "--worker", "transitions", str(folder), str(size),
            str(p.transitions),
        ]  # fmt: skip
        m = run_measured(cmd, timeout=600)
        if m.rc != 0:
            raise RuntimeError(f"transitions worker failed:\n{m.stderr[-3000:]}")
        timing = json.loads(m.stdout.strip().splitlines()[-1])
        out[f"at_{size}"] = timing
        log(f"  median {timing['median_us']} us, mean {timing['mean_us']} us per transition")
    small, big = (out[f"at_{s}"] for s in p.transition_sizes[:2])
    out["ratio"] = round(big["median_us"] / small["median_us"], 3)
    out["ratio_mean"] = round(big["mean_us"] / small["mean_us"], 3)
    out["rc"] = 0
    return out


# ---- workers: run in a child process so their time and memory are their own -----------------


def worker_state_build(manifest: str, run_dir: str, api_base: str) -> dict[str, Any]:
    """Expand the manifest, add its jobs to a new state.db, mark every job succeeded, and set
    the meta a finished `batchrun run` leaves (so the resume sees an unchanged manifest)."""
    from batchrun.plan import build_plan
    from batchrun.state import StateStore

    t0 = time.perf_counter()
    plan = build_plan(manifest)
    t1 = time.perf_counter()
    with StateStore.open(run_dir) as store:
        store.add_jobs(plan.jobs)
        t2 = time.perf_counter()
        # A finished run, made in one transaction (100,000 single transitions would measure
        # the transitions, which bench_transitions does): the columns a real run fills in.
        now = time.time()
        with store._tx() as conn:  # noqa: SLF001 - a benchmark fixture, not engine code
            conn.execute(
                "UPDATE jobs SET status = 'succeeded', request_id = 'req-' || job_id, "
                "attempts = 1, submitted_at = ?, started_at = ?, finished_at = ?, "
                "cost_usd = 0.01, output = ?",
                (now - 3, now - 2, now, json.dumps("http://127.0.0.1/files/x.png")),
            )
        t3 = time.perf_counter()
        m = plan.manifest
        store.set_meta(
            name=m.name, manifest=str(m.path), manifest_sha256=m.sha256, api_base=api_base
        )
    db = Path(run_dir) / "state.db"
    size = sum(f.stat().st_size for f in db.parent.glob("state.db*"))
    return {
        "jobs_added": len(plan.jobs),
        "expand_s": round(t1 - t0, 3),
        "add_jobs_s": round(t2 - t1, 3),
        "mark_succeeded_s": round(t3 - t2, 3),
        "db_mb": round(size / 2**20, 2),
        "db_file_mb": round(db.stat().st_size / 2**20, 2),
    }


def worker_transitions(folder: str, size: int, count: int) -> dict[str, Any]:
    """Time `count` jobs through submitting -> queued -> running -> succeeded, one by one."""
    import statistics

    from batchrun import state as st
    from batchrun.grid import Job

    jobs = [
        Job(f"{i:012x}", MODEL, {"prompt": f"transition prompt {i}"}, {}, 0, i) for i in range(size)
    ]
    timings: list[float] = []
    cpu: list[float] = []
    with st.StateStore.open(folder) as store:
        store.add_jobs(jobs)
        step = max(1, size // count)  # spread over the whole table
        for job in jobs[::step][:count]:
            jid = job.job_id
            now = time.time()
            steps: list[tuple[Callable[..., None], tuple, dict]] = [
                (store.mark_submitting, (jid,), {}),
                (store.record_request_id, (jid, f"req-{jid}", now), {}),
                (store.record_status, (jid, st.RUNNING), {"started_at": now}),
                (store.record_result, (jid, st.SUCCEEDED), {"finished_at": now, "output": "x"}),
            ]
            for fn, fn_args, fn_kwargs in steps:
                t, c = time.perf_counter(), time.thread_time()
                fn(*fn_args, **fn_kwargs)
                timings.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
    return {
        "db_jobs": size,
        "transitions": len(timings),
        "median_us": round(1e6 * statistics.median(timings), 1),
        "mean_us": round(1e6 * statistics.fmean(timings), 1),
        "p95_us": round(1e6 * sorted(timings)[int(0.95 * len(timings))], 1),
        "cpu_mean_us": round(1e6 * statistics.fmean(cpu), 1),
    }


def worker_profile(out: str, *args: str) -> dict[str, Any]:
    """`batchrun ARGS` with a cProfile per thread counting CPU time (time.thread_time), merged
    into OUT: plain `python -m cProfile` sees only the main thread and counts waiting."""
    import cProfile
    import pstats

    from batchrun.cli import main as batchrun_main

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profile(*_: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()

    threading.setprofile(start_thread_profile)
    main_prof = cProfile.Profile(time.thread_time)
    main_prof.enable()
    try:
        rc = batchrun_main(list(args))
    finally:
        main_prof.disable()
        threading.setprofile(None)
    with lock:
        for prof in profiles:
            prof.disable()
        stats = pstats.Stats(main_prof)
        for prof in profiles:
            try:
                stats.add(prof)
            except TypeError:  # a thread that never ran a profiled call
                pass
    stats.dump_stats(out)
    return {"rc": rc, "threads_profiled": len(profiles) + 1}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "profile": worker_profile,
    "state-build": worker_state_build,
    "transitions": lambda folder, size, count: worker_transitions(folder, int(size), int(count)),
}


# ---- targets and the table --------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: Any
    goal: str
    ok: bool | None  # None: not measured


def _get(results: dict[str, Any], *keys: str) -> Any:
    node: Any = results
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def targets(results: dict[str, Any]) -> list[Target]:
    """Every target of issue 7, judged on what was measured (None where not measured)."""
    r = results

    def val(section: str, key: str) -> Any:
        data = r.get(section) or {}
        return data.get(key) if data.get("rc", 0) == 0 else None

    def judge(name: str, value: Any, goal: str, test: Callable[[Any], bool]) -> Target:
        return Target(name, value, goal, None if value is None else bool(test(value)))

    size = f"{val('plan', 'jobs') or r['params']['scale_jobs']:,}"
    simple = [  # name, section, key, goal, test
        ("rate-bound efficiency (wall)", "rate", "efficiency", ">= 0.90", lambda v: v >= 0.9),
        ("rate-bound API calls/job", "rate", "calls_per_job", "<= 2.2", lambda v: v <= 2.2),
        ("rate-bound 429s (limits agree)", "rate", "throttled_429", "== 0", lambda v: v == 0),
        ("overhead CPU ms/job", "overhead", "cpu_ms_per_job", "<= 3 ms", lambda v: v <= 3),
        (f"plan {size} jobs: wall s", "plan", "wall_s", "< 5 s", lambda v: v < 5),
        (f"plan {size} jobs: peak RSS MB", "plan", "maxrss_mb", "< 300 MB", lambda v: v < 300),
        (f"resume {size} finished: wall s", "state", "resume_wall_s", "< 5 s", lambda v: v < 5),
        ("transition cost 100k/1k", "transitions", "ratio", "<= 1.5", lambda v: v <= 1.5),
    ]
    out = [judge(name, val(sec, key), goal, test) for name, sec, key, goal, test in simple]
    ours = r.get("rate") if val("rate", "wall_s") else None
    for i, (threads, row) in enumerate((r.get("baseline") or {}).items()):
        value = None
        if ours and row.get("rc") == 0:
            value = {
                "speedup": row.get("batchrun_speedup"),
                "calls/job": f"{ours['calls_per_job']} vs {row['calls_per_job']}",
                "429s": f"{ours['throttled_429']} vs {row['throttled_429']}",
            }

        def beats(v: dict, row: dict = row) -> bool:
            return (
                v["speedup"] > 1
                and ours["calls_per_job"] < row["calls_per_job"]
                and ours["throttled_429"] == 0
            )

        goal = "faster, fewer calls, 0 429s"
        out.insert(3 + i, judge(f"beats baseline {threads} threads", value, goal, beats))
    return out


def print_table(results: dict[str, Any], judged: list[Target]) -> None:
    rows: list[tuple[str, str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None:
            rows.append(
                (label, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
            )

    for section in ("rate", "baseline", "overhead", "plan", "state", "transitions"):
        data = results.get(section)
        if not data:
            continue
        if section == "baseline":
            for threads, row in data.items():
                for key, value in row.items():
                    add(f"baseline-{threads}.{key}", value)
            continue
        for key, value in data.items():
            if key != "stderr_tail":
                add(f"{section}.{key}", value)
    width = max((len(k) for k, _ in rows), default=10)
    print(f"\n| {'figure'.ljust(width)} | value")
    print(f"|-{'-' * width}-|------")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value}")
    tw = max(len(t.name) for t in judged)
    print(f"\n| {'target'.ljust(tw)} | {'goal'.ljust(28)} | {'result':6} | measured")
    print(f"|-{'-' * tw}-|-{'-' * 28}-|--------|---------")
    for t in judged:
        verdict = "n/a" if t.ok is None else ("PASS" if t.ok else "FAIL")
        value = json.dumps(t.value) if isinstance(t.value, dict) else t.value
        print(f"| {t.name.ljust(tw)} | {t.goal.ljust(28)} | {verdict:6} | {value}")
    for section, err in (results.get("errors") or {}).items():
        print(f"! {section}: {err.splitlines()[-1] if err else ''}")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=REPO)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit.stdout.decode().strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


SECTIONS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {
    # name: (batchrun command it needs, function)
    "rate": ("run", bench_rate),
    "baseline": ("simulate", bench_baseline),
    "overhead": ("run", bench_overhead),
    "plan": ("plan", bench_plan),
    "state": ("run", bench_state),
    "transitions": ("run", bench_transitions),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # internal: the job of a child process (see WORKERS)
        print(json.dumps(WORKERS[argv[1]](*argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes; under 3 minutes")
    ap.add_argument("--out", default=str(HERE / "results.json"), help="the JSON results file")
    ap.add_argument("--only", default="", help=f"comma list of: {', '.join(SECTIONS)}")
    ap.add_argument("--profile", metavar="DIR", help="CPU-profile every batchrun step into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)

    params = Params.make(args.quick)
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="batchrun-bench-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "params": {k: v for k, v in vars(params).items()},
        "errors": {},
    }
    bench = Bench(params, tmp, profile_dir, results)
    started = time.monotonic()
    try:
        for name in chosen:
            needs, fn = SECTIONS[name]
            if not has_command(needs):
                results["errors"][name] = f"`batchrun {needs}` is not available yet"
                log(f"{name}: skipped, `batchrun {needs}` is not available yet")
                continue
            try:
                results[name] = fn(bench)
            except Exception:
                results["errors"][name] = traceback.format_exc()
                log(f"{name}: failed\n{traceback.format_exc()}")
    finally:
        if args.keep:
            log(f"scratch folder kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    judged = targets(results)
    results["targets"] = [vars(t) for t in judged]
    print_table(results, judged)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"done in {results['elapsed_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

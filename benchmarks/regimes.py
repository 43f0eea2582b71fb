"""The regime matrix: batchrun and the hand-written pool where slots, the rate, both, a
server-side queue, long jobs or mixed models bind.

    python benchmarks/regimes.py [--quick] [--only slot-bound,both] [--out FILE]
    python benchmarks/run.py --only regimes [--quick]

Each scenario starts its own simulator process (the rate enforced over any rolling second, run
times drawn from a distribution), runs `batchrun run` through its CLI, then (with a fresh
simulator) benchmarks/baseline.py with threads = max_in_flight, each thread submitting,
sleeping 1 s and reading /result every second. Every figure comes from the simulator:
makespan = first submit received to the last result read or file served; the bound =
max(2N/R, total run time / usable slots) + the longest job, from the server's own run times,
with usable slots = min(max_in_flight, server concurrency); efficiency = bound / makespan.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from harness import (
    HERE,
    Bench,
    batchrun_cmd,
    log,
    run_measured,
    simulator,
    token_env,
)

T2I = "google/nano-banana-2-lite/text-to-image"
EDIT = "blackforestlabs/flux-1-kontext/pro/edit"
VIDEO = "bytedance/seedance-2.5/text-to-video/1080p"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
INPUTS: dict[str, dict[str, Any]] = {
    T2I: {},
    EDIT: {"image_url": IMAGE},
    VIDEO: {"duration": 6},
}


@dataclass(frozen=True)
class Scenario:
    """One regime: the jobs (per model: count and run time), the manifest's limits, the server's."""

    name: str
    jobs: dict[str, tuple[int, str]]  # model -> (jobs, run time as the simulator takes it)
    rate: float
    max_in_flight: int
    concurrency: int = 0  # the server's; 0 = unlimited
    note: str = ""

    @property
    def n(self) -> int:
        return sum(count for count, _ in self.jobs.values())


def scenarios(quick: bool) -> list[Scenario]:
    """The matrix; `quick` shrinks job counts (and the long jobs) to run in about 2 minutes."""
    k = 5 if quick else 1  # quick: a fifth of the jobs

    def n(full: int) -> int:
        return max(4, full // k)

    long_time = "4-12" if quick else "20-60"
    return [
        Scenario("slot-bound", {T2I: (n(400), "0.5-1.5")}, rate=100, max_in_flight=20),
        Scenario("rate-bound", {T2I: (n(400), "0.5-1.5")}, rate=40, max_in_flight=80),
        Scenario("both", {T2I: (n(400), "0.5-1.5")}, rate=40, max_in_flight=40),
        Scenario("server-queue", {T2I: (n(160), "1-3")}, rate=40, max_in_flight=60, concurrency=10),
        Scenario(
            "long-jobs",
            {VIDEO: (8 if quick else 20, long_time)},
            rate=40,
            max_in_flight=20,
            note=f"video-like {long_time} s",
        ),
        Scenario(
            "mixed-models",
            {
                T2I: (n(120), "0.5-1.5"),
                EDIT: (n(60), "2-4"),
                VIDEO: (n(20), "lognormal:5s:0.5:15s"),
            },
            rate=40,
            max_in_flight=40,
        ),
    ]


def write_manifest(path: Path, sc: Scenario, out_dir: Path) -> Path:
    """One entry per model, each a sweep of distinct prompts; limits as a user would set them."""
    models = [
        {
            "id": model,
            "inputs": INPUTS[model],
            "matrix": {"prompt": [f"{sc.name} {model} {i}" for i in range(count)]},
        }
        for model, (count, _) in sc.jobs.items()
    ]
    doc = {
        "version": 1,
        "name": sc.name,
        "run": {"rate_limit": f"{sc.rate:g}/s", "max_in_flight": sc.max_in_flight},
        "outputs": {"dir": str(out_dir), "download": True},
        "models": models,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sim_settings(sc: Scenario) -> dict[str, Any]:
    run_times = {model: spec for model, (_, spec) in sc.jobs.items()}
    return {"concurrency": sc.concurrency, "run_times": run_times}


@dataclass
class Figures:
    """One client's run of one scenario, as the simulator saw it."""

    rc: int
    makespan_s: float | None
    bound_s: float | None
    calls_per_job: float
    throttled: int
    first_result_s: float | None
    peak_rate_1s: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def efficiency(self) -> float | None:
        if not self.makespan_s or self.bound_s is None:
            return None
        return round(self.bound_s / self.makespan_s, 3)


def figures(sc: Scenario, stats: dict[str, Any], rc: int) -> Figures:
    runs = stats.get("run_times") or {}
    start = runs.get("first_submit_at")
    ends = [t for t in (stats.get("last_result_at"), stats.get("last_file_at")) if t]
    makespan = round(max(ends) - start, 3) if start and ends else None
    slots = sc.max_in_flight if not sc.concurrency else min(sc.max_in_flight, sc.concurrency)
    bound = None
    if runs.get("jobs"):
        bound = max(2 * sc.n / sc.rate, runs["total_s"] / slots) + runs["max_s"]
        bound = round(bound, 3)
    first = stats.get("first_result_at")
    calls = sum(int(stats["calls"].get(k, 0)) for k in ("submit", "status", "result", "cancel"))
    return Figures(
        rc=rc,
        makespan_s=makespan,
        bound_s=bound,
        calls_per_job=round(calls / sc.n, 2),
        throttled=int(stats.get("throttled", 0)),
        first_result_s=round(first - start, 3) if first and start else None,
        peak_rate_1s=stats.get("peak_rate_1s"),
        extra={"jobs_done": runs.get("jobs"), "calls": stats.get("calls")},
    )


def run_scenario(b: Bench, sc: Scenario) -> dict[str, Any]:
    base = b.tmp / sc.name
    base.mkdir(parents=True, exist_ok=True)
    run_dir = base / "run"
    manifest = write_manifest(base / "m.yaml", sc, run_dir)
    settings = sim_settings(sc)
    cap = 600.0
    log(
        f"regimes: {sc.name}: batchrun, {sc.n} jobs, rate {sc.rate:g}/s, "
        f"in flight {sc.max_in_flight}"
    )
    with simulator(
        run_time=1.0, rate_limit=sc.rate, log_path=base / "sim-b.log", **settings
    ) as sim:
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", sim.url, "--run-dir", str(run_dir), "--quiet"
        )
        m = run_measured(cmd, timeout=cap, env=token_env())
        ours = figures(sc, sim.stats(), m.rc)
    plan = run_measured(batchrun_cmd("plan", str(manifest), "--json"), timeout=60)
    jobs = base / "jobs.jsonl"
    jobs.write_text(plan.stdout)
    log(f"regimes: {sc.name}: hand-written pool, {sc.max_in_flight} threads")
    with simulator(
        run_time=1.0, rate_limit=sc.rate, log_path=base / "sim-p.log", **settings
    ) as sim:
        cmd = [
            sys.executable, str(HERE / "baseline.py"), "--api-base", sim.url, "--jobs", str(jobs),
            "--threads", str(sc.max_in_flight), "--read-result", "--out-dir", str(base / "pool"),
            "--timeout", str(cap),
        ]  # fmt: skip
        p = run_measured(cmd, timeout=cap + 60, env=token_env())
        pool = figures(sc, sim.stats(), p.rc)
    out: dict[str, Any] = {
        "scenario": sc.name,
        "jobs": sc.n,
        "rate": sc.rate,
        "max_in_flight": sc.max_in_flight,
        "concurrency": sc.concurrency,
        "run_times": {model: spec for model, (_, spec) in sc.jobs.items()},
        "batchrun": {**vars(ours), "efficiency": ours.efficiency},
        "pool": {**vars(pool), "efficiency": pool.efficiency},
    }
    if m.rc != 0:
        out["batchrun"]["stderr_tail"] = m.stderr[-1500:]
    log(
        f"  batchrun {ours.makespan_s} s (eff {ours.efficiency}), pool {pool.makespan_s} s "
        f"(eff {pool.efficiency}); bound {ours.bound_s} s"
    )
    return out


def bench_regimes(b: Bench, only: list[str] | None = None) -> dict[str, Any]:
    """Every scenario of the matrix, batchrun and the pool; keyed by scenario name."""
    chosen = [sc for sc in scenarios(b.params.quick) if not only or sc.name in only]
    return {sc.name: run_scenario(b, sc) for sc in chosen}


def print_regimes(results: dict[str, Any]) -> None:
    """One row per scenario, worst batchrun efficiency first."""
    rows = sorted(results.values(), key=lambda r: r["batchrun"]["efficiency"] or 0.0)
    head = (
        "| regime | jobs | rate | in flight | server conc. | bound s | batchrun s | eff | "
        "calls/job | 429s | first result s | pool s | pool eff | pool calls/job | pool 429s | "
        "pool first result s |"
    )
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        ours, pool = r["batchrun"], r["pool"]
        cells = [
            r["scenario"], r["jobs"], f"{r['rate']:g}/s", r["max_in_flight"],
            r["concurrency"] or "-", ours["bound_s"], ours["makespan_s"], ours["efficiency"],
            ours["calls_per_job"], ours["throttled"], ours["first_result_s"],
            pool["makespan_s"], pool["efficiency"], pool["calls_per_job"], pool["throttled"],
            pool["first_result_s"],
        ]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    import shutil
    import tempfile

    from harness import Params, compile_bytecode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes; about 2 minutes")
    ap.add_argument("--only", default="", help="comma list of scenario names")
    ap.add_argument("--out", default=str(HERE / "regimes.json"), help="the JSON results file")
    args = ap.parse_args(argv)
    compile_bytecode()
    tmp = Path(tempfile.mkdtemp(prefix="batchrun-regimes-"))
    try:
        bench = Bench(Params.make(args.quick), tmp, None)
        only = [s for s in args.only.split(",") if s] or None
        results = bench_regimes(bench, only)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_regimes(results)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

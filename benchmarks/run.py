"""batchrun benchmarks: throughput against the rate limit, overhead, and scale.

    python benchmarks/run.py [--quick] [--out FILE] [--only SECTION,...] [--profile DIR]

Sections: rate (batchrun against the rate limit), baseline (the hand-written thread-pool
script, 16 and 64 threads), overhead (no rate limit: jobs/s, CPU per job), plan, state
(state.db of 100,000 jobs, resume, report) and transitions (cost of one state change at
1,000 vs 100,000 jobs); regimes (the matrix of regimes.py, only when named). `--profile DIR`
runs each batchrun under a per-thread CPU profiler and leaves one pstats file per step in DIR
(`python -m pstats DIR/overhead-full-1.prof`).

Starts the simulator (`batchrun simulate`) in its own process on 127.0.0.1 for each scenario,
runs `batchrun` (and the hand-written baseline, benchmarks/baseline.py) as child processes, and
measures wall time, API calls (from the simulator's /_sim/stats), 429s, and the child's own CPU
time and peak RSS (os.wait4 rusage). Prints a table and writes every figure to a JSON file
(benchmarks/results.json by default) with the machine described and a pass/fail per target.

This file only parses arguments and dispatches: the sections live in rate.py, overhead.py and
scale.py; harness.py holds what they share, targets.py the targets and the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import HERE, REPO, Bench, Params, compile_bytecode, has_command, log
from overhead import bench_overhead
from profiling import worker_profile
from rate import bench_baseline, bench_rate
from regimes import bench_regimes, print_regimes
from scale import (
    bench_big_run,
    bench_plan,
    bench_state,
    bench_transitions,
    worker_state_build,
    worker_transitions,
)
from targets import print_table, targets

WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "profile": worker_profile,
    "state-build": worker_state_build,
    "transitions": lambda folder, size, count: worker_transitions(folder, int(size), int(count)),
}


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
    "regimes": ("run", bench_regimes),  # about 6 minutes (2 with --quick): only when named
    "bigrun": ("run", bench_big_run),  # about 15 minutes (1 with --quick): only when named
}
DEFAULT = [name for name in SECTIONS if name not in ("regimes", "bigrun")]


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
    chosen = [s for s in args.only.split(",") if s] or DEFAULT
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    compile_bytecode()
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
    if results.get("regimes"):
        print_regimes(results["regimes"])
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"done in {results['elapsed_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

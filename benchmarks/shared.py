"""One sweep, several workers (`batchrun run --state postgresql://...`): 1 worker vs 3 against
one simulator process with one account limit, and 3 workers of which one is SIGKILLed mid-run.

    python benchmarks/shared.py            # 200 jobs a scenario (about 3 minutes)
    python benchmarks/shared.py --quick    # 80 jobs (about 1.5 minutes)

Each scenario gets its own simulator process (rate limit R = 10/s over any rolling second,
8 jobs at a time, every job exactly 1 s) and its own database on a throwaway PostgreSQL server
(testing/postgres.py). The figures are the simulator's: makespan = first submit received to
the last result read or file served; 429s; submits per job. The account is the bound, so 3
workers finish no sooner than 1 (within 10%), and a lost worker costs at most one lease (its
accepted jobs are taken over when it lapses) plus a poll interval.

Figures go to stdout beside their targets and to benchmarks/shared.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    REPO,
    batchrun_cmd,
    compile_bytecode,
    log,
    simulator,
    token_env,
    write_manifest,
)

sys.path.insert(0, str(REPO))
from testing import postgres  # noqa: E402

RATE = 10.0
SLOTS = 8  # the server's concurrency and the sweep's max_in_flight
RUN_TIME = 1.0
LEASE_S = 3.0
POLL_S = 1.0


def scenario(
    tmp: Path, server: postgres.PgServer, name: str, jobs: int, workers: int, *, kill: bool
) -> dict[str, Any]:
    url = server.create_database(name.replace("-", "_"))
    run = {
        "rate_limit": f"{RATE:g}/s", "max_in_flight": SLOTS, "poll_interval": f"{POLL_S:g}s",
        "lease": f"{LEASE_S:g}s",
    }  # fmt: skip
    manifest = write_manifest(
        tmp / f"{name}.yaml", name=name, prompts=jobs, out_dir=tmp / name, download=True, run=run
    )
    log(f"shared: {name}: {jobs} jobs, {workers} worker(s){', one killed' if kill else ''}")
    with simulator(
        run_time=RUN_TIME, rate_limit=RATE, log_path=tmp / f"sim-{name}.log", concurrency=SLOTS
    ) as sim:
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                batchrun_cmd(
                    *("run", str(manifest), "--api-base", sim.url, "--state", url),
                    *("--run-dir", str(tmp / name / f"w{i}"), "--quiet"),
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=token_env(),
            )  # fmt: skip
            for i in range(workers)
        ]
        killed_at = None
        if kill:
            while sim.stats()["submits"] < jobs // 3 and procs[0].poll() is None:
                time.sleep(0.05)
            os.kill(procs[0].pid, signal.SIGKILL)
            killed_at = time.monotonic() - started
        codes = []
        for p in procs:
            _, err = p.communicate(timeout=600)
            codes.append(p.returncode)
            if p.returncode not in (0, -signal.SIGKILL):
                log(f"  a worker ended {p.returncode}: {err.strip()[-400:]}")
        wall = time.monotonic() - started
        stats = sim.stats()
    runs = stats.get("run_times") or {}
    first = runs.get("first_submit_at")
    ends = [t for t in (stats.get("last_result_at"), stats.get("last_file_at")) if t]
    per_job = stats.get("submits_per_identity") or {}
    return {
        "jobs": jobs,
        "workers": workers,
        "killed_at_s": None if killed_at is None else round(killed_at, 2),
        "exit_codes": codes,
        "wall_s": round(wall, 2),
        "makespan_s": round(max(ends) - first, 2) if first and ends else None,
        "submits": stats["submits"],
        "jobs_submitted": len(per_job),
        "max_submits_per_job": max(per_job.values()) if per_job else None,
        "throttled_429": stats["throttled"],
        "billed_usd": stats.get("billed_usd"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="80 jobs instead of 200")
    parser.add_argument("--out", type=Path, default=HERE / "shared.json")
    args = parser.parse_args(argv)
    if not postgres.available():
        print("PostgreSQL's initdb and pg_ctl are not installed", file=sys.stderr)
        return 2
    compile_bytecode()
    jobs = 80 if args.quick else 200
    root = Path(tempfile.mkdtemp(prefix="batchrun-bench-shared-"))
    os.chmod(root, 0o755)
    server = postgres.start_server(root / "pg")
    try:
        one = scenario(root, server, "one-worker", jobs, 1, kill=False)
        three = scenario(root, server, "three-workers", jobs, 3, kill=False)
        killed = scenario(root, server, "one-killed", jobs, 3, kill=True)
    finally:
        server.stop("immediate")
    results = {"rate_limit": RATE, "slots": SLOTS, "run_time_s": RUN_TIME, "lease_s": LEASE_S,
               "poll_interval_s": POLL_S, "one": one, "three": three, "killed": killed}  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return report(one, three, killed)


def report(one: dict[str, Any], three: dict[str, Any], killed: dict[str, Any]) -> int:
    ratio = three["makespan_s"] / one["makespan_s"]
    allowed = three["makespan_s"] + LEASE_S + POLL_S
    rows = [
        ("makespan, 1 worker", f"{one['makespan_s']} s", "-", True),
        ("makespan, 3 workers / 1 worker", f"{ratio:.3f}", "within 10% (0.90-1.10)",
         0.9 <= ratio <= 1.1),
        ("429s (1 / 3 / 3 with a kill)",
         f"{one['throttled_429']} / {three['throttled_429']} / {killed['throttled_429']}", "0",
         one["throttled_429"] == three["throttled_429"] == killed["throttled_429"] == 0),
        ("submits per job, max (1 / 3 / killed)",
         f"{one['max_submits_per_job']} / {three['max_submits_per_job']} / "
         f"{killed['max_submits_per_job']}", "1",
         one["max_submits_per_job"] == three["max_submits_per_job"] == 1
         and killed["max_submits_per_job"] == 1),
        ("jobs submitted (1 / 3)", f"{one['jobs_submitted']} / {three['jobs_submitted']}",
         f"{one['jobs']}", one["jobs_submitted"] == three["jobs_submitted"] == one["jobs"]),
        ("makespan, 3 workers, one SIGKILLed", f"{killed['makespan_s']} s",
         f"<= {allowed:.2f} s (no kill + lease {LEASE_S:g} s + poll {POLL_S:g} s)",
         killed["makespan_s"] <= allowed),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    failed = 0
    for what, figure, target, ok in rows:
        failed += not ok
        print(f"{what:<{width}}  {figure:<16}  target {target:<40}  {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

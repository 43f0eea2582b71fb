"""What one live rewrite of the reports costs (run/live.py): the jobs and the ledger read from
state.db through a connection of its own, then report.csv, summary.json and report.html (and its
pages) written, on the writer thread; and how long the run loop pauses for it (its tick).

    python benchmarks/live_report.py --jobs 10000 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from batchrun.plan.grid import Job
from batchrun.results.html_report import Live
from batchrun.results.report import write_from_state
from batchrun.run.live import LiveReport
from batchrun.store import ledger
from batchrun.store.records import SUCCEEDED, JobRow, OutputFile
from batchrun.store.state import StateStore

MODEL = "blackforestlabs/flux-1-kontext/pro/edit"


def build(run_dir: Path, jobs: int) -> list[JobRow]:
    """A run folder of JOBS succeeded jobs (one file, one attempt each); their rows."""
    rows = []
    for i in range(jobs):
        job_id = f"{i:012x}"
        rows.append(
            JobRow(
                job_id=job_id, position=i, model_id=MODEL,
                inputs={"prompt": f"a {i % 7} umbrella", "seed": i % 100},
                vars={"color": ["orange", "indigo"][i % 2]}, status=SUCCEEDED,
                request_id=f"req-{i}", attempts=1, submitted_at=1.7e9 + i,
                started_at=1.7e9 + i + 1, finished_at=1.7e9 + i + 5, cost_usd=0.04,
                files=[OutputFile(url=f"https://x.invalid/{i}.png",
                                  name=f"files/{job_id}/image_0.png", sha256="ab" * 32, size=9)],
            )
        )  # fmt: skip
    attempts = [
        ledger.Attempt(
            job_id=r.job_id, attempt=1, model_id=MODEL, origin="simulator", sent_at=1.7e9,
            answer=ledger.ACCEPTED, request_id=r.request_id, estimate=Decimal("0.04"),
            actual=Decimal("0.04"), saved=None, finished_at=1.7e9 + 5,
        )
        for r in rows
    ]  # fmt: skip
    with StateStore.open(run_dir) as store, store.batch():
        store.add_jobs(Job(r.job_id, r.model_id, r.inputs, r.vars, 0, r.position) for r in rows)
        for row in rows:
            store.import_job(row)
        store.append_attempts(attempts)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        rows = build(run_dir, args.jobs)
        writes: list[float] = []
        cpus: list[float] = []
        pauses: list[float] = []
        steps: list[int] = []
        with StateStore.open(run_dir) as store:  # the run's own connection, as during a run
            changes = [0]
            live = LiveReport(
                1, lambda: lambda: _write(run_dir, cpus), lambda: changes[0], time.monotonic
            )
            for _ in range(args.repeat):
                live.due, changes[0] = 0.0, changes[0] + 1
                start = time.perf_counter()
                live.tick()  # what the loop waits for
                pauses.append(time.perf_counter() - start)
                n = 0
                while live.busy:  # the loop's steps meanwhile: a job's row read each
                    store.get(rows[n % len(rows)].job_id)
                    time.sleep(0.001)
                    n += 1
                writes.append(time.perf_counter() - start)
                steps.append(n)
        pages = len(list(run_dir.glob("report*.html")))
        sizes = {n: (run_dir / n).stat().st_size for n in ("report.csv", "report.html")}
    print(
        f"{args.jobs} jobs: one live rewrite {statistics.median(writes):.2f} s median "
        f"(min {min(writes):.2f}, max {max(writes):.2f}; CPU {statistics.median(cpus):.2f} s) "
        f"on the writer thread; the loop paused {max(pauses) * 1000:.1f} ms at most and made "
        f"{min(steps) / max(writes):.0f} steps/s meanwhile (a row read and a 1 ms sleep each); "
        f"report.csv {sizes['report.csv'] // 1024} KiB, "
        f"report.html {sizes['report.html'] // 1024} KiB + {pages - 1} more pages"
    )


def _write(run_dir: Path, cpus: list[float]) -> None:
    start = time.thread_time()
    write_from_state(run_dir, {"name": "bench"}, None, None, live=Live("running", 30))
    cpus.append(time.thread_time() - start)


if __name__ == "__main__":
    main()

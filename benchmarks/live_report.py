"""What one live rewrite of the reports costs the run loop (run/live.py): the rows from memory,
the ledger read from state.db, then report.csv, summary.json and report.html written.

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
from batchrun.results.report import write_report
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
        table = {r.job_id: r for r in rows}
        reads, writes = [], []
        with StateStore.open(run_dir, create=False, lock=False) as store:
            for _ in range(args.repeat):
                start = time.perf_counter()
                current = [table.get(r.job_id, r) for r in rows]
                attempts = store.attempts()
                read = time.perf_counter()
                write_report(run_dir, current, attempts, live=Live("running", 30))
                done = time.perf_counter()
                reads.append(read - start)
                writes.append(done - read)
        sizes = {n: (run_dir / n).stat().st_size for n in ("report.csv", "report.html")}
    total = [r + w for r, w in zip(reads, writes, strict=True)]
    print(
        f"{args.jobs} jobs: one live rewrite {statistics.median(total) * 1000:.0f} ms median "
        f"(min {min(total) * 1000:.0f}, max {max(total) * 1000:.0f}) of which rows + ledger "
        f"{statistics.median(reads) * 1000:.0f} ms; report.csv {sizes['report.csv'] // 1024} "
        f"KiB, report.html {sizes['report.html'] // 1024} KiB"
    )


if __name__ == "__main__":
    main()

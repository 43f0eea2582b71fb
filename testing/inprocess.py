"""`run_batch` as a test calls it in-process against a simulator, and the report it leaves."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.simulator import Simulator


def run_here(path: Path, sim: Simulator, run_dir: Path, **opts: Any) -> tuple[int, list[str]]:
    """Run the manifest at `path` into `run_dir` against `sim`, quietly, no signal handlers;
    (its exit code, the lines it said)."""
    said: list[str] = []
    options = RunOptions(
        api_base=sim.base_url,
        token=sim.token,
        run_dir=run_dir,
        quiet=True,
        handle_signals=False,
        echo=said.append,
        **opts,
    )
    return run_batch(build_plan(path), options), said


def report_rows(run_dir: Path) -> list[dict[str, str]]:
    """report.csv's rows, as dicts."""
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))

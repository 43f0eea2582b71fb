"""`batchrun status`: counts per state, failing jobs, what is still on the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batchrun import lock, state as st
from batchrun.api_answers import AMBIGUOUS_SUBMIT
from batchrun.progress import describe, report_counts
from batchrun.records import report_status
from batchrun.state import StateStore


def status(run_dir: str, *, as_json: bool) -> int:
    """Print the run folder's status (read without locking, so a run may be active); 0."""
    data = status_data(Path(run_dir))
    click.echo(json.dumps(data, indent=2) if as_json else render_status(data))
    return 0


def status_data(run_dir: Path) -> dict[str, Any]:
    """Counts per state, failing jobs, and what is still on the server."""
    with StateStore.open(run_dir, create=False, lock=False) as store:
        meta = store.meta()
        rows = store.rows(in_manifest_only=True)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "run_dir": str(run_dir),
        "name": meta.get("name", ""),
        "manifest": meta.get("manifest", ""),
        "api_base": meta.get("api_base", ""),
        "active_pid": lock.holder(run_dir),
        "total": len(rows),
        "counts": report_counts(counts),
        "on_server": [
            {"job_id": r.job_id, "request_id": r.request_id, "status": r.status}
            for r in rows
            if r.status in (st.QUEUED, st.RUNNING)
        ],
        "problems": [
            {
                "job_id": r.job_id,
                "model_id": r.model_id,
                "status": report_status(r.status),
                "error": r.error or AMBIGUOUS_SUBMIT.format(why="sent; no answer recorded yet"),
            }
            for r in rows
            if r.status in (st.FAILED, st.TIMED_OUT, st.CANCELLED, st.UNKNOWN, st.SUBMITTING)
        ],
    }


def render_status(data: dict[str, Any]) -> str:
    lines = [f"{data['run_dir']}: {data['name'] or '(unnamed)'} ({data['manifest']})"]
    if data["active_pid"]:
        lines.append(f"a run is active (pid {data['active_pid']})")
    lines.append(f"{data['total']} jobs: {describe(data['counts']) or 'none'}")
    on_server = data["on_server"]
    queued = sum(1 for j in on_server if j["status"] == st.QUEUED)
    running = len(on_server) - queued
    lines.append(f"still on the server: {len(on_server)} (queued {queued}, running {running})")
    if data["problems"]:
        lines.append("jobs that did not succeed:")
        for p in data["problems"]:
            lines.append(f"  {p['job_id']}  {p['status']:<9}  {p['model_id']}: {p['error']}")
    return "\n".join(lines)

"""What `status`, `cancel` and `report` do with an existing run folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchrun import state as st
from batchrun.errors import ApiError, RunFolderInUse
from batchrun.progress import describe
from batchrun.state import LOCK_FILE, StateStore


def active_pid(run_dir: Path) -> int | None:
    """The pid of a live `batchrun run` holding the folder, if any (read without locking)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
        pid = int(text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


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
        "active_pid": active_pid(run_dir),
        "total": len(rows),
        "counts": counts,
        "on_server": [
            {"job_id": r.job_id, "request_id": r.request_id, "status": r.status}
            for r in rows
            if r.status in (st.QUEUED, st.RUNNING)
        ],
        "problems": [
            {"job_id": r.job_id, "model_id": r.model_id, "status": r.status, "error": r.error}
            for r in rows
            if r.status in (st.FAILED, st.TIMED_OUT, st.CANCELLED, st.UNKNOWN)
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


def cancel_queued(
    run_dir: Path,
    client: Any,
    *,
    acquire: Callable[[], None] = lambda: None,
    echo: Callable[[str], None] = print,
) -> int:
    """Cancel every request the state says is queued; returns how many could not be cancelled.

    With a run active in the folder, only the requests are cancelled; that run records it.
    """
    try:
        store = StateStore.open(run_dir, create=False)
        owner = True
    except RunFolderInUse:
        store = StateStore.open(run_dir, create=False, lock=False)
        owner = False
    cancelled = refused = failed = 0
    with store:
        for row in store.rows(in_manifest_only=True):
            if row.status != st.QUEUED or not row.request_id:
                continue
            acquire()
            try:
                outcome = client.cancel(row.request_id).get("outcome")
            except ApiError as exc:
                echo(f"{row.job_id}: could not cancel: {exc}")
                failed += 1
                continue
            if outcome == "cancelled":
                cancelled += 1
                if owner:
                    import time

                    store.record_result(
                        row.job_id, st.CANCELLED, finished_at=time.time(), error="cancelled"
                    )
            else:
                refused += 1
    echo(
        f"cancelled {cancelled} queued request(s); {refused} already running or done "
        "(not cancellable)" + (f"; {failed} failed" if failed else "")
    )
    return failed


def rewrite_report(
    run_dir: Path, *, rows_key: str | None = None, cols_key: str | None = None
) -> Path:
    """report.csv, summary.json and report.html again from state.db (keeping the run's own
    figures); `rows_key`/`cols_key` choose report.html's grid."""
    from batchrun.report import summarise, write_report

    with StateStore.open(run_dir, create=False, lock=False) as store:
        rows = store.rows()
    extra: dict[str, Any] = {}
    summary = Path(run_dir) / "summary.json"
    try:
        previous = json.loads(summary.read_text(encoding="utf-8"))
        fresh = summarise([])  # its keys: the figures write_report computes again
        extra = {k: v for k, v in previous.items() if k not in fresh}
    except (OSError, ValueError, AttributeError):
        pass
    write_report(Path(run_dir), rows, extra=extra, rows_key=rows_key, cols_key=cols_key)
    return Path(run_dir) / "report.csv"

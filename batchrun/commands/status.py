"""`batchrun status`: counts per state, failing jobs, what is still on the server."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from batchrun.api.answers import AMBIGUOUS_SUBMIT
from batchrun.catalog.pricing import usd
from batchrun.errors import UsageError
from batchrun.run.money_text import estimate_text, spent_text
from batchrun.run.progress import describe, report_counts
from batchrun.store import ledger, lock, origin as og, state as st
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import report_status
from batchrun.store.state import StateStore
from batchrun.util.safetext import printable

STATE_URL_ENV = "BATCHRUN_STATE_URL"


def status(
    run_dir: str | None, *, as_json: bool, state: str | None = None, sweep: str | None = None
) -> int:
    """Print the status of the run folder, or of the shared sweep `sweep` in the database at
    `state` (else $BATCHRUN_STATE_URL when no folder is given); read without locking, so a
    run may be active; 0."""
    url = state or (None if run_dir else os.environ.get(STATE_URL_ENV, "").strip() or None)
    if run_dir and state:
        raise UsageError("give a run folder or --state URL, not both")
    if sweep and not url:
        raise UsageError("--sweep NAME applies to a shared sweep: give --state URL with it")
    if url:
        data = shared_status_data(url, sweep)
    elif run_dir:
        data = status_data(Path(run_dir))
    else:
        raise UsageError(
            f"give a run folder (batchrun status outputs/NAME) or a shared sweep's database "
            f"(--state URL, or {STATE_URL_ENV})"
        )
    # JSON escapes control characters itself; the text is for a terminal.
    click.echo(
        json.dumps(data, indent=2) if as_json else printable(render_status(data), lines=True)
    )
    return 0


def status_data(run_dir: Path) -> dict[str, Any]:
    """Counts per state, failing jobs, and what is still on the server: counts from SQL, and
    only the jobs listed read one by one (a folder of 100,000 finished jobs reads none)."""
    with StateStore.open(run_dir, create=False, lock=False) as store:
        store.check_rows()
        meta = store.meta()
        counts = store.counts()
        total = store.count(in_manifest_only=True)
        books, gone = store.books(), store.attempts_not_in_manifest()  # in groups
        # report.csv's cost_usd summed: the reported jobs' actual costs in the ledger (a
        # cached job's is 0, and adds nothing)
        cost = store.known_cost()
        on_server = [
            {"job_id": r.job_id, "request_id": r.request_id, "status": r.status}
            for r in store.iter_rows(in_manifest_only=True, statuses=(st.QUEUED, st.RUNNING))
        ]
        problems = [
            {
                "job_id": r.job_id,
                "model_id": r.model_id,
                "status": report_status(r.status),
                "error": r.error or AMBIGUOUS_SUBMIT.format(why="sent; no answer recorded yet"),
            }
            for r in store.iter_rows(in_manifest_only=True, statuses=_PROBLEMS)
        ]
        bare = [job_id for job_id, output in store.bare_successes() if not collect_urls(output)]
    est, cap = meta.get("est_cost_usd"), meta.get("max_cost_usd")
    unpriced = int(meta.get("unpriced_jobs") or 0)
    return {
        "run_dir": str(run_dir),
        "name": meta.get("name", ""),
        "manifest": meta.get("manifest", ""),
        "api_base": meta.get("api_base", ""),
        "origin": og.recorded(meta, run_dir) or "",
        "active_pid": lock.holder(run_dir),
        "total": total,
        "counts": report_counts(counts),
        "cost_usd": float(round(cost, 6)),  # what the reported jobs' results said they cost
        # the ledger: what every attempt of the folder may have cost (store/ledger.py)
        **ledger.summary_of(books, gone),
        # the plan's estimate at the last run; none when no job of it was priced
        "est_cost_usd": float(est) if est and (Decimal(est) or not unpriced) else None,
        "unpriced_jobs": unpriced,
        "max_cost_usd": float(cap) if cap else None,
        "on_server": on_server,
        "problems": problems,
        "without_output": bare,
    }


_PROBLEMS = (st.FAILED, st.TIMED_OUT, st.CANCELLED, st.UNKNOWN, st.SUBMITTING)


def shared_status_data(url: str, sweep: str | None) -> dict[str, Any]:
    """status_data's figures for a shared sweep, read from its database, with the sweep's
    workers (who holds jobs, how long until their lease lapses) and its account (what the
    workers have spent and reserved, the slots in flight)."""
    from batchrun.store.shared import SharedState, scrub  # psycopg's import only when asked

    shared = SharedState.reading(url, sweep)
    try:
        meta, facts = shared.meta(), shared.facts()
        rows = shared.rows(in_manifest_only=True)
        attempts = shared.attempts()
        workers = shared.workers()
        halted, blocked = shared.held_back()
    finally:
        shared.close()
    reported = {r.job_id for r in rows}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    cost = sum(ledger.per_job(a for a in attempts if a.job_id in reported).values(), Decimal(0))
    est, cap = meta.get("est_cost_usd"), facts["cap_usd"]
    unpriced = int(meta.get("unpriced_jobs") or 0)
    return {
        "run_dir": None,
        "state": scrub(url),
        "sweep": shared.sweep,
        "name": meta.get("name", shared.sweep),
        "manifest": meta.get("manifest", ""),
        "api_base": meta.get("api_base", ""),
        "origin": facts["origin"],
        "active_pid": None,
        "total": len(rows),
        "counts": report_counts(counts),
        "cost_usd": float(round(cost, 6)),
        **ledger.summary(attempts, reported),
        "est_cost_usd": float(est) if est and (Decimal(est) or not unpriced) else None,
        "unpriced_jobs": unpriced,
        "max_cost_usd": None if cap is None else float(cap),
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
            if r.status in _PROBLEMS
        ],
        "without_output": [
            r.job_id
            for r in rows
            if r.status == st.SUCCEEDED and not r.files and not collect_urls(r.output)
        ],
        "workers": workers,
        "account": {
            "spent_usd": float(facts["spent_usd"]),
            "reserved_usd": float(facts["reserved_usd"]),
            "in_flight": facts["in_flight"],
        },
        "halted": halted,
        "canary_failed": blocked,
    }


SHOWN_IDS = 10  # job ids listed on a line before it says "..."


def render_status(data: dict[str, Any]) -> str:
    where = data["run_dir"] or f"{data['state']} sweep {data['sweep']!r}"
    lines = [f"{where}: {data['name'] or '(unnamed)'} ({data['manifest']})"]
    if data["origin"]:
        lines.append(f"results from {og.label(data['origin'])}")
    if data["active_pid"]:
        lines.append(f"a run is active (pid {data['active_pid']})")
    lines.append(f"{data['total']} jobs: {describe(data['counts']) or 'none'}")
    lines.append(cost_line(data))
    on_server = data["on_server"]
    queued = sum(1 for j in on_server if j["status"] == st.QUEUED)
    running = len(on_server) - queued
    lines.append(f"still on the server: {len(on_server)} (queued {queued}, running {running})")
    if data["problems"]:
        lines.append("jobs that did not succeed:")
        for p in data["problems"]:
            error = printable(p["error"])  # one line per job, whatever the error holds
            lines.append(f"  {p['job_id']}  {p['status']:<9}  {p['model_id']}: {error}")
    lines += _shared_lines(data)
    empty = data["without_output"]
    if empty:
        shown = ", ".join(empty[:SHOWN_IDS]) + (", ..." if len(empty) > SHOWN_IDS else "")
        lines.append(f"succeeded without output (no file to fetch): {len(empty)}: {shown}")
    return "\n".join(lines)


def _shared_lines(data: dict[str, Any]) -> list[str]:
    """A shared sweep's workers, account, halt and failed canaries (none for a folder)."""
    if "workers" not in data:
        return []
    account = data["account"]
    lines = [
        f"the account: {usd(Decimal(repr(account['spent_usd'])))} spent, "
        f"{usd(Decimal(repr(account['reserved_usd'])))} reserved, "
        f"{account['in_flight']} in flight"
    ]
    workers = data["workers"]
    lines.append(f"workers: {len(workers) or 'none'}")
    for w in workers:
        left = w["lease_left_s"]
        lease = f"lease {left:.0f} s left" if left > 0 else f"lease lapsed {-left:.0f} s ago"
        where = f"{w['host']}:{w['run_dir']}" if w["run_dir"] else w["host"]
        lines.append(f"  {w['worker']}  holds {w['jobs_held']} job(s), {lease}  ({where})")
    if data["halted"]:
        lines.append(f"halted: {data['halted']}")
    for model, why in data["canary_failed"].items():
        lines.append(f"canary failed for {model}: {why}")
    return lines


def cost_line(data: dict[str, Any]) -> str:
    """`cost: $0.80 spent (est. $1.00, cap $1.00)`: the ledger's spent, with what part of it is
    estimated and what jobs no longer in the manifest account for."""
    spent = spent_text(Decimal(repr(data["spent_usd"])), data["unknown_cost_attempts"])
    notes = []
    if data["spent_estimated_usd"]:
        guessed = usd(Decimal(repr(data["spent_estimated_usd"])))
        notes.append(f"{guessed} of it estimated: attempts that may have been billed")
    gone = data["not_in_manifest"]
    if gone["jobs"]:
        notes.append(
            f"{usd(Decimal(repr(gone['spent_usd'])))} on {gone['jobs']} "
            f"job{'s' if gone['jobs'] != 1 else ''} no longer in the manifest"
        )
    if data["est_cost_usd"] is not None or data["unpriced_jobs"]:
        est = Decimal(repr(data["est_cost_usd"] or 0.0))
        notes.append(estimate_text(est, data["unpriced_jobs"]))
    if data["max_cost_usd"] is not None:
        notes.append(f"cap {usd(Decimal(repr(data['max_cost_usd'])))}")
    return f"cost: {spent}" + (f" ({', '.join(notes)})" if notes else "")

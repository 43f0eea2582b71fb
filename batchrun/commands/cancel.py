"""`batchrun cancel`: cancel every request of a run folder still queued on the server.

The API asked is --api-base, else $RUNCOMFY_MODEL_API_BASE, else the one the run folder
recorded (commands.common.choose_api_base); the first line on stdout says which and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchrun.api.client import Client
from batchrun.api.ratelimit import RateLimiter
from batchrun.commands.common import DEFAULT, RECORDED, choose_api_base, normalise_api_base, token
from batchrun.commands.report import rewrite_report
from batchrun.errors import ApiError, RunFolderInUse, UnreachableError
from batchrun.store import ledger, lock, state as st
from batchrun.store.state import StateStore
from batchrun.util.safetext import printable

CANCEL_RATE = 5.0  # calls per second: cancelling is never urgent enough to risk a 429


def cancel(run_dir: str, *, api_base_option: str | None) -> int:
    """Cancel the queued requests; 1 when a cancel call failed, else 0."""
    with StateStore.open(Path(run_dir), create=False, lock=False) as store:
        recorded = store.meta().get("api_base")
    base, source = choose_api_base(api_base_option, recorded)
    # A simulated run's server lived in the run's own process (`run --simulate`): with no run
    # active, there is no server holding its requests, unless the user names one now.
    named = source not in (RECORDED, DEFAULT)
    if not named and simulated(Path(run_dir)) and not lock.holder(Path(run_dir)):
        click.echo(
            f"{run_dir} is a simulated run (run --simulate) and no run is active in it: its "
            "simulator is not running, so there is nothing to cancel",
            err=True,
        )
        return 0
    secret = token("cancel")
    click.echo(printable(base_line(base, source, recorded)))
    client = Client(base, secret)
    limiter = RateLimiter(CANCEL_RATE)
    failed = cancel_queued(
        Path(run_dir),
        client,
        acquire=limiter.acquire,
        echo=lambda t: click.echo(printable(t, lines=True), err=True),
    )
    folder = Path(run_dir)
    if (folder / "report.csv").exists() and not lock.holder(folder):
        rewrite_report(folder)  # the report says `cancelled`, not the `queued` it said before
    return 1 if failed else 0


def base_line(base: str, source: str, recorded: str | None) -> str:
    """Which API the cancels go to, where that came from, and whether the run used another."""
    if source == RECORDED:
        return f"cancelling on {base} (recorded in the run folder)"
    note = ""
    if recorded and normalise_api_base(recorded) != base:
        note = f"; the run folder recorded {normalise_api_base(recorded)}"
    return f"cancelling on {base} (from {source}{note})"


def simulated(run_dir: Path) -> bool:
    """Whether the folder's runs were against `run --simulate` (its simulator keeps its
    memory in .simulator/)."""
    return (run_dir / ".simulator").is_dir()


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
                cause = getattr(exc, "unreachable", "")
                if cause:  # every other cancel would fail the same way: say it once
                    raise UnreachableError.at(client.base_url, cause) from None
                echo(f"{row.job_id}: could not cancel: {exc}")
                failed += 1
                continue
            if outcome == "cancelled":
                cancelled += 1
                if owner:
                    with store.batch():
                        store.close_attempt(row.job_id, answer=ledger.CANCELLED)  # not billed
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

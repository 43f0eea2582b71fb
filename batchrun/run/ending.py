"""The end of a run: its closing lines (the final line, then what to do next) and its exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from batchrun.results.report import without_output
from batchrun.run.budget import Budget
from batchrun.run.cache import cached_note
from batchrun.run.money_text import cost_text
from batchrun.run.progress import report_counts
from batchrun.run.scheduler import Scheduler
from batchrun.store import state as st
from batchrun.store.records import JobRow
from batchrun.util.durations import duration

EXIT_OK, EXIT_FAILED = 0, 1


def say_how_it_ended(
    rows: list[JobRow],
    sched: Scheduler,
    budget: Budget,
    *,
    run_dir: Path,
    elapsed: float,
    left_out: int | None,
    quiet: bool,
    echo: Callable[[str], None],
) -> int:
    """Say how the run ended (`left_out`: jobs a filter left out, None without one); returns
    EXIT_OK when every job succeeded with its files and nothing stopped the run, else
    EXIT_FAILED."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    file_errors = sum(1 for r in rows for f in r.files if f.error)
    if not quiet:
        left = f" ({left_out} left out by the filter)" if left_out is not None else ""
        echo(
            f"{len(rows)} jobs{left}: {tally(counts, rows)}{cached_note(rows)}. "
            f"{cost_text(budget)}. Elapsed {duration(elapsed)}. "
            f"Report: {run_dir / 'report.csv'}"
        )
    if file_errors:
        echo(f"{file_errors} output file(s) not downloaded; see the error column")
    refused = sched.refusals.refused
    retriable = sum(1 for r in rows if r.status in (st.FAILED, st.TIMED_OUT)
                    and r.model_id not in refused)  # fmt: skip
    if retriable:  # a refused model's failure is fixed in the manifest, not by a retry
        echo("rerun with --retry-failed to submit failed and timed-out jobs again")
    if counts.get(st.UNKNOWN):
        echo(
            f"{counts[st.UNKNOWN]} submit(s) may have reached the server; rerun with "
            "--resubmit-unknown to submit them again (may pay twice)"
        )
    if sched.at_server.abandoned:
        echo(f"{len(sched.at_server.abandoned)} job(s) still on the server; rerun to poll again")
    if sched.fatal is not None:
        echo(f"stopped submitting: {sched.fatal}")
    held = sched.policy.explain(rows)
    for line in held:  # last: the lines that say why the run stopped short
        echo(line)
    ok = all(r.status == st.SUCCEEDED for r in rows) and not file_errors
    return EXIT_OK if ok and sched.fatal is None and not held else EXIT_FAILED


def tally(counts: dict[str, int], rows: list[JobRow]) -> str:
    """'succeeded 10 (2 without output), failed 1': the counts, and the successes that
    brought no output (a server answer worth a look, not a failure)."""
    empty = sum(1 for r in rows if without_output(r))
    notes = {"succeeded": f" ({empty} without output)"} if empty else {}
    return ", ".join(f"{k} {n}{notes.get(k, '')}" for k, n in report_counts(counts).items())

"""`batchrun approve`: copy chosen jobs' results of a run into a baseline run folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click

from batchrun.commands.report import rewrite_report
from batchrun.errors import UsageError
from batchrun.plan.subset import SelectionError, matching, parse_filter
from batchrun.results.approve import Approval, Chooser, approve_into
from batchrun.store import lock as folder_lock
from batchrun.store.records import JobRow

_LISTED = 50  # lines of jobs shown; the rest are counted


def approve(
    current: str, *, into: str, only: Sequence[str] = (), job_ids: Sequence[str] = ()
) -> int:
    """Approve the chosen jobs of CURRENT into INTO, rewrite INTO's reports, say what
    changed; 0 (StateError or UsageError, exit 2, when refused)."""
    approve_run(
        Path(current), Path(into), chooser(only, job_ids), echo=lambda s: click.echo(s, err=True)
    )
    return 0


def approve_run(
    current: Path,
    into: Path,
    choose: Chooser | None,
    *,
    echo: Callable[[str], None],
) -> Approval:
    """The one way results get into a baseline (`approve`, `compare --update-baseline`):
    INTO locked as a run locks its folder, the jobs approved, the reports rewritten, and
    what was done said through `echo`."""
    try:
        into.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{into}: cannot make the folder ({exc.strerror})") from None
    fd = folder_lock.take(into)
    try:
        result = approve_into(current, into, choose)
        rewrite_report(into)
    finally:
        folder_lock.release(fd)
    for line in describe(result):
        echo(line)
    return result


def describe(result: Approval) -> list[str]:
    """`approved JOB: new (sha256 ab12...)`, `replaced JOB: 1a2b -> 3c4d`, skips, and the
    count line."""
    lines = []
    for job in result.approved:
        new = ",".join(s[:12] for s in job.new) or "no files"
        if job.old is None:
            lines.append(f"added {job.job_id}: {new}")
        elif job.old == job.new:
            lines.append(f"kept {job.job_id}: {new} (same outputs)")
        else:
            old = ",".join(s[:12] for s in job.old) or "no files"
            lines.append(f"replaced {job.job_id}: {old} -> {new}")
    lines += [
        f"skipped {job_id}: {status} in the run; only a succeeded result is approved "
        "(the baseline keeps what it had)"
        for job_id, status in result.skipped
    ]
    lines += [f"removed {job_id}: not in the run" for job_id in result.retired]
    if len(lines) > _LISTED:
        lines = [*lines[:_LISTED], f"... and {len(lines) - _LISTED} more lines"]
    added = sum(1 for j in result.approved if j.old is None)
    replaced = sum(1 for j in result.approved if j.old is not None and j.old != j.new)
    made = "created" if result.created else "updated"
    files = result.linked + result.copied
    lines.append(
        f"approved {len(result.approved)} job{_s(len(result.approved))} into {result.into} "
        f"({made}): {added} added, {replaced} replaced, "
        f"{len(result.approved) - added - replaced} unchanged, {len(result.skipped)} skipped, "
        f"{len(result.retired)} removed; {files} file{_s(files)} sha256-verified. "
        f"Report: {result.into / 'report.csv'}"
    )
    return lines


def chooser(only: Sequence[str], job_ids: Sequence[str]) -> Chooser | None:
    """The jobs `--only EXPR` (all must match) and `--job ID` (any of them) choose; None
    when neither is given (every job)."""
    if not only and not job_ids:
        return None
    try:
        filters = [parse_filter(expr) for expr in only]
    except SelectionError as exc:
        raise UsageError(f"--only {exc.value}: {exc}") from None

    def choose(rows: list[JobRow]) -> list[JobRow]:
        try:
            chosen = matching(rows, filters)
        except SelectionError as exc:
            raise UsageError(f"--only {exc.value}: {exc}") from None
        if job_ids:
            named = {_resolve(rows, job_id) for job_id in job_ids}
            chosen = [r for r in chosen if r.job_id in named]
        return chosen

    return choose


def _resolve(rows: list[JobRow], prefix: str) -> str:
    """The job id PREFIX names (an id or a unique prefix); UsageError otherwise."""
    found = [r.job_id for r in rows if r.job_id.startswith(prefix)] if prefix else []
    if prefix in found:
        return prefix
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(
            f"--job {prefix}: no job of the run has this id; `batchrun status` or report.csv "
            "lists the job ids"
        )
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    raise UsageError(f"--job {prefix}: {len(found)} jobs start with it ({shown}); give more")


def _s(n: int) -> str:
    return "" if n == 1 else "s"

"""Approving a run's results into a baseline run folder: the chosen jobs' rows, attempts and
sha256-verified files are copied in; the baseline's other jobs stay as they are.

Only a succeeded job's result is approved: a failed, timed-out, cancelled, unknown or unfinished
job is skipped (and said), so the baseline keeps what it had for it. Approving every job (no
choice) also takes out of the baseline's reports the jobs the run no longer has, so the
baseline becomes the run's results: what `compare --update-baseline` does.

The baseline is locked while it is written (a run using it makes approve fail, exit 2). Each
job's files are first copied beside the baseline and checked, then put in place, then its row
and attempts are written (one transaction for all); a rerun of an interrupted approve finishes
it. The reports are rewritten by the caller (commands/approve.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.errors import StateError
from batchrun.results.merge import Source, one_origin, place_file, read_folder
from batchrun.store import origin as og, state as st
from batchrun.store.atomic import fsync_dir
from batchrun.store.records import JobRow
from batchrun.store.state import STATE_FILE, StateStore

# Which of the current run's reported jobs to approve; None: every one.
Chooser = Callable[[list[JobRow]], list[JobRow]]
_AGAIN = "run that job again"
_MEMO_KEYS = ("name", "manifest", "manifest_sha256", "api_base")


@dataclass(frozen=True)
class Approved:
    """One job approved: its outputs' sha256 before (None: new to the baseline) and now."""

    job_id: str
    old: tuple[str, ...] | None
    new: tuple[str, ...]


@dataclass
class Approval:
    """What an approve did to the baseline."""

    into: Path
    created: bool = False
    approved: list[Approved] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (job id, its status)
    retired: list[str] = field(default_factory=list)  # baseline jobs the run no longer has
    linked: int = 0
    copied: int = 0


def shas(row: JobRow) -> tuple[str, ...]:
    """The sha256 of each of a job's downloaded files."""
    return tuple(f.sha256 for f in row.files if f.name and not f.error)


def approve_into(current: Path, into: Path, choose: Chooser | None = None) -> Approval:
    """Approve CURRENT's chosen jobs (`choose`; None: all) into the run folder INTO, which the
    caller has locked (store/lock.py); INTO is made when missing. StateError (exit 2) when
    CURRENT is not a run folder, the two folders' origins differ, or a file is not as
    recorded."""
    if current.resolve() == into.resolve():
        raise StateError(f"{into}: is the current run itself; approve into another folder")
    source = read_folder(current, "the folder a run wrote (its --run-dir)")
    result = Approval(into=into, created=not (into / STATE_FILE).is_file())
    every = choose is None
    _check_legacy(into, every)
    if not result.created:
        base = read_folder(into, "a baseline approve made")
        try:
            one_origin([base, source], doing="approve")
        except StateError as exc:
            raise StateError(
                f"{exc}\nto make {into} a baseline of the run's origin, move it aside (or delete "
                "it) and approve again: a missing baseline is created"
            ) from None
    chosen = source.rows if choose is None else choose(source.rows)
    wanted = [r for r in chosen if r.status == st.SUCCEEDED]
    result.skipped = [
        (r.job_id, st.report_status(r.status)) for r in chosen if r.status != st.SUCCEEDED
    ]
    staging = into / f".approving-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _stage(source, wanted, staging, result)
        with StateStore.open(into, lock=False) as store:
            before = {r.job_id: r for r in store.rows(in_manifest_only=True)}
            _swap(into, staging, [r.job_id for r in wanted])
            with store.batch(durable=True):
                for row in wanted:
                    store.approve_job(row, source.attempts)
                if every:
                    have = {r.job_id for r in source.rows}
                    result.retired = [j for j in before if j not in have]
                    for job_id in result.retired:
                        store.retire_job(job_id)
                store.set_meta(**_memo(source))
        for job_id in result.retired:
            shutil.rmtree(into / "files" / job_id, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if og.recorded(source.meta, current) == og.SIMULATOR:
        (into / ".simulator").mkdir(exist_ok=True)  # a simulated folder, as its source
    result.approved = [
        Approved(r.job_id, shas(before[r.job_id]) if r.job_id in before else None, shas(r))
        for r in wanted
    ]
    return result


def _check_legacy(into: Path, every: bool) -> None:
    """A baseline made by an older `compare --update-baseline` (report.csv, no state.db):
    rebuilt when every job is approved (what was there goes), else refused, since its jobs
    cannot be kept."""
    if (into / STATE_FILE).is_file():
        return
    if not every and (into / "report.csv").is_file():
        raise StateError(
            f"{into}: has a report.csv but no {STATE_FILE} (a baseline made by an older "
            "batchrun), so its other jobs cannot be kept; approve every job once (no --only or "
            "--job) to make it a run folder, then approve jobs one by one"
        )
    for name in ("report.csv", "summary.json", "report.html"):
        (into / name).unlink(missing_ok=True)
    shutil.rmtree(into / "files", ignore_errors=True)


def _stage(source: Source, rows: list[JobRow], staging: Path, result: Approval) -> None:
    """Copy (or link) each job's files under STAGING/files/<job_id>/, sha256-checked."""
    for row in rows:
        for out in row.files:
            if not out.name or out.error:
                continue
            if not out.name.startswith(f"files/{row.job_id}/"):
                raise StateError(
                    f"{source.folder}: {out.name}: not a path under files/{row.job_id}/; "
                    f"{STATE_FILE} is damaged"
                )
            linked = place_file(
                source.folder, staging, out.name, out.sha256, doing="approve", again=_AGAIN
            )
            result.linked += linked
            result.copied += not linked


def _swap(into: Path, staging: Path, job_ids: list[str]) -> None:
    """Put each job's staged files/<job_id>/ in place of the baseline's (removed: files of
    an older result must not linger beside the new ones)."""
    files = into / "files"
    files.mkdir(parents=True, exist_ok=True)
    old = staging / "old"
    old.mkdir(parents=True, exist_ok=True)
    for job_id in job_ids:
        target = files / job_id
        if target.is_symlink() or target.exists():
            os.replace(target, old / job_id)
        staged = staging / "files" / job_id
        if staged.is_dir():
            os.replace(staged, target)
    fsync_dir(files)


def _memo(source: Source) -> dict[str, str]:
    """The meta a baseline keeps of the run last approved into it (the origin above all)."""
    meta = {k: source.meta[k] for k in _MEMO_KEYS if k in source.meta}
    held = og.recorded(source.meta, source.folder)
    if held:
        meta["origin"] = held
    meta["approved_from"] = str(source.folder)
    return meta

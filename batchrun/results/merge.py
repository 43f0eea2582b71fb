"""Shard run folders -> one run folder: state.db, files/ (linked or copied, sha256-verified),
report.csv, summary.json and report.html, as if one run had done every shard's jobs.

The merged folder is built beside its destination and renamed into place at the end, so it is
either whole or absent. Every job's state is replayed through StateStore's transitions: the
run folder's format keeps its one home in state.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.errors import StateError
from batchrun.results.report import write_report
from batchrun.store import state as st
from batchrun.store.state import STATE_FILE, JobRow, StateStore

_MAX_CONFLICTS = 10
_CHUNK = 1 << 20


@dataclass
class MergeResult:
    """What a merge made: jobs, files linked or copied, and what looked odd but was allowed."""

    into: Path
    jobs: int = 0
    linked: int = 0
    copied: int = 0
    duplicates: int = 0  # jobs found in more than one folder with the same result
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    folder: Path
    meta: dict[str, str]
    rows: list[JobRow]


def merge_runs(
    folders: Sequence[str | os.PathLike[str]], into: str | os.PathLike[str]
) -> MergeResult:
    """Merge the run folders into `into` (new or empty); StateError when they disagree."""
    dest = Path(into)
    sources = [_read(Path(f)) for f in folders]
    _check_destination(dest, [s.folder for s in sources])
    chosen, duplicates = _combine(sources)
    result = MergeResult(into=dest, jobs=len(chosen), duplicates=duplicates)
    shas = {s.meta.get("manifest_sha256") for s in sources}
    if len(shas) > 1:
        result.warnings.append(
            "the folders ran different versions of the manifest; jobs are matched by job id"
        )
    work = dest.parent / f".{dest.name}.merging-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with StateStore.open(work) as store:
            rows = sorted((row for row, _ in chosen.values()), key=lambda r: r.position)
            with store.batch(durable=True):
                store.add_jobs(rows)
                for row in rows:
                    _replay(store, row)
                store.set_meta(**_meta(sources))
            for row, source in chosen.values():
                for out in row.files:
                    if out.name and not out.error:
                        linked = _place(source.folder, work, out.name, out.sha256)
                        result.linked += linked
                        result.copied += not linked
            merged = store.rows()
        extra = {
            "name": sources[0].meta.get("name", ""),
            "manifest": sources[0].meta.get("manifest", ""),
            "api_calls": json.loads(_meta(sources)["api_calls"]),
            "merged_from": [str(s.folder) for s in sources],
        }
        write_report(work, merged, extra=extra)
        if dest.is_dir():
            dest.rmdir()  # empty (checked): os.replace cannot put a folder over it otherwise
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return result


def _read(folder: Path) -> _Source:
    if not (folder / STATE_FILE).is_file():
        raise StateError(
            f"{folder}: no {STATE_FILE} here, so not a run folder; give the folders the shards "
            "ran in (their --run-dir), e.g. the downloaded artifacts"
        )
    with StateStore.open(folder, create=False, lock=False) as store:
        return _Source(folder, store.meta(), store.rows(in_manifest_only=True))


def _check_destination(dest: Path, folders: list[Path]) -> None:
    real = dest.resolve()
    for folder in folders:
        if folder.resolve() == real:
            raise StateError(f"{dest}: is one of the folders to merge; choose a new folder")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StateError(f"{dest}: already exists and is not empty; choose a new folder")


def _result(row: JobRow) -> tuple[str, str | None, tuple[str, ...]]:
    return row.status, row.request_id, tuple(f.sha256 for f in row.files if not f.error)


def _untouched(row: JobRow) -> bool:
    """A job a folder knows but never submitted: it holds no result to disagree with."""
    return row.status == st.PENDING and not row.request_id and not row.attempts


def _combine(sources: list[_Source]) -> tuple[dict[str, tuple[JobRow, _Source]], int]:
    chosen: dict[str, tuple[JobRow, _Source]] = {}
    conflicts: list[str] = []
    duplicates = 0
    for source in sources:
        for row in source.rows:
            seen = chosen.get(row.job_id)
            if seen is None or (_untouched(seen[0]) and not _untouched(row)):
                chosen[row.job_id] = (row, source)
            elif _untouched(row):
                continue
            elif _result(seen[0]) == _result(row):
                duplicates += 1
            else:
                conflicts.append(_conflict(row.job_id, seen, (row, source)))
    if conflicts:
        more = len(conflicts) - _MAX_CONFLICTS
        lines = conflicts[:_MAX_CONFLICTS] + ([f"... and {more} more"] if more > 0 else [])
        raise StateError(
            f"{len(conflicts)} job(s) have different results in two folders; refusing to "
            "merge (leave one of the two folders out, or run that job again in one):\n"
            + "\n".join(lines)
        )
    return chosen, duplicates


def _conflict(job_id: str, a: tuple[JobRow, _Source], b: tuple[JobRow, _Source]) -> str:
    def say(row: JobRow, source: _Source) -> str:
        status, request_id, shas = _result(row)
        sha = ",".join(s[:12] for s in shas) or "-"
        return f"{source.folder}: {status}, request {request_id or '-'}, sha256 {sha}"

    return f"  job {job_id}: {say(*a)} | {say(*b)}"


def _meta(sources: list[_Source]) -> dict[str, str]:
    calls: dict[str, int] = {}
    for source in sources:
        for kind, n in json.loads(source.meta.get("api_calls", "{}")).items():
            if kind != "total":
                calls[kind] = calls.get(kind, 0) + int(n)
    calls["total"] = sum(calls.values())
    first = sources[0].meta
    meta: dict[str, str] = {
        k: first[k] for k in ("name", "manifest", "manifest_sha256", "api_base") if k in first
    }
    meta["api_calls"] = json.dumps(calls)
    meta["merged_from"] = json.dumps([str(s.folder) for s in sources])
    return meta


def _replay(store: StateStore, row: JobRow) -> None:
    """Bring a freshly added (pending) job to the state `row` records, transition by
    transition: the attempts, the request, first seen running, the result and its files."""
    job_id = row.job_id
    for _ in range(row.attempts - (1 if row.request_id else 0)):
        store.mark_unknown(job_id, "", count_attempt=True)
    if row.request_id:
        submitted = row.submitted_at if row.submitted_at is not None else 0.0
        store.record_request_id(job_id, row.request_id, submitted)
    if row.started_at is not None:
        store.record_status(job_id, st.RUNNING, started_at=row.started_at)
    if row.cached:
        store.record_cached(
            job_id,
            finished_at=row.finished_at if row.finished_at is not None else 0.0,
            output=row.output,
            saved_usd=row.saved_usd,
            files=row.files,
        )
        return
    if row.status in st.TERMINAL:
        store.record_result(
            job_id,
            row.status,
            finished_at=row.finished_at if row.finished_at is not None else 0.0,
            output=row.output,
            error=row.error,
            cost_usd=row.cost_usd,
        )
    elif row.status in (st.QUEUED, st.RUNNING):
        store.record_status(job_id, row.status)
        if row.error:
            store.record_error(job_id, row.error)
    elif row.status == st.UNKNOWN:
        store.mark_unknown(job_id, row.error, count_attempt=False)
    elif row.status == st.SUBMITTING:
        store.mark_submitting(job_id)
    else:
        store.mark_pending(job_id, row.error)
    if row.files:
        store.record_files(job_id, row.files)


def _place(src_root: Path, dest_root: Path, name: str, sha256: str) -> bool:
    """Hard-link (else copy) one output file into the merged folder and check its sha256;
    True when linked."""
    parts = Path(name).parts
    if not parts or parts[0] != "files" or ".." in parts or Path(name).is_absolute():
        raise StateError(f"{src_root}: {name}: not a path under files/; state.db is damaged")
    src, dest = src_root / name, dest_root / name
    if not src.is_file():
        raise StateError(
            f"{src_root}: {name} is missing; run that shard again in its folder to download it"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        linked = True
    except OSError:
        shutil.copyfile(src, dest)
        linked = False
    if _sha256(dest) != sha256:
        raise StateError(
            f"{src_root}: {name}: its sha256 is not the one state.db recorded (damaged or "
            "changed); run that shard again in its folder"
        )
    return linked


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

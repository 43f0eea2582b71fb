"""Shard run folders -> one run folder: state.db, files/ (linked or copied, sha256-verified),
report.csv, summary.json and report.html, as if one run had done every shard's jobs.

The merged folder is built beside its destination and renamed into place at the end, so it is
either whole or absent. Every job's row and every attempt of the folders' ledgers is copied
through StateStore (the run folder's format keeps its one home in state.py): the merged
ledger is the sum of the shards', so it shows what the whole sweep spent against the whole
cap (the sum of the shards' caps).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from batchrun.catalog.pricing import plain
from batchrun.errors import StateError
from batchrun.results.report import ReportJobs, RunFacts, write_report
from batchrun.store import origin as og, state as st
from batchrun.store.atomic import built_beside
from batchrun.store.ledger import Attempt
from batchrun.store.records import JobRow
from batchrun.store.state import STATE_FILE, StateStore

_MAX_CONFLICTS = 10
_AGAIN = "run that shard again"
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
class Source:
    """What merge and approve read of a run folder."""

    folder: Path
    meta: dict[str, str]
    rows: list[JobRow]
    attempts: list[Attempt]


def merge_runs(
    folders: Sequence[str | os.PathLike[str]], into: str | os.PathLike[str]
) -> MergeResult:
    """Merge the run folders into `into` (new or empty); StateError when they disagree."""
    dest = Path(into)
    sources = [read_folder(Path(f)) for f in folders]
    _check_destination(dest, [s.folder for s in sources])
    origin = one_origin(sources, doing="merge")
    chosen, duplicates = _combine(sources)
    result = MergeResult(into=dest, jobs=len(chosen), duplicates=duplicates)
    shas = {s.meta.get("manifest_sha256") for s in sources}
    if len(shas) > 1:
        result.warnings.append(
            "the folders ran different versions of the manifest; jobs are matched by job id"
        )
    with built_beside(dest, "merging") as work:
        with StateStore.open(work) as store:
            rows = sorted((row for row, _ in chosen.values()), key=lambda r: r.position)
            store.import_jobs(
                rows, _ledger(sources, chosen), **_meta(sources),
                **({"origin": origin} if origin else {}),
            )  # fmt: skip
            for row, source in chosen.values():
                for out in row.files:
                    if out.name and not out.error:
                        linked = place_file(source.folder, work, out.name, out.sha256)
                        result.linked += linked
                        result.copied += not linked
            if origin == og.SIMULATOR:
                (work / ".simulator").mkdir(exist_ok=True)  # a simulated folder, as its shards
            meta = _meta(sources)
            facts: RunFacts = {
                "origin": origin or meta.get("api_base", ""),
                "name": sources[0].meta.get("name", ""),
                "manifest": sources[0].meta.get("manifest", ""),
                "api_calls": json.loads(meta["api_calls"]),
                "merged_from": [str(s.folder) for s in sources],
                **_money(meta),
            }
            write_report(work, ReportJobs.read(store), facts=facts)
    return result


def read_folder(
    folder: Path, what: str = "the folders the shards ran in (their --run-dir)"
) -> Source:
    """A run folder's meta, reported jobs and ledger; StateError when it is not one."""
    if not (folder / STATE_FILE).is_file():
        raise StateError(
            f"{folder}: no {STATE_FILE} here, so not a run folder; give {what}, e.g. the "
            "downloaded artifacts"
        )
    with StateStore.open(folder, create=False, lock=False) as store:
        return Source(folder, store.meta(), store.rows(in_manifest_only=True), store.attempts())


def one_origin(sources: Sequence[Source], *, doing: str) -> str | None:
    """The origin every folder's results came from; StateError (exit 2) naming the folders
    when they differ: simulated and real results never end up in one folder. `doing` is what
    is refused ('merge', 'approve')."""
    origins = {s.folder: og.recorded(s.meta, s.folder) for s in sources}
    # A folder that records no origin matches none, not any: its results could be simulated.
    if len(set(origins.values())) > 1:
        lines = [f"  {folder}: results from {og.label(o or 'an unknown origin')}"
                 for folder, o in origins.items()]  # fmt: skip
        raise StateError(
            f"the folders hold results from different origins; refusing to {doing} them (a "
            "simulated result must never pass for a real one):\n" + "\n".join(lines)
        )
    return next(iter(origins.values()))


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


def _combine(sources: list[Source]) -> tuple[dict[str, tuple[JobRow, Source]], int]:
    chosen: dict[str, tuple[JobRow, Source]] = {}
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


def _conflict(job_id: str, a: tuple[JobRow, Source], b: tuple[JobRow, Source]) -> str:
    def say(row: JobRow, source: Source) -> str:
        status, request_id, shas = _result(row)
        sha = ",".join(s[:12] for s in shas) or "-"
        return f"{source.folder}: {status}, request {request_id or '-'}, sha256 {sha}"

    return f"  job {job_id}: {say(*a)} | {say(*b)}"


def _meta(sources: list[Source]) -> dict[str, str]:
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
    # Each shard ran on its share of the cap and estimated its own jobs: the sweep's are sums.
    for key in ("max_cost_usd", "est_cost_usd"):
        values = [s.meta.get(key, "") for s in sources]
        if all(values):
            meta[key] = plain(sum((Decimal(v) for v in values), Decimal(0)))
    meta["unpriced_jobs"] = str(sum(int(s.meta.get("unpriced_jobs") or 0) for s in sources))
    return meta


def _ledger(sources: list[Source], chosen: dict[str, tuple[JobRow, Source]]) -> list[Attempt]:
    """Every attempt of every folder, except a duplicate job's in the folders it was not taken
    from (the same attempts twice); jobs a folder no longer reports still count."""
    out = []
    for source in sources:
        for attempt in source.attempts:
            owner = chosen.get(attempt.job_id)
            if owner is None or owner[1] is source:
                out.append(attempt)
    return out


def _money(meta: dict[str, str]) -> RunFacts:
    """The plan's estimate, unpriced jobs and the cap, for summary.json, as `_meta` summed
    them."""

    def number(key: str) -> float | None:
        return float(meta[key]) if meta.get(key) else None

    return {
        "est_cost_usd": number("est_cost_usd"),
        "unpriced_jobs": int(meta.get("unpriced_jobs") or 0),
        "max_cost_usd": number("max_cost_usd"),
    }


def place_file(
    src_root: Path,
    dest_root: Path,
    name: str,
    sha256: str,
    *,
    doing: str = "merge",
    again: str = _AGAIN,
) -> bool:
    """Hard-link (else copy) one output file of SRC_ROOT into DEST_ROOT and check its
    sha256; True when linked. Only a regular file is taken, and no link on its way is
    followed. `again` is the advice when the file is not as recorded."""
    parts = Path(name).parts
    if not parts or parts[0] != "files" or ".." in parts or Path(name).is_absolute():
        raise StateError(f"{src_root}: {name}: not a path under files/; state.db is damaged")
    src, dest = src_root / name, dest_root / name
    _check_regular(src_root, parts, doing, again)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        linked = _link_or_copy(src, dest)
        ok = stat.S_ISREG(os.lstat(dest).st_mode) and _sha256(dest) == sha256
    except OSError:  # swapped for a link or removed since the check: refused all the same
        ok, linked = False, False
    if not ok:
        raise StateError(
            f"{src_root}: {name}: its sha256 is not the one state.db recorded (damaged or "
            f"changed); {again} in its folder"
        )
    return linked


def _check_regular(src_root: Path, parts: tuple[str, ...], doing: str, again: str) -> None:
    """StateError naming the path unless files/, each folder below it and the file itself are
    what they seem: a symbolic link anywhere is refused, never followed (it could point
    anywhere, and be re-pointed once checked)."""
    path = src_root
    for depth, part in enumerate(parts, 1):
        path = path / part
        rel = "/".join(parts[:depth])
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise StateError(
                f"{src_root}: {rel} is missing; {again} in its folder to download it"
            ) from None
        last = depth == len(parts)
        if stat.S_ISREG(mode) if last else stat.S_ISDIR(mode):
            continue
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or folder"
        raise StateError(
            f"{src_root}: {rel} is {what}; {doing} takes only the regular files a run wrote "
            f"and never follows a link: put the file itself there, or {again} in its folder"
        )


def _link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link `src` at `dest` (the link itself if `src` became one: never its target),
    else copy its bytes, opened without following a link; True when linked."""
    if os.link in os.supports_follow_symlinks:
        try:
            os.link(src, dest, follow_symlinks=False)
            return True
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fin, open(dest, "xb") as fout:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise OSError(f"{src}: not a regular file")
        shutil.copyfileobj(fin, fout, _CHUNK)
    return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

"""Shard run folders -> one run folder: state.db, files/ (linked or copied, sha256-verified),
report.csv, summary.json and report.html, as if one run had done every shard's jobs.

The merged folder is built beside its destination and renamed into place at the end, so it is
either whole or absent. Every job's row and every attempt of the folders' ledgers is copied
through StateStore (the run folder's format keeps its one home in state.py): the merged
ledger is the sum of the shards', so it shows what the whole sweep spent against the whole
cap (the sum of the shards' caps).

The folders are read a page at a time and the merged state.db is written as they are read:
whether a job was seen before, and in which folder, is looked up in the merged state.db
being built, so memory holds a page, not the sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

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
_SHARDS = "the folders the shards ran in (their --run-dir)"
_CHUNK = 1 << 20
_PAGE = 2000  # jobs (and attempts) read from a folder and written to the merged one at a time
T = TypeVar("T")


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
class Folder:
    """A run folder and its meta."""

    folder: Path
    meta: dict[str, str]


@dataclass(frozen=True)
class Source(Folder):
    """What approve reads of a run folder: its meta, reported jobs and ledger."""

    rows: list[JobRow]
    attempts: list[Attempt]


def merge_runs(
    folders: Sequence[str | os.PathLike[str]],
    into: str | os.PathLike[str],
    *,
    page: int = _PAGE,
) -> MergeResult:
    """Merge the run folders into `into` (new or empty); StateError when they disagree.

    The folders are read `page` jobs (and attempts) at a time and the merged state.db is
    written as they are read: memory does not grow with the number of jobs."""
    dest = Path(into)
    sources = [_look_at(Path(f)) for f in folders]
    _check_destination(dest, [s.folder for s in sources])
    origin = one_origin(sources, doing="merge")
    result = MergeResult(into=dest)
    shas = {s.meta.get("manifest_sha256") for s in sources}
    if len(shas) > 1:
        result.warnings.append(
            "the folders ran different versions of the manifest; jobs are matched by job id"
        )
    meta = _meta(sources)
    with built_beside(dest, "merging") as work:
        with StateStore.open(work) as store:
            result.jobs, result.duplicates = _take_rows(store, sources, page)
            _place_files(store, sources, work, result)
            _take_ledger(store, sources, page)
            with store.batch(durable=True):  # every page above is made durable with it
                store.set_meta(**meta, **({"origin": origin} if origin else {}))
            if origin == og.SIMULATOR:
                (work / ".simulator").mkdir(exist_ok=True)  # a simulated folder, as its shards
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


def _look_at(folder: Path, what: str = _SHARDS) -> Folder:
    """A run folder and its meta; StateError when it is not one (`what` says which folders
    were wanted)."""
    with _opened(folder, what) as store:
        return Folder(folder, store.meta())


def read_folder(folder: Path, what: str = _SHARDS) -> Source:
    """A run folder's meta, reported jobs and ledger; StateError when it is not one."""
    with _opened(folder, what) as store:
        return Source(folder, store.meta(), store.rows(in_manifest_only=True), store.attempts())


def _opened(folder: Path, what: str = _SHARDS) -> StateStore:
    """The run folder's state.db opened to read; StateError when it has none."""
    if not (folder / STATE_FILE).is_file():
        raise StateError(
            f"{folder}: no {STATE_FILE} here, so not a run folder; give {what}, e.g. the "
            "downloaded artifacts"
        )
    return StateStore.open(folder, create=False, lock=False)


def one_origin(sources: Sequence[Folder], *, doing: str) -> str | None:
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


def _pages(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while page := list(itertools.islice(it, size)):
        yield page


@dataclass
class _Tally:
    """What taking the folders' rows found: jobs, duplicates and conflicts (the first
    `_MAX_CONFLICTS` said)."""

    jobs: int = 0
    duplicates: int = 0
    conflicts: int = 0
    lines: list[str] = field(default_factory=list)

    def conflict(self, job_id: str, a: tuple[JobRow, Folder], b: tuple[JobRow, Folder]) -> None:
        self.conflicts += 1
        if len(self.lines) < _MAX_CONFLICTS:
            self.lines.append(_conflict(job_id, a, b))


def _take_rows(store: StateStore, sources: list[Folder], page: int) -> tuple[int, int]:
    """Every reported job of the folders into `store`, a page at a time, each job's row taken
    from the first folder that holds a result for it (any folder's, when none does); (jobs,
    duplicates). StateError when two folders hold different results for a job."""
    tally = _Tally()
    for number, source in enumerate(sources):
        with _opened(source.folder) as reading, reading.snapshot():
            for rows in _pages(reading.iter_rows(in_manifest_only=True), page):
                taken = store.taken(r.job_id for r in rows)
                store.take_rows(_chosen(rows, taken, sources, source, tally), number)
    if tally.conflicts:
        more = tally.conflicts - _MAX_CONFLICTS
        lines = tally.lines + ([f"... and {more} more"] if more > 0 else [])
        raise StateError(
            f"{tally.conflicts} job(s) have different results in two folders; refusing to "
            "merge (leave one of the two folders out, or run that job again in one):\n"
            + "\n".join(lines)
        )
    return tally.jobs, tally.duplicates


def _chosen(
    rows: list[JobRow],
    taken: dict[str, tuple[JobRow, int]],
    sources: list[Folder],
    source: Folder,
    tally: _Tally,
) -> list[JobRow]:
    """The rows of a page of `source` to take, given the rows taken before for their jobs
    (`taken`: each with the number of its folder in `sources`): a new job, or a result in
    place of an untouched job. A duplicate is counted, a conflict told to `tally`."""
    out = []
    for row in rows:
        seen = taken.get(row.job_id)
        if seen is None:
            tally.jobs += 1
            out.append(row)
        elif _untouched(seen[0]) and not _untouched(row):
            out.append(row)
        elif _untouched(row):
            continue
        elif _result(seen[0]) == _result(row):
            tally.duplicates += 1
        else:
            tally.conflict(row.job_id, (seen[0], sources[seen[1]]), (row, source))
    return out


def _conflict(job_id: str, a: tuple[JobRow, Folder], b: tuple[JobRow, Folder]) -> str:
    def say(row: JobRow, source: Folder) -> str:
        status, request_id, shas = _result(row)
        sha = ",".join(s[:12] for s in shas) or "-"
        return f"{source.folder}: {status}, request {request_id or '-'}, sha256 {sha}"

    return f"  job {job_id}: {say(*a)} | {say(*b)}"


def _place_files(store: StateStore, sources: list[Folder], work: Path, result: MergeResult) -> None:
    """Each taken job's files, from the folder its row was taken from, read from `store` with
    a cursor once every row is taken: a merge refused for a conflict has copied no file."""
    for number, files in store.taken_files():
        for out in files:
            if out.name and not out.error:
                linked = place_file(sources[number].folder, work, out.name, out.sha256)
                result.linked += linked
                result.copied += not linked


def _take_ledger(store: StateStore, sources: list[Folder], page: int) -> None:
    """Every attempt of every folder, except a duplicate job's in the folders it was not taken
    from (the same attempts twice); jobs a folder no longer reports still count. A page at a
    time."""
    for number, source in enumerate(sources):
        with _opened(source.folder) as reading, reading.snapshot():
            for attempts in _pages(reading.iter_attempts(), page):
                owners = store.taken_from({a.job_id for a in attempts})
                store.append_attempts(a for a in attempts if owners.get(a.job_id, number) == number)


def _meta(sources: list[Folder]) -> dict[str, str]:
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

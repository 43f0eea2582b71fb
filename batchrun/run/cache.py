"""The cross-run cache (`--cache DIR` / `run.cache`): a succeeded job's output and files, keyed
by model id + canonical inputs (+ repeat index) + the sha256 of the model's canonical input
schema (not of its schema file: a re-pull that changes only the price or `fetched_at` keeps
every key) + the origin of the results (the simulator or an API base: a simulated result never
serves a real run, nor the other way round).

Layout: DIR/entries/<key[:2]>/<key>/ holds entry.json and the job's files. An entry is made in
DIR/.batchrun-tmp/ (files copied and hashed, entry.json last, all fsynced) and renamed into
place, so a reader sees an entry whole or not at all, whatever runs share the folder and
however they die; nothing in DIR that batchrun did not name is ever removed. A reader trusts
nothing: entry.json must parse and match the key and the origin, every file must be a regular
file (a symbolic link is refused, never followed) with the size and sha256 entry.json gives,
and the cost a finite amount; otherwise the entry is damaged, reported and not used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from batchrun import __version__
from batchrun.catalog.pricing import MAX_PRICE_USD
from batchrun.errors import UsageError
from batchrun.store.atomic import fsync_dir, open_atomic, write_bytes
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import SUCCEEDED, JobRow, OutputFile
from batchrun.store.state import StateStore
from batchrun.util import localref

if TYPE_CHECKING:
    from batchrun.plan.build import Plan

ENTRY = "entry.json"
# 1: keyed by the schema file's sha256; 2: by the canonical input schema and the origin (the
# entries of format 1 simply miss once, then are made again).
FORMAT = 2
TMP = ".batchrun-tmp"  # the cache's own temporaries: a name no user folder has
_OURS = re.compile(r"^[0-9a-f]{64}\.(\d+\.[0-9a-f]{8}|old\.[0-9a-f]{8})$")
_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_STALE_TMP_S = 24 * 3600  # a temp entry older than this was left by a killed run


class CacheError(Exception):
    """An entry is damaged (why)."""


@dataclass(frozen=True)
class Hit:
    """A cache entry read and checked: what the job's row becomes."""

    key: str
    folder: Path
    output: Any
    cost_usd: float | None
    files: list[dict[str, Any]]  # name (a plain file name), url, sha256, size


_RESTORE_PAGE = 1000  # pending jobs looked up at a time (one commit for the hits among them)


@dataclass
class Restored:
    """What `Cache.restore` did: jobs taken, money saved, entries found damaged."""

    jobs: int = 0
    saved_usd: float = 0.0
    damaged: list[str] = field(default_factory=list)


def entry_key(
    model_id: str, inputs_json: str, schema_sha256: str, repeat: int = 0, origin: str = ""
) -> str:
    """The cache key of a job (repeats of one combination are distinct results)."""
    text = (
        f"batchrun-cache/{FORMAT}\n{model_id}\n{inputs_json}\n{schema_sha256}\n#{repeat}\n{origin}"
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_inputs(inputs: dict[str, Any]) -> str:
    """The grid's canonical JSON of a job's inputs (sorted keys, compact), a local file by its
    identity (sha256 and type), never its path."""
    return json.dumps(localref.identity(inputs), sort_keys=True, separators=(",", ":"))


class Cache:
    """One cache folder, as seen by runs of one origin. `schema_sha256` maps a model id to the
    hash of its canonical input schema ("" if none)."""

    def __init__(self, root: Path, schema_sha256: dict[str, str], origin: str = "") -> None:
        self.root = Path(root)
        self.schema_sha256 = schema_sha256
        self.origin = origin
        self.entries = self.root / "entries"
        self.tmp = self.root / TMP
        self.damaged: set[str] = set()  # keys found damaged this run: replaced when stored

    @classmethod
    def open(cls, root: str | Path, schema_sha256: dict[str, str], origin: str = "") -> Cache:
        """Make the folder if needed; UsageError (exit 2) when it cannot be a cache folder."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise UsageError(f"cache {root}: is a file, not a folder; give the cache a folder path")
        try:
            (root / "entries").mkdir(parents=True, exist_ok=True)
            (root / TMP).mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cache {root}: cannot make the folder ({exc.strerror or exc}); give the cache "
                "a folder you can write"
            ) from None
        cache = cls(root, schema_sha256, origin)
        cache._sweep_tmp()
        return cache

    def key(self, row: JobRow) -> str:
        inputs_json = canonical_inputs(row.inputs)
        schema = self.schema_sha256.get(row.model_id, "")
        return entry_key(row.model_id, inputs_json, schema, row.repeat, self.origin)

    def folder(self, key: str) -> Path:
        return self.entries / key[:2] / key

    # ---- reading ------------------------------------------------------------------------

    def lookup(self, row: JobRow) -> Hit | None:
        """The job's entry, checked; None when absent. CacheError when it is damaged."""
        key = self.key(row)
        folder = self.folder(key)
        for way in (folder.parent, folder):
            if way.is_symlink():
                raise CacheError(f"{way} is a symbolic link; not followed")
        if not folder.is_dir():
            return None
        try:
            with _open_regular(folder / ENTRY) as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except FileNotFoundError:
            raise CacheError(f"no {ENTRY}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CacheError(f"{ENTRY} unreadable ({exc})") from None
        if not isinstance(data, dict) or data.get("key") != key or data.get("format") != FORMAT:
            raise CacheError(f"{ENTRY} is not this job's entry")
        # The origin is in the key too; this check also refuses an entry that records none
        # (made before origins were recorded, or by hand): an unknown origin matches no run.
        if not self.origin or data.get("origin") != self.origin:
            raise CacheError(f"{ENTRY} holds results from another origin")
        files = data.get("files")
        if not isinstance(files, list) or not all(_file_ok(f) for f in files):
            raise CacheError(f"{ENTRY} has a bad file list")
        _check_files(folder, files)
        cost = data.get("cost_usd")
        if cost is not None and not _cost_ok(cost):
            raise CacheError(f"{ENTRY} has a bad cost_usd ({str(cost)[:20]})")
        return Hit(key, folder, data.get("output"), cost, files)

    def place(self, run_dir: Path, job_id: str, hit: Hit) -> list[OutputFile]:
        """Hard-link (else copy) the entry's files into files/<job_id>/, each checked against
        its sha256 once in place; CacheError when one differs (changed since lookup)."""
        out = []
        target = run_dir / "files" / job_id
        target.mkdir(parents=True, exist_ok=True)
        for way in (target.parent, target):
            if not stat.S_ISDIR(os.lstat(way).st_mode):
                raise CacheError(f"{way} is a symbolic link; nothing is written through it")
        for f in hit.files:
            src, dst = hit.folder / f["name"], target / f["name"]
            part = dst.with_name(dst.name + ".part")
            part.unlink(missing_ok=True)
            try:
                if not stat.S_ISREG(os.lstat(src).st_mode):  # a link planted after lookup
                    raise CacheError(f"{src} is not a regular file; not followed")
                _link_or_copy(src, part)
                size, digest = _hash_file(part)  # a link swapped in meanwhile: refused here
            except CacheError:
                part.unlink(missing_ok=True)
                raise
            except OSError as exc:
                part.unlink(missing_ok=True)
                raise CacheError(f"{f['name']}: cannot copy ({exc.strerror or exc})") from None
            if (size, digest) != (f["size"], f["sha256"]):
                part.unlink(missing_ok=True)
                raise CacheError(f"{f['name']}: sha256 differs from {ENTRY}")
            os.replace(part, dst)
            name = f"files/{job_id}/{f['name']}"
            out.append(OutputFile(url=f["url"], name=name, sha256=digest, size=size))
        fsync_dir(target)
        return out

    # ---- writing ------------------------------------------------------------------------

    def storable(self, run_dir: Path, row: JobRow) -> bool:
        """A succeeded job (not itself from the cache) whose every output file is on disk."""
        if row.status != SUCCEEDED or row.cached:
            return False
        if len(row.files) != len(collect_urls(row.output)):
            return False
        return all(f.name and not f.error and (run_dir / f.name).is_file() for f in row.files)

    def store(self, run_dir: Path, row: JobRow) -> bool:
        """Write the job's entry unless a good one is there; False when a file did not verify
        (nothing is written then)."""
        key = self.key(row)
        final = self.folder(key)
        if final.is_dir() and key not in self.damaged:
            return True  # there already (checked in full when it is read)
        work = self.tmp / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            files = []
            for f in row.files:
                base = Path(f.name).name
                size, digest = _copy_hashed(run_dir / f.name, work / base)
                if (size, digest) != (f.size, f.sha256):
                    return False
                files.append({"name": base, "url": f.url, "sha256": digest, "size": size})
            entry = {
                "format": FORMAT,
                "key": key,
                "model_id": row.model_id,
                "inputs": row.inputs,
                "repeat": row.repeat,
                "input_schema_sha256": self.schema_sha256.get(row.model_id, ""),
                "origin": self.origin,
                "output": row.output,
                "cost_usd": row.cost_usd,
                "files": files,
                "job_id": row.job_id,
                "made": time.time(),
                "batchrun_version": __version__,
            }
            write_bytes(work / ENTRY, json.dumps(entry, indent=1).encode("utf-8"))
            fsync_dir(work)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._replace(work, final)
            fsync_dir(final.parent)
            return True
        except (OSError, CacheError):  # CacheError: a run folder's file that is a link
            return False
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _replace(self, work: Path, final: Path) -> None:
        """Rename `work` to `final`; a damaged entry there is moved aside first. Another run
        that put a good entry there first wins (both are the same job's result)."""
        try:
            os.rename(work, final)
            return
        except OSError:
            if not final.exists():
                raise
        aside = self.tmp / f"{final.name}.old.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, aside)
        except OSError:
            return  # gone or replaced meanwhile by another run
        try:
            os.rename(work, final)
        except OSError:
            pass
        shutil.rmtree(aside, ignore_errors=True)

    def _sweep_tmp(self) -> None:
        """Remove temp entries a killed run left (old enough that no live run is writing); only
        names this cache gives its own temporaries, never anything else in the folder."""
        now = time.time()
        for path in self.tmp.iterdir():
            try:
                if _OURS.match(path.name) and now - path.lstat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _check_files(folder: Path, files: list[dict[str, Any]]) -> None:
    """Every file the entry lists is there with its size and sha256; else CacheError."""
    for f in files:
        try:
            size, digest = _hash_file(folder / f["name"])
        except OSError:
            raise CacheError(f"{f['name']} missing") from None
        if size != f["size"] or digest != f["sha256"]:
            raise CacheError(f"{f['name']}: sha256 or size differs from {ENTRY}")


def _cost_ok(cost: object) -> bool:
    return (
        isinstance(cost, (int, float))
        and not isinstance(cost, bool)
        and math.isfinite(cost)
        and 0 <= cost <= MAX_PRICE_USD
    )


def _file_ok(f: Any) -> bool:
    if not isinstance(f, dict):
        return False
    name = f.get("name")
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", ENTRY)
        and "/" not in name
        and "\\" not in name
        and isinstance(f.get("sha256"), str)
        and isinstance(f.get("size"), int)
        and isinstance(f.get("url"), str)
    )


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading when it is a regular file. A symbolic link is never followed
    (O_NOFOLLOW: a link planted after any check fails here too) and, like a FIFO or a device,
    is a CacheError naming it; OSError when it cannot be opened (missing, say)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)  # NONBLOCK: a FIFO never hangs
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise CacheError(f"{path} is a symbolic link; not followed") from None
        raise
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise CacheError(f"{path} is not a regular file; not read")
    return fh


def _hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a regular file (CacheError for a link or anything else)."""
    digest = hashlib.sha256()
    size = 0
    with _open_regular(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy the regular file src to dst (fsynced), hashing what was written."""
    digest = hashlib.sha256()
    size = 0
    with _open_regular(src) as fin, open_atomic(dst, sync_dir=False) as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link src at dst (the link itself should src have become one, never its target),
    else copy its bytes through `_open_regular`."""
    if os.link in os.supports_follow_symlinks:
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    with _open_regular(src) as fin, open_atomic(dst, sync_dir=False) as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)


def schema_hashes(schemas: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """model id -> sha256 of its canonical input schema ("" when it has none)."""
    out = {}
    for model, schema in schemas.items():
        text = "" if schema is None else json.dumps(schema, sort_keys=True, separators=(",", ":"))
        out[model] = "" if schema is None else hashlib.sha256(text.encode()).hexdigest()
    return out


# ---- a run's use of the cache --------------------------------------------------------------


def open_for_plan(
    folder: str | Path | None, plan: Plan, origin: str, *, models: Iterable[str] | None = None
) -> Cache | None:
    """The cache at `folder` (None: no cache), keyed with the input schemas of the plan's
    models (`models`: of the plan's jobs, when the plan comes without them), serving runs of
    `origin` only."""
    if folder is None:
        return None
    models = {j.model_id for j in plan.jobs} if models is None else set(models)
    return Cache.open(
        Path(folder), schema_hashes({m: plan.schemas.input_schema(m) for m in models}), origin
    )


def restore_pending(
    cache: Cache,
    store: StateStore,
    run_dir: Path,
    restored: Restored,
    *,
    chosen: Callable[[str], bool] | None = None,
    wall: Callable[[], float],
    echo: Callable[[str], None],
) -> None:
    """Pending jobs of the manifest (`chosen` ones only) found in the cache become succeeded
    (cached), files in place: state.db read a page at a time, in plan order."""
    after = -1
    while True:
        page = store.pending_page(after, _RESTORE_PAGE)
        if not page:
            break
        after = page[-1].position
        with store.batch():
            for row in page:
                if chosen is None or chosen(row.job_id):
                    _restore(cache, store, run_dir, row, restored, wall)
    for line in restored.damaged[:5]:
        echo(f"cache: damaged entry ignored ({line}); the job runs")
    if len(restored.damaged) > 5:
        echo(f"cache: {len(restored.damaged) - 5} more damaged entries ignored")


def _restore(
    cache: Cache,
    store: StateStore,
    run_dir: Path,
    row: JobRow,
    restored: Restored,
    wall: Callable[[], float],
) -> None:
    try:
        hit = cache.lookup(row)
        files = None if hit is None else cache.place(run_dir, row.job_id, hit)
    except CacheError as exc:
        cache.damaged.add(cache.key(row))
        restored.damaged.append(f"job {row.job_id}: {exc}")
        return
    if hit is None or files is None:
        return
    store.record_cached(
        row.job_id, finished_at=wall(), output=hit.output, saved_usd=hit.cost_usd, files=files
    )
    restored.jobs += 1
    restored.saved_usd += hit.cost_usd or 0.0


def fill(
    cache: Cache, run_dir: Path, rows: Iterable[JobRow], *, echo: Callable[[str], None]
) -> None:
    """Every succeeded job whose files all verified goes into the cache (once)."""
    unverified = sum(
        1 for row in rows if cache.storable(run_dir, row) and not cache.store(run_dir, row)
    )
    if unverified:
        echo(f"cache: {unverified} job(s) not cached: their files did not verify")

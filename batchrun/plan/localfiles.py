"""Local files as inputs: `{local: PATH}` (one file) and `{glob: PATTERN}` (one value per
matching file, sorted by path) in a manifest, read into references (util/localref.py).

Paths are relative to the manifest's folder and confined to it like `{file:}` (sources.py,
same BATCHRUN_ALLOW_OUTSIDE_SOURCES override). Each file is read once: its sha256 and its type
(from its magic bytes) are kept by path, size and modification time, so `validate`, `plan`
and `run` in one process, or a file named twice, read it once. Nothing is uploaded here.

Where a reference may stand: a `{local:}` anywhere a value goes (fixed inputs, a matrix or
vars list, a case row, an item of a plural field's list); a `{glob:}` as a whole matrix or
vars axis, or as a case row's value (the row is repeated once per file). Whether the field
takes a media URL is checked against the model's schema later (build.py, `field_problems`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.plan.sources import Problem, Where, outside
from batchrun.util import localref
from batchrun.util.media import SNIFF_BYTES, kind_of, sniff

_CHUNK = 1024 * 1024
# (real path, size, mtime_ns) -> (sha256, mime or None)
_HASHES: dict[tuple[str, int, int], tuple[str, str | None]] = {}

MEDIA_KINDS = ("image", "video", "audio")


@dataclass(frozen=True)
class FileFacts:
    """What one read of a file found: its bytes' sha256, their count and their type."""

    sha256: str
    size: int
    mime: str | None


class FileProblem(Exception):
    """A local file that cannot be used; the message says which and why."""


def read_facts(path: Path) -> FileFacts:
    """The sha256, size and sniffed type of a regular file, read once per (path, size,
    mtime); FileProblem when it is missing, not a regular file, or unreadable."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileProblem(f"file not found: {path}") from None
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileProblem(f"{path} is not a regular file (a folder, a device or a pipe)")
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns)
    known = _HASHES.get(key)
    if known is None:
        known = _HASHES[key] = _hash(path)
    return FileFacts(known[0], info.st_size, known[1])


def _hash(path: Path) -> tuple[str, str | None]:
    digest = hashlib.sha256()
    head = b""
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                if not head:
                    head = chunk[:SNIFF_BYTES]
                digest.update(chunk)
    except OSError as exc:
        raise FileProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest(), sniff(head)


def resolve_local(data: dict[str, Any], base: Path) -> tuple[dict[str, Any], list[Problem]]:
    """`data` (already a copy) with every `{local:}` and `{glob:}` replaced by references."""
    files = _Files(base)
    scopes: list[tuple[Where, dict[str, Any]]] = [([], data)]
    scopes += [(["models", i], m) for i, m in enumerate(data.get("models") or [])]
    for prefix, scope in scopes:
        inputs = scope.get("inputs")
        if prefix and isinstance(inputs, dict):
            for key, value in inputs.items():
                inputs[key] = files.value(value, [*prefix, "inputs", key], glob_ok=False)
        for axes in ("vars", "matrix"):
            for key, values in (scope.get(axes) or {}).items():
                where = [*prefix, axes, key]
                if _is_source(values, "glob"):
                    scope[axes][key] = files.glob(values["glob"], [*where, "glob"])
                elif isinstance(values, list):
                    scope[axes][key] = [
                        files.value(v, [*where, i], glob_ok=False) for i, v in enumerate(values)
                    ]
        cases = scope.get("cases")
        if isinstance(cases, list):
            scope["cases"] = files.rows(cases, [*prefix, "cases"])
    return data, files.problems


def uses_local(value: Any) -> bool:
    """Whether a manifest holds a `{local:}` or `{glob:}` anywhere (before resolving)."""
    if isinstance(value, dict):
        if _is_source(value, "local") or _is_source(value, "glob"):
            return True
        return any(uses_local(v) for v in value.values())
    if isinstance(value, list):
        return any(uses_local(v) for v in value)
    return False


def _is_source(value: Any, key: str) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(key), str)


class _Files:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[Problem] = []

    def value(self, value: Any, where: Where, *, glob_ok: bool) -> Any:
        if _is_source(value, "local"):
            return self.ref(value["local"], [*where, "local"])
        if _is_source(value, "glob") and not glob_ok:
            self.problems.append(
                (
                    [*where, "glob"],
                    "{glob:} gives one value per file: use it as a whole matrix or vars axis "
                    "(matrix: {image_url: {glob: 'photos/*.jpg'}}) or as a case row's value; "
                    "name one file with {local: PATH}",
                )
            )
            return value
        if isinstance(value, list):
            return [self.value(v, [*where, i], glob_ok=False) for i, v in enumerate(value)]
        return value

    def ref(self, name: str, where: Where) -> Any:
        path = self.base / name
        why = outside(path, self.base)
        if why:
            self.problems.append((where, why))
            return {"local": name}
        try:
            facts = read_facts(path)
        except FileProblem as exc:
            self.problems.append((where, f"{exc}; fix the path (relative to the manifest)"))
            return {"local": name}
        if facts.mime is None or kind_of(facts.mime) not in MEDIA_KINDS:
            self.problems.append(
                (
                    where,
                    f"{path} is not an image, video or audio file batchrun knows by its "
                    "content (PNG, JPEG, WebP, GIF, BMP, TIFF, AVIF, HEIC, MP4, MOV, WebM, "
                    "MKV, AVI, MP3, WAV, OGG, FLAC, M4A); convert it or name another file",
                )
            )
            return {"local": name}
        return localref.make(Path(name).as_posix(), facts.sha256, facts.size, facts.mime)

    def glob(self, pattern: str, where: Where) -> list[Any]:
        if Path(pattern).is_absolute():
            self.problems.append(
                (where, f"{pattern!r}: write the pattern relative to the manifest's folder")
            )
            return [{"local": pattern}]
        matches = sorted(p for p in self.base.glob(pattern) if not p.is_dir())
        if not matches:
            self.problems.append(
                (where, f"{pattern!r} matches no file in {self.base.resolve()}; fix the pattern")
            )
            return [{"local": pattern}]
        return [self.ref(p.relative_to(self.base).as_posix(), where) for p in matches]

    def rows(self, rows: list[Any], where: Where) -> list[Any]:
        out: list[Any] = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                out.append(row)
                continue
            globbed = [k for k, v in row.items() if _is_source(v, "glob")]
            fixed = {
                k: self.value(v, [*where, i, k], glob_ok=True)
                for k, v in row.items()
                if k not in globbed
            }
            if not globbed:
                out.append(fixed)
                continue
            if len(globbed) > 1:
                self.problems.append(
                    (
                        [*where, i, globbed[1]],
                        "one {glob:} per case row; put the other in the matrix",
                    )
                )
            key = globbed[0]
            files = self.glob(row[key]["glob"], [*where, i, key, "glob"])
            out.extend({**fixed, key: ref} for ref in files)
        return out

"""Manifest values read from files: `{file: x.txt}`, `{csv: f.csv, column: c}`, `cases: {csv:}`.

Paths are relative to the manifest's folder, and must stay inside it once every symlink is
resolved (a manifest from elsewhere must not read /proc/self/environ or ~/.ssh into prompts),
unless BATCHRUN_ALLOW_OUTSIDE_SOURCES=1 says otherwise. Values read from files are strings;
`grid` turns them into numbers or booleans where the model's schema asks for one.
"""

from __future__ import annotations

import copy
import csv
import io
import os
from pathlib import Path
from typing import Any

ALLOW_OUTSIDE = "BATCHRUN_ALLOW_OUTSIDE_SOURCES"

# Where in the manifest (mapping keys and list indexes, as json_path spells them), and what.
Where = list[str | int]
Problem = tuple[Where, str]


def resolve_sources(data: dict[str, Any], base: Path) -> tuple[dict[str, Any], list[Problem]]:
    """A copy of `data` with every file source replaced by the values it holds."""
    data = copy.deepcopy(data)
    problems: list[Problem] = []
    reader = _Reader(base, problems)
    scopes: list[tuple[Where, dict[str, Any]]] = [([], data)]
    scopes += [(["models", i], m) for i, m in enumerate(data.get("models") or [])]
    for prefix, scope in scopes:
        for axes in ("vars", "matrix"):
            for key, values in (scope.get(axes) or {}).items():
                if isinstance(values, dict) and "glob" not in values:  # localfiles.py's
                    scope[axes][key] = reader.values(values, [*prefix, axes, key])
        cases = scope.get("cases")
        if isinstance(cases, dict):
            scope["cases"] = reader.rows(cases["csv"], [*prefix, "cases"])
    return data, problems


class _Reader:
    def __init__(self, base: Path, problems: list[Problem]) -> None:
        self.base = base
        self.problems = problems
        self._texts: dict[str, str | None] = {}

    def _text(self, name: str, where: Where) -> str | None:
        if name not in self._texts:
            path = self.base / name
            why = outside(path, self.base)
            if why:
                self.problems.append((where, why))
                self._texts[name] = None
                return None
            try:
                self._texts[name] = path.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                self.problems.append((where, f"file not found: {path}"))
                self._texts[name] = None
            except (OSError, UnicodeDecodeError) as exc:
                self.problems.append((where, f"cannot read {path}: {exc}"))
                self._texts[name] = None
        return self._texts[name]

    def values(self, source: dict[str, Any], where: Where) -> list[str]:
        if "file" in source:
            text = self._text(source["file"], [*where, "file"])
            if text is None:
                return ["?"]
            values = [line.strip() for line in text.splitlines() if line.strip()]
            if not values:
                self.problems.append(([*where, "file"], f"{source['file']} has no values"))
            return values or ["?"]
        table = self._table(source["csv"], [*where, "csv"])
        if table is None:
            return ["?"]
        header, rows = table
        column = source["column"]
        if column not in header:
            self.problems.append(
                (
                    [*where, "column"],
                    f"no column {column!r} in {source['csv']}; columns: {', '.join(header)}",
                )
            )
            return ["?"]
        values = [row[column] for row in rows if row.get(column)]
        if not values:
            self.problems.append(([*where, "column"], f"column {column!r} is empty"))
        return values or ["?"]

    def rows(self, name: str, where: Where) -> list[dict[str, str]]:
        table = self._table(name, [*where, "csv"])
        if table is None:
            return [{}]
        header, rows = table
        bad = [h for h in header if not _is_key(h)]
        if bad:
            self.problems.append(
                (
                    [*where, "csv"],
                    f"{name}: column names must be field or var.NAME names, "
                    f"not {', '.join(map(repr, bad))}",
                )
            )
            return [{}]
        # An empty cell leaves the field out, so the model's default (or the fixed input) applies.
        out = [{k: v for k, v in row.items() if v != ""} for row in rows]
        if not out:
            self.problems.append(([*where, "csv"], f"{name} has no rows"))
        return out or [{}]

    def _table(self, name: str, where: Where) -> tuple[list[str], list[dict[str, str]]] | None:
        text = self._text(name, where)
        if text is None:
            return None
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            self.problems.append((where, f"{name} has no header row"))
            return None
        reader.fieldnames = header
        rows: list[dict[str, str]] = []
        for n, row in enumerate(reader, start=2):
            if None in row:
                self.problems.append((where, f"{name} line {n}: more cells than columns"))
                return None
            rows.append({k: (v or "").strip() for k, v in row.items()})
        return header, rows


def outside(path: Path, base: Path) -> str:
    """Why `path` may not be read: it resolves outside `base` ('' when it may)."""
    if os.environ.get(ALLOW_OUTSIDE, "") == "1":
        return ""
    folder = base.resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return f"cannot resolve {path}: {exc}"
    if real == folder or folder in real.parents:
        return ""
    return (
        f"{path} resolves to {real}, outside the manifest's folder {folder}; move or copy it "
        f"into that folder (or set {ALLOW_OUTSIDE}=1 to read files anywhere)"
    )


def _is_key(name: str) -> bool:
    bare = name[4:] if name.startswith("var.") else name
    return bare.isidentifier()

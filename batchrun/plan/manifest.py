"""YAML manifest -> validated `Manifest` record; every problem reported at once, with its line.

This is the only module that touches the raw YAML. Values read from files (`{file: ...}`,
`{csv: ...}`) are resolved here, relative to the manifest, so `grid.expand` stays pure.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from batchrun.catalog.models import schemas_root
from batchrun.errors import ManifestError
from batchrun.plan.expect import Expectations, expectations
from batchrun.plan.localfiles import resolve_local, uses_local
from batchrun.plan.settings import (
    OutputSettings,
    ReportSettings,
    RunSettings,
    UploadSettings,
    output_settings,
    run_settings,
    upload_settings,
)
from batchrun.plan.sources import resolve_sources

_MAX_NODES = 1_000_000  # a "billion laughs" alias bomb stops here, not in validation

# A place in the YAML: mapping keys and list indexes, as json_path spells them.
_Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. `data` is the YAML with file-sourced values resolved to lists."""

    path: Path
    name: str
    run: RunSettings
    outputs: OutputSettings
    data: dict[str, Any]
    sha256: str
    lines: _LineMap | None = field(default=None, compare=False, repr=False)
    # Models whose entry had a problem (a key left out): their jobs' inputs are incomplete,
    # so checking them would only echo that problem.
    unchecked_models: frozenset[str] = frozenset()
    report: ReportSettings = ReportSettings()
    expect: Expectations = Expectations()  # what each job's files must be (`expect:` blocks)
    uploads: UploadSettings = UploadSettings()
    # Whether any value is a local file ({local:}, {glob:}): its jobs' ids hash their identity.
    has_local: bool = False

    def line_suffix(self, where: str) -> str:
        """` (line N)` for a JSON path like `$.models[0].inputs.prompt`, when known."""
        if self.lines is None:
            return ""
        parts: list[str | int] = []
        for index, key in re.findall(r"\[(\d+)\]|\.([^.\[]+)", where):
            parts.append(int(index) if index else key)
        return self.lines.suffix(parts)


def manifest_schema_path() -> Path:
    """The absolute path of the manifest's JSON Schema, installed or in the checkout."""
    return schemas_root() / "manifest.schema.json"


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (schemas/manifest.schema.json)."""
    with manifest_schema_path().open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def json_path(parts: Iterable[object]) -> str:
    """['models', 0, 'id'] -> $.models[0].id"""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def load_manifest(path: str | Path) -> Manifest:
    """Read, parse and validate a manifest; raise ManifestError listing every problem."""
    manifest, problems = check_manifest(path)
    if problems or manifest is None:
        raise ManifestError(problems)
    return manifest


def check_manifest(path: str | Path) -> tuple[Manifest | None, list[str]]:
    """Every problem of a manifest, and the manifest as far as it can be used.

    With problems, the manifest returned (if any) leaves out the keys that have them, so its
    jobs' inputs can still be checked in the same pass; it is None when what is left cannot
    be expanded (a required key is wrong, a `{file:}` is missing). Unreadable files and YAML
    syntax errors raise ManifestError.
    """
    path = Path(path)
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{label}: cannot read the manifest: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{label}: not UTF-8 text (byte {exc.start})") from None
    node, data = _parse_yaml(text, label)
    lines = _LineMap(node)

    found = _schema_problems(data)
    problems = [f"{label}: {json_path(p)}: {msg}{lines.suffix(p)}" for p, msg in found]
    unchecked = _models_at(data, [p for p, _ in found])
    if found:
        usable = _without(data, [p for p, _ in found])
        if usable is not None:
            usable.setdefault("version", 1)  # reported above; not needed to expand the rest
        if usable is None or _schema_problems(usable):
            return None, problems
        data = usable

    data, source_problems = resolve_sources(data, path.parent)
    has_local = uses_local(data)
    if has_local:
        data, local_problems = resolve_local(data, path.parent)
        source_problems += local_problems
    problems += [f"{label}: {json_path(p)}: {msg}{lines.suffix(p)}" for p, msg in source_problems]
    run, run_problems = run_settings(data.get("run") or {})
    problems += [f"{label}: $.run.{k}: {msg}{lines.suffix(['run', k])}" for k, msg in run_problems]
    name = data.get("name") or _default_name(path)
    outputs, out_problems = output_settings(data.get("outputs") or {}, name)
    problems += [
        f"{label}: $.outputs.{k}: {msg}{lines.suffix(['outputs', k])}" for k, msg in out_problems
    ]
    expect, expect_problems = expectations(data, download=outputs.download)
    problems += [f"{label}: {json_path(p)}: {msg}{lines.suffix(p)}" for p, msg in expect_problems]
    uploads, up_problems = upload_settings(data.get("uploads") or {})
    problems += [
        f"{label}: $.uploads.{k}: {msg}{lines.suffix(['uploads', k])}" for k, msg in up_problems
    ]
    manifest = Manifest(
        path=path,
        name=name,
        run=run,
        outputs=outputs,
        data=data,
        sha256=hashlib.sha256(raw).hexdigest(),
        lines=lines,
        unchecked_models=unchecked,
        report=ReportSettings(**data.get("report", {})),
        expect=expect,
        uploads=uploads,
        has_local=has_local,
    )
    # A missing file's values are placeholders: the jobs they make are not worth checking.
    return (None if source_problems else manifest), problems


def _models_at(data: dict[str, Any], paths: list[_Path]) -> frozenset[str]:
    """The ids of the models whose entry holds one of `paths`."""
    models = data.get("models") if isinstance(data, dict) else None
    ids: set[str] = set()
    for path in paths:
        if len(path) > 2 and path[0] == "models" and isinstance(models, list):
            entry = models[path[1]] if isinstance(path[1], int) and path[1] < len(models) else None
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                ids.add(entry["id"])
    return frozenset(ids)


def _without(data: dict[str, Any], paths: list[_Path]) -> dict[str, Any] | None:
    """A copy of `data` without the mapping keys that hold the problems at `paths`.

    Each problem drops the deepest mapping key on its path (a list item takes its list with
    it, so the indexes of the rest, and their lines, stay right); None when a problem is
    at the top.
    """
    data = copy.deepcopy(data)
    cuts: list[tuple[dict[Any, Any], str | int]] = []
    for path in paths:
        node: Any = data
        cut = None
        for part in path:
            if isinstance(node, dict) and part in node:
                cut = (node, part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                break
        if cut is None:
            return None
        cuts.append(cut)
    for container, key in cuts:
        container.pop(key, None)
    return data


def _default_name(path: Path) -> str:
    # The stem may hold characters a run folder name should not; keep it readable and safe.
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.") or "run"


def _parse_yaml(text: str, label: str) -> tuple[yaml.Node | None, Any]:
    """Compose (for line numbers) and construct with safe-load semantics, in one parse: by
    libyaml where PyYAML has it (ten times faster; a manifest may list thousands of values),
    and again by PyYAML's own parser when that one refuses the text, so its words (and line)
    are those users see."""
    try:
        try:
            node, data = _compose(text, label, _LOADER)
        except yaml.YAMLError:
            if _LOADER is yaml.SafeLoader:
                raise
            node, data = _compose(text, label, yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1})" if mark else ""
        problem = exc.problem or str(exc)
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += "; only plain YAML is allowed (no !!python tags)"
        raise ManifestError(f"{label}: invalid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{label}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{label}: $: the YAML is nested too deeply") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ManifestError(
            f"{label}: $: the manifest must be a mapping (version: 1, models: ...), not {kind}"
        )
    return node, data


# libyaml's parser with PyYAML's safe constructor, when PyYAML was built with it.
_Loader = type[yaml.SafeLoader] | type[yaml.CSafeLoader]
_LOADER: _Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str, label: str, loader_type: _Loader) -> tuple[yaml.Node | None, Any]:
    loader = loader_type(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            dup = _duplicate_key(node)
            if dup:
                raise ManifestError(f"{label}: {dup}")
            if _expanded_size(node, {}) > _MAX_NODES:
                raise ManifestError(
                    f"{label}: $: more than {_MAX_NODES:,} values once YAML aliases are "
                    "expanded; put long value lists in a {file: ...} instead"
                )
        return node, loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once aliases are expanded (what validation will walk)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


def _duplicate_key(
    node: yaml.Node, path: tuple[object, ...] = (), visited: set[int] | None = None
) -> str | None:
    """Find a repeated mapping key: safe_load would silently keep only the last one."""
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias: already checked where it was defined
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else None
            if k is not None:
                if k in seen:
                    return (
                        f"{json_path((*path, k))}: duplicate key {k!r} "
                        f"(line {key.start_mark.line + 1}); keep only one"
                    )
                seen.add(k)
            found = _duplicate_key(value, (*path, k), visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, (*path, i), visited)
            if found:
                return found
    return None


class _LineMap:
    """JSON path -> YAML line, walking the composed node tree."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, parts: Iterable[str | int]) -> int | None:
        node = self.root
        best = None
        for part in parts:
            if node is None:
                break
            best = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                node = node.value[part] if 0 <= part < len(node.value) else None
            else:
                node = None
        return node.start_mark.line + 1 if node is not None else best

    def suffix(self, parts: Iterable[str | int]) -> str:
        line = self.line(parts)
        return f" (line {line})" if line else ""


def _schema_problems(data: Any) -> list[tuple[_Path, str]]:
    """Every schema problem, once, sorted by path (list indexes in numeric order)."""
    schema = manifest_schema()
    validator = Draft202012Validator(schema)
    out: set[tuple[_Path, str]] = set()
    for err in validator.iter_errors(data):
        out.update((tuple(p), m) for p, m in _explain(err, schema))
    return sorted(
        out,
        key=lambda pm: (
            [(1, x, "") if isinstance(x, int) else (0, 0, str(x)) for x in pm[0]],
            pm[1],
        ),
    )


def _explain(err: ValidationError, root: dict[str, Any]) -> list[tuple[list[str | int], str]]:
    """One readable message per jsonschema error (did-you-mean for unknown keys)."""
    path: list[str | int] = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        out: list[tuple[list[str | int], str]] = []
        for key in err.instance:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            out.append(([*path, key], f"unknown key {key!r}{hint}"))
        return out
    custom = err.schema.get("x-error") if isinstance(err.schema, dict) else None
    if custom is None and isinstance(err.schema, dict) and "$ref" in err.schema:
        custom = _deref(root, err.schema["$ref"]).get("x-error")
    if custom and err.validator in ("oneOf", "anyOf"):
        return [(path, f"{_short(err.instance)} {custom}")]
    if err.validator == "const" and path == ["version"]:
        return [(path, f"{_short(err.instance)}: only version 1 is known")]
    if err.validator == "pattern" and path and path[-1] == "name":
        return [(path, f"{_short(err.instance)}: use letters, digits, '.', '_' and '-' only")]
    # jsonschema quotes the whole offending value; a long list would drown the message.
    return [(path, err.message.replace(repr(err.instance), _short(err.instance), 1))]


def _deref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node.get(part, {})
    return node if isinstance(node, dict) else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

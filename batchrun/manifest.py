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
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from batchrun.errors import ManifestError
from batchrun.models import schemas_root
from batchrun.sources import resolve_sources

GIB = 1024**3
_MAX_NODES = 1_000_000  # a "billion laughs" alias bomb stops here, not in validation
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*/\s*(s|sec|second|min|minute)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40})


@dataclass(frozen=True)
class HaltRule:
    """`run.halt`: stop submitting once `min_finished` jobs finished and more than
    `failure_rate` of them failed or timed out."""

    failure_rate: float
    min_finished: int = 10


@dataclass(frozen=True)
class RunSettings:
    """How the batch is run (the manifest's `run:` block, parsed)."""

    rate_limit: float | None = 10.0  # API calls per second; None = unlimited
    max_in_flight: int | None = None  # None: derived from the rate and the run times seen
    poll_interval: float = 2.0  # seconds
    job_timeout: float | None = 1800.0  # seconds; None = never
    retries: int = 1
    max_jobs: int = 10000
    max_cost_usd: Decimal | None = None  # budget; None = none (exact: 0.1 stays 0.1)
    halt: HaltRule | None = None
    canary: int = 0  # jobs per model that must succeed before its others are sent; 0 = off
    cache: str | None = None  # the cross-run cache folder; None = off


@dataclass(frozen=True)
class OutputSettings:
    """Where results go (the manifest's `outputs:` block, parsed, `{name}` filled in)."""

    dir: str
    download: bool = True
    allow_hosts: tuple[str, ...] = ()
    max_file_bytes: int = 2 * GIB


@dataclass(frozen=True)
class ReportSettings:
    """The contact sheet's grid (the manifest's `report:` block): swept field names."""

    rows: str | None = None
    cols: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. `data` is the YAML with file-sourced values resolved to lists."""

    path: Path
    name: str
    run: RunSettings
    outputs: OutputSettings
    data: dict
    sha256: str
    lines: _LineMap | None = field(default=None, compare=False, repr=False)
    # Models whose entry had a problem (a key left out): their jobs' inputs are incomplete,
    # so checking them would only echo that problem.
    unchecked_models: frozenset[str] = frozenset()
    report: ReportSettings = ReportSettings()

    def line_suffix(self, where: str) -> str:
        """` (line N)` for a JSON path like `$.models[0].inputs.prompt`, when known."""
        if self.lines is None:
            return ""
        parts: list[str | int] = []
        for index, key in re.findall(r"\[(\d+)\]|\.([^.\[]+)", where):
            parts.append(int(index) if index else key)
        return self.lines.suffix(parts)


def parse_duration(value: object) -> float:
    """ "2s", "500ms", "30m", "1h" or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 2s, 500ms, 30m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration; write e.g. 2s, 500ms, 30m, 1h")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return seconds


def parse_rate(value: object) -> float:
    """ "10/s", "600/min" or a number (per second) -> calls per second (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate; write e.g. 10/s or 600/min")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a rate; write e.g. 10/s or 600/min")
        rate = float(m.group(1)) / (60.0 if m.group(2).startswith("min") else 1.0)
    if rate <= 0:
        raise ValueError(f"{value!r}: a rate must be positive")
    return rate


def parse_size(value: object) -> int:
    """500MB, 2GiB or a number of bytes -> bytes (> 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 500MB or 2GiB")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be positive")
    return size


def manifest_schema_path() -> Path:
    """The absolute path of the manifest's JSON Schema, installed or in the checkout."""
    return schemas_root() / "manifest.schema.json"


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (schemas/manifest.schema.json)."""
    with manifest_schema_path().open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def json_path(parts: Any) -> str:
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
    problems += [f"{label}: {json_path(p)}: {msg}{lines.suffix(p)}" for p, msg in source_problems]
    run, run_problems = _run_settings(data.get("run") or {})
    problems += [f"{label}: $.run.{k}: {msg}{lines.suffix(['run', k])}" for k, msg in run_problems]
    name = data.get("name") or _default_name(path)
    outputs, out_problems = _output_settings(data.get("outputs") or {}, name)
    problems += [
        f"{label}: $.outputs.{k}: {msg}{lines.suffix(['outputs', k])}" for k, msg in out_problems
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
    )
    # A missing file's values are placeholders: the jobs they make are not worth checking.
    return (None if source_problems else manifest), problems


def _models_at(data: dict, paths: list) -> frozenset[str]:
    """The ids of the models whose entry holds one of `paths`."""
    models = data.get("models") if isinstance(data, dict) else None
    ids = set()
    for path in paths:
        if len(path) > 2 and path[0] == "models" and isinstance(models, list):
            entry = models[path[1]] if isinstance(path[1], int) and path[1] < len(models) else None
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                ids.add(entry["id"])
    return frozenset(ids)


def _without(data: dict, paths: list[tuple]) -> dict | None:
    """A copy of `data` without the mapping keys that hold the problems at `paths`.

    Each problem drops the deepest mapping key on its path (a list item takes its list with
    it, so the indexes of the rest, and their lines, stay right); None when a problem is
    at the top.
    """
    data = copy.deepcopy(data)
    cuts: list[tuple[dict, Any]] = []
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
    """Compose (for line numbers) and construct with safe-load semantics, in one parse."""
    loader = yaml.SafeLoader(text)
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
        data = loader.construct_document(node) if node is not None else None
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
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ManifestError(
            f"{label}: $: the manifest must be a mapping (version: 1, models: ...), not {kind}"
        )
    return node, data


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once aliases are expanded (what validation will walk)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a recursive alias counts once instead of looping
        children: list = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in children)
    return memo[id(node)]


def _duplicate_key(node: yaml.Node, path: tuple = (), visited: set | None = None) -> str | None:
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

    def line(self, parts: Any) -> int | None:
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

    def suffix(self, parts: Any) -> str:
        line = self.line(parts)
        return f" (line {line})" if line else ""


def _schema_problems(data: Any) -> list[tuple[tuple, str]]:
    """Every schema problem, once, sorted by path (list indexes in numeric order)."""
    schema = manifest_schema()
    validator = Draft202012Validator(schema)
    out: set[tuple[tuple, str]] = set()
    for err in validator.iter_errors(data):
        out.update((tuple(p), m) for p, m in _explain(err, schema))
    return sorted(
        out,
        key=lambda pm: (
            [(1, x, "") if isinstance(x, int) else (0, 0, str(x)) for x in pm[0]],
            pm[1],
        ),
    )


def _explain(err: ValidationError, root: dict) -> list[tuple[list, str]]:
    """One readable message per jsonschema error (did-you-mean for unknown keys)."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        out = []
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


def _deref(root: dict, ref: str) -> dict:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node.get(part, {})
    return node if isinstance(node, dict) else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _run_settings(run: dict) -> tuple[RunSettings, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    kw: dict[str, Any] = {}
    parsers = {"rate_limit": parse_rate, "poll_interval": parse_duration}
    parsers["job_timeout"] = parse_duration
    for key, parse in parsers.items():
        if key not in run:
            continue
        value = run[key]
        if value is None or (key == "rate_limit" and value == "unlimited"):
            if key == "poll_interval":
                problems.append((key, "must be a duration, not null"))
            kw[key] = None
            continue
        try:
            kw[key] = parse(value)
        except ValueError as exc:
            problems.append((key, str(exc)))
    for key in ("max_in_flight", "retries", "max_jobs"):
        if key in run:
            kw[key] = run[key]
    if "max_cost_usd" in run:
        # A float by its shortest repr: 0.1 in YAML is 0.1 dollars, not 0.1000000000000000055.
        kw["max_cost_usd"] = Decimal(repr(run["max_cost_usd"]))
    if "halt" in run:  # the schema checked 0 <= failure_rate <= 1 and min_finished >= 1
        halt = run["halt"]
        kw["halt"] = HaltRule(float(halt["failure_rate"]), halt.get("min_finished", 10))
    if "canary" in run:
        kw["canary"] = run["canary"]
    if "cache" in run:
        kw["cache"] = run["cache"]
    return RunSettings(**kw), problems


def _output_settings(outputs: dict, name: str) -> tuple[OutputSettings, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    template = outputs.get("dir", "outputs/{name}")
    out_dir = template
    try:
        out_dir = _fill_name(template, name)
    except ValueError as exc:
        problems.append(("dir", str(exc)))
    size = 2 * GIB
    if "max_file_size" in outputs:
        try:
            size = parse_size(outputs["max_file_size"])
        except ValueError as exc:
            problems.append(("max_file_size", str(exc)))
    settings = OutputSettings(
        dir=out_dir,
        download=outputs.get("download", True),
        allow_hosts=tuple(outputs.get("allow_hosts", ())),
        max_file_bytes=size,
    )
    return settings, problems


def _fill_name(template: str, name: str) -> str:
    """outputs.dir knows one placeholder, {name}; {{ and }} are literal braces."""
    out = []
    for part in re.split(r"(\{\{|\}\}|\{[^{}]*\}|[{}])", template):
        if part == "{name}":
            out.append(name)
        elif part in ("{{", "}}"):
            out.append(part[0])
        elif part.startswith("{") or part in ("{", "}"):
            raise ValueError(f"unknown placeholder {part!r}; outputs.dir only knows {{name}}")
        else:
            out.append(part)
    return "".join(out)

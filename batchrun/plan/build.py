"""Manifest file -> checked `Plan`: load, expand, validate every job's inputs against its model.

This is what `validate`, `plan` and `run` call. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchrun.catalog import model_ids, models
from batchrun.catalog.pricing import Estimator
from batchrun.errors import ManifestError
from batchrun.plan import delivery
from batchrun.plan.grid import Job, expand
from batchrun.plan.manifest import Manifest, check_manifest
from batchrun.util import localref
from batchrun.util.gcpause import gc_paused

_MAX_INPUT_PROBLEMS = 50


@dataclass(frozen=True)
class Plan:
    """A manifest's jobs, each with inputs its model's schema accepts."""

    manifest: Manifest
    jobs: list[Job]
    warnings: list[str]
    schemas: models.Schemas = dataclasses.field(default_factory=models.packaged)

    def estimators(self) -> dict[str, Estimator]:
        """Per model of the plan, what one of its jobs costs (see pricing.estimate)."""
        out: dict[str, Estimator] = {}
        for job in self.jobs:
            if job.model_id not in out:
                out[job.model_id] = Estimator(
                    self.schemas.price(job.model_id), self.schemas.input_schema(job.model_id)
                )
        return out

    def costs(self) -> dict[str, ModelCost]:
        """Per model (in plan order), the estimated cost of its jobs."""
        estimators = self.estimators()
        out: dict[str, ModelCost] = {}
        for job in self.jobs:
            cost = out.get(job.model_id) or out.setdefault(job.model_id, ModelCost())
            amount = estimators[job.model_id](job.inputs)
            if amount is None:
                cost.unpriced += 1
            else:
                cost.priced += 1
                cost.usd += amount
        return out

    def with_max_cost(self, max_cost_usd: Decimal | None) -> Plan:
        """This plan with its run's budget set (None keeps the manifest's)."""
        if max_cost_usd is None:
            return self
        run = dataclasses.replace(self.manifest.run, max_cost_usd=max_cost_usd)
        return dataclasses.replace(self, manifest=dataclasses.replace(self.manifest, run=run))


@dataclass
class ModelCost:
    """The estimate of one model's jobs: the exact sum over those that have a price."""

    priced: int = 0
    unpriced: int = 0
    usd: Decimal = dataclasses.field(default_factory=Decimal)


def schema_search_path(manifest_path: str | Path, schema_dirs: Iterable[Path] = ()) -> list[Path]:
    """Where model schemas are looked up: the given folders, then `schemas/models/` beside
    the manifest (the packaged ones come last, see Schemas.along)."""
    return [*schema_dirs, Path(manifest_path).parent / "schemas" / "models"]


def build_plan(path: str | Path, *, strict: bool = False, schema_dirs: Iterable[Path] = ()) -> Plan:
    """Load, expand and check a manifest; ManifestError lists every problem found.

    Manifest problems and the jobs' input problems come in one pass: the keys with manifest
    problems are left out and the rest is expanded and checked, where it can be.
    """
    manifest, problems = check_manifest(path)
    label = str(path)
    if manifest is None:
        raise ManifestError([*problems, _not_checked(label)])
    schemas = models.Schemas.along(schema_search_path(path, schema_dirs))
    try:
        with gc_paused():
            expansion = expand(manifest, schemas)
    except ManifestError as exc:
        unchecked = [_not_checked(label)] if problems else []
        raise ManifestError([*problems, *exc.problems, *unchecked]) from None
    warnings = list(expansion.warnings)
    for index, model in enumerate(manifest.data["models"]):
        model_id = model["id"]
        where = f"$.models[{index}].id"
        at = f"{label}: {where}{manifest.line_suffix(where)}"
        bad = model_ids.problem(model_id)
        if bad:
            problems.append(f"{at}: {bad}")
            continue
        if schemas.input_schema(model_id) is None:
            close = difflib.get_close_matches(model_id, schemas.known_models(), n=1, cutoff=0.8)
            if close:  # a typo: every job of it would be refused, and may be paid for
                problems.append(
                    f"{at}: no model {model_id!r} here; did you mean {close[0]!r}? (fix the id; "
                    f"if {model_id!r} is right, get its schema: batchrun models pull {model_id})"
                )
                continue
            message = (
                f"{label}: {where}: no local input schema for {model_id!r}; inputs are not "
                f"checked before sending (get its schema: batchrun models pull {model_id})"
            )
            (problems if strict else warnings).append(
                message + ("" if not strict else " (--strict)")
            )
    problems += _grid_problems(manifest, expansion.jobs)
    checked = [j for j in expansion.jobs if j.model_id not in manifest.unchecked_models]
    problems += _input_problems(manifest, checked, schemas)
    if manifest.has_local:
        problems += _local_problems(manifest, checked, schemas)
        warnings += _upload_warnings(manifest)
    if len(checked) < len(expansion.jobs):
        problems.append(_not_checked(label))
    if problems:
        # Warnings often explain the errors (a typo in a model id): keep them with the errors.
        raise ManifestError(problems + [f"warning: {w}" for w in warnings])
    return Plan(manifest, expansion.jobs, warnings, schemas)


def _grid_problems(manifest: Manifest, jobs: list[Job]) -> list[str]:
    """`report: {rows, cols}` naming no field of the sweep (a typo would surface only when the
    report is written): the place, its line and the name meant."""
    grid = manifest.report
    wanted = [(axis, name) for axis, name in (("rows", grid.rows), ("cols", grid.cols)) if name]
    if not wanted:
        return []
    fields: dict[str, None] = {"model": None}
    for job in jobs:
        fields.update(dict.fromkeys(job.inputs))
        fields.update(dict.fromkeys(job.vars))
    known = set(fields) | {f"input.{f}" for f in fields} | {f"var.{f}" for f in fields}
    out = []
    for axis, name in wanted:
        if name in known:
            continue
        where = f"$.report.{axis}"
        close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"the sweep's fields: {', '.join(fields)}"
        )
        out.append(
            f"{manifest.path}: {where}{manifest.line_suffix(where)}: {name!r} is no field or var "
            f"of the sweep; {hint}"
        )
    return out


def _not_checked(label: str) -> str:
    # Said, not silent: a user fixing the lines above should expect more to come.
    return f"{label}: jobs' input fields not checked yet: fix the problems above first"


def _input_problems(manifest: Manifest, jobs: list[Job], schemas: models.Schemas) -> list[str]:
    """One line per distinct (model, field problem), naming the first job that has it.

    Each distinct input value is checked once; a fixed input that is wrong for all 1,000 jobs
    is one line ("and 999 more jobs"), not 1,000. Each line starts at the manifest key that
    gave the value (with its YAML line).
    """
    label = str(manifest.path)
    checkers: dict[str, _Checker] = {}
    first: dict[tuple[str, str], Job] = {}
    counts: Counter[tuple[str, str]] = Counter()
    local = manifest.has_local
    for job in jobs:
        checker = checkers.get(job.model_id)
        if checker is None:
            checker = checkers[job.model_id] = _Checker(job.model_id, schemas)
        inputs = delivery.placeholders(job.inputs) if local else job.inputs
        for problem in checker.check(inputs):
            key = (job.model_id, problem)
            first.setdefault(key, job)
            counts[key] += 1
    if not first:
        return []
    varying = varying_keys(jobs)
    out = []
    for key, job in list(first.items())[:_MAX_INPUT_PROBLEMS]:
        who = describe_job(job, varying.get(job.model_id, ()))
        more = counts[key] - 1
        also = f" (and {more} more job{'s' if more != 1 else ''})" if more else ""
        field = _field_of(key[1])
        # An unknown field is wrong in all its values: point at the key, not one value.
        whole_key = key[1].startswith(f"$.{field}: unknown field")
        where = source_path(manifest.data, job, field, item=not whole_key)
        out.append(f"{label}: {where}: job {who}: {key[1]}{also}{manifest.line_suffix(where)}")
    if len(first) > _MAX_INPUT_PROBLEMS:
        out.append(f"{label}: ... {len(first) - _MAX_INPUT_PROBLEMS} more input problems")
    return out


def _local_problems(manifest: Manifest, jobs: list[Job], schemas: models.Schemas) -> list[str]:
    """Local files that cannot be sent: in a field that takes no media URL or another kind
    of media, or with no way to reach the API (no bucket for a video or a large image). One
    line per distinct problem, at the manifest key that gave the file, with its line."""
    label = str(manifest.path)
    first: dict[str, tuple[Job, str]] = {}
    counts: Counter[str] = Counter()
    props: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.model_id not in props:
            props[job.model_id] = (schemas.input_schema(job.model_id) or {}).get("properties", {})
        found = [
            (name, delivery.field_problem(name, props[job.model_id].get(name), ref))
            for name, ref in localref.refs(job.inputs)
        ]
        found += [(r.field, r.why) for r in delivery.routes(job.inputs, manifest.uploads)]
        for name, why in found:
            if why:
                first.setdefault(why, (job, name))
                counts[why] += 1
    out = []
    for why, (job, name) in list(first.items())[:_MAX_INPUT_PROBLEMS]:
        where = source_path(manifest.data, job, name)
        more = counts[why] - 1
        also = f" (and {more} more job{'s' if more != 1 else ''})" if more else ""
        out.append(f"{label}: {where}: {why}{also}{manifest.line_suffix(where)}")
    return out


def _upload_warnings(manifest: Manifest) -> list[str]:
    """A presigned URL that may expire before its job has run."""
    uploads, timeout = manifest.uploads, manifest.run.job_timeout
    if uploads.to is None or uploads.public_base or timeout is None:
        return []
    if uploads.expires_s >= timeout + 3600:
        return []
    where = "$.uploads.expires"
    return [
        f"{manifest.path}: {where}: presigned URLs live {_hours(uploads.expires_s)}, less than "
        f"run.job_timeout + 1h ({_hours(timeout + 3600)}): a job still queued when its URL "
        f"expires fails; raise uploads.expires{manifest.line_suffix(where)}"
    ]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h"


def _field_of(problem: str) -> str | None:
    """The input field a `$.field...: message` problem is about; None for the whole inputs."""
    m = re.match(r"\$\.([^.\[:]+)", problem)
    return m.group(1) if m else None


def source_path(data: dict[str, Any], job: Job, field: str | None, *, item: bool = True) -> str:
    """The JSON path of the manifest key that gave `job` its `field` (see grid's precedence:
    a row's value over the model's matrix over the top-level matrix over fixed inputs); with
    `item`, of the very list item that holds the job's value, where one does."""
    indexes = [i for i, m in enumerate(data["models"]) if m["id"] == job.model_id] or [0]
    value = job.inputs.get(field, _MISSING) if field else _MISSING
    fallback = None
    for index in indexes:
        model, here = data["models"][index], f"$.models[{index}]"
        fallback = fallback or (f"{here}.inputs" if "inputs" in model else here)
        if field is None:
            continue
        rows_path = f"{here}.cases" if "cases" in model else "$.cases"
        rows: list[dict[str, Any]] = (
            model["cases"] if "cases" in model else data.get("cases")
        ) or []
        given = [i for i, row in enumerate(rows) if field in row]
        if given:
            same = [i for i in given if _same(rows[i][field], value)]
            return f"{rows_path}[{(same or given)[0]}].{field}"
        for scope, prefix in ((model, here), (data, "$")):
            values = (scope.get("matrix") or {}).get(field)
            if values is not None:
                same = [i for i, v in enumerate(values) if _same(v, value)]
                return f"{prefix}.matrix.{field}" + (f"[{same[0]}]" if same and item else "")
        if field in (model.get("inputs") or {}):
            return f"{here}.inputs.{field}"
    return fallback or "$.models"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


_MISSING = object()


class _Checker:
    """Validates inputs against one model's schema, caching by field value.

    Catalog schemas are flat objects (properties, required, additionalProperties), so a job is
    valid when its set of keys is and each (field, value) is; those are few even in a 100,000
    job grid. Anything else in the schema falls back to validating whole input dicts.
    """

    _FLAT_KEYS = {"type", "properties", "required", "additionalProperties", "title"}
    # A `$ref` or combinator inside a property needs the whole schema: not flat then.

    def __init__(self, model_id: str, schemas: models.Schemas | None = None) -> None:
        self.model_id = model_id
        self.schemas = schemas = schemas or models.packaged()
        schema = schemas.input_schema(model_id)
        self.schema = schema
        keys = {k for k in (schema or {}) if not k.startswith("x-") and k != "description"}
        self.flat = (
            schema is not None and keys <= self._FLAT_KEYS and "$ref" not in json.dumps(schema)
        )
        self._keysets: dict[frozenset[str], bool] = {}
        # (field, type of the value, the value or its JSON) -> whether the schema accepts it
        self._values: dict[tuple[str, type, object], bool] = {}
        self._whole: dict[str, list[str]] = {}
        self._prop_validators: dict[str, Any] = {}

    def check(self, inputs: dict[str, Any]) -> list[str]:
        if self.schema is None:
            return []
        if self.flat and self._flat_ok(inputs):
            return []
        key = json.dumps(inputs, sort_keys=True, default=str)
        if key not in self._whole:
            self._whole[key] = self.schemas.validate_inputs(self.model_id, inputs) or []
        return self._whole[key]

    def _flat_ok(self, inputs: dict[str, Any]) -> bool:
        keyset = frozenset(inputs)
        ok = self._keysets.get(keyset)
        if ok is None:
            ok = self._keysets[keyset] = not self.schemas.validate_inputs(
                self.model_id, {k: _placeholder(self.schema, k) for k in keyset}
            )
        if not ok:
            return False
        values = self._values
        for name, value in inputs.items():
            kind = type(value)
            # The type is part of the key: True == 1, but only one is an integer.
            cache_key = (name, kind, value if kind in _SCALARS else _hashable(value))
            good = values.get(cache_key)
            if good is None:
                good = self._values[cache_key] = self._value_ok(name, value)
            if not good:
                return False
        return True

    def _value_ok(self, name: str, value: Any) -> bool:
        prop = (self.schema or {}).get("properties", {}).get(name)
        if prop is None:
            return True  # the key set check covered unknown fields
        simple = _SIMPLE_TYPES.get(prop.get("type")) if isinstance(prop, dict) else None
        if simple is not None and set(prop) <= _ANNOTATIONS:
            return isinstance(value, simple) and not (
                isinstance(value, bool) and bool not in simple
            )
        validator = self._prop_validators.get(name)
        if validator is None:
            validator = self._prop_validators[name] = models.validator(prop)
        return bool(validator.is_valid(value))


# Property schemas that only say a JSON type are checked with isinstance (bool is not a number).
_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_SCALARS = (str, int, float, bool, type(None))
_ANNOTATIONS = {"type", "description", "title", "default", "examples"}


def _placeholder(schema: Any, name: str) -> Any:
    """Some value the schema accepts for `name` (used only to isolate one field's check)."""
    prop = (schema or {}).get("properties", {}).get(name, {})
    if "default" in prop:
        return prop["default"]
    if "enum" in prop:
        return prop["enum"][0]
    kinds = prop.get("type")
    kind = kinds[0] if isinstance(kinds, list) and kinds else kinds
    if kind == "array":
        item = prop.get("items", {})
        return [_sample(item)] * max(1, prop.get("minItems", 1))
    return _sample(prop)


def _sample(prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if "enum" in prop:
        return prop["enum"][0]
    if kind in ("integer", "number"):
        return prop.get("minimum", prop.get("exclusiveMinimum", 0) + 1)
    if kind == "boolean":
        return False
    if prop.get("pattern") == r"^(https?://|data:)":
        return "https://example.invalid/x.png"
    return "x"


def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def varying_keys(jobs: list[Job]) -> dict[str, tuple[str, ...]]:
    """Per model, the var and input names whose values differ between its jobs ('var.' first)."""
    seen: dict[str, dict[str, set[object]]] = {}
    for job in jobs:
        per = seen.setdefault(job.model_id, {})
        for k, v in job.vars.items():
            per.setdefault(f"var.{k}", set()).add(_hashable(v))
        for k, v in job.inputs.items():
            per.setdefault(k, set()).add(_hashable(v))
    counts = Counter(j.model_id for j in jobs)
    out = {}
    for model_id, per in seen.items():
        keys = [k for k, vals in per.items() if len(vals) > 1]
        if any(j.repeat for j in jobs if j.model_id == model_id) and counts[model_id] > 1:
            keys.append("repeat")
        out[model_id] = tuple(keys)
    return out


def cell(job: Job, key: str) -> Any:
    """The value of a varying key of a job (see `varying_keys`)."""
    if key == "repeat":
        return job.repeat
    value = job.vars.get(key[4:], "") if key.startswith("var.") else job.inputs.get(key, "")
    shown = localref.text(value)
    return value if shown is None else shown


def describe_job(job: Job, keys: tuple[str, ...] | list[str]) -> str:
    """`model (k=v, ...)`: how a job is named in messages."""
    values = ", ".join(f"{k.removeprefix('var.')}={cell(job, k)!r}" for k in keys)
    return f"{job.model_id} ({values})" if values else job.model_id

"""Manifest file -> checked `Plan`: load, expand, validate every job's inputs against its model.

This is what `validate`, `plan` and `run` call. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from batchrun.catalog import model_ids, models
from batchrun.catalog.pricing import Estimator
from batchrun.errors import ManifestError
from batchrun.plan import delivery
from batchrun.plan.blocks import Block
from batchrun.plan.grid import Job, JobRow, Sweep, expand
from batchrun.plan.manifest import Manifest, check_manifest
from batchrun.plan.summary import ModelCost, Summary, Tally, Varying, hashable
from batchrun.util import localref
from batchrun.util.gcpause import gc_paused

_MAX_INPUT_PROBLEMS = 50
_MAX_CACHED = 100_000  # validation answers remembered per model: bounded, whatever the sweep


@dataclass(frozen=True)
class Plan:
    """A manifest's jobs, each with inputs its model's schema accepts."""

    manifest: Manifest
    jobs: list[Job]
    warnings: list[str]
    schemas: models.Schemas = dataclasses.field(default_factory=models.packaged)
    # The jobs as a new pass of the expansion each time (a checked sweep too big to hold, see
    # check_sweep), when `jobs` is left empty.
    sweep: Iterable[Job] | None = None

    def model_ids(self) -> list[str]:
        """The models of the manifest, in its order."""
        return list(dict.fromkeys(m["id"] for m in self.manifest.data["models"]))

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
    problems += _model_problems(manifest, schemas, warnings, strict=strict)
    problems += _grid_problems(manifest, _fields(expansion.jobs))
    checked = [j for j in expansion.jobs if j.model_id not in manifest.unchecked_models]
    inputs = InputProblems(manifest, schemas)
    local = LocalProblems(manifest, schemas)
    for job in checked:
        inputs.add(job.model_id, job.inputs, job)
        if manifest.has_local:
            local.add(job.model_id, job.inputs, job)
    problems += inputs.lines(lambda: varying_keys(checked))
    problems += local.lines()
    warnings += upload_warnings(manifest)
    if len(checked) < len(expansion.jobs):
        problems.append(_not_checked(label))
    if problems:
        # Warnings often explain the errors (a typo in a model id): keep them with the errors.
        raise ManifestError(problems + [f"warning: {w}" for w in warnings])
    return Plan(manifest, expansion.jobs, warnings, schemas)


@dataclass(frozen=True)
class StreamedPlan:
    """A checked plan that keeps no jobs: its summary; `sweep.rows()` is a new pass."""

    manifest: Manifest
    warnings: list[str]
    schemas: models.Schemas
    summary: Summary
    sweep: Sweep


def check_sweep(
    path: str | Path,
    *,
    strict: bool = False,
    schema_dirs: Iterable[Path] = (),
    head: int = 0,
    each: Callable[[JobRow, Decimal | None], object] | None = None,
    read: tuple[Manifest | None, list[str]] | None = None,
) -> StreamedPlan:
    """What build_plan checks and raises, in one pass that keeps no jobs (but the first
    `head`): a million-job sweep in the memory of a few. `each` is given every job and its
    estimated cost as the pass goes, before the plan is known to be valid; `read`: what
    check_manifest said of `path`, when the caller asked it already."""
    manifest, problems = check_manifest(path) if read is None else read
    label = str(path)
    if manifest is None:
        raise ManifestError([*problems, _not_checked(label)])
    schemas = models.Schemas.along(schema_search_path(path, schema_dirs))
    sweep = Sweep(manifest, schemas)
    tally = Tally(schemas, head=head, fields=bool(manifest.report.rows or manifest.report.cols))
    inputs = InputProblems(manifest, schemas)
    local = LocalProblems(manifest, schemas)
    unchecked = manifest.unchecked_models
    # Without `each`, jobs after the first `head` may come as blocks, counted a column at a time.
    rows = sweep.rows() if each is not None else sweep.counted(head)
    try:
        with gc_paused():
            for row in rows:
                if isinstance(row, Block):
                    tally.add_block(row)
                    if row.model_id not in unchecked:
                        inputs.add_block(row)
                    continue
                amount = tally.add(row)
                if row[1] not in unchecked:
                    inputs.add(row[1], row[2], row)
                    if manifest.has_local:
                        local.add(row[1], row[2], row)
                if each is not None:
                    each(row, amount)
            warnings = sweep.finish()
    except ManifestError as exc:
        raise ManifestError(
            [*problems, *exc.problems, *([_not_checked(label)] if problems else [])]
        ) from None
    summary = tally.summary()
    problems += _model_problems(manifest, schemas, warnings, strict=strict)
    problems += _grid_problems(manifest, tally.fields or {})
    problems += inputs.lines(lambda: _checked_varying(summary, unchecked, sweep))
    problems += local.lines()
    warnings += upload_warnings(manifest)
    if inputs.count < summary.total:
        problems.append(_not_checked(label))
    if problems:
        raise ManifestError(problems + [f"warning: {w}" for w in warnings])
    return StreamedPlan(manifest, warnings, schemas, summary, sweep)


def _checked_varying(
    summary: Summary, unchecked: frozenset[str], sweep: Sweep
) -> dict[str, tuple[str, ...]]:
    """The varying keys of the checked jobs (another pass when some models are unchecked)."""
    if not unchecked.intersection(summary.counts):
        return summary.varying
    varying = Varying()
    for _, model_id, inputs, job_vars, repeat, _, _ in sweep.rows():
        if model_id not in unchecked:
            varying.add(model_id, job_vars, inputs, repeat)
    return varying.keys()


def _model_problems(
    manifest: Manifest, schemas: models.Schemas, warnings: list[str], *, strict: bool
) -> list[str]:
    """Model ids that are malformed, a typo of a known model, or (with strict) unknown; adds
    the warning for a model without a local schema."""
    label = str(manifest.path)
    problems = []
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
    return problems


def _fields(jobs: list[Job]) -> dict[str, None]:
    fields: dict[str, None] = {"model": None}
    for job in jobs:
        fields.update(dict.fromkeys(job.inputs))
        fields.update(dict.fromkeys(job.vars))
    return fields


def _grid_problems(manifest: Manifest, fields: dict[str, None]) -> list[str]:
    """`report: {rows, cols}` naming no field of the sweep (a typo would surface only when the
    report is written): the place, its line and the name meant."""
    grid = manifest.report
    wanted = [(axis, name) for axis, name in (("rows", grid.rows), ("cols", grid.cols)) if name]
    if not wanted:
        return []
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


class InputProblems:
    """One line per distinct (model, field problem), naming the first job that has it.

    Each distinct input value is checked once; a fixed input that is wrong for all 1,000 jobs
    is one line ("and 999 more jobs"), not 1,000. Each line starts at the manifest key that
    gave the value (with its YAML line). Jobs come one at a time: only the first job of each
    problem is kept.
    """

    def __init__(self, manifest: Manifest, schemas: models.Schemas) -> None:
        self.manifest, self.schemas = manifest, schemas
        self.count = 0  # jobs checked
        self._checkers: dict[str, _Checker] = {}
        self._first: dict[tuple[str, str], Job] = {}
        self._counts: Counter[tuple[str, str]] = Counter()

    def add(self, model_id: str, inputs: dict[str, Any], job: Job | JobRow) -> None:
        self.count += 1
        checker = self._checkers.get(model_id)
        if checker is None:
            checker = self._checkers[model_id] = _Checker(model_id, self.schemas)
        if self.manifest.has_local:  # a local file stands where the schema wants a URL
            inputs = delivery.placeholders(inputs)
        for problem in checker.check(inputs):
            key = (model_id, problem)
            if key not in self._first:
                self._first[key] = job if isinstance(job, Job) else Job(*job)
            self._counts[key] += 1

    def add_block(self, block: Block) -> None:
        """A block's jobs in: checked by their key set and distinct values, and one by one
        only when that finds a problem (to name the first job of each and count them)."""
        checker = self._checkers.get(block.model_id)
        if checker is None:
            checker = self._checkers[block.model_id] = _Checker(block.model_id, self.schemas)
        if not self.manifest.has_local and checker.block_ok(block):
            self.count += block.size
            return
        for row in block.rows():
            self.add(row[1], row[2], row)

    def lines(self, varying_of: Callable[[], dict[str, tuple[str, ...]]]) -> list[str]:
        """The problems found; `varying_of` gives the keys that name a job (asked only when
        there are problems)."""
        if not self._first:
            return []
        manifest, counts = self.manifest, self._counts
        label = str(manifest.path)
        varying = varying_of()
        out = []
        for key, job in list(self._first.items())[:_MAX_INPUT_PROBLEMS]:
            who = describe_job(job, varying.get(job.model_id, ()))
            more = counts[key] - 1
            also = f" (and {more} more job{'s' if more != 1 else ''})" if more else ""
            field = _field_of(key[1])
            # An unknown field is wrong in all its values: point at the key, not one value.
            whole_key = key[1].startswith(f"$.{field}: unknown field")
            where = source_path(manifest.data, job, field, item=not whole_key)
            out.append(f"{label}: {where}: job {who}: {key[1]}{also}{manifest.line_suffix(where)}")
        if len(self._first) > _MAX_INPUT_PROBLEMS:
            out.append(f"{label}: ... {len(self._first) - _MAX_INPUT_PROBLEMS} more input problems")
        return out


class LocalProblems:
    """Local files that cannot be sent: in a field that takes no media URL or another kind
    of media, or with no way to reach the API (no bucket for a video or a large image). One
    line per distinct problem, at the manifest key that gave the file, with its line."""

    def __init__(self, manifest: Manifest, schemas: models.Schemas) -> None:
        self.manifest, self.schemas = manifest, schemas
        self._props: dict[str, dict[str, Any]] = {}
        self._first: dict[str, tuple[Job, str]] = {}
        self._counts: Counter[str] = Counter()

    def add(self, model_id: str, inputs: dict[str, Any], job: Job | JobRow) -> None:
        props = self._props.get(model_id)
        if props is None:
            schema = self.schemas.input_schema(model_id) or {}
            props = self._props[model_id] = schema.get("properties", {})
        found = [
            (name, delivery.field_problem(name, props.get(name), ref))
            for name, ref in localref.refs(inputs)
        ]
        found += [(r.field, r.why) for r in delivery.routes(inputs, self.manifest.uploads)]
        for name, why in found:
            if why:
                if why not in self._first:
                    self._first[why] = (job if isinstance(job, Job) else Job(*job), name)
                self._counts[why] += 1

    def lines(self) -> list[str]:
        manifest = self.manifest
        out = []
        for why, (job, name) in list(self._first.items())[:_MAX_INPUT_PROBLEMS]:
            where = source_path(manifest.data, job, name)
            more = self._counts[why] - 1
            also = f" (and {more} more job{'s' if more != 1 else ''})" if more else ""
            out.append(f"{manifest.path}: {where}: {why}{also}{manifest.line_suffix(where)}")
        return out


def upload_warnings(manifest: Manifest) -> list[str]:
    """A presigned URL that may expire before its job has run."""
    uploads, timeout = manifest.uploads, manifest.run.job_timeout
    if not manifest.has_local or uploads.to is None or uploads.public_base or timeout is None:
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
        self._keysets: dict[tuple[str, ...], bool] = {}
        # (field, type of the value, the value or its JSON) -> whether the schema accepts it
        self._values: dict[tuple[str, type, object], bool] = {}
        self._whole: dict[str, list[str]] = {}
        self._prop_validators: dict[str, Any] = {}
        # Fields whose schema says only a JSON type: the exact Python types that pass. Their
        # values (a free-text prompt) are never validated or remembered one by one.
        self._type_only: dict[str, tuple[type, ...]] = {}
        for name, prop in ((schema or {}).get("properties") or {}).items():
            simple = _SIMPLE_TYPES.get(prop.get("type")) if isinstance(prop, dict) else None
            if simple is not None and set(prop) <= _ANNOTATIONS:
                self._type_only[name] = simple

    def check(self, inputs: dict[str, Any]) -> list[str]:
        if self.schema is None:
            return []
        if self.flat and self._flat_ok(inputs):
            return []
        key = json.dumps(inputs, sort_keys=True, default=str)
        found = self._whole.get(key)
        if found is None:
            found = self.schemas.validate_inputs(self.model_id, inputs) or []
            if len(self._whole) < _MAX_CACHED:
                self._whole[key] = found
        return found

    def block_ok(self, block: Block) -> bool:
        """Whether `check` finds nothing in any job of the block, asked of its key set and of
        each input's distinct values; False also when that cannot tell (a schema not flat)."""
        if self.schema is None:
            return True
        if not self.flat or not self._keyset_ok(tuple(block.input_names)):
            return False
        for name in block.input_names:
            if str in self._type_only.get(name, ()) and block.always_text(name):
                continue
            if not all(self._field_ok(name, value) for value in block.distinct(name)):
                return False
        return True

    def _flat_ok(self, inputs: dict[str, Any]) -> bool:
        if not self._keyset_ok(tuple(inputs)):
            return False
        values, type_only = self._values, self._type_only
        # `_field_ok`, written out: this loop runs for every field of every job.
        for name, value in inputs.items():
            kind = type(value)
            if kind in type_only.get(name, ()):
                continue
            # The type is part of the key: True == 1, but only one is an integer.
            cache_key = (name, kind, value if kind in _SCALARS else hashable(value))
            good = values.get(cache_key)
            if good is None:
                good = self._value_ok(name, value)
                if len(values) < _MAX_CACHED:
                    values[cache_key] = good
            if not good:
                return False
        return True

    def _keyset_ok(self, keyset: tuple[str, ...]) -> bool:
        ok = self._keysets.get(keyset)
        if ok is None:
            ok = self._keysets[keyset] = not self.schemas.validate_inputs(
                self.model_id, {k: _placeholder(self.schema, k) for k in keyset}
            )
        return ok

    def _field_ok(self, name: str, value: Any) -> bool:
        """Whether the schema accepts `value` for the field `name` (remembered)."""
        kind = type(value)
        if kind in self._type_only.get(name, ()):
            return True
        cache_key = (name, kind, value if kind in _SCALARS else hashable(value))
        good = self._values.get(cache_key)
        if good is None:
            good = self._value_ok(name, value)
            if len(self._values) < _MAX_CACHED:
                self._values[cache_key] = good
        return good

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


def varying_keys(jobs: Iterable[Job]) -> dict[str, tuple[str, ...]]:
    """Per model, the var and input names whose values differ between its jobs ('var.' first)."""
    varying = Varying()
    for job in jobs:
        varying.add(job.model_id, job.vars, job.inputs, job.repeat)
    return varying.keys()


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

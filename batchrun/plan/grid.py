"""Manifest -> jobs: the cartesian product, cases, exclude, templates, repeat; stable job ids.

Per model, in this order:
- axes: `vars` and `matrix` (top-level, then the model's; a model's key replaces a top-level one
  of the same name). vars are template-only and never sent; matrix keys are input fields.
- rows: the model's `cases`, else the top-level `cases`, else one empty row. Each row is crossed
  with the product of the axes it does not set itself (a row without a matrix is one job).
  A row key is a var when a var of that name is declared or it is written `var.NAME`.
- inputs = fixed `inputs` < matrix values < row values; then `{name}` templates are filled from
  the combination's vars and inputs; strings from files become numbers/booleans where the
  model's schema wants one.
- `exclude` entries (top-level + the model's) drop combinations whose vars/inputs equal every
  key of the entry; `repeat` makes N jobs of each remaining combination.
Job id = 12 hex of sha256(model id, canonical JSON of the final inputs, and the repeat index
when it is above 0): reordering the manifest keeps ids, raising `repeat` keeps existing jobs.
A local file counts by its identity (sha256 and type, util/localref.py), never by its path:
moving the folder keeps ids, two files with the same bytes are one job.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from batchrun.catalog import models
from batchrun.errors import ManifestError
from batchrun.plan.blocks import Block
from batchrun.plan.manifest import Manifest, json_path
from batchrun.plan.rows import (
    CANONICAL,
    PLAIN_TYPES,
    CanonicalParts,
    FastRow,
    Maker,
    RowShape,
    canonical_parts,
    canonical_writer,
    fast_maker,
    json_plain,
)
from batchrun.plan.template import Renderer, TemplateError, as_text, compile_template
from batchrun.util import localref

_MAX_PROBLEMS = 50
_MAX_CACHED = 50_000  # memoised renderings and coercions: bounded, whatever the sweep's size
_BLOCK = 50_000  # combinations counted together (see `Sweep.counted`)
_MIN_BLOCK = 64  # fewer are made one by one: a block's fixed cost would outweigh them
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Job:
    """One job: a model and the exact inputs sent to it."""

    job_id: str
    model_id: str
    inputs: dict[str, Any]
    vars: dict[str, Any]
    repeat: int  # repeat index, 0-based; never sent
    position: int  # expansion order, 0-based
    # Canonical JSON of `inputs` (sorted keys, compact), the text the id is hashed from.
    inputs_json: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class Expansion:
    """The jobs of a manifest, in expansion order, and what looked wrong but is allowed."""

    jobs: list[Job]
    warnings: list[str]


_CANONICAL = CANONICAL


def job_id(model_id: str, inputs: Mapping[str, Any], repeat: int = 0) -> str:
    """The stable id of a job."""
    return _hash_id(f"{model_id}\n{_CANONICAL(localref.identity(dict(inputs)))}", repeat)


def _hash_id(identity: str, repeat: int) -> str:
    text = f"{identity}\n#{repeat}" if repeat else identity
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def expand(manifest: Manifest, schemas: models.Schemas | None = None) -> Expansion:
    """Every job of the manifest; raises ManifestError on template errors or too many jobs.

    `schemas` (default: the packaged ones) say which fields are numbers or booleans."""
    sweep = Sweep(manifest, schemas)
    jobs = [Job(*row) for row in sweep.rows()]
    return Expansion(jobs, sweep.finish())


JobRow = tuple[str, str, dict[str, Any], dict[str, Any], int, int, str]
"""A job's fields in Job's order, `Job(*row)`: what a pass yields without making Jobs."""


class Sweep:
    """The jobs of a manifest, expanded afresh by each pass and kept by none, so a million-job
    sweep takes the memory of one job (and of its ids, to drop duplicates).

    `rows()` yields them in expansion order and raises ManifestError when the sweep passes
    run.max_jobs; after a whole pass, `finish()` raises the problems it found (template
    errors, an empty sweep) or returns its warnings.
    """

    def __init__(self, manifest: Manifest, schemas: models.Schemas | None = None) -> None:
        self.manifest = manifest
        self.schemas = schemas or models.packaged()
        self._outcome: tuple[list[str], list[str]] | None = None

    def __iter__(self) -> Iterator[Job]:
        return (Job(*row) for row in self.rows())

    def rows(self) -> Iterator[JobRow]:
        """One pass: every job as a JobRow."""
        return self._pass(_Pass(self.manifest))

    def counted(self, head: int = 0) -> Iterator[JobRow | Block]:
        """One pass for what counts jobs, checks them and shows a few: the first `head` jobs
        as JobRows, then whole blocks of a row's combinations where they can be counted
        without making each job (see blocks.py), JobRows elsewhere."""
        return self._pass(_Pass(self.manifest, head=head))

    def _pass(self, state: _Pass) -> Iterator[Any]:
        self._outcome = None
        # Chained, not nested generators: each job passes through one Python frame.
        return itertools.chain(
            itertools.chain.from_iterable(state.model_rows(spec) for spec in self._specs()),
            self._finish_pass(state),
        )

    def _specs(self) -> Iterator[_ModelSpec]:
        for index, model in enumerate(self.manifest.data["models"]):
            spec = _ModelSpec(self.manifest.data, index, model, self.schemas)
            spec.local = self.manifest.has_local
            yield spec

    def _finish_pass(self, state: _Pass) -> Iterator[JobRow]:
        self._outcome = state.outcome(self._first_positions)
        yield from ()

    def finish(self) -> list[str]:
        """The last whole pass's warnings; ManifestError with its problems, if any."""
        if self._outcome is None:
            raise RuntimeError("Sweep.finish() before a whole pass of rows()")
        problems, warnings = self._outcome
        if problems:
            raise ManifestError(problems)
        return warnings

    def _first_positions(self, wanted: set[str]) -> dict[str, int]:
        """Where the first of each of these ids is (for duplicate warnings): a pass that stops
        as soon as all are found, and they come before their duplicates."""
        found: dict[str, int] = {}
        state = _Pass(self.manifest)
        for spec in self._specs():
            for jid, *_, position, _ in state.model_rows(spec):
                if jid in wanted:
                    found[jid] = position
                    if len(found) == len(wanted):
                        return found
        return found


class _Pass:
    """The state of one pass: ids seen (as ints, to drop duplicates compactly), problems,
    exclude matches, the duplicates to warn about."""

    def __init__(self, manifest: Manifest, *, head: int | None = None) -> None:
        self.manifest = manifest
        self.head = head  # None: every job a JobRow; else the jobs shown before blocks begin
        self.label = str(manifest.path)
        self.limit = manifest.run.max_jobs
        self.problems: list[str] = []
        self.seen: set[int] = set()
        self.count = 0
        self.duplicates = 0
        # the first duplicates: (model index, model id, vars, id of the job kept)
        self.first_duplicates: list[tuple[int, str, dict[str, Any], str]] = []
        self.exclude_paths: list[str] = []
        self.matched_excludes: set[str] = set()  # top-level entries count when any model did
        self.excluded = 0  # combinations exclude dropped

    def model_rows(self, spec: _ModelSpec) -> Iterator[Any]:
        label, manifest = self.label, self.manifest
        self.problems += [f"{label}: {w}: {m}{manifest.line_suffix(w)}" for w, m in spec.problems]
        if spec.problems:
            return iter(())
        model_problems: dict[str, None] = {}
        rows = (
            self._row_jobs(spec, row, model_problems)
            for row in spec.row_plans()
            if len(model_problems) < _MAX_PROBLEMS
        )
        return itertools.chain(
            itertools.chain.from_iterable(rows), self._model_done(spec, model_problems)
        )

    def _model_done(self, spec: _ModelSpec, model_problems: dict[str, None]) -> Iterator[JobRow]:
        self.problems += list(model_problems)
        self.exclude_paths.extend(p for p in spec.exclude_paths if p not in self.exclude_paths)
        yield from ()

    def _row_jobs(
        self, spec: _ModelSpec, row: _RowPlan, model_problems: dict[str, None]
    ) -> Iterator[Any]:
        combos = itertools.product(*row.values)
        if self.head is None or row.fast is None or spec.excludes:
            return self._jobs(spec, row, combos, model_problems)
        return self._blocks(spec, row, row.fast, combos, model_problems)

    def _blocks(
        self,
        spec: _ModelSpec,
        row: _RowPlan,
        fast: FastRow,
        combos: Iterator[tuple[Any, ...]],
        model_problems: dict[str, None],
    ) -> Iterator[JobRow | Block]:
        """A row's jobs as blocks of combinations counted together; one by one the sweep's
        first `head` jobs, and a block too small, past run.max_jobs or with an id seen before
        (a duplicate: the one-by-one loop drops it and says so)."""
        assert self.head is not None and row.parts is not None
        while self.count < self.head:  # the first jobs, one by one (some may be duplicates)
            first = list(itertools.islice(combos, -(-(self.head - self.count) // spec.repeat)))
            if not first:
                return
            yield from self._jobs(spec, row, first, model_problems)
        while chunk := list(itertools.islice(combos, _BLOCK)):
            block = Block(
                spec.model_id, fast, row.parts, row.canonical, chunk, spec.repeat, self.count
            )
            keys = (
                block.id_keys()
                if len(chunk) >= _MIN_BLOCK and self.count + block.size <= self.limit
                else None
            )
            if keys is not None and len(keys) == block.size and self.seen.isdisjoint(keys):
                self.seen |= keys
                self.count += block.size
                yield block
            else:
                yield from self._jobs(spec, row, chunk, model_problems)

    def _jobs(
        self,
        spec: _ModelSpec,
        row: _RowPlan,
        combos: Iterable[tuple[Any, ...]],
        model_problems: dict[str, None],
    ) -> Iterator[JobRow]:
        """The jobs of a row's combinations (one per repeat), each identity (model, inputs,
        repeat) once: the loop a million-job sweep runs a million times."""
        seen, make, canonical_of, model_id = self.seen, row.make, row.canonical, spec.model_id
        head, repeats, sha256 = f"{model_id}\n", range(spec.repeat), hashlib.sha256
        count, limit = self.count, self.limit
        for values in combos:
            try:
                combo_vars, inputs = make(values)
            except _ComboError as exc:
                if self._combo_problem(exc, model_problems):
                    return
                continue
            if spec.excludes and self._excluded(spec, combo_vars, inputs):
                continue
            canonical = canonical_of(inputs)
            identity = head + canonical
            if spec.local:  # hashed by the files' identity; shown by their references
                canonical = ""
            for r in repeats:
                text = f"{identity}\n#{r}" if r else identity  # as _hash_id
                jid = sha256(text.encode()).hexdigest()[:12]
                key = int(jid, 16)
                if key in seen:
                    self._duplicate(spec, combo_vars, jid)
                    continue
                seen.add(key)
                if count >= limit:
                    raise self._too_many()
                count = self.count = count + 1
                # Repeats get their own dicts: a caller changing one job never changes another.
                yield (
                    jid,
                    model_id,
                    dict(inputs) if r else inputs,
                    combo_vars,
                    r,
                    count - 1,
                    canonical,
                )

    def _combo_problem(self, exc: _ComboError, model_problems: dict[str, None]) -> bool:
        """Note a combination's template error; True when the model has too many to go on."""
        where, message = exc.args
        model_problems.setdefault(
            f"{self.label}: {where}: {message}{self.manifest.line_suffix(where)}"
        )
        return len(model_problems) >= _MAX_PROBLEMS

    def _excluded(
        self, spec: _ModelSpec, combo_vars: dict[str, Any], inputs: dict[str, Any]
    ) -> bool:
        hits = spec.excluded(combo_vars, inputs)
        if hits:
            self.matched_excludes.update(spec.exclude_paths[i] for i in hits)
            self.excluded += 1
        return bool(hits)

    def _duplicate(self, spec: _ModelSpec, combo_vars: dict[str, Any], jid: str) -> None:
        self.duplicates += 1
        if len(self.first_duplicates) < 5:
            self.first_duplicates.append((spec.index, spec.model_id, combo_vars, jid))

    def _too_many(self) -> ManifestError:
        return ManifestError(
            f"{self.label}: $.run.max_jobs: the manifest expands to more than "
            f"{self.limit:,} jobs (the full grid is {_grid_size(self.manifest.data):,}); "
            "narrow the sweep, or raise run.max_jobs if you mean it"
        )

    def outcome(
        self, first_positions: Callable[[set[str]], dict[str, int]]
    ) -> tuple[list[str], list[str]]:
        """(problems, warnings) of the whole pass."""
        label = self.label
        warnings = []
        if self.first_duplicates:
            positions = first_positions({jid for *_, jid in self.first_duplicates})
            for index, model_id, combo_vars, jid in self.first_duplicates:
                warnings.append(
                    f"{label}: $.models[{index}]: {model_id} {_describe(combo_vars)}gives the same "
                    f"inputs as job #{positions[jid] + 1} ({jid}); kept once"
                )
        for where in self.exclude_paths:
            if where not in self.matched_excludes:
                warnings.append(f"{label}: {where}: matched no combination; nothing excluded")
        if self.duplicates > 5:
            warnings.append(
                f"{label}: {self.duplicates} duplicate combinations in all, each kept once"
            )
        problems = list(self.problems)
        if not self.count and not problems:
            problems.append(_empty_sweep(label, self.excluded, self.matched_excludes))
        return problems, warnings


def _empty_sweep(label: str, excluded: int, matched: set[str]) -> str:
    """An empty sweep runs nothing and would pass CI for nothing: say what emptied it."""
    why = (
        f"exclude removed all {excluded} combination{'s' if excluded != 1 else ''} "
        f"({', '.join(sorted(matched))})"
        if excluded
        else "the models' matrices, vars or cases give no combination"
    )
    return f"{label}: the sweep has 0 jobs: {why}; change the manifest so it has one"


def _describe(combo_vars: dict[str, Any]) -> str:
    return "".join(f"{k}={v!r} " for k, v in combo_vars.items())


class _ComboError(Exception):
    pass


class _RowPlan(NamedTuple):
    values: list[list[Any]]  # the free axes' values
    make: Maker  # a combination of them -> (vars, inputs); raises _ComboError
    canonical: Callable[[dict[str, Any]], str]
    fast: FastRow | None = None  # the row's columns, when its combinations can be counted
    parts: CanonicalParts | None = None  # its canonical JSON, for the blocks' ids


class _ModelSpec:
    """One model's axes, rows, excludes and field types, resolved once."""

    def __init__(
        self, data: dict[str, Any], index: int, model: dict[str, Any], schemas: models.Schemas
    ) -> None:
        self.model_id: str = model["id"]
        self.local = False  # values may be local-file references (set by Sweep)
        self.index = index
        self.problems: list[tuple[str, str]] = []
        here = f"$.models[{index}]"
        self.fixed: dict[str, Any] = model.get("inputs") or {}
        self.origin: dict[str, str] = {k: f"{here}.inputs.{k}" for k in self.fixed}
        var_axes: dict[str, list[Any]] = {}
        field_axes: dict[str, list[Any]] = {}
        for scope, prefix in ((data, "$"), (model, here)):
            for k, v in (scope.get("vars") or {}).items():
                var_axes[k] = v
                self.origin[k] = f"{prefix}.vars.{k}"
            for k, v in (scope.get("matrix") or {}).items():
                field_axes[k] = v
                self.origin[k] = f"{prefix}.matrix.{k}"
        for name in var_axes:
            if name in field_axes or name in self.fixed:
                self.problems.append(
                    (
                        self.origin[name],
                        f"{name!r} is both a var and an input field of {self.model_id}; "
                        "rename the var",
                    )
                )
        self.var_names = set(var_axes)
        self.axes = [(k, v, True) for k, v in var_axes.items()]
        self.axes += [(k, v, False) for k, v in field_axes.items()]
        if "cases" in model:
            rows, rows_path = model["cases"], f"{here}.cases"
        else:
            rows, rows_path = data.get("cases") or [{}], "$.cases"
        self.rows: list[tuple[dict[str, Any], dict[str, Any], str]] = []
        for i, row in enumerate(rows):
            row_vars, row_inputs = {}, {}
            for k, v in row.items():
                if k.startswith("var."):
                    row_vars[k[4:]] = v
                elif k in self.var_names:
                    row_vars[k] = v
                else:
                    row_inputs[k] = v
            self.rows.append((row_vars, row_inputs, f"{rows_path}[{i}]"))
        self.excludes = [e for e in data.get("exclude") or []]
        self.exclude_paths = [f"$.exclude[{i}]" for i in range(len(self.excludes))]
        for i, e in enumerate(model.get("exclude") or []):
            self.excludes.append(e)
            self.exclude_paths.append(f"{here}.exclude[{i}]")
        self.repeat: int = model.get("repeat", data.get("repeat", 1))
        self.coerce = _coercions(self.model_id, schemas)
        # (template, its arguments, their types) -> the rendered text
        self._rendered: dict[tuple[str, tuple[Any, ...], tuple[type, ...]], str] = {}
        self._coerced: dict[tuple[str, str], Any] = {}

    def row_plans(self) -> Iterator[_RowPlan]:
        """Per row (rows outermost): the free axes' values, whose product runs with the last
        axis fastest, and how a combination of them becomes (vars, inputs) and canonical JSON."""
        templated_axes = {k for k, v, _ in self.axes if any(_maybe_template(x) for x in v)}
        templated_fixed = {k for k, v in self.fixed.items() if _maybe_template(v)}
        plain_axes = {k for k, v, _ in self.axes if all(type(x) in PLAIN_TYPES for x in v)}
        json_axes = {
            k for k, v, _ in self.axes if k in plain_axes and all(json_plain(str(x)) for x in v)
        }
        for row_vars, row_inputs, row_path in self.rows:
            self._row_path = row_path
            free = [(k, v, is_var) for k, v, is_var in self.axes if k not in row_vars]
            free = [a for a in free if a[0] not in row_inputs]
            # Only these names can hold a template in this row's combinations: render just them.
            maybe = templated_axes | templated_fixed
            maybe |= {k for k, v in {**row_vars, **row_inputs}.items() if _maybe_template(v)}
            var_names = set(row_vars) | {k for k, _, is_var in free if is_var}
            self._todo_vars = [k for k in maybe if k in var_names]
            self._todo_inputs = [k for k in maybe if k not in var_names]
            keys = {*self.fixed, *(k for k, _, is_var in free if not is_var), *row_inputs}
            shape = RowShape(
                axes=free,
                row_vars=row_vars,
                row_inputs=row_inputs,
                fixed=self.fixed,
                maybe=maybe,
                plain_axes=plain_axes,
                json_axes=json_axes,
                todo_vars=self._todo_vars,
                todo_inputs=self._todo_inputs,
                coerce=[(k, kind) for k, kind in self.coerce.items() if k in keys],
            )
            if self.local:  # local-file references take the general way, hashed by identity
                make = self._general_maker(free, row_vars, row_inputs)
                yield _RowPlan([v for _, v, _ in free], make, _identity_json)
                continue
            values = [v for _, v, _ in free]
            fast = fast_maker(shape, self._coerce)
            if fast is None:
                make = self._general_maker(free, row_vars, row_inputs)
                yield _RowPlan(values, make, canonical_writer(shape))
                continue
            parts = canonical_parts(shape)
            yield _RowPlan(
                values, fast.make, canonical_writer(shape), fast if parts else None, parts
            )

    def _general_maker(
        self,
        free: list[tuple[str, list[Any], bool]],
        row_vars: dict[str, Any],
        row_inputs: dict[str, Any],
    ) -> Maker:
        names = [(k, is_var) for k, _, is_var in free]

        def make(values: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
            combo_vars = dict(row_vars)
            inputs = dict(self.fixed)
            for (k, is_var), value in zip(names, values, strict=True):
                (combo_vars if is_var else inputs)[k] = value
            inputs.update(row_inputs)
            return self.render(combo_vars, inputs)

        return make

    def render(
        self, combo_vars: dict[str, Any], inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        todo_vars, todo_inputs = self._todo_vars, self._todo_inputs
        name = ""
        try:
            if todo_vars or todo_inputs:
                context = {**inputs, **combo_vars}
                renderer = None
                for target, todo in ((combo_vars, todo_vars), (inputs, todo_inputs)):
                    for name in todo:
                        if name not in target:
                            continue
                        value = self._render_plain(context[name], context)
                        if value is _MISSING:
                            renderer = renderer or Renderer(context)
                            value = renderer.lookup(name)
                        target[name] = value
        except TemplateError as exc:
            where = self.origin.get(name, self._row_path)
            raise _ComboError(where, str(exc)) from None
        for name, kind in self.coerce.items():
            value = inputs.get(name)
            if type(value) is str:
                inputs[name] = self._coerce(value, kind)
        return combo_vars, inputs

    def _coerce(self, value: str, kind: str) -> Any:
        done = self._coerced.get((kind, value), _MISSING)
        if done is _MISSING:
            done = _coerce(value, kind)
            if len(self._coerced) < _MAX_CACHED:
                self._coerced[(kind, value)] = done
        return done

    def _render_plain(self, value: Any, context: dict[str, Any]) -> Any:
        """Fast path: a string template over plain values, memoised; else _MISSING."""
        if type(value) is not str:
            return _MISSING
        tpl = compile_template(value)
        if tpl is None or tpl.exact is not None:
            return _MISSING
        try:
            args = tuple([context[n] for n in tpl.names])
        except KeyError:
            return _MISSING
        # Types in the key: True == 1, but "{x}" renders them differently.
        key = (value, args, tuple([type(a) for a in args]))
        try:
            done = self._rendered.get(key)
        except TypeError:  # a list or dict value: not hashable, take the general path
            return _MISSING
        if done is None:
            if any(_maybe_template(a) for a in args):
                return _MISSING
            lookup = dict(zip(tpl.names, args, strict=True))
            done = "".join(p if type(p) is str else as_text(lookup[p[0]]) for p in tpl.parts)
            if len(self._rendered) < _MAX_CACHED:
                self._rendered[key] = done
        return done

    def excluded(self, combo_vars: dict[str, Any], inputs: dict[str, Any]) -> list[int]:
        """Indexes of the exclude entries matching this combination (all, for the warning)."""
        hits: list[int] = []
        for i, entry in enumerate(self.excludes):
            for k, want in entry.items():
                have = combo_vars[k] if k in combo_vars else inputs.get(k, _MISSING)
                if have != want:
                    break
            else:
                hits.append(i)
        return hits


_MISSING = object()


def _maybe_template(value: Any) -> bool:
    if type(value) is str:
        return "{" in value or "}" in value
    return isinstance(value, (list, dict)) and not localref.is_ref(value)


def _identity_json(inputs: dict[str, Any]) -> str:
    """The canonical JSON a job id is hashed from when its inputs may hold local files."""
    return _CANONICAL(localref.identity(inputs))


def _coercions(model_id: str, schemas: models.Schemas) -> dict[str, str]:
    """Fields whose schema wants a number or boolean (and never a string): name -> kind."""
    schema = schemas.input_schema(model_id) or {}
    out = {}
    for name, prop in (schema.get("properties") or {}).items():
        kinds = prop.get("type") if isinstance(prop, dict) else None
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        if "string" in kinds:
            continue
        for kind in ("integer", "number", "boolean"):
            if kind in kinds:
                out[name] = kind
                break
    return out


def _coerce(value: str, kind: str) -> Any:
    """ "5" -> 5 for an integer field (values from files are text); unparsable text stays."""
    text = value.strip()
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower(), value)
    if _INT.match(text):
        return int(text)
    if kind == "number" and _FLOAT.match(text):
        return float(text)
    return value


def _grid_size(data: dict[str, Any]) -> int:
    """Jobs before exclude and de-duplication: the figure a user can check by hand."""
    total = 0
    for model in data["models"]:
        axes = {**(data.get("vars") or {}), **(model.get("vars") or {})}
        axes.update({**(data.get("matrix") or {}), **(model.get("matrix") or {})})
        rows = model.get("cases") if "cases" in model else data.get("cases") or [{}]
        repeat = model.get("repeat", data.get("repeat", 1))
        for row in rows:
            keys = {k[4:] if k.startswith("var.") else k for k in row}
            size = 1
            for k, values in axes.items():
                if k not in keys:
                    size *= len(values)
            total += size * repeat
    return total


__all__ = ["Expansion", "Job", "expand", "job_id", "json_path"]

"""What one pass over a plan's jobs learns while keeping none of them: jobs and estimated
cost per model, the names whose values vary, the sweep's field names and its first jobs.

This is what `plan` prints of a million-job sweep, in the memory of a few jobs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batchrun.catalog import models
from batchrun.catalog.pricing import Estimator
from batchrun.plan.blocks import Block
from batchrun.plan.grid import Job, JobRow


@dataclass
class ModelCost:
    """The estimate of one model's jobs: the exact sum over those that have a price."""

    priced: int = 0
    unpriced: int = 0
    usd: Decimal = dataclasses.field(default_factory=Decimal)


@dataclass(frozen=True)
class Summary:
    """A plan's jobs, counted: per model (in plan order) how many and their estimated cost,
    the keys that vary (see `Varying`), and the first `len(head)` jobs."""

    total: int
    counts: dict[str, int]
    costs: dict[str, ModelCost]
    varying: dict[str, tuple[str, ...]]
    head: list[Job]


class Varying:
    """Per model, the var and input names whose values differ between its jobs ('var.' first
    for vars, in order of first appearance), and `repeat` when it makes jobs: one pass, the
    first value of each name kept."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelValues] = {}

    def add(
        self, model_id: str, job_vars: dict[str, Any], inputs: dict[str, Any], repeat: int
    ) -> None:
        seen = self._models.get(model_id) or self._model(model_id)
        seen.count += 1
        if repeat:
            seen.repeats = True
        # Soon every name of a sweep is known to vary: then a job costs two set lookups.
        if seen.vars_differ.issuperset(job_vars) and seen.inputs_differ.issuperset(inputs):
            return
        first = seen.first
        for k, v in job_vars.items():
            if k not in seen.vars_differ and _differs(first, f"var.{k}", v):
                seen.vars_differ.add(k)
        for k, v in inputs.items():
            if k not in seen.inputs_differ and _differs(first, k, v):
                seen.inputs_differ.add(k)

    def add_block(self, block: Block) -> None:
        """A block's jobs in, by the distinct values of each name not yet known to vary."""
        seen = self._model(block.model_id)
        seen.count += block.size
        if block.repeat > 1:
            seen.repeats = True
        first = seen.first
        for is_var, names, differ in (
            (True, block.var_names, seen.vars_differ),
            (False, block.input_names, seen.inputs_differ),
        ):
            for k in names:
                if k in differ:
                    continue
                key = f"var.{k}" if is_var else k
                if any(_differs(first, key, v) for v in block.distinct(k, var=is_var)):
                    differ.add(k)

    def _model(self, model_id: str) -> _ModelValues:
        seen = self._models.get(model_id)
        if seen is None:
            seen = self._models[model_id] = _ModelValues()
        return seen

    def keys(self) -> dict[str, tuple[str, ...]]:
        out = {}
        for model_id, seen in self._models.items():
            differ = {f"var.{k}" for k in seen.vars_differ} | seen.inputs_differ
            keys = [k for k in seen.first if k in differ]
            if seen.repeats and seen.count > 1:
                keys.append("repeat")
            out[model_id] = tuple(keys)
        return out


@dataclass
class _ModelValues:
    first: dict[str, object] = dataclasses.field(default_factory=dict)  # name -> first value
    vars_differ: set[str] = dataclasses.field(default_factory=set)
    inputs_differ: set[str] = dataclasses.field(default_factory=set)
    count: int = 0
    repeats: bool = False


def _differs(first: dict[str, object], key: str, value: Any) -> bool:
    value = hashable(value)
    seen = first.setdefault(key, value)
    # As a set of the values would count them: the same object, or equal values, are one.
    return seen is not value and seen != value


def hashable(value: Any) -> Any:
    """A dict or list as its JSON text, to compare and remember; other values as they are."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


class Tally:
    """Counts, costs, varying keys, field names and the first jobs of a pass, job by job."""

    def __init__(self, schemas: models.Schemas, *, head: int = 0, fields: bool = False) -> None:
        self.schemas = schemas
        self.head_size = head
        self.head: list[Job] = []
        self.total = 0
        self.costs: dict[str, ModelCost] = {}
        self.varying = Varying()
        self.fields: dict[str, None] | None = {"model": None} if fields else None
        self._models: dict[str, _ModelTally] = {}

    def add_all(self, rows: Iterable[JobRow]) -> None:
        for row in rows:
            self.add(row)

    def add(self, row: JobRow) -> Decimal | None:
        """Count the job in; its estimated cost."""
        _, model_id, inputs, job_vars, repeat, _, _ = row
        self.total += 1
        if self.total <= self.head_size:
            self.head.append(Job(*row))
        model = self._models.get(model_id) or self._model(model_id)
        model.count += 1
        amount = model.estimate(inputs) if model.priced else None
        if amount is not None:
            model.cost.priced += 1
            model.cost.usd += amount
        self.varying.add(model_id, job_vars, inputs, repeat)
        if self.fields is not None:
            self.fields.update(dict.fromkeys(inputs))
            self.fields.update(dict.fromkeys(job_vars))
        return amount

    def add_block(self, block: Block) -> None:
        """Count a block's jobs in (blocks come after the first jobs: none is kept)."""
        self.total += block.size
        model = self._model(block.model_id)
        model.count += block.size
        if model.priced:
            # An estimate depends on a few inputs: one per distinct value of them.
            fields = sorted(model.estimate.fields.intersection(block.input_names))
            for given, n in block.input_counts(fields):
                amount = model.estimate(given)
                if amount is not None:
                    model.cost.priced += n * block.repeat
                    model.cost.usd += amount * (n * block.repeat)
        self.varying.add_block(block)
        if self.fields is not None:
            self.fields.update(dict.fromkeys(block.input_names))
            self.fields.update(dict.fromkeys(block.var_names))

    def _model(self, model_id: str) -> _ModelTally:
        model = self._models.get(model_id)
        if model is None:
            model = self._models[model_id] = _ModelTally(estimator(self.schemas, model_id))
            self.costs[model_id] = model.cost
        return model

    def summary(self) -> Summary:
        counts = {model_id: model.count for model_id, model in self._models.items()}
        for model_id, model in self._models.items():
            self.costs[model_id].unpriced = model.count - model.cost.priced
        return Summary(self.total, counts, self.costs, self.varying.keys(), self.head)


class _ModelTally:
    def __init__(self, estimate: Estimator) -> None:
        self.estimate = estimate
        # An unpriced model's jobs all estimate to None: not asked job by job.
        self.priced = estimate.price is not None and estimate.price.priced
        self.count = 0
        self.cost = ModelCost()


def estimator(schemas: models.Schemas, model_id: str) -> Estimator:
    """What one job of the model costs (see pricing.estimate)."""
    return Estimator(schemas.price(model_id), schemas.input_schema(model_id))

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
        self._first: dict[str, dict[str, object]] = {}
        self._differ: dict[str, set[str]] = {}
        self._repeats: set[str] = set()
        self._counts: dict[str, int] = {}
        self._var_keys: dict[str, str] = {}

    def add(
        self, model_id: str, job_vars: dict[str, Any], inputs: dict[str, Any], repeat: int
    ) -> None:
        first = self._first.get(model_id)
        if first is None:
            first = self._first[model_id] = {}
            self._differ[model_id] = set()
            self._counts[model_id] = 0
        differ = self._differ[model_id]
        self._counts[model_id] += 1
        if repeat:
            self._repeats.add(model_id)
        for k, v in job_vars.items():
            key = self._var_keys.get(k) or self._var_keys.setdefault(k, f"var.{k}")
            if key not in differ:
                self._compare(first, differ, key, v)
        for key, v in inputs.items():
            if key not in differ:
                self._compare(first, differ, key, v)

    @staticmethod
    def _compare(first: dict[str, object], differ: set[str], key: str, value: Any) -> None:
        value = hashable(value)
        seen = first.setdefault(key, value)
        # As a set of the values would count them: the same object, or equal values, are one.
        if seen is not value and seen != value:
            differ.add(key)

    def keys(self) -> dict[str, tuple[str, ...]]:
        out = {}
        for model_id, first in self._first.items():
            keys = [k for k in first if k in self._differ[model_id]]
            if model_id in self._repeats and self._counts[model_id] > 1:
                keys.append("repeat")
            out[model_id] = tuple(keys)
        return out


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
        self.counts: dict[str, int] = {}
        self.costs: dict[str, ModelCost] = {}
        self.varying = Varying()
        self.fields: dict[str, None] | None = {"model": None} if fields else None
        self._estimators: dict[str, Estimator] = {}

    def add_all(self, rows: Iterable[JobRow]) -> None:
        for row in rows:
            self.add(row)

    def add(self, row: JobRow) -> None:
        _, model_id, inputs, job_vars, repeat, _, _ = row
        self.total += 1
        if self.total <= self.head_size:
            self.head.append(Job(*row))
        cost = self.costs.get(model_id)
        if cost is None:
            cost = self.costs[model_id] = ModelCost()
            self.counts[model_id] = 0
            self._estimators[model_id] = estimator(self.schemas, model_id)
        self.counts[model_id] += 1
        amount = self._estimators[model_id](inputs)
        if amount is None:
            cost.unpriced += 1
        else:
            cost.priced += 1
            cost.usd += amount
        self.varying.add(model_id, job_vars, inputs, repeat)
        if self.fields is not None:
            self.fields.update(dict.fromkeys(inputs))
            self.fields.update(dict.fromkeys(job_vars))

    def summary(self) -> Summary:
        return Summary(self.total, self.counts, self.costs, self.varying.keys(), self.head)


def estimator(schemas: models.Schemas, model_id: str) -> Estimator:
    """What one job of the model costs (see pricing.estimate)."""
    return Estimator(schemas.price(model_id), schemas.input_schema(model_id))

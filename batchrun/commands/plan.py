"""`batchrun plan`: the jobs a manifest expands to, as a readable table or JSON lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import click

from batchrun.catalog import models
from batchrun.catalog.pricing import Estimator, plain, price_label, usd
from batchrun.commands import selection
from batchrun.commands.args import PlanArgs
from batchrun.commands.common import schema_dirs, warn
from batchrun.plan.build import Plan, build_plan, cell, check_sweep
from batchrun.plan.grid import Job, JobRow
from batchrun.plan.manifest import Manifest
from batchrun.plan.rows import encode_object
from batchrun.plan.summary import ModelCost, Summary, Tally, estimator

_MAX_CELL = 40
_SHORT = 50  # a plan of up to this many jobs is shown whole
_HEAD = 20  # of a longer one, the first jobs shown
UNPRICED_NOTE = (
    "note: {n} job{s} unpriced: no price in the model's schema file, or a price unit or "
    "duration batchrun cannot count; `batchrun models pull MODEL_ID` fetches prices"
)


def plan(args: PlanArgs) -> int:
    """Print the plan (a table, or one JSON object per job a line); 0."""
    chosen = selection.parse(args.subset)
    dirs = schema_dirs(args.schemas)
    if chosen.active:
        built = build_plan(args.manifest, strict=args.strict, schema_dirs=dirs)
        warn(built.warnings)
        built, picked = selection.choose(built, chosen)
        click.echo(selection.left_out_line(picked, chosen), err=True)
        shown = Shown(built.manifest, built.schemas, summarize(built, head=_SHORT), _rows(built))
    else:
        # A first pass checks everything and keeps no job; JSON lines come from a second, so
        # a problem anywhere in a million jobs is reported before a line is printed.
        streamed = check_sweep(
            args.manifest, strict=args.strict, schema_dirs=dirs, head=0 if args.as_json else _SHORT
        )
        warn(streamed.warnings)
        shown = Shown(streamed.manifest, streamed.schemas, streamed.summary, streamed.rows())
    out = sys.stdout
    lines = json_lines(shown) if args.as_json else table_lines(shown)
    for chunk in _chunks(lines):
        out.write(chunk)
    out.flush()
    if not args.as_json:
        unpriced = sum(c.unpriced for c in shown.summary.costs.values())
        if unpriced:
            click.echo(UNPRICED_NOTE.format(n=unpriced, s="s" if unpriced != 1 else ""), err=True)
    return 0


@dataclass(frozen=True)
class Shown:
    """What `plan` prints from: the summary of the jobs, and the jobs themselves (a pass)."""

    manifest: Manifest
    schemas: models.Schemas
    summary: Summary
    rows: Iterable[JobRow]


def summarize(built: Plan, head: int) -> Summary:
    tally = Tally(built.schemas, head=head)
    tally.add_all(_rows(built))
    return tally.summary()


def _rows(built: Plan) -> Iterator[JobRow]:
    for j in built.jobs:
        yield (j.job_id, j.model_id, j.inputs, j.vars, j.repeat, j.position, j.inputs_json)


def _chunks(lines: Iterable[str], size: int = 2000) -> Iterator[str]:
    """Lines joined a few thousand at a time: one write each, not one per line."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            batch.append("")
            yield "\n".join(batch)
            batch = []
    if batch:
        batch.append("")
        yield "\n".join(batch)


def json_lines(shown: Shown) -> Iterator[str]:
    """One compact JSON object per job, in expansion order (inputs with sorted keys)."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    model_json: dict[str, str] = {}
    estimators: dict[str, Estimator] = {}
    # An exact decimal as a JSON number (never a float's rounding): sums add up to the cent.
    cost_json: dict[Decimal | None, str] = {None: "null"}
    for job_id, model_id, inputs, job_vars, repeat, _, inputs_json in shown.rows:
        model = model_json.get(model_id)
        if model is None:
            model = model_json[model_id] = dumps(model_id)
            estimators[model_id] = estimator(shown.schemas, model_id)
        amount = estimators[model_id](inputs)
        cost = cost_json.get(amount)
        if cost is None and amount is not None:
            cost = cost_json[amount] = plain(amount)
        # The canonical inputs JSON the job id was hashed from; the id is 12 hex digits.
        yield (
            f'{{"job_id":"{job_id}","model_id":{model},"inputs":{inputs_json or dumps(inputs)},'
            f'"vars":{encode_object(job_vars)},"repeat":{repeat},"est_cost_usd":{cost}}}'
        )


def table_lines(shown: Shown) -> Iterator[str]:
    """A summary (jobs and estimated cost per model, the total) then one table per model of
    the values that vary: of every job up to 50, else of the first 20."""
    summary, counts, costs = shown.summary, shown.summary.counts, shown.summary.costs
    total = summary.total
    plural = "s" if total != 1 else ""
    yield f"{shown.manifest.name}: {total} job{plural} -> {shown.manifest.outputs.dir}"
    width = max((len(m) for m in [*counts, "total"]), default=0)
    for model_id, n in counts.items():
        price = shown.schemas.price(model_id)
        label = f"  ({price_label(price)})" if costs[model_id].priced else ""
        yield f"  {model_id:<{width}}  {n:>6}  {cost_text(costs[model_id])}{label}"
    whole = ModelCost(
        priced=sum(c.priced for c in costs.values()),
        unpriced=sum(c.unpriced for c in costs.values()),
        usd=sum((c.usd for c in costs.values()), Decimal()),
    )
    budget = shown.manifest.run.max_cost_usd
    cap = f"  (budget {usd(budget)})" if budget is not None else ""
    yield f"  {'total':<{width}}  {total:>6}  {cost_text(whole)}{cap}"
    jobs = summary.head if total <= _SHORT else summary.head[:_HEAD]
    by_model: dict[str, list[Job]] = {}
    for job in jobs:
        by_model.setdefault(job.model_id, []).append(job)
    for model_id, model_jobs in by_model.items():
        keys = summary.varying.get(model_id, ())
        header = ["#", "job_id", *keys]
        rows = [
            [str(j.position + 1), j.job_id, *(_text(cell(j, k)) for k in keys)] for j in model_jobs
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        yield ""
        yield model_id
        yield "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
        for row in rows:
            yield "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
    if total > len(jobs):
        yield ""
        yield f"... {total - len(jobs):,} more jobs (plan --json lists them all)"


def cost_text(cost: ModelCost) -> str:
    """`$1.23`, `unpriced`, or `$1.23 + 4 unpriced` when only some jobs have a price."""
    if not cost.priced:
        return "unpriced" if cost.unpriced else usd(Decimal())
    if cost.unpriced:
        return f"{usd(cost.usd)} + {cost.unpriced} unpriced"
    return usd(cost.usd)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."

"""`batchrun plan`: the jobs a manifest expands to, as a readable table or JSON lines."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import click

from batchrun.catalog.pricing import plain, price_label, usd
from batchrun.commands import selection
from batchrun.commands.args import PlanArgs
from batchrun.commands.common import schema_dirs, warn
from batchrun.plan.build import ModelCost, Plan, build_plan, cell, varying_keys
from batchrun.plan.grid import Job
from batchrun.util import localref

_MAX_CELL = 40
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
UNPRICED_NOTE = (
    "note: {n} job{s} unpriced: no price in the model's schema file, or a price unit or "
    "duration batchrun cannot count; `batchrun models pull MODEL_ID` fetches prices"
)


def plan(args: PlanArgs) -> int:
    """Print the plan (a table, or one JSON object per job a line); 0."""
    chosen = selection.parse(args.subset)
    built = build_plan(args.manifest, strict=args.strict, schema_dirs=schema_dirs(args.schemas))
    warn(built.warnings)
    if chosen.active:
        built, picked = selection.choose(built, chosen)
        click.echo(selection.left_out_line(picked, chosen), err=True)
    lines = json_lines(built) if args.as_json else table_lines(built)
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    if not args.as_json:
        unpriced = sum(c.unpriced for c in built.costs().values())
        if unpriced:
            click.echo(UNPRICED_NOTE.format(n=unpriced, s="s" if unpriced != 1 else ""), err=True)
    return 0


def json_lines(plan: Plan) -> Iterator[str]:
    """One compact JSON object per job, in expansion order (inputs with sorted keys)."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    model_json: dict[str, str] = {}
    estimators = plan.estimators()
    # An exact decimal as a JSON number (never a float's rounding): sums add up to the cent.
    cost_json: dict[Decimal | None, str] = {None: "null"}
    for job in plan.jobs:
        # Reuse the canonical inputs JSON the job id was hashed from: half the cost of a
        # 100,000-job plan is JSON encoding.
        inputs = job.inputs_json or _CANONICAL(localref.shown(job.inputs))
        model = model_json.get(job.model_id) or model_json.setdefault(
            job.model_id, dumps(job.model_id)
        )
        amount = estimators[job.model_id](job.inputs)
        cost = cost_json.get(amount)
        if cost is None and amount is not None:
            cost = cost_json[amount] = plain(amount)
        yield (
            f'{{"job_id":{dumps(job.job_id)},"model_id":{model},"inputs":{inputs},'
            f'"vars":{dumps(job.vars)},"repeat":{job.repeat},"est_cost_usd":{cost}}}'
        )


def table_lines(plan: Plan) -> Iterator[str]:
    """A summary (jobs and estimated cost per model, the total) then one table per model of
    the values that vary."""
    counts = Counter(job.model_id for job in plan.jobs)
    costs = plan.costs()
    total = len(plan.jobs)
    plural = "s" if total != 1 else ""
    yield f"{plan.manifest.name}: {total} job{plural} -> {plan.manifest.outputs.dir}"
    width = max((len(m) for m in [*counts, "total"]), default=0)
    for model_id, n in counts.items():
        price = plan.schemas.price(model_id)
        label = f"  ({price_label(price)})" if costs[model_id].priced else ""
        yield f"  {model_id:<{width}}  {n:>6}  {cost_text(costs[model_id])}{label}"
    whole = ModelCost(
        priced=sum(c.priced for c in costs.values()),
        unpriced=sum(c.unpriced for c in costs.values()),
        usd=sum((c.usd for c in costs.values()), Decimal()),
    )
    budget = plan.manifest.run.max_cost_usd
    cap = f"  (budget {usd(budget)})" if budget is not None else ""
    yield f"  {'total':<{width}}  {total:>6}  {cost_text(whole)}{cap}"
    varying = varying_keys(plan.jobs)
    by_model: dict[str, list[Job]] = {}
    for job in plan.jobs:
        by_model.setdefault(job.model_id, []).append(job)
    for model_id, jobs in by_model.items():
        keys = varying.get(model_id, ())
        header = ["#", "job_id", *keys]
        rows = [[str(j.position + 1), j.job_id, *(_text(cell(j, k)) for k in keys)] for j in jobs]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        yield ""
        yield model_id
        yield "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
        for row in rows:
            yield "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


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

"""`batchrun plan`: the jobs a manifest expands to, as a readable table or JSON lines."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

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
from batchrun.plan.summary import ModelCost, Summary, Tally
from batchrun.util import localref

_MAX_CELL = 40
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
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
        shown = Shown(built.manifest, built.schemas, summarize(built, head=_SHORT))
        lines: Iterable[str] = (
            json_lines(_rows(built), built.estimators()) if args.as_json else table_lines(shown)
        )
        _write(_chunks(lines))
    elif args.as_json:
        # One pass checks every job and writes its line to a spool file; the spool is printed
        # once the whole plan is known valid: never half a list, and no job kept in memory.
        with tempfile.TemporaryFile() as spool:
            writer = _Spool(spool)
            streamed = check_sweep(args.manifest, strict=args.strict, schema_dirs=dirs, each=writer)
            writer.flush()
            warn(streamed.warnings)
            spool.seek(0)
            _write_bytes(spool)
        return 0
    else:
        streamed = check_sweep(args.manifest, strict=args.strict, schema_dirs=dirs, head=_SHORT)
        warn(streamed.warnings)
        shown = Shown(streamed.manifest, streamed.schemas, streamed.summary)
        _write(_chunks(table_lines(shown)))
    if not args.as_json:
        unpriced = sum(c.unpriced for c in shown.summary.costs.values())
        if unpriced:
            click.echo(UNPRICED_NOTE.format(n=unpriced, s="s" if unpriced != 1 else ""), err=True)
    return 0


@dataclass(frozen=True)
class Shown:
    """What the table is printed from: the plan's summary, with its first jobs."""

    manifest: Manifest
    schemas: models.Schemas
    summary: Summary


def summarize(built: Plan, head: int) -> Summary:
    tally = Tally(built.schemas, head=head)
    tally.add_all(_rows(built))
    return tally.summary()


def _rows(built: Plan) -> Iterator[JobRow]:
    for j in built.jobs:
        yield (j.job_id, j.model_id, j.inputs, j.vars, j.repeat, j.position, j.inputs_json)


def _write(chunks: Iterable[str]) -> None:
    out = sys.stdout
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def _write_bytes(source: IO[bytes]) -> None:
    sys.stdout.flush()
    target = getattr(sys.stdout, "buffer", None)
    if target is None:
        for block in iter(lambda: source.read(1 << 20), b""):
            sys.stdout.write(block.decode("utf-8"))
        sys.stdout.flush()
        return
    shutil.copyfileobj(source, target, 1 << 20)
    target.flush()


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


class _Spool:
    """JSON lines into a binary file, a few thousand lines a write."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.line = JsonLine()
        self.batch: list[str] = []

    def __call__(self, row: JobRow, amount: Decimal | None) -> None:
        self.batch.append(self.line(row, amount))
        if len(self.batch) >= 2000:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.batch.append("")
            self.file.write("\n".join(self.batch).encode("utf-8"))
            self.batch = []


class JsonLine:
    """One job as a compact JSON object (inputs with sorted keys: the canonical JSON the job id
    was hashed from; the id is 12 hex digits)."""

    def __init__(self) -> None:
        self._dumps = json.JSONEncoder(separators=(",", ":")).encode
        self._model_json: dict[str, str] = {}
        # An exact decimal as a JSON number (never a float's rounding): sums add up to the cent.
        self._cost_json: dict[Decimal | None, str] = {None: "null"}

    def __call__(self, row: JobRow, amount: Decimal | None) -> str:
        job_id, model_id, inputs, job_vars, repeat, _, inputs_json = row
        model = self._model_json.get(model_id)
        if model is None:
            model = self._model_json[model_id] = self._dumps(model_id)
        cost = self._cost_json.get(amount)
        if cost is None and amount is not None:
            cost = self._cost_json[amount] = plain(amount)
        return (
            f'{{"job_id":"{job_id}","model_id":{model},'
            f'"inputs":{inputs_json or _CANONICAL(localref.shown(inputs))},'
            f'"vars":{encode_object(job_vars)},"repeat":{repeat},"est_cost_usd":{cost}}}'
        )


def json_lines(rows: Iterable[JobRow], estimators: dict[str, Estimator]) -> Iterator[str]:
    """One compact JSON object per job, in expansion order (inputs with sorted keys)."""
    line = JsonLine()
    for row in rows:
        yield line(row, estimators[row[1]](row[2]))


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

"""`batchrun plan`: the jobs a manifest expands to, as a readable table or JSON lines."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import click

from batchrun.commands import selection
from batchrun.commands.common import warn
from batchrun.plan import Plan, build_plan, cell, varying_keys

_MAX_CELL = 40


def plan(
    manifest: str,
    *,
    as_json: bool,
    strict: bool,
    subset: selection.Options | None = None,
) -> int:
    """Print the plan (a table, or one JSON object per job a line); 0."""
    chosen = selection.parse(subset or selection.Options())
    built = build_plan(manifest, strict=strict)
    warn(built.warnings)
    if chosen.active:
        built, picked = selection.choose(built, chosen)
        click.echo(selection.left_out_line(picked, chosen), err=True)
    lines = json_lines(built) if as_json else table_lines(built)
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return 0


def json_lines(plan: Plan) -> Iterator[str]:
    """One compact JSON object per job, in expansion order (inputs with sorted keys)."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    model_json: dict[str, str] = {}
    for job in plan.jobs:
        # Reuse the canonical inputs JSON the job id was hashed from: half the cost of a
        # 100,000-job plan is JSON encoding.
        inputs = job.inputs_json or dumps(job.inputs)
        model = model_json.get(job.model_id) or model_json.setdefault(
            job.model_id, dumps(job.model_id)
        )
        yield (
            f'{{"job_id":{dumps(job.job_id)},"model_id":{model},"inputs":{inputs},'
            f'"vars":{dumps(job.vars)},"repeat":{job.repeat}}}'
        )


def table_lines(plan: Plan) -> Iterator[str]:
    """A summary (jobs per model) then one table per model of the values that vary."""
    counts = Counter(job.model_id for job in plan.jobs)
    total = len(plan.jobs)
    plural = "s" if total != 1 else ""
    yield f"{plan.manifest.name}: {total} job{plural} -> {plan.manifest.outputs.dir}"
    width = max((len(m) for m in counts), default=0)
    for model_id, n in counts.items():
        yield f"  {model_id:<{width}}  {n:>6}"
    varying = varying_keys(plan.jobs)
    by_model: dict[str, list] = {}
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


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 3] + "..."

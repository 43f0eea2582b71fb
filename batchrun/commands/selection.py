"""What `plan` and `run` share: --only, --first, --sample/--seed and --shard, applied to a plan."""

from __future__ import annotations

from dataclasses import replace

from batchrun.commands.args import SubsetArgs
from batchrun.errors import UsageError
from batchrun.plan.build import Plan
from batchrun.plan.subset import (
    Selection,
    SelectionError,
    Subset,
    parse_filter,
    parse_shard,
    select,
)


def parse(options: SubsetArgs) -> Selection:
    """The Selection the options ask for; UsageError (exit 2) naming the option otherwise."""
    if options.seed is not None and options.sample is None:
        raise UsageError("--seed only applies with --sample N")
    try:
        only = tuple(parse_filter(expr) for expr in options.only)
        shard = parse_shard(options.shard) if options.shard is not None else None
    except SelectionError as exc:
        raise _usage(exc) from None
    return Selection(
        only=only,
        first=options.first,
        sample=options.sample,
        seed=options.seed or 0,
        shard=shard,
    )


def choose(plan: Plan, selection: Selection) -> tuple[Plan, Subset]:
    """The plan cut down to the selection, and the subset (with how many were left out)."""
    try:
        subset = select(plan.jobs, selection)
    except SelectionError as exc:
        raise _usage(exc) from None
    return replace(plan, jobs=subset.jobs), subset


def left_out_line(subset: Subset, selection: Selection) -> str:
    """`selected 250 of 1000 jobs (shard 1/4); 750 left out`."""
    total = len(subset.jobs) + subset.left_out
    shard = f" (shard {selection.shard[0]}/{selection.shard[1]})" if selection.shard else ""
    return (
        f"selected {len(subset.jobs)} of {total} job{'s' if total != 1 else ''}{shard}; "
        f"{subset.left_out} left out by the filter"
    )


def _usage(exc: SelectionError) -> UsageError:
    return UsageError(f"--{exc.part} {exc.value}: {exc}")

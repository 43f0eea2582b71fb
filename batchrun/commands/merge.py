"""`batchrun merge`: shard run folders -> one run folder that `report` and `compare` accept."""

from __future__ import annotations

import click

from batchrun.commands.common import warn
from batchrun.results.merge import merge_runs


def merge(run_dirs: tuple[str, ...], *, into: str) -> int:
    """Merge the folders and say what was made; 0 (StateError, exit 2, when they disagree)."""
    result = merge_runs(run_dirs, into)
    warn(result.warnings)
    files = result.linked + result.copied
    same = f", {result.duplicates} found twice with the same result" if result.duplicates else ""
    click.echo(
        f"merged {result.jobs} jobs from {len(run_dirs)} folders into {result.into}{same}; "
        f"{files} files sha256-verified ({result.linked} linked, {result.copied} copied). "
        f"Report: {result.into / 'report.csv'}",
        err=True,
    )
    return 0

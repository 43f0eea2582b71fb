"""`batchrun export`: a shared sweep (--state URL) -> an ordinary run folder that `status`,
`report`, `compare` and `merge` accept."""

from __future__ import annotations

import os

import click

from batchrun.commands.status import STATE_URL_ENV
from batchrun.errors import UsageError
from batchrun.util.safetext import printable

SHOWN = 20  # files not gathered listed one by one before "... and N more"


def export(*, state: str | None, into: str, sweep: str | None) -> int:
    """Write the sweep into the folder; 0, or 1 when some files could not be gathered (each
    listed: the worker's folder is not reachable from here, or the file changed)."""
    from batchrun.results.export import export_sweep  # psycopg's import only when asked

    url = state or os.environ.get(STATE_URL_ENV, "").strip()
    if not url:
        raise UsageError(f"give the shared sweep's database: --state URL (or {STATE_URL_ENV})")
    result = export_sweep(url, sweep, into)
    files = result.linked + result.copied
    click.echo(
        f"exported the sweep {result.sweep!r}: {result.jobs} jobs into {result.into}; "
        f"{files} files sha256-verified ({result.linked} linked, {result.copied} copied). "
        f"Report: {result.into / 'report.csv'}",
        err=True,
    )
    if not result.missing:
        return 0
    click.echo(f"{len(result.missing)} file(s) could not be gathered:", err=True)
    for line in result.missing[:SHOWN]:
        click.echo(f"  {printable(line)}", err=True)
    if len(result.missing) > SHOWN:
        click.echo(f"  ... and {len(result.missing) - SHOWN} more", err=True)
    click.echo(
        "copy the workers' run folders (or mount them) where their paths reach, and export "
        "again into a new folder",
        err=True,
    )
    return 1

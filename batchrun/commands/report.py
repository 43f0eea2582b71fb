"""`batchrun report`: rewrite report.csv, summary.json and report.html from state.db."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import click

from batchrun.errors import BatchrunError, ChoiceError, UsageError
from batchrun.results.report import (
    GRID_META,
    REPORT_FILES,
    REPORT_FILES_META,
    REPORT_MARK_META,
    ReportJobs,
    RunFacts,
    files_mark,
    grid_choice,
    report_mark,
    summarise,
    to_write,
    write_report,
    write_sheet,
)
from batchrun.store import origin as og
from batchrun.store.mirrored import urls_by_job
from batchrun.store.state import StateStore


def report(run_dir: str, *, rows_key: str | None, cols_key: str | None) -> int:
    """Rewrite the report files (unless they are up to date) and say where they are; 0."""
    try:
        path, wrote = rewrite_report(Path(run_dir), rows_key=rows_key, cols_key=cols_key)
    except ChoiceError as exc:
        raise UsageError(f"--rows/--cols: {exc}") from None
    if not wrote:
        names = ", ".join(str(path.with_name(n)) for n in REPORT_FILES)
        click.echo(f"up to date (nothing changed since they were written): {names}", err=True)
    elif wrote == REPORT_FILES:
        click.echo(f"wrote {', '.join(str(path.with_name(n)) for n in wrote)}", err=True)
    else:  # another grid
        kept = ", ".join(str(path.with_name(n)) for n in REPORT_FILES if n not in wrote)
        shown = ", ".join(str(path.with_name(n)) for n in wrote)
        click.echo(f"wrote {shown} (in its pages too); up to date: {kept}", err=True)
    return 0


def rewrite_report(
    run_dir: Path, *, rows_key: str | None = None, cols_key: str | None = None
) -> tuple[Path, tuple[str, ...]]:
    """report.csv, summary.json and report.html again from state.db (keeping the run's own
    figures); `rows_key`/`cols_key` choose report.html's grid. The jobs are read with a
    cursor, inside one snapshot of state.db. Files made from the same state, facts and grid,
    untouched since, are left as they are (the same bytes); with another grid alone,
    report.csv and summary.json are. report.csv's path, and the names of the files written."""
    chosen = {"rows": rows_key, "cols": cols_key}
    with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
        meta = store.meta()
        revision = store.revision()
        rows_key, cols_key, facts = _layout_and_facts(run_dir, meta, rows_key, cols_key)
        mark = report_mark(revision, facts, rows_key, cols_key)
        wrote = to_write(run_dir, meta, mark)
        if wrote == ("report.html",):  # another grid: report.csv and summary.json are current
            write_sheet(store, rows_key, cols_key, helped=True)
        elif wrote:
            # A run with outputs.mirror: report.csv keeps its mirror_urls column.
            mirror_urls = urls_by_job(store.mirrored()) if meta.get("mirror") else None
            write_report(
                Path(run_dir), ReportJobs.read(store, helped=True), facts=facts,
                rows_key=rows_key, cols_key=cols_key, mirror_urls=mirror_urls,
            )  # fmt: skip
    new = {GRID_META[axis]: name for axis, name in chosen.items() if name}
    # The grid chosen is kept (the next `run` lays report.html out the same way), with the
    # mark these files were made at (a `run` with nothing to do leaves them then) and how
    # they are on disk (a `report` with nothing new leaves them then).
    new[REPORT_MARK_META] = mark
    new[REPORT_FILES_META] = files_mark(run_dir)
    if any(meta.get(key) != value for key, value in new.items()):
        with StateStore.open(run_dir, create=False, lock=False) as store:
            store.set_meta(**new)
    return Path(run_dir) / "report.csv", wrote


def _layout_and_facts(
    run_dir: Path, meta: dict[str, str], rows_key: str | None, cols_key: str | None
) -> tuple[str | None, str | None, RunFacts]:
    """report.html's grid (chosen now, else kept, else the manifest's) and the run's own
    figures of the summary.json there (its origin as state.db records it)."""
    facts: RunFacts = {}
    summary = Path(run_dir) / "summary.json"
    try:
        previous = json.loads(summary.read_text(encoding="utf-8"))
        fresh = summarise([])  # its keys: the figures write_report computes again
        # Not `live`: a run killed mid-way left it; the rewritten report is a final one.
        facts = cast(
            RunFacts, {k: v for k, v in previous.items() if k not in fresh and k != "live"}
        )
    except (OSError, ValueError, AttributeError):
        pass
    held = og.recorded(meta, run_dir)
    if held:
        facts["origin"] = held
    # Unchosen: the grid an earlier `report --rows/--cols` chose, else the manifest's (read
    # only then: parsing it costs a tenth of a second for a large sweep's).
    rows_key, cols_key = (
        rows_key or meta.get(GRID_META["rows"]),
        cols_key or meta.get(GRID_META["cols"]),
    )
    if not rows_key or not cols_key:
        kept_rows, kept_cols = grid_choice(meta, *_manifest_grid(meta.get("manifest", "")))
        rows_key, cols_key = rows_key or kept_rows, cols_key or kept_cols
    return rows_key, cols_key, facts


def _manifest_grid(manifest: str) -> tuple[str | None, str | None]:
    """The `report:` grid of the run's manifest, when it is still there and valid."""
    # Imported here, not atop: the manifest's module brings jsonschema (0.1 s of a report's
    # 1.5 s), which a report whose grid is kept in state.db, and compare, never use.
    from batchrun.plan.manifest import load_manifest

    try:
        grid = load_manifest(manifest).report if manifest else None
    except (BatchrunError, OSError):
        grid = None
    return (grid.rows, grid.cols) if grid else (None, None)

"""A shared sweep (store/shared/) -> an ordinary run folder: state.db with its jobs and
every attempt of its ledger, the origin in meta (so `compare`, `merge` and `approve` check it
as any folder's), files/ gathered from the workers' run folders, and the reports.

Each job's files were recorded with the run folder (absolute path) and host of the worker that
downloaded them; a file is gathered when that path is reachable from this machine (the same
machine, or a shared filesystem), hard-linked or copied and checked by sha256 (merge's
`place_file`). What could not be gathered is listed; the folder is made all the same, those
jobs' files missing, so that `batchrun run` into it or a second export can complete it later.

The folder is built beside its destination and renamed into place at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.errors import StateError
from batchrun.results.merge import place_file
from batchrun.results.report import ReportJobs, RunFacts, write_report
from batchrun.store import origin as og
from batchrun.store.atomic import built_beside
from batchrun.store.shared import SharedState, scrub
from batchrun.store.state import StateStore

# Meta keys of a shared sweep a run folder keeps as they are.
_KEPT = (
    "name", "manifest", "manifest_sha256", "api_base", "origin", "est_cost_usd",
    "unpriced_jobs", "max_cost_usd",
)  # fmt: skip


@dataclass
class ExportResult:
    into: Path
    sweep: str
    jobs: int = 0
    linked: int = 0
    copied: int = 0
    missing: list[str] = field(default_factory=list)  # files not gathered, one line each


def export_sweep(url: str, sweep: str | None, into: str | os.PathLike[str]) -> ExportResult:
    """Write the sweep of the database at `url` into the run folder `into` (new or empty)."""
    dest = Path(into)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StateError(f"{dest}: already exists and is not empty; choose a new folder")
    shared = SharedState.reading(url, sweep)
    try:
        meta, facts = shared.meta(), shared.facts()
        rows = shared.rows(in_manifest_only=True)
        attempts = shared.attempts()
        places = shared.file_places()
    finally:
        shared.close()
    result = ExportResult(into=dest, sweep=shared.sweep, jobs=len(rows))
    origin = facts["origin"] or meta.get("origin", "")
    kept = {k: meta[k] for k in _KEPT if meta.get(k)}
    kept.update(origin=origin, exported_from=scrub(url), sweep=shared.sweep)
    if facts["cap_usd"] is not None:
        kept["max_cost_usd"] = str(facts["cap_usd"])
    with built_beside(dest, "exporting") as work:
        with StateStore.open(work) as store:
            store.import_jobs(rows, attempts, **kept)
            for row in rows:
                _gather(row.job_id, [f.name for f in row.files if f.name and not f.error],
                        {f.name: f.sha256 for f in row.files}, places, work, result)  # fmt: skip
            if origin == og.SIMULATOR:
                (work / ".simulator").mkdir(exist_ok=True)  # a simulated folder, as a run's
            report_facts: RunFacts = {
                "origin": origin,
                "name": kept.get("name", shared.sweep),
                "manifest": kept.get("manifest", ""),
                "exported_from": scrub(url),
                "est_cost_usd": float(kept["est_cost_usd"]) if "est_cost_usd" in kept else None,
                "unpriced_jobs": int(kept.get("unpriced_jobs") or 0),
                "max_cost_usd": float(kept["max_cost_usd"]) if "max_cost_usd" in kept else None,
            }
            write_report(work, ReportJobs.read(store), facts=report_facts)
    return result


def _gather(
    job_id: str,
    names: list[str],
    shas: dict[str, str],
    places: dict[str, tuple[str, str]],
    work: Path,
    result: ExportResult,
) -> None:
    """Place the job's files from the run folder of the worker that downloaded them."""
    if not names:
        return
    place = places.get(job_id)
    if place is None:
        result.missing += [f"job {job_id}: {n}: no worker recorded where it is" for n in names]
        return
    folder, host = place
    for name in names:
        try:
            linked = place_file(
                Path(folder), work, name, shas[name], doing="export",
                again="export again once it is reachable, or rerun the sweep",
            )  # fmt: skip
        except StateError as exc:
            result.missing.append(f"job {job_id} (downloaded on {host}): {exc}")
            continue
        result.linked += linked
        result.copied += not linked

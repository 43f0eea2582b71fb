"""`batchrun validate`: check manifests and every expanded job's inputs; no network. The jobs
are checked in one pass that keeps none (plan.build.check_sweep): a million-job sweep is
validated in the memory of a few jobs."""

from __future__ import annotations

import click

from batchrun.commands.common import schema_dirs, warn
from batchrun.errors import BucketUrlError, ManifestError, MissingDependencyError
from batchrun.fetch.bucket import require_boto3
from batchrun.plan.build import check_sweep
from batchrun.run.inputs import check_ready


def validate(manifests: tuple[str, ...], *, strict: bool, schemas: str | None = None) -> int:
    """ "FILE: ok (N jobs)" per valid manifest, every problem of the others; 0 or 2."""
    dirs = schema_dirs(schemas)
    failed = False
    for path in manifests:
        try:
            plan = check_sweep(path, strict=strict, schema_dirs=dirs)
        except ManifestError as exc:
            failed = True
            for problem in exc.problems:
                click.echo(problem, err=True)
            continue
        try:
            check_ready(plan.manifest.uploads, plan.manifest.has_local)
        except (MissingDependencyError, BucketUrlError) as exc:
            failed = True
            where = plan.manifest.line_suffix("$.uploads.to")
            click.echo(f"{path}: $.uploads.to: {exc}{where}", err=True)
            continue
        warn(plan.warnings)
        if plan.manifest.outputs.mirror:
            try:
                require_boto3()
            except MissingDependencyError as exc:
                failed = True
                click.echo(f"{path}: $.outputs.mirror: {exc}", err=True)
                continue
        jobs = plan.summary.total
        click.echo(f"{path}: ok ({jobs} job{'s' if jobs != 1 else ''})")
    return 2 if failed else 0

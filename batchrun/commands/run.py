"""`batchrun run`: plan the manifest, pick the API (RunComfy or the simulator), run the batch."""

from __future__ import annotations

import shlex
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from batchrun.commands import selection, simulate
from batchrun.commands.common import api_base, schema_dirs, token, warn
from batchrun.engine import RunOptions, run_batch
from batchrun.errors import UsageError
from batchrun.plan import build_plan


def run(
    manifest: str,
    *,
    simulate_api: bool,
    sim: tuple[str, ...],
    run_dir: str | None,
    api_base_option: str | None,
    retry_failed: bool,
    resubmit_unknown: bool,
    cancel_on_interrupt: bool,
    strict: bool,
    quiet: bool,
    schemas: str | None = None,
    max_cost: str | None = None,
    subset: selection.Options | None = None,
    shard_full_rate: bool = False,
    cache: str | None = None,
) -> int:
    """Run (or resume) the batch; the engine's exit code (0, 1 or 130)."""
    if sim and not simulate_api:
        raise UsageError("--sim KEY=VALUE only applies with --simulate")
    subset = subset or selection.Options()
    chosen = selection.parse(subset)
    if shard_full_rate and chosen.shard is None:
        raise UsageError("--shard-full-rate only applies with --shard K/N")
    pairs = _sim_pairs(sim)
    cap = parse_max_cost(max_cost)
    # The budget in force (--max-cost, else run.max_cost_usd) is plan.manifest.run.max_cost_usd.
    plan = build_plan(manifest, strict=strict, schema_dirs=schema_dirs(schemas)).with_max_cost(cap)
    warn(plan.warnings)
    cache_dir = _cache_folder(cache, plan.manifest.run.cache)
    only: frozenset[str] | None = None
    left_out = 0
    if chosen.active:
        # The plan keeps every job: the engine must know the manifest's jobs to leave the
        # others in the run folder as they are.
        picked = selection.choose(plan, chosen)[1]
        only, left_out = frozenset(j.job_id for j in picked.jobs), picked.left_out
        if not quiet:
            click.echo(selection.left_out_line(picked, chosen), err=True)
    share = chosen.shard[1] if chosen.shard and not shard_full_rate else 1
    folder = Path(run_dir or plan.manifest.outputs.dir)
    resume = ["batchrun", "run", manifest, "--run-dir", str(folder), *subset.argv()]
    if shard_full_rate:
        resume.append("--shard-full-rate")
    simulator = None
    if simulate_api:
        # The simulator's jobs live in the run folder, so a rerun (resume) still knows them.
        pairs = {"state_dir": str(folder / ".simulator"), **pairs}
        simulator = simulate.start(
            simulate.settings(pairs, where="--sim: "),
            when_busy=f"run folder {folder} in use by another run ({{why}}); wait for that run "
            "to finish (or stop it) and try again",
        )
        base, secret = simulator.base_url, simulator.token
        resume += ["--simulate", *(f"--sim={p}" for p in sim)]
        if not quiet:
            click.echo(f"simulator: {base} (in-process)", err=True)
    else:
        secret = token()
        base = api_base(api_base_option)
        if api_base_option:
            resume += ["--api-base", api_base_option]
    if schemas:
        resume += ["--schemas", schemas]
    if max_cost is not None:
        resume += ["--max-cost", max_cost]
    if cache is not None:
        resume += ["--cache", cache]
    options = RunOptions(
        api_base=base,
        token=secret,
        run_dir=folder,
        retry_failed=retry_failed,
        resubmit_unknown=resubmit_unknown,
        cancel_on_interrupt=cancel_on_interrupt,
        quiet=quiet,
        resume_command=shlex.join(resume),
        only=only,
        left_out=left_out,
        share=share,
        cache=cache_dir,
    )
    try:
        return run_batch(plan, options)
    finally:
        if simulator is not None:
            simulator.stop()


def _cache_folder(option: str | None, manifest_setting: str | None) -> Path | None:
    """--cache DIR, else run.cache; UsageError (nothing sent) when it names a file."""
    chosen = option if option is not None else manifest_setting
    if chosen is None:
        return None
    folder = Path(chosen).expanduser()
    if folder.exists() and not folder.is_dir():
        where = f"--cache {option}" if option is not None else f"run.cache: {manifest_setting}"
        raise UsageError(
            f"{where}: {folder} is a file, not a folder; give a folder path "
            "(made if missing), e.g. --cache .batchrun-cache"
        )
    return folder


def parse_max_cost(text: str | None) -> Decimal | None:
    """--max-cost USD as an exact amount (a leading `$` allowed); UsageError unless >= 0."""
    if text is None:
        return None
    try:
        amount = Decimal(text.strip().removeprefix("$").replace(",", ""))
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        raise UsageError(
            f"--max-cost {text!r}: expected an amount in USD, a number >= 0, "
            "e.g. --max-cost 25 or --max-cost 2.50"
        )
    return amount


def _sim_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--sim {pair!r}: expected KEY=VALUE, e.g. --sim rate_limit=5/s")
        out[key.strip()] = value.strip()
    return out

"""`batchrun run`: plan the manifest, pick the API (RunComfy or the simulator), run the batch."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from batchrun.api.balance import SERVERLESS_BASE_ENV, balance_base
from batchrun.catalog import models
from batchrun.catalog.pricing import usd
from batchrun.commands import selection, simulate
from batchrun.commands.args import RunArgs
from batchrun.commands.common import api_base, schema_dirs, token, warn
from batchrun.errors import OriginMismatch, StateError, UsageError
from batchrun.plan.build import Plan, build_plan, check_sweep, schema_search_path
from batchrun.plan.digest import PLAN_META, PlanMark, plan_digest
from batchrun.plan.manifest import check_manifest
from batchrun.plan.settings import RunSettings, parse_every
from batchrun.run.engine import RunOptions, run_batch
from batchrun.store import origin as og
from batchrun.store.origin import DEFAULT_API_BASE
from batchrun.store.state import STATE_FILE, StateStore


def run(args: RunArgs) -> int:
    """Run (or resume) the batch; the engine's exit code (0, 1 or 130)."""
    if args.sim and not args.simulate:
        raise UsageError("--sim KEY=VALUE only applies with --simulate")
    chosen = selection.parse(args.subset)
    if args.shard_full_rate and chosen.shard is None:
        raise UsageError("--shard-full-rate only applies with --shard K/N")
    pairs = _sim_pairs(args.sim)
    cap = parse_max_cost(args.max_cost)
    # The budget in force (--max-cost, else run.max_cost_usd) is plan.manifest.run.max_cost_usd.
    plan, mark, known = _plan(args, resume=not chosen.active)
    plan = plan.with_max_cost(cap)
    warn(list(mark.warnings))
    setting = "--max-cost" if cap is not None else "run.max_cost_usd"
    warn(budget_warnings(plan.manifest.run, mark.est_usd, mark.unpriced, setting))
    cache_dir = _cache_folder(args.cache, plan.manifest.run.cache)
    report_every = None
    if args.report_every is not None:
        try:
            report_every = parse_every(args.report_every)
        except ValueError as exc:
            raise UsageError(f"--report-every {args.report_every}: {exc}") from None
    only_ids: frozenset[str] | None = None
    left_out = 0
    if chosen.active:
        # The plan keeps every job: the engine must know the manifest's jobs to leave the
        # others in the run folder as they are.
        picked = selection.choose(plan, chosen)[1]
        only_ids, left_out = frozenset(j.job_id for j in picked.jobs), picked.left_out
        if not args.quiet:
            click.echo(selection.left_out_line(picked, chosen), err=True)
    share = chosen.shard[1] if chosen.shard and not args.shard_full_rate else 1
    folder = Path(args.run_dir or plan.manifest.outputs.dir)
    simulator = None
    if args.simulate:
        # The simulator's jobs live in the run folder, so a rerun (resume) still knows them.
        pairs = {"state_dir": str(folder / ".simulator"), **pairs}
        simulator = simulate.start(
            simulate.settings(pairs, where="--sim: "),
            when_busy=f"run folder {folder} in use by another run ({{why}}); wait for that run "
            "to finish (or stop it) and try again",
        )
        base, secret, origin = simulator.base_url, simulator.token, og.SIMULATOR
        if not args.quiet:
            click.echo(f"simulator: {base} (in-process)", err=True)
    else:
        secret = token("run")
        base = origin = api_base(args.api_base_option)
    options = RunOptions(
        api_base=base,
        token=secret,
        origin=origin,
        run_dir=folder,
        retry_failed=args.retry_failed,
        resubmit_unknown=args.resubmit_unknown,
        cancel_on_interrupt=args.cancel_on_interrupt,
        quiet=args.quiet,
        resume_command=args.resume_command(folder),
        only=only_ids,
        left_out=left_out,
        share=share,
        cache=cache_dir,
        # A part of the sweep leaves its folder without the whole plan's jobs: no digest then.
        plan_mark=None if chosen.active else mark,
        jobs_known=known,
        report_every=report_every,
        balance_base=run_balance_base(base, simulated=simulator is not None),
    )
    state_url = args.state or plan.manifest.run.state
    try:
        if state_url:
            _refuse_with_shared_state(args, chosen.active, cache_dir)
            from batchrun.run.shared import run_shared  # psycopg's import only when asked

            return run_shared(plan, options, state_url)
        return run_batch(plan, options)
    except OriginMismatch as exc:
        raise OriginMismatch(
            f"{exc}; use another --run-dir for this run, or delete {folder} to start over"
        ) from None
    finally:
        if simulator is not None:
            simulator.stop()


def _plan(args: RunArgs, *, resume: bool) -> tuple[Plan, PlanMark, bool]:
    """The plan, its mark (plan/digest.py), and whether its jobs are in the run folder already.

    With `resume` (no part of the sweep chosen), a run folder that recorded the digest this
    manifest, its sources and schemas make now holds every job of the plan: the plan comes
    without jobs (nothing to expand, check or add) and with the warnings and estimate the
    folder recorded. Otherwise the plan is built in full, and its jobs come with it.
    """
    dirs = schema_dirs(args.schemas)
    manifest, problems = check_manifest(args.manifest) if resume else (None, [])
    shared = args.state or (manifest is not None and manifest.run.state)
    if manifest is not None and not problems and not shared:  # a shared sweep's jobs: its own
        schemas = models.Schemas.along(schema_search_path(args.manifest, dirs))
        digest = plan_digest(manifest, schemas, strict=args.strict)
        known = _recorded_mark(Path(args.run_dir or manifest.outputs.dir))
        if digest and known is not None and known.digest == digest:
            return Plan(manifest, [], list(known.warnings), schemas), known, True
        # Checked in one pass, its jobs expanded again as they are added: none held.
        checked = check_sweep(
            args.manifest, strict=args.strict, schema_dirs=dirs, read=(manifest, problems)
        )
        costs = checked.summary.costs.values()
        mark = PlanMark(
            digest=digest,
            warnings=tuple(checked.warnings),
            est_usd=sum((c.usd for c in costs), Decimal(0)),
            unpriced=sum(c.unpriced for c in costs),
        )
        plan = Plan(checked.manifest, [], checked.warnings, checked.schemas, sweep=checked.sweep)
        return plan, mark, False
    plan = build_plan(args.manifest, strict=args.strict, schema_dirs=dirs)
    costs = plan.costs().values()
    mark = PlanMark(
        digest=plan_digest(plan.manifest, plan.schemas, strict=args.strict),
        warnings=tuple(plan.warnings),
        est_usd=sum((c.usd for c in costs), Decimal(0)),
        unpriced=sum(c.unpriced for c in costs),
    )
    return plan, mark, False


def _recorded_mark(folder: Path) -> PlanMark | None:
    """The plan mark the run folder recorded; None when it has none (or no state.db)."""
    if not (folder / STATE_FILE).is_file():
        return None
    try:
        with StateStore.open(folder, create=False, lock=False) as store:
            return PlanMark.loads(store.meta().get(PLAN_META))
    except StateError:
        return None


def _refuse_with_shared_state(args: RunArgs, subset: bool, cache: Path | None) -> None:
    """What a shared sweep does not do (yet): say so before anything is sent."""
    plan_run = [("--only/--first/--sample/--shard", subset), ("--cache or run.cache", cache)]
    for what, given in plan_run:
        if given:
            raise UsageError(
                f"{what} does not apply to a shared sweep (--state): every worker works the "
                "whole sweep; run without it"
            )


def run_balance_base(base: str, *, simulated: bool) -> str | None:
    """Where `run` reads the balance before its first submit: the simulator, RunComfy's
    serverless API for RunComfy's own base, RUNCOMFY_SERVERLESS_API_BASE when set; for another
    base (a proxy, a test server) nothing is known to serve a balance, so it is not read."""
    if simulated or os.environ.get(SERVERLESS_BASE_ENV, "").strip():
        return balance_base(base)
    if og.normalise(base) == og.normalise(DEFAULT_API_BASE):
        return balance_base(base)
    return None


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


def budget_warnings(run: RunSettings, total: Decimal, unpriced: int, setting: str) -> list[str]:
    """What the cap will do to this plan: stop it early, or (with retries) maybe stop it.

    `total` is the estimate of the plan's priced jobs, `unpriced` how many have no price. A
    cap is never exceeded, retries included (each attempt is reserved before its submit):
    these are warnings, not errors, since a cap below the plan's total is a legitimate way to
    spend a fixed amount.
    """
    cap = run.max_cost_usd
    if cap is None:
        return []
    retries = run.retries
    out = []
    if total > cap:
        out.append(
            f"the plan's estimate {usd(total)} is over the {setting} cap of {usd(cap)}: "
            "the run will stop at the cap with jobs not run (exit 4)"
        )
    elif retries and total * (1 + retries) > cap:
        out.append(
            f"run.retries is {retries} and a failed attempt may be billed: if jobs fail, their "
            f"retries count against the {setting} cap of {usd(cap)} (estimate {usd(total)}, "
            f"{usd(total * (1 + retries))} if every attempt failed), so the run may stop at "
            "the cap with jobs not run (exit 4)"
        )
    if unpriced:
        out.append(
            f"{unpriced} job(s) have no price: under the {setting} cap their model runs one job "
            "at a time until the first one's actual cost is known (pull the price with "
            "`batchrun models pull MODEL_ID`)"
        )
    return out


def _sim_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--sim {pair!r}: expected KEY=VALUE, e.g. --sim rate_limit=5/s")
        out[key.strip()] = value.strip()
    return out

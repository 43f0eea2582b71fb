"""`batchrun run`: plan the manifest, pick the API (RunComfy or the simulator), run the batch."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from batchrun import origin as og
from batchrun.commands import simulate
from batchrun.commands.common import api_base, token, warn
from batchrun.engine import RunOptions, run_batch
from batchrun.errors import OriginMismatch, UsageError
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
) -> int:
    """Run (or resume) the batch; the engine's exit code (0, 1 or 130)."""
    if sim and not simulate_api:
        raise UsageError("--sim KEY=VALUE only applies with --simulate")
    pairs = _sim_pairs(sim)
    plan = build_plan(manifest, strict=strict)
    warn(plan.warnings)
    folder = Path(run_dir or plan.manifest.outputs.dir)
    resume = ["batchrun", "run", manifest, "--run-dir", str(folder)]
    simulator = None
    if simulate_api:
        # The simulator's jobs live in the run folder, so a rerun (resume) still knows them.
        pairs = {"state_dir": str(folder / ".simulator"), **pairs}
        simulator = simulate.start(
            simulate.settings(pairs, where="--sim: "),
            when_busy=f"run folder {folder} in use by another run ({{why}}); wait for that run "
            "to finish (or stop it) and try again",
        )
        base, secret, origin = simulator.base_url, simulator.token, og.SIMULATOR
        resume += ["--simulate", *(f"--sim={p}" for p in sim)]
        if not quiet:
            click.echo(f"simulator: {base} (in-process)", err=True)
    else:
        secret = token()
        base = origin = api_base(api_base_option)
        if api_base_option:
            resume += ["--api-base", api_base_option]
    options = RunOptions(
        api_base=base,
        token=secret,
        origin=origin,
        run_dir=folder,
        retry_failed=retry_failed,
        resubmit_unknown=resubmit_unknown,
        cancel_on_interrupt=cancel_on_interrupt,
        quiet=quiet,
        resume_command=shlex.join(resume),
    )
    try:
        return run_batch(plan, options)
    except OriginMismatch as exc:
        raise OriginMismatch(
            f"{exc}; use another --run-dir for this run, or delete {folder} to start over"
        ) from None
    finally:
        if simulator is not None:
            simulator.stop()


def _sim_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--sim {pair!r}: expected KEY=VALUE, e.g. --sim rate_limit=5/s")
        out[key.strip()] = value.strip()
    return out

"""The `batchrun` command line: click declarations only; each command calls commands.<name>.

Library modules never import click; every foreseeable error is a BatchrunError, mapped to its
exit code and printed without a traceback in `main`, the one place that does so.
"""

from __future__ import annotations

import sys

import click

from batchrun import __version__, commands
from batchrun.errors import BatchrunError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchrun")
def cli() -> None:
    """Run sweeps of generative-model jobs against the RunComfy Model API.

    \b
    Try it without a token on the built-in simulator:
      batchrun run manifests/quickstart.yaml --simulate
    """


# Each command returns its exit code (an int); `main` maps errors to exit codes.
def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: returns the process exit code."""
    try:
        code = cli.main(args=argv, prog_name="batchrun", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BatchrunError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted; state saved; rerun to resume", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return code if isinstance(code, int) else 0


# ---- validate / plan (manifest + grid) -------------------------------------------------------


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="A model without a local input schema is an error.")
def validate(manifests: tuple[str, ...], strict: bool) -> int:
    """Check manifests and every expanded job's inputs; no network.

    Prints "FILE: ok (N jobs)" per valid manifest; every problem otherwise, as
    FILE: $.json.path: message (line N). Exit 0 when all are valid, 2 otherwise.

    \b
    Example:
      batchrun validate manifests/*.yaml
    """
    return commands.validate.validate(manifests, strict=strict)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, one a line.")
@click.option("--strict", is_flag=True, help="A model without a local input schema is an error.")
def plan(manifest: str, as_json: bool, strict: bool) -> int:
    """Show the jobs a manifest expands to, without running anything.

    Prints the job count per model and a table of jobs with the values that vary
    between them. With --json, prints one object per job a line: job_id,
    model_id, inputs, vars, repeat.

    \b
    Examples:
      batchrun plan manifests/quickstart.yaml
      batchrun plan manifests/quickstart.yaml --json | jq .inputs.prompt
    """
    return commands.plan.plan(manifest, as_json=as_json, strict=strict)


# ---- run / status / cancel / report (engine) -------------------------------------------------


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--simulate", is_flag=True, help="Run against the built-in simulator (no token).")
@click.option(
    "--sim",
    "sim",
    multiple=True,
    metavar="KEY=VALUE",
    help="A simulator setting for --simulate, e.g. --sim fail_rate=0.1 (repeatable).",
)
@click.option(
    "--run-dir", type=click.Path(file_okay=False), help="Run folder [default: outputs.dir]."
)
@click.option("--api-base", help="API base URL [default: $RUNCOMFY_MODEL_API_BASE or RunComfy].")
@click.option("--retry-failed", is_flag=True, help="Submit failed and timed-out jobs again.")
@click.option(
    "--resubmit-unknown",
    is_flag=True,
    help="Submit again jobs whose submit may have reached the server (may pay twice).",
)
@click.option(
    "--cancel-on-interrupt", is_flag=True, help="On Ctrl-C, cancel requests still queued."
)
@click.option("--strict", is_flag=True, help="A model without a local input schema is an error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
def run(
    manifest: str,
    simulate: bool,
    sim: tuple[str, ...],
    run_dir: str | None,
    api_base: str | None,
    retry_failed: bool,
    resubmit_unknown: bool,
    cancel_on_interrupt: bool,
    strict: bool,
    quiet: bool,
) -> int:
    """Run the whole batch of MANIFEST; running it again on the same run folder resumes.

    \b
    Example (offline, on the built-in simulator):
      batchrun run manifests/quickstart.yaml --simulate
    Against RunComfy:
      export RUNCOMFY_TOKEN=...; batchrun run manifests/quickstart.yaml

    Exit codes: 0 all succeeded, 1 some failed, timed out or were cancelled, 2 invalid
    manifest or usage, 3 no token or refused token, 130 interrupted (state saved).
    """
    return commands.run.run(
        manifest,
        simulate_api=simulate,
        sim=sim,
        run_dir=run_dir,
        api_base_option=api_base,
        retry_failed=retry_failed,
        resubmit_unknown=resubmit_unknown,
        cancel_on_interrupt=cancel_on_interrupt,
        strict=strict,
        quiet=quiet,
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(run_dir: str, as_json: bool) -> int:
    """Counts per state, failing jobs with their errors, what is still on the server.

    Reads the run folder without locking it, so it works while a run is active.

    \b
    Example:
      batchrun status outputs/quickstart
    """
    return commands.status.status(run_dir, as_json=as_json)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--api-base", help="API base URL [default: the one the run used].")
def cancel(run_dir: str, api_base: str | None) -> int:
    """Cancel every request of RUN_DIR still queued on the server (needs RUNCOMFY_TOKEN).

    Running requests cannot be cancelled; they finish and are billed.

    \b
    Example:
      batchrun cancel outputs/quickstart
    """
    return commands.cancel.cancel(run_dir, api_base_option=api_base)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--rows",
    "rows_key",
    metavar="FIELD",
    help="Swept field for the rows of report.html, e.g. seed or var.color [default: the one "
    "with the most values].",
)
@click.option(
    "--cols", "cols_key", metavar="FIELD", help="Swept field for the columns of report.html."
)
def report(run_dir: str, rows_key: str | None = None, cols_key: str | None = None) -> int:
    """Rewrite report.csv, summary.json and report.html of RUN_DIR from its state.db.

    \b
    Example:
      batchrun report outputs/quickstart
    """
    return commands.report.report(run_dir, rows_key=rows_key, cols_key=cols_key)


# ---- compare ---------------------------------------------------------------------------------


@cli.command("compare")
@click.argument("baseline")
@click.argument("current")
@click.option(
    "--fail-on",
    default="regressed,missing,changed",
    show_default=True,
    help="Comma list of classes that fail the gate: unchanged, changed, regressed, fixed, "
    "new, missing, slower.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="X",
    help="Mark a job slower when its run_s exceeds the baseline's times X (off by default).",
)
@click.option(
    "--image-tolerance",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="D",
    help="Images whose bytes differ but whose perceptual distance (0..1) is at most D count "
    "as unchanged. Needs Pillow: pip install 'batchrun[images]'.",
)
@click.option(
    "--markdown",
    "markdown_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a markdown summary (fits $GITHUB_STEP_SUMMARY).",
)
@click.option(
    "--junit",
    "junit_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write JUnit XML: one testcase per job.",
)
@click.option(
    "--json",
    "json_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full result as JSON.",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write an HTML page: baseline and current side by side for changed jobs.",
)
@click.option(
    "--update-baseline",
    "baseline_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Copy the current report.csv and files/ into DIR.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
def compare_cmd(
    baseline: str,
    current: str,
    fail_on: str,
    max_slowdown: float | None,
    image_tolerance: float | None,
    markdown_file: str | None,
    junit_file: str | None,
    json_file: str | None,
    html_file: str | None,
    baseline_dir: str | None,
    quiet: bool,
) -> int:
    """Compare two runs (run folders or report.csv files) and gate on regressions.

    Jobs are matched by job id and classed unchanged, changed (output sha256
    differs), regressed, fixed, new, missing, and slower. Exit 0 when no job is
    in a --fail-on class, 1 when one is, 2 when an input is unusable.

    \b
    Example:
      batchrun compare baselines/umbrella runs/umbrella \\
          --markdown "$GITHUB_STEP_SUMMARY" --junit compare.xml --image-tolerance 0.02
    """
    return commands.compare.compare(
        baseline,
        current,
        fail_on=fail_on,
        max_slowdown=max_slowdown,
        image_tolerance=image_tolerance,
        markdown_file=markdown_file,
        junit_file=junit_file,
        json_file=json_file,
        html_file=html_file,
        baseline_dir=baseline_dir,
        quiet=quiet,
    )


# ---- simulate --------------------------------------------------------------------------------


@cli.command()
@click.option("--port", type=int, default=8787, show_default=True, help="0 picks a free port.")
@click.option("--token", help="Bearer token the simulator accepts [default: sim-token].")
@click.option("--seed", type=int, help="Seed for every random draw (faults, run times).")
@click.option(
    "--concurrency",
    "--workers",
    "concurrency",
    type=int,
    help="Jobs the account runs at once, the rest queued; 0 = unlimited [default: 4].",
)
@click.option("--run-time", help="Job run time: 1.5 or 500ms (mean), 0.5-1.5, lognormal:1s:0.8:20s")
@click.option("--rate-limit", help="API calls allowed, e.g. 10/s or 600/min; above: 429.")
@click.option("--error-rate", help="Fraction of API calls answered 500/502/503.")
@click.option("--drop-rate", help="Fraction of API calls whose connection drops mid-answer.")
@click.option("--slow", help="Latency added to every API call, e.g. 0.2 or 200ms.")
@click.option("--fail-rate", help="Fraction of jobs that end failed.")
@click.option("--expire-after", help="Seconds after finishing until results and files are 404.")
@click.option("--drift", help="Fraction of jobs whose output bytes differ (for compare demos).")
@click.option("--malicious", is_flag=True, default=None, help="Hostile outputs (security tests).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Keep accepted jobs in DIR; a restart with the same DIR still knows them.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML file of settings (same names, e.g. rate_limit: 5/s); flags win.",
)
def simulate(port: int, config_file: str | None, **flags: object) -> int:
    """Serve the local RunComfy Model API simulator until Ctrl-C.

    \b
    Example:
      batchrun simulate --port 8787 --rate-limit 20/s --fail-rate 0.1
      export RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8787 RUNCOMFY_TOKEN=sim-token
      batchrun run manifests/quickstart.yaml
    """
    return commands.simulate.simulate(port, config_file, flags)


if __name__ == "__main__":
    sys.exit(main())

"""The `batchrun` command line: click declarations only; each command calls commands.<name>.

`plan`, `run` and `compare` take one options record each (commands/args.py), whose fields
declare the command's options: `opt.declare` puts them on the command, `opt.build` makes the
record the command function gets.

Library modules never import click; every foreseeable error is a BatchrunError, mapped to its
exit code and printed without a traceback in `main`, the one place that does so.
"""

from __future__ import annotations

from typing import Any

import click

from batchrun import __version__, commands
from batchrun.commands import options as opt
from batchrun.commands.args import CompareArgs, PlanArgs, RunArgs
from batchrun.errors import BatchrunError
from batchrun.util.safetext import printable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchrun")
def cli() -> None:
    """Run sweeps of generative-model jobs against the RunComfy Model API.

    \b
    Try it without a token on the built-in simulator:
      batchrun init                        # writes sweep.yaml + prompts.txt here
      batchrun run sweep.yaml --simulate
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: runs a command, maps errors to exit codes."""
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
        click.echo(f"error: {printable(str(exc), lines=True)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted; state saved; rerun to resume", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return code if isinstance(code, int) else 0


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> int:
    """Write a starter manifest (sweep.yaml) and its prompts.txt into DIRECTORY [default: .].

    The starter validates and runs on the built-in simulator from any folder; its
    `$schema` line points at the installed manifest schema. Existing files are never
    overwritten (exit 2).

    \b
    Example:
      batchrun init my-sweep && cd my-sweep && batchrun run sweep.yaml --simulate
    """
    return commands.init.init(directory)


@cli.command()
def schema() -> int:
    """Print the path of the installed manifest JSON Schema (for an editor's $schema).

    \b
    Example:
      batchrun schema    # then, atop a manifest: # yaml-language-server: $schema=PATH
    """
    return commands.init.schema()


@cli.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@opt.strict
@opt.schemas
def validate(manifests: tuple[str, ...], **options: Any) -> int:
    """Check manifests and every expanded job's inputs; no network.

    Prints "FILE: ok (N jobs)" per valid manifest; every problem otherwise, as
    FILE: $.json.path: message (line N). Exit 0 when all are valid, 2 otherwise.

    \b
    Example:
      batchrun validate manifests/*.yaml
    """
    return commands.validate.validate(manifests, **options)


@cli.command()
@opt.declare(PlanArgs)
def plan(**params: Any) -> int:
    """Show the jobs a manifest expands to and what they will cost, without running anything.

    Prints the job count and estimated cost per model, the total, and a table of
    the values that vary between jobs. With --json, one object per job a line:
    job_id, model_id, inputs, vars, repeat, est_cost_usd (null when unpriced).
    Prices come from the model schema files (see `batchrun models pull`).

    \b
    Examples:
      batchrun plan manifests/quickstart.yaml
      batchrun plan manifests/quickstart.yaml --json | jq .inputs.prompt
      batchrun plan manifests/quickstart.yaml --only var.color=indigo --shard 1/2
    """
    return commands.plan.plan(opt.build(PlanArgs, params))


@cli.command()
@opt.declare(RunArgs)
def run(**params: Any) -> int:
    """Run the whole batch of MANIFEST; running it again on the same run folder resumes.

    A shard (--shard K/N) uses 1/N of rate_limit and max_in_flight; `batchrun
    merge` joins the shards' folders.

    \b
    Examples:
      batchrun run manifests/quickstart.yaml --simulate      # offline
      batchrun run manifests/quickstart.yaml                 # with RUNCOMFY_TOKEN
      batchrun run manifests/quickstart.yaml --shard 1/4 --run-dir runs/shard-1

    Exit codes: 0 all succeeded; 1 some failed or the run halted; 2 invalid manifest
    or usage; 3 token, balance or unreachable API; 4 at the cost budget; 130
    interrupted (state saved).
    """
    return commands.run.run(opt.build(RunArgs, params))


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--state",
    metavar="URL",
    help="A shared sweep's database instead of a run folder: postgresql://USER:PASSWORD@"
    "HOST:PORT/DB [default without RUN_DIR: $BATCHRUN_STATE_URL].",
)
@click.option(
    "--sweep",
    metavar="NAME",
    help="Which sweep of the database (the manifest's name:) [default: its only one].",
)
def status(run_dir: str | None, **options: Any) -> int:
    """Counts per state, failing jobs with their errors, what is still on the server.

    Reads the run folder without locking it, so it works while a run is active. With
    --state URL (or BATCHRUN_STATE_URL) it reads a shared sweep from its database, from
    any machine, and lists its workers too.

    \b
    Examples:
      batchrun status outputs/quickstart
      BATCHRUN_STATE_URL=postgresql://batchrun:PASSWORD@db:5432/sweeps batchrun status
    """
    return commands.status.status(run_dir, **options)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--api-base",
    "api_base_option",
    help="API base URL [default: $RUNCOMFY_MODEL_API_BASE, else the one the run used].",
)
def cancel(run_dir: str, **options: Any) -> int:
    """Cancel every request of RUN_DIR still queued on the server (needs RUNCOMFY_TOKEN).

    Running requests cannot be cancelled; they finish and are billed.

    \b
    Example:
      batchrun cancel outputs/quickstart
    """
    return commands.cancel.cancel(run_dir, **options)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--rows",
    "rows_key",
    metavar="FIELD",
    help="Swept field for the rows of report.html, e.g. seed, var.color or model [default: "
    "the manifest's report.rows, else the one with the most values]; kept for later runs.",
)
@click.option(
    "--cols",
    "cols_key",
    metavar="FIELD",
    help="Swept field for the columns of report.html (model: models side by side); kept for "
    "later runs.",
)
def report(run_dir: str, **options: Any) -> int:
    """Rewrite report.csv, summary.json and report.html of RUN_DIR from its state.db.

    \b
    Example:
      batchrun report outputs/quickstart
    """
    return commands.report.report(run_dir, **options)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--into",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The merged run folder to make (new or empty).",
)
def merge(run_dirs: tuple[str, ...], **options: Any) -> int:
    """Merge shard run folders into one, as if one run had done every job.

    A job with different results in two folders is refused (exit 2). Files are
    hard-linked (or copied) and checked by sha256.

    \b
    Example (after `batchrun run M --shard K/2 --run-dir runs/shard-K`):
      batchrun merge runs/shard-1 runs/shard-2 --into runs/all
      batchrun compare baselines/sweep runs/all
    """
    return commands.merge.merge(run_dirs, **options)


@cli.command()
@click.option(
    "--state",
    metavar="URL",
    help="The shared sweep's database: postgresql://USER:PASSWORD@HOST:PORT/DB "
    "[default: $BATCHRUN_STATE_URL].",
)
@click.option(
    "--into",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="The run folder to make (new or empty).",
)
@click.option(
    "--sweep",
    metavar="NAME",
    help="Which sweep of the database (the manifest's name:) [default: its only one].",
)
def export(**options: Any) -> int:
    """Write a shared sweep (run with --state URL) into an ordinary run folder.

    The folder gets state.db (the jobs and every attempt of the ledger, the origin), the
    files gathered from the workers' run folders (when their paths are reachable from
    this machine; sha256-verified) and the reports; `status`, `report`, `compare` and
    `merge` accept it. Exit 1 when some files could not be gathered (each is listed).

    \b
    Example:
      export BATCHRUN_STATE_URL=postgresql://batchrun:PASSWORD@db:5432/sweeps
      batchrun export --into runs/sweep
      batchrun compare baselines/sweep runs/sweep
    """
    return commands.export.export(**options)


@cli.command()
@click.argument("current", type=click.Path(file_okay=False))
@click.option(
    "--into",
    required=True,
    type=click.Path(file_okay=False),
    metavar="BASELINE",
    help="The baseline run folder to approve into (created when missing).",
)
@click.option(
    "--only",
    multiple=True,
    metavar="EXPR",
    help="Only jobs matching EXPR: model=ID, input.FIELD=VALUE, var.NAME=VALUE or "
    "job=ID_PREFIX (repeatable; all must match).",
)
@click.option(
    "--job",
    "job_ids",
    multiple=True,
    metavar="ID",
    help="This job (its id or a unique prefix; repeatable).",
)
def approve(current: str, **options: Any) -> int:
    """Approve jobs of the run folder CURRENT into the baseline run folder BASELINE.

    Copies the chosen jobs' results (rows, ledger attempts and sha256-verified
    files) into BASELINE, made when missing; its other jobs stay as they are, and
    its reports are rewritten. Without --only or --job every job is approved, and
    the baseline's jobs the run no longer has leave its reports (what `compare
    --update-baseline` does). Only succeeded results are approved; other chosen
    jobs are skipped, and said. Results of another origin (the simulator and an
    API) are refused (exit 2).

    \b
    Examples:
      batchrun approve runs/sweep --into baselines/sweep --job 3f2a9c --job 77b1e0
      batchrun approve runs/sweep --into baselines/sweep --only model=acme/flux
      batchrun approve runs/sweep --into baselines/sweep      # every job
    """
    return commands.approve.approve(current, **options)


@cli.command("compare")
@opt.declare(CompareArgs)
def compare_cmd(**params: Any) -> int:
    """Compare two runs (run folders or report.csv files) and gate on regressions.

    Jobs are matched by job id and classed unchanged, changed (output sha256
    differs), regressed, fixed, new, missing, and slower. Exit 0 when no job is
    in a --fail-on class, 1 when one is, 2 when an input is unusable.

    \b
    Example:
      batchrun compare baselines/umbrella runs/umbrella \\
          --markdown "$GITHUB_STEP_SUMMARY" --junit compare.xml --image-tolerance 0.02
    """
    return commands.compare.compare(opt.build(CompareArgs, params))


@cli.command()
@opt.api_base
@click.option("--json", "as_json", is_flag=True, help="Print JSON: balance_usd, scope, base.")
def balance(**options: Any) -> int:
    """Print the account balance (account-wide: RunComfy has one wallet for everything).

    \b
    Read from GET $RUNCOMFY_SERVERLESS_API_BASE/balance (default
    https://api.runcomfy.net/prod/v2) with RUNCOMFY_TOKEN; for another model API base (a local
    simulator) from that base. Example:
      batchrun balance
    """
    return commands.balance.balance(**options)


@cli.group()
def models() -> None:
    """The RunComfy model catalog: input schemas and prices (needs RUNCOMFY_TOKEN)."""


@models.command("pull")
@click.argument("model_ids", nargs=-1, required=True, metavar="MODEL_ID...")
@click.option("--dir", "dest", type=click.Path(file_okay=False), help="[default: schemas/models]")
@opt.api_base
def models_pull(model_ids: tuple[str, ...], **options: Any) -> int:
    """Store each model's catalog entry (input schema, price, when fetched) as a schema file.

    The file is DIR/<id with / as __>.json, where validate, plan and run find it.

    \b
    Example:
      batchrun models pull google/nano-banana-2-lite/text-to-image
      batchrun plan manifests/quickstart.yaml
    """
    return commands.models.pull(model_ids, **options)


@models.command("list")
@click.option("--search", default="", metavar="TEXT", help="Only models whose id or name has TEXT.")
@opt.api_base
def models_list(**options: Any) -> int:
    """List the catalog's models: id, name and price (e.g. $0.044/output).

    \b
    Example:
      batchrun models list --search seedance
    """
    return commands.models.list_models(**options)


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
    "--bill-on",
    type=click.Choice(["success", "accept"]),
    help="Bill a job when it succeeds, or every submit as it is accepted [default: success].",
)
@click.option(
    "--result-costs/--no-result-costs",
    default=None,
    help="Answer include_cost=true with the job's cost [default: yes].",
)
@click.option("--balance", help="USD the account can pay; past it a submit is refused (402).")
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

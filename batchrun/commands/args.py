"""The options records of `plan`, `run` and `compare`: each field declares one of the command's
options (see commands/options.py), so a new option is one field here, and its test.

`RunArgs` also writes the command line that continues a run (`resume_command`): each of its
fields says whether that line repeats the option (`Resumed`) or why not (`NotResumed`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import click

from batchrun.commands import options as opt
from batchrun.commands.options import NotResumed, Resumed, argument, nested, option

# A resume line reads: the manifest, the run folder, which jobs, which API, then settings.
FOLDER, JOBS, API, SETTINGS = range(4)


@dataclass(frozen=True)
class SubsetArgs:
    """--only, --first, --sample/--seed and --shard as typed (None or empty: not given)."""

    only: tuple[str, ...] = option(
        "--only",
        multiple=True,
        metavar="EXPR",
        help="Only jobs matching EXPR: model=ID, input.FIELD=VALUE, var.NAME=VALUE or "
        "job=ID_PREFIX (repeatable; all must match).",
        resume=Resumed(JOBS, joined=True),
    )
    first: int | None = option(
        "--first",
        type=click.IntRange(min=1),
        metavar="N",
        help="The first N jobs per model.",
        resume=Resumed(JOBS, joined=True),
    )
    sample: int | None = option(
        "--sample",
        type=click.IntRange(min=1),
        metavar="N",
        help="N jobs drawn at random; the same --seed draws the same jobs.",
        resume=Resumed(JOBS, joined=True),
    )
    seed: int | None = option(
        "--seed",
        type=int,
        metavar="S",
        help="Seed of --sample [default: 0].",
        resume=Resumed(JOBS, joined=True),
    )
    shard: str | None = option(
        "--shard",
        metavar="K/N",
        help="The K-th of N shards (by job id; every job in exactly one), e.g. 1/4.",
        resume=Resumed(JOBS, joined=True),
    )


@dataclass(frozen=True)
class PlanArgs:
    """The argument and options of `batchrun plan`."""

    manifest: str = argument(type=click.Path(dir_okay=False))
    as_json: bool = option("--json", is_flag=True, help="One JSON object per job, one a line.")
    strict: bool = opt.strict.field()
    schemas: str | None = opt.schemas.field()
    subset: SubsetArgs = nested(SubsetArgs)


@dataclass(frozen=True)
class RunArgs:
    """The argument and options of `batchrun run`, as typed."""

    manifest: str = argument(type=click.Path(dir_okay=False))
    simulate: bool = option(
        "--simulate",
        is_flag=True,
        help="Run against the built-in simulator (no token).",
        resume=Resumed(API),
    )
    sim: tuple[str, ...] = option(
        "--sim",
        multiple=True,
        metavar="KEY=VALUE",
        help="A simulator setting for --simulate, e.g. --sim fail_rate=0.1 (repeatable).",
        resume=Resumed(API, joined=True),
    )
    run_dir: str | None = option(
        "--run-dir",
        type=click.Path(file_okay=False),
        help="Run folder [default: outputs.dir].",
        resume=Resumed(FOLDER),
    )
    # Not repeated beside --simulate, where the simulator is the API (see resume_command).
    api_base_option: str | None = opt.api_base.field(resume=Resumed(API))
    retry_failed: bool = option(
        "--retry-failed",
        is_flag=True,
        help="Submit failed and timed-out jobs again.",
        resume=NotResumed("asked for anew on each run, as it sends again what failed"),
    )
    resubmit_unknown: bool = option(
        "--resubmit-unknown",
        is_flag=True,
        help="Submit again jobs whose submit may have reached the server (may pay twice).",
        resume=NotResumed("it may pay twice: asked for anew on each run"),
    )
    cancel_on_interrupt: bool = option(
        "--cancel-on-interrupt",
        is_flag=True,
        help="On Ctrl-C, cancel requests still queued.",
        resume=NotResumed("about this run's Ctrl-C"),
    )
    strict: bool = opt.strict.field(resume=NotResumed("a check of the manifest the run passed"))
    schemas: str | None = opt.schemas.field(resume=Resumed(SETTINGS))
    max_cost: str | None = option(
        "--max-cost",
        metavar="USD",
        help="Budget in USD, e.g. 25 or 2.50 [default: the manifest's run.max_cost_usd].",
        resume=Resumed(SETTINGS),
    )
    cache: str | None = option(
        "--cache",
        metavar="DIR",
        help="Take jobs already done from this cross-run cache folder, add new results to it "
        "[default: the manifest's run.cache; none].",
        resume=Resumed(SETTINGS),
    )
    state: str | None = option(
        "--state",
        metavar="URL",
        envvar="BATCHRUN_STATE_URL",
        help="Work a sweep shared by several workers through PostgreSQL: "
        "postgresql://USER:PASSWORD@HOST:PORT/DB [env BATCHRUN_STATE_URL; default: the "
        "manifest's run.state; none: the run folder's state.db].",
        resume=NotResumed(
            "its password is never printed; give it again (or keep it in BATCHRUN_STATE_URL)"
        ),
    )
    report_every: str | None = option(
        "--report-every",
        metavar="DURATION",
        help="Rewrite the reports this often while running, e.g. 30s or 2m; 0 = only at the end "
        "[default: the manifest's run.report_every, else 30s].",
        resume=Resumed(SETTINGS),
    )
    quiet: bool = option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No progress bar or log lines.",
        resume=NotResumed("how this run prints"),
    )
    subset: SubsetArgs = nested(SubsetArgs)
    shard_full_rate: bool = option(
        "--shard-full-rate",
        is_flag=True,
        help="With --shard K/N: keep the full rate_limit and max_in_flight (shards on separate "
        "accounts) instead of 1/N of each.",
        resume=Resumed(JOBS),
    )

    def resume_command(self, folder: Path) -> str:
        """`batchrun run MANIFEST --run-dir FOLDER ...`: the line that continues this run in
        `folder`, with the same jobs, API and settings (no --api-base beside --simulate, which
        ignores it)."""
        api = None if self.simulate else self.api_base_option
        again = replace(self, run_dir=str(folder), api_base_option=api)
        return shlex.join(["batchrun", "run", *opt.command_line(again)])


@dataclass(frozen=True)
class CompareArgs:
    """The arguments and options of `batchrun compare`."""

    baseline: str = argument()
    current: str = argument()
    fail_on: str = option(
        "--fail-on",
        default="regressed,missing,changed",
        show_default=True,
        help="Comma list of classes that fail the gate: unchanged, changed, regressed, fixed, "
        "new, missing, slower.",
    )
    max_slowdown: float | None = option(
        "--max-slowdown",
        type=click.FloatRange(min=0, min_open=True),
        metavar="X",
        help="Mark a job slower when its run_s exceeds the baseline's times X (off by default).",
    )
    image_tolerance: float | None = option(
        "--image-tolerance",
        type=click.FloatRange(0, 1),
        metavar="D",
        help="Images whose bytes differ but whose distance (1 - SSIM: a re-encode ~0, a small "
        "edit ~0.02-0.07, unrelated ~0.9) is at most D count as unchanged. Needs Pillow: "
        "pip install 'runcomfy-batchrun[images]'.",
    )
    markdown_file: str | None = opt.output(
        "--markdown", "Append a markdown summary (fits $GITHUB_STEP_SUMMARY)."
    ).field()
    junit_file: str | None = opt.output("--junit", "Write JUnit XML: one testcase per job.").field()
    json_file: str | None = opt.output("--json", "Write the full result as JSON.").field()
    html_file: str | None = opt.output(
        "--html", "Write an HTML page: baseline and current side by side for changes."
    ).field()
    baseline_dir: str | None = option(
        "--update-baseline",
        type=click.Path(file_okay=False),
        metavar="DIR",
        help="Approve every job of the current run folder into DIR, as `batchrun approve "
        "CURRENT --into DIR` does (created if missing; BASELINE may be DIR and not exist yet).",
    )
    quiet: bool = option("-q", "--quiet", is_flag=True, help="Print only the verdict line.")
    allow_mixed_origins: bool = option(
        "--allow-mixed-origins",
        is_flag=True,
        help="Compare runs whose results come from different origins (the simulator and an "
        "API); every output then says so.",
    )

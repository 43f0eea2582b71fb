"""`batchrun compare`: compare two runs and gate CI on regressions."""

from __future__ import annotations

from pathlib import Path

import click

from batchrun.commands.approve import approve_run
from batchrun.commands.args import CompareArgs
from batchrun.commands.common import DISTRIBUTION
from batchrun.errors import ChoiceError, CompareError, MissingDependencyError, UsageError
from batchrun.results import compare as comparing, compare_output
from batchrun.results.compare_html import write_compare_html
from batchrun.store.atomic import write_output
from batchrun.util.gcpause import gc_paused


def compare(args: CompareArgs) -> int:
    """Print the comparison, write the asked-for files; 0 pass, 1 regression."""
    # Both runs' rows and a diff a job, none of them in a reference cycle: the collector
    # would walk them all again and again as they are made.
    with gc_paused():
        return _compare(args)


def _compare(args: CompareArgs) -> int:
    classes = tuple(c.strip() for c in args.fail_on.split(",") if c.strip())
    # A baseline to be made by this very command may not exist yet: every job is then new.
    creating = bool(args.baseline_dir) and not Path(args.baseline_dir or "").exists()
    if creating and not Path(args.baseline).exists():
        base_run = comparing.empty_run(args.baseline)
    else:
        base_run = comparing.load_run(args.baseline)
    cur_run = comparing.load_run(args.current)
    mixed = comparing.mixed_origins(base_run, cur_run)
    if mixed and not args.allow_mixed_origins:
        raise CompareError(
            f"{mixed}; a simulated result must not pass for a real one (or the other way "
            "round): compare runs of one origin, or give --allow-mixed-origins to compare them "
            "all the same"
        )
    try:
        result = comparing.compare_runs(
            base_run,
            cur_run,
            fail_on=classes,
            max_slowdown=args.max_slowdown,
            image_tolerance=args.image_tolerance,
        )
    except ChoiceError as exc:
        raise UsageError(f"--fail-on: {exc}") from None
    except MissingDependencyError as exc:
        raise UsageError(f"{exc}: pip install '{DISTRIBUTION}[{exc.extra}]'") from None
    if mixed:
        result.warnings.append(f"mixed origins (--allow-mixed-origins): {mixed}")
    unknown = comparing.unknown_origins(base_run, cur_run)
    if unknown:
        result.warnings.append(unknown)
    table = compare_output.terminal_table(result)
    # When a report goes to stdout (`-`), the table moves to stderr so stdout stays parseable.
    to_stdout = "-" in (args.markdown_file, args.junit_file, args.json_file, args.html_file)
    shown = compare_output.terminal_quiet(result) if args.quiet else table.rstrip("\n")
    click.echo(shown, err=to_stdout)
    _write_outputs(args, result)
    if args.baseline_dir:
        # Approving every job: the one way results get into a baseline (commands/approve.py).
        lines: list[str] = []
        dest = Path(args.baseline_dir)
        approve_run(cur_run.root, dest, None, echo=lines.append)
        click.echo(lines[-1], err=to_stdout)  # the count line; the table said which jobs
        said = "created" if creating else "updated"
        click.echo(f"baseline {said}: {dest}", err=to_stdout)
    return result.exit_code


def _write_outputs(args: CompareArgs, result: comparing.Comparison) -> None:
    """The files asked for (markdown, JUnit, JSON, HTML); `-` is stdout."""
    try:
        if args.markdown_file:
            # Appended: $GITHUB_STEP_SUMMARY holds what earlier steps wrote.
            write_output(args.markdown_file, compare_output.markdown(result), append=True)
        if args.junit_file:
            write_output(args.junit_file, compare_output.junit(result))
        if args.json_file:
            write_output(args.json_file, compare_output.to_json(result))
        if args.html_file:
            write_compare_html(result, args.html_file)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None

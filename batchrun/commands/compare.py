"""`batchrun compare`: compare two runs and gate CI on regressions."""

from __future__ import annotations

from pathlib import Path

import click

from batchrun.commands.common import DISTRIBUTION
from batchrun.errors import ChoiceError, CompareError, MissingDependencyError, UsageError
from batchrun.results import compare as comparing, compare_output
from batchrun.results.compare_html import write_compare_html
from batchrun.store.atomic import write_output


def compare(
    baseline: str,
    current: str,
    *,
    fail_on: str,
    max_slowdown: float | None,
    image_tolerance: float | None,
    markdown_file: str | None,
    junit_file: str | None,
    json_file: str | None,
    html_file: str | None,
    baseline_dir: str | None,
    quiet: bool,
    allow_mixed_origins: bool = False,
) -> int:
    """Print the comparison, write the asked-for files; 0 pass, 1 regression."""
    classes = tuple(c.strip() for c in fail_on.split(",") if c.strip())
    # A baseline to be made by this very command may not exist yet: every job is then new.
    creating = bool(baseline_dir) and not Path(baseline_dir or "").exists()
    if creating and not Path(baseline).exists():
        base_run = comparing.empty_run(baseline)
    else:
        base_run = comparing.load_run(baseline)
    cur_run = comparing.load_run(current)
    mixed = comparing.mixed_origins(base_run, cur_run)
    if mixed and not allow_mixed_origins:
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
            max_slowdown=max_slowdown,
            image_tolerance=image_tolerance,
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
    to_stdout = "-" in (markdown_file, junit_file, json_file, html_file)
    shown = compare_output.terminal_quiet(result) if quiet else table.rstrip("\n")
    click.echo(shown, err=to_stdout)
    try:
        if markdown_file:
            # Appended: $GITHUB_STEP_SUMMARY holds what earlier steps wrote.
            write_output(markdown_file, compare_output.markdown(result), append=True)
        if junit_file:
            write_output(junit_file, compare_output.junit(result))
        if json_file:
            write_output(json_file, compare_output.to_json(result))
        if html_file:
            write_compare_html(result, html_file)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    if baseline_dir:
        dest = comparing.update_baseline(result.current, Path(baseline_dir))
        said = "created" if creating else "updated"
        click.echo(f"baseline {said}: {dest}", err=to_stdout)
    return result.exit_code

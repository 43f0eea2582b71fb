"""`batchrun compare`: compare two runs and gate CI on regressions."""

from __future__ import annotations

from pathlib import Path

import click

from batchrun import compare as comparing, compare_output
from batchrun.atomic import write_text
from batchrun.commands.common import DISTRIBUTION
from batchrun.compare_html import write_compare_html
from batchrun.errors import ChoiceError, MissingDependencyError, UsageError


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
) -> int:
    """Print the comparison, write the asked-for files; 0 pass, 1 regression."""
    classes = tuple(c.strip() for c in fail_on.split(",") if c.strip())
    try:
        result = comparing.compare_runs(
            comparing.load_run(baseline),
            comparing.load_run(current),
            fail_on=classes,
            max_slowdown=max_slowdown,
            image_tolerance=image_tolerance,
        )
    except ChoiceError as exc:
        raise UsageError(f"--fail-on: {exc}") from None
    except MissingDependencyError as exc:
        raise UsageError(f"{exc}: pip install '{DISTRIBUTION}[{exc.extra}]'") from None
    table = compare_output.terminal_table(result)
    click.echo(table.splitlines()[-1] if quiet else table.rstrip("\n"))
    if markdown_file:
        write_text(Path(markdown_file), compare_output.markdown(result))
    if junit_file:
        write_text(Path(junit_file), compare_output.junit(result))
    if json_file:
        write_text(Path(json_file), compare_output.to_json(result))
    if html_file:
        write_compare_html(result, Path(html_file))
    if baseline_dir:
        dest = comparing.update_baseline(result.current, Path(baseline_dir))
        click.echo(f"baseline updated: {dest}")
    return result.exit_code

"""Options several commands declare alike (click declarations, shared by cli.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

strict = click.option(
    "--strict", is_flag=True, help="A model without a local input schema is an error."
)
schemas = click.option(
    "--schemas",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Model schema folder searched first [default: $BATCHRUN_SCHEMA_DIR], then "
    "schemas/models/ beside the manifest, then the packaged schemas.",
)
api_base = click.option(
    "--api-base",
    "api_base_option",
    help="API base URL [default: $RUNCOMFY_MODEL_API_BASE or RunComfy].",
)


def output(flag: str, help: str) -> Callable[..., Any]:
    """A FILE option of `compare` (parameter `<name>_file`); - is stdout."""
    name = flag.lstrip("-") + "_file"
    return click.option(
        flag, name, type=click.Path(dir_okay=False), metavar="FILE", help=f"{help} - is stdout."
    )


def subset(command: Callable[..., Any]) -> Callable[..., Any]:
    """--only, --first, --sample, --seed and --shard, shared by `plan` and `run`."""
    options = [
        click.option(
            "--only",
            multiple=True,
            metavar="EXPR",
            help="Only jobs matching EXPR: model=ID, input.FIELD=VALUE, var.NAME=VALUE or "
            "job=ID_PREFIX (repeatable; all must match).",
        ),
        click.option(
            "--first", type=click.IntRange(min=1), metavar="N", help="The first N jobs per model."
        ),
        click.option(
            "--sample",
            type=click.IntRange(min=1),
            metavar="N",
            help="N jobs drawn at random; the same --seed draws the same jobs.",
        ),
        click.option("--seed", type=int, metavar="S", help="Seed of --sample [default: 0]."),
        click.option(
            "--shard",
            metavar="K/N",
            help="The K-th of N shards (by job id; every job in exactly one), e.g. 1/4.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command

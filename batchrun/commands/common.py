"""What several commands share: the token and API base from the environment, the schema
folder, warnings."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import click

from batchrun.errors import ConfigError, UsageError
from batchrun.store import origin as og
from batchrun.store.origin import DEFAULT_API_BASE

SCHEMA_DIR_ENV = "BATCHRUN_SCHEMA_DIR"

DISTRIBUTION = "runcomfy-batchrun"  # the name to pip install (`batchrun` on the index is not us)

NO_TOKEN = "RUNCOMFY_TOKEN is not set: export RUNCOMFY_TOKEN=<your token>"
# What each command without a token can do instead (only `run` has --simulate).
NO_TOKEN_ELSE = {
    "run": ", or try the local simulator with --simulate",
    "other": (
        ", or ask a local simulator: batchrun simulate, then RUNCOMFY_TOKEN=sim-token and "
        "--api-base its URL"
    ),
}


API_BASE_ENV = "RUNCOMFY_MODEL_API_BASE"
RECORDED = "the run folder"  # where a recorded API base comes from (state.db)
DEFAULT = "the default"  # no base given anywhere: the real API


def api_base(option: str | None, recorded: str | None = None) -> str:
    """The API base, by `choose_api_base`'s precedence."""
    return choose_api_base(option, recorded)[0]


def choose_api_base(option: str | None, recorded: str | None = None) -> tuple[str, str]:
    """The API base and where it came from: the --api-base option, else the environment's
    RUNCOMFY_MODEL_API_BASE, else the one `recorded` in the run folder, else the default.
    What the user says now wins over what a run folder says (the token goes where they say)."""
    env = os.environ.get(API_BASE_ENV, "").strip()
    for chosen, source in ((option, "--api-base"), (env, API_BASE_ENV), (recorded, RECORDED)):
        if chosen and chosen.strip():
            return normalise_api_base(chosen), source
    return DEFAULT_API_BASE, DEFAULT


def normalise_api_base(url: str) -> str:
    """`https://host/v1/` -> `https://host` (store/origin.normalise)."""
    return og.normalise(url)


def token(command: str = "other") -> str:
    """The token from RUNCOMFY_TOKEN; ConfigError (exit 3) when it is not set, saying what
    `command` can do instead."""
    value = os.environ.get("RUNCOMFY_TOKEN", "").strip()
    if not value:
        raise ConfigError(NO_TOKEN + NO_TOKEN_ELSE.get(command, NO_TOKEN_ELSE["other"]))
    return value


def schema_dirs(option: str | None) -> list[Path]:
    """The schema folder searched first: --schemas DIR, else $BATCHRUN_SCHEMA_DIR, else none.

    A folder that does not exist is a UsageError: a typo would silently fall back to the
    packaged schemas (and their prices) otherwise.
    """
    where, value = "--schemas", option
    if not value:
        where, value = SCHEMA_DIR_ENV, os.environ.get(SCHEMA_DIR_ENV, "").strip()
    if not value:
        return []
    path = Path(value)
    if not path.is_dir():
        raise UsageError(
            f"{where} {value}: no such folder; pull schemas into it first: "
            f"batchrun models pull MODEL_ID --dir {value}"
        )
    return [path]


def warn(warnings: Iterable[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)

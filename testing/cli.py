"""`batchrun` as a user runs it: a child process, or in-process through click's CliRunner."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from click.testing import CliRunner

from batchrun.cli import main


def batchrun_cmd(*args: str, python_flags: tuple[str, ...] = ()) -> list[str]:
    """The command line of `python [PYTHON_FLAGS] -m batchrun ARGS` with this interpreter."""
    return [sys.executable, *python_flags, "-m", "batchrun", *args]


def clean_env(token: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process: no inherited RunComfy settings; `token` if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_")}
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env["RUNCOMFY_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(
    *args: str,
    token: str | None = None,
    timeout: float = 120.0,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m batchrun ARGS` to completion, capturing stdout and stderr as text."""
    return subprocess.run(
        batchrun_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=clean_env(token) if env is None else env,
    )


@dataclass(frozen=True)
class Invoked:
    """What an in-process `batchrun` command returned and printed."""

    code: int
    stdout: str
    stderr: str


def invoke(*args: str, token: str | None = None) -> Invoked:
    """Run `batchrun ARGS` in this process through click's CliRunner, as `batchrun.cli.main`
    does for the console script (so the exit code and the `error: ...` lines are the user's)."""
    codes: list[int] = []

    @click.command()
    def entry() -> None:
        codes.append(main(list(args)))

    env = {"RUNCOMFY_TOKEN": token} if token is not None else {}
    result = _runner().invoke(entry, [], env=env, catch_exceptions=False)
    return Invoked(codes[0] if codes else result.exit_code, result.stdout, result.stderr)


def _runner() -> CliRunner:
    # click < 8.2 mixes stderr into stdout unless told not to; 8.2 keeps them apart always.
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()

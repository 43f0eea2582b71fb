"""The `batchrun` command line: parse options, call one library function, echo, exit code.

Library modules never import click; every foreseeable error is a BatchrunError, mapped to its
exit code and printed without a traceback in `main`.
"""

from __future__ import annotations

import sys

import click

from batchrun import __version__
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


# ---- run / status / cancel / report (engine) -------------------------------------------------


# ---- compare ---------------------------------------------------------------------------------


# ---- simulate --------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())

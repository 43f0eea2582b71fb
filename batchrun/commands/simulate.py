"""`batchrun simulate`: serve the local RunComfy Model API simulator until Ctrl-C.

Also the one boundary where the simulator's own exceptions (ValueError for a bad setting,
StateDirInUse, OSError from binding the port) become batchrun errors, for `run --simulate` too.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from batchrun.errors import ConfigError, RunFolderInUse, StateError, UsageError
from batchrun.simulator import SimSettings, Simulator
from batchrun.simulator.persist import StateDirInUse
from batchrun.simulator.settings import load_settings
from batchrun.store import lock


def settings(
    overrides: dict[str, Any], *, config_file: str | None = None, where: str = ""
) -> SimSettings:
    """Simulator settings from a YAML file and overrides; a bad one is a UsageError
    prefixed with `where` (the option or file it came from)."""
    try:
        return load_settings(config_file, overrides)
    except ValueError as exc:
        raise UsageError(f"{where}{exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_file}: cannot read the simulator settings: {exc}") from None


def start(sim_settings: SimSettings, *, port: int = 0, when_busy: str) -> Simulator:
    """A started simulator. `when_busy` is the message (with `{why}`) when another process
    serves from its state folder."""
    try:
        return Simulator(sim_settings, port=port).start()
    except StateDirInUse as exc:
        raise RunFolderInUse(when_busy.format(why=exc)) from None
    except OSError as exc:
        if exc.filename:  # its state folder (in the run folder for `run --simulate`), no port
            raise StateError(
                f"{exc.filename}: cannot make the simulator's state folder ({exc.strerror}); "
                f"{lock.advice(exc)}, then run again"
            ) from None
        raise UsageError(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); pick another --port, or 0"
        ) from None


def simulate(port: int, config_file: str | None, flags: dict[str, Any]) -> int:
    """Serve until SIGINT or SIGTERM; 0."""
    where = f"{config_file}: " if config_file else ""
    sim = start(
        settings(flags, config_file=config_file, where=where),
        port=port,
        when_busy="{why}; stop it, or pick another --state-dir",
    )
    # Ctrl-C, `kill -INT` and `kill` all stop it cleanly, also when a script started it in
    # the background (which leaves SIGINT ignored); set before the banner says it is ready.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        click.echo(f"batchrun simulator on {sim.base_url}  token: {sim.token}")
        click.echo(
            f"try: curl -s -X POST {sim.base_url}/v1/models/google/nano-banana-2-lite/text-to-image"
            f' -H "Authorization: Bearer {sim.token}" -H "Content-Type: application/json"'
            ' -d \'{"prompt": "an orange umbrella"}\''
        )
        click.echo(f"stats: curl -s {sim.base_url}/_sim/stats    (Ctrl-C to stop)")
        sys.stdout.flush()
        sim.serve_forever()
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    finally:
        sim.stop()
    return 0

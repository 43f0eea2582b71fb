"""One module per `batchrun` command; each exposes a plain function that returns an exit code.

cli.py declares the options and calls these; the functions print with click and raise
BatchrunError subclasses, which cli.main maps to exit codes in one place.
"""

from batchrun.commands import (
    cancel,
    compare,
    init,
    merge,
    models,
    plan,
    report,
    run,
    simulate,
    status,
    validate,
)

__all__ = [
    "cancel",
    "compare",
    "init",
    "merge",
    "models",
    "plan",
    "report",
    "run",
    "simulate",
    "status",
    "validate",
]

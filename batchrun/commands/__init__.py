"""One module per `batchrun` command; each exposes a plain function that returns an exit code.

cli.py declares the options and calls these; the functions print with click and raise
BatchrunError subclasses, which cli.main maps to exit codes in one place.

A command's module is imported when the command runs (`commands.run` on first use), so
`batchrun --help` and a quick `batchrun status` do not load requests, jsonschema and the run
machinery they never use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # What `__getattr__` returns, spelled out for the type checker: cli.py's calls then check
    # against each command's real signature instead of an untyped module.
    from batchrun.commands import (
        approve,
        balance,
        cancel,
        compare,
        export,
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
    "approve",
    "balance",
    "cancel",
    "compare",
    "export",
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


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"batchrun.commands.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

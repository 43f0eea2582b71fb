"""In-process simulators for tests: started with a test's defaults, every one stopped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from batchrun.simulator import SimSettings, Simulator

StartSim = Callable[..., Simulator]


@contextmanager
def simulators(**defaults: Any) -> Iterator[StartSim]:
    """`start(**settings)` starts a simulator on a free 127.0.0.1 port with `defaults` updated
    by `settings` (values as in a settings file: `rate_limit="8/s"`, `run_time=0.05`);
    every simulator started is stopped when the block ends."""
    started: list[Simulator] = []

    def start(**settings: Any) -> Simulator:
        sim = Simulator(SimSettings.from_mapping({**defaults, **settings})).start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()

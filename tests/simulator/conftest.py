"""Fixtures for the simulator's conformance tests: real servers on 127.0.0.1, plain requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from simhelpers import SimClient

from batchrun.simulator import Simulator
from testing.simulators import simulators


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """Start simulators with fast defaults (50 ms jobs, no jitter); all stopped afterwards."""
    with simulators(run_time=0.05, run_time_jitter=0.0) as start:
        yield start


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    return make_sim()


@pytest.fixture
def client(sim: Simulator) -> SimClient:
    return SimClient(sim)

"""The read deadline and a process that was stopped (Ctrl-Z, a paused container): an answer
that arrived while the deadline passed is read, not thrown away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchrun.api.client import Client
from batchrun.simulator import Simulator
from testing.simulators import simulators

T2I = "google/nano-banana-2-lite/text-to-image"


class StoppedWhileWaiting:
    """A monotonic clock that jumps 120 s once the call has been sent, as it does for a process
    stopped for two minutes while its answer waits in the socket."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return 1000.0 if self.reads == 1 else 1120.0  # the first read sets the deadline


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with simulators(run_time=0.05, run_time_jitter=0.0) as start:
        yield start(bill_on="accept")


def test_a_submit_answered_while_the_process_was_stopped_keeps_its_request_id(sim) -> None:
    client = Client(sim.base_url, sim.token, clock=StoppedWhileWaiting())
    request_id = client.submit(T2I, {"prompt": "an orange umbrella"})
    assert request_id in sim.app.snapshot()["billed"]  # the request the server billed, kept


# A trickled answer still ends at the deadline: tests/reliability/test_hangs.py.

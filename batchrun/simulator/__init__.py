"""The local RunComfy Model API simulator: `Simulator(SimSettings()).start()`, `batchrun simulate`.

Everything speaks over real HTTP on 127.0.0.1; the runner only imports this for `--simulate`.
"""

from __future__ import annotations

from batchrun.simulator.server import Simulator
from batchrun.simulator.settings import SimSettings

__all__ = ["SimSettings", "Simulator"]

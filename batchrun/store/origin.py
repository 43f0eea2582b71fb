"""Where a run folder's results came from: the simulator, or an API base URL.

Recorded in state.db's meta as `origin`, so simulated results never pass for real ones.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from batchrun.errors import OriginMismatch

SIMULATOR = "simulator"  # the origin of every --simulate run, whatever port it listened on
DEFAULT_API_BASE = "https://model-api.runcomfy.net"  # RunComfy's Model API: the usual origin
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def normalise(base: str) -> str:
    """An API base as an origin: `https://host/v1/` -> `https://host` (RunComfy's CLI documents
    the base with `/v1`; batchrun adds `/v1/...` itself, so both forms name the same API)."""
    if base == SIMULATOR:
        return base
    base = base.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")].rstrip("/")
    return base


def label(origin: str) -> str:
    """How an origin reads in a sentence: 'the simulator' or the API base URL."""
    return "the simulator" if origin == SIMULATOR else origin


def recorded(meta: dict[str, str], run_dir: Path) -> str | None:
    """The folder's origin; for folders made before origins were recorded, a best guess."""
    if meta.get("origin"):
        return meta["origin"]
    base = meta.get("api_base")
    if not base:
        return None
    # --simulate keeps the simulator's jobs in the run folder, on a loopback port.
    if urlsplit(base).hostname in _LOOPBACK and (run_dir / ".simulator").is_dir():
        return SIMULATOR
    return base


def mismatch(run_dir: Path, held: str, wanted: str) -> OriginMismatch:
    """The error for a run that would mix results of two origins in one folder."""
    return OriginMismatch(
        f"{run_dir} holds results from {label(held)}; this run would ask {label(wanted)}, and "
        "the two must not mix in one run folder"
    )

"""What a worker brings back to the scheduler: the outcome of one call or one download step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Kinds of API calls (each held a worker and a rate-limit token); downloads bring back `plan`
# (a job's files planned) and `file` (one file landed or failed).
API_CALLS = frozenset({"submit", "poll", "cancel", "refresh"})


@dataclass
class Outcome:
    kind: str  # submit | poll | cancel | refresh | plan | file
    job_id: str
    value: Any = None
    error: BaseException | None = None
    at: float = 0.0  # epoch seconds the call was sent

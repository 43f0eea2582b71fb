"""Job records and states, shared by the state store, the engine and the reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Internal job states. Report statuses (DESIGN.md) are derived by `report_status`.
PENDING = "pending"  # not yet submitted (or to be resubmitted)
SUBMITTING = "submitting"  # a submit is about to be sent; no request id yet
UNKNOWN = "unknown"  # a submit may have reached the server; never resubmitted blindly
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"

TERMINAL = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED})


@dataclass
class OutputFile:
    """One output URL of a job and what became of it."""

    url: str
    name: str = ""  # path relative to the run folder, e.g. files/<job_id>/image.png
    sha256: str = ""
    size: int = 0
    error: str = ""  # why it was refused or failed; empty when downloaded


@dataclass
class JobRow:
    """A job as the state store holds it."""

    job_id: str
    position: int  # expansion order in the manifest
    model_id: str
    inputs: dict[str, Any]
    vars: dict[str, Any] = field(default_factory=dict)
    repeat: int = 0
    status: str = PENDING
    request_id: str | None = None
    attempts: int = 0
    error: str = ""
    submitted_at: float | None = None  # epoch seconds
    started_at: float | None = None  # first seen in_progress
    finished_at: float | None = None
    cost_usd: float | None = None
    output: Any = None  # the API's `output` as returned
    files: list[OutputFile] = field(default_factory=list)
    in_manifest: bool = True

    @property
    def queue_s(self) -> float | None:
        """Submit to first seen in_progress; None when the job was never seen running (it
        finished between two reads), since the split is then unknown."""
        if self.submitted_at is None or self.started_at is None:
            return None
        return max(0.0, self.started_at - self.submitted_at)

    @property
    def run_s(self) -> float | None:
        """First seen in_progress (else submit) to finish."""
        if self.finished_at is None:
            return None
        start = self.started_at or self.submitted_at
        return None if start is None else max(0.0, self.finished_at - start)


def report_status(status: str) -> str:
    """The DESIGN.md status of an internal state: succeeded, failed, timed_out, cancelled,
    pending or running."""
    if status in TERMINAL:
        return status
    if status in (QUEUED, RUNNING):
        return "running"
    return "pending"

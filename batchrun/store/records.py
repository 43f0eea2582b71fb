"""Job records and states, shared by the state store, the engine and the reports, and how a
record is encoded in (and decoded from) a state.db row."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

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

# The error of a FAILED job whose request the server stopped knowing before we read its result:
# it may have run and been billed, so --retry-failed leaves it; --resubmit-unknown sends it.
NOT_FOUND = "request unknown or expired on the server"


MAX_ERROR_CHARS = 4000  # stored per job: a 20 MB error must not make every report 100 MB


def cap_error(text: str) -> str:
    """`text` at most MAX_ERROR_CHARS long, keeping its start and its end."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = MAX_ERROR_CHARS // 2 - 40
    return f"{text[:half]} [... {len(text) - 2 * half} characters cut ...] {text[-half:]}"


def not_found_error(why: str) -> str:
    return (
        f"{NOT_FOUND} ({why}); it may have run and been billed, so --retry-failed leaves it: "
        "rerun with --resubmit-unknown to submit it again"
    )


@dataclass
class OutputFile:
    """One output URL of a job and what became of it."""

    url: str
    name: str = ""  # path relative to the run folder, e.g. files/<job_id>/image.png
    sha256: str = ""
    size: int = 0
    error: str = ""  # why it was refused or failed; empty when downloaded


class Brief(NamedTuple):
    """What a run's passes over every job read of each (store.brief): no inputs, no output."""

    job_id: str
    model_id: str
    status: str
    cached: bool


@dataclass(slots=True)  # 100,000s of rows a report: a third faster to read a field of
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
    cached: bool = False  # taken from the cross-run cache: no API call, nothing paid
    saved_usd: float | None = None  # for a cached job: what its result cost when it was made
    # `attempts` when the job's allowance of `run.retries` began: 0, or what it was when
    # --retry-failed or --resubmit-unknown sent the job again (see `retries_used`).
    retries_from: int = 0

    @property
    def retries_used(self) -> int:
        """Attempts that may have been billed since the job's allowance of retries began:
        counted from state.db, so a kill of the run never grants a job more."""
        return max(0, self.attempts - self.retries_from)

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


class JobLike(Protocol):
    """What add_jobs needs of a job (batchrun.plan.grid.Job)."""

    @property
    def job_id(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def inputs(self) -> dict[str, Any]: ...
    @property
    def vars(self) -> dict[str, Any]: ...
    @property
    def repeat(self) -> int: ...
    @property
    def position(self) -> int: ...


# The one vocabulary of report.csv, summary.json, `status` and the progress line, in order.
REPORT_STATUSES = (
    SUCCEEDED,
    FAILED,
    TIMED_OUT,
    CANCELLED,
    UNKNOWN,
    QUEUED,
    RUNNING,
    PENDING,
)


def report_status(status: str) -> str:
    """What users see of an internal state: the state itself, except that a submit in the
    air (SUBMITTING) may have been billed as much as an UNKNOWN one, so it reads `unknown`."""
    return status if status in REPORT_STATUSES else UNKNOWN


_REPORTED = frozenset(REPORT_STATUSES)


def report_statuses(statuses: list[str]) -> list[str]:
    """report_status of each of `statuses` (a column of a report's jobs), inline."""
    return [s if s in _REPORTED else UNKNOWN for s in statuses]


# ---- state.db encoding ------------------------------------------------------------------


# The jobs table's columns in the order decode_row reads them.
COLUMNS = (
    "job_id, position, model_id, inputs, vars, repeat, status, request_id, attempts, error, "
    "submitted_at, started_at, finished_at, cost_usd, output, files, in_manifest, cached, "
    "saved_usd, retries_from"
)
# The same for a state.db of schema version 2 or 3 (before `retries_from`) and of version 1
# (before `cached` too), read without migrating it.
COLUMNS_V3 = COLUMNS.replace("retries_from", "0 AS retries_from")
COLUMNS_V1 = COLUMNS_V3.replace("cached, saved_usd", "0 AS cached, NULL AS saved_usd")
# The same for SQLite's state.db of version 6, whose jobs hold a ref to the model id in `names`
# (the PostgreSQL backend reads COLUMNS).
COLUMNS_V6 = COLUMNS.replace(
    "model_id", "(SELECT name FROM names WHERE ref = jobs.model_id) AS model_id", 1
)


def dumps(value: Any) -> str:
    """JSON as state.db stores it: compact; key order kept (the report's input.<field>
    columns follow the manifest's order)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner json.loads uses


def _loads(text: str) -> Any:
    """json.loads of text dumps wrote (compact, no surrounding space), about twice as
    fast: rows() decodes four documents per job, 400,000 for a large run."""
    if text == "{}":
        return {}
    if text == "[]":
        return []
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else json.loads(text)  # the general path, and its errors


loads = _loads  # JSON as state.db stores it (see dumps)


def finite_cost(value: float | None) -> float | None:
    """A cost as stored: a finite number >= 0, else none (Infinity breaks summary.json)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


# The JobRow fields whose column holds them encoded; the others are stored as they are.
ENCODED_FIELDS = frozenset({"output", "files", "cached", "in_manifest"})


def encode_field(name: str, value: Any) -> Any:
    """A JobRow field's value as its column of the jobs table holds it (decode_row reads it
    back; files are written with vars, not asdict, which costs 5x)."""
    if name == "output":
        return None if value is None else dumps(value)
    if name == "files":
        return dumps([vars(f) for f in value]) if value else "[]"  # dumps costs 5 us even so
    if name in ("cached", "in_manifest"):
        return int(value)
    return value


def decode_row(r: tuple[Any, ...]) -> JobRow:
    """A JobRow from a state.db row of COLUMNS, in that order."""
    output, files, cost = r[14], r[15], r[13]
    return JobRow(  # positional, in JobRow's order: faster for 100,000s of rows
        r[0],  # job_id
        r[1],  # position
        r[2],  # model_id
        _loads(r[3]),  # inputs
        _loads(r[4]),  # vars
        r[5],  # repeat
        r[6],  # status
        r[7],  # request_id
        r[8],  # attempts
        r[9],  # error
        r[10],  # submitted_at
        r[11],  # started_at
        r[12],  # finished_at
        cost if type(cost) is float and 0 <= cost < math.inf else finite_cost(cost),  # cost_usd
        None if output is None else _loads(output),  # output
        [OutputFile(**f) for f in _loads(files)] if files and files != "[]" else [],
        bool(r[16]),  # in_manifest
        bool(r[17]),  # cached
        r[18],  # saved_usd
        r[19],  # retries_from
    )

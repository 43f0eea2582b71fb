"""What the API's answers mean for a job: a failed submit sorted by whether sending it again
could pay twice, a /result (or /status) body read into a job state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.errors import (
    AcceptedWithError,
    ApiError,
    AuthError,
    InputDeliveryError,
    InsufficientBalanceError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from batchrun.store import state as st

AMBIGUOUS_SUBMIT = (
    "submit may have reached the server ({why}); rerun with --resubmit-unknown to submit again"
)

# What to do after a submit failed
THROTTLED = "throttled"  # 429: pause everyone, send it again
RETRY = "retry"  # certainly not accepted: send it again after a backoff
STOP = "stop"  # the account cannot submit (auth, balance): stop submitting
FAILED = "failed"  # the API refused this job (inputs, model): the job failed
AMBIGUOUS = "ambiguous"  # it may have been accepted: never send it again blindly
KEPT = "kept"  # a request id came back with an error: it may run and be billed, so it is read

_SUCCESS = frozenset({"succeeded", "completed", "success"})
_CANCELLED = frozenset({"cancelled", "canceled"})

# The API is unreachable (every call refused, DNS or TLS failing) after this many failed calls
# in a row spanning at least this long.
UNREACHABLE_TRIES = 6
UNREACHABLE_MIN_S = 7.0


def submit_verdict(exc: BaseException) -> str:
    """Sort a submit's error by whether sending it again could pay twice."""
    if isinstance(exc, AcceptedWithError):
        return KEPT
    if isinstance(exc, InputDeliveryError):  # nothing was sent
        return RETRY if exc.retry else FAILED
    if isinstance(exc, RateLimitedError):
        return THROTTLED
    if isinstance(exc, TransportError):
        return AMBIGUOUS if exc.maybe_sent else RETRY
    if isinstance(exc, ServerError):
        # 503 = not taken in; an API error body (error_code) = the API itself refused it.
        # A bare 500/502/504 from a proxy may hide an accepted request.
        return RETRY if exc.status == 503 or exc.error_code is not None else AMBIGUOUS
    if isinstance(exc, (AuthError, InsufficientBalanceError)):
        return STOP
    if isinstance(exc, ApiError):
        return FAILED
    return AMBIGUOUS  # a bug of ours after sending: assume the worst


def model_refusal_fix(exc: BaseException, model_id: str) -> str:
    """The fix for a submit refusal that will repeat for every job of the model ('' when the
    refusal is about this job only): an unknown model id (400001, or a 404 on the model's
    path), or inputs the API's schema of the model rejects (422)."""
    if isinstance(exc, NotFoundError) or (
        isinstance(exc, InvalidInputError) and exc.error_code == 400001
    ):
        return (
            f"Check the model id in the manifest (batchrun models list --search "
            f"{model_id.split('/')[0]} lists the catalog's)"
        )
    if isinstance(exc, InvalidInputError) and (exc.status == 422 or exc.error_code == 422):
        return (
            f"The API's input schema of {model_id} differs from the local one: run batchrun "
            f"models pull {model_id}, then batchrun validate to see which jobs need changes"
        )
    return ""


@dataclass(frozen=True)
class Answer:
    """A /result (or /status) body, read: `state` is an internal job state."""

    state: str  # SUCCEEDED, FAILED, CANCELLED (terminal) or QUEUED, RUNNING
    output: Any = None
    cost_usd: float | None = None
    error: str = ""
    queue_position: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in st.TERMINAL


def read_answer(body: dict[str, Any]) -> Answer:
    """Terminal on completed/succeeded/failed/cancelled/canceled; otherwise still working."""
    status = str(body.get("status", "")).lower()
    if status == "failed" or (status in _SUCCESS and "output" not in body and "error" in body):
        # A failed job may be billed too: keep its cost when the API gives a valid one.
        return Answer(st.FAILED, error=_error_text(body), cost_usd=read_cost(body.get("cost"))[0])
    if status in _SUCCESS:
        cost, why = read_cost(body.get("cost"))
        return Answer(st.SUCCEEDED, output=body.get("output"), cost_usd=cost, error=why)
    if status in _CANCELLED:
        return Answer(st.CANCELLED, error="cancelled on the server")
    if status == "in_queue":
        position = body.get("queue_position")
        return Answer(st.QUEUED, queue_position=position if isinstance(position, int) else None)
    return Answer(st.RUNNING)  # in_progress, or a state this client does not know yet


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("error_message") or ""
        code = error.get("code") or error.get("error_code")
        text = f"{code}: {message}" if code and message else str(message or error)
    else:
        text = str(error or body.get("error_message") or body.get("message") or "")
    return text or "the job failed (no error message from the API)"


def read_cost(value: Any) -> tuple[float | None, str]:
    """A cost the API gave: a finite non-negative number, else None and why it was left out
    (Infinity, NaN or a negative cost would make every sum and summary.json wrong)."""
    if value is None:
        return None, ""
    try:
        cost = float(value)
    except (TypeError, ValueError, OverflowError):
        if isinstance(value, str):
            return None, ""  # "n/a" and the like: the API's way of giving none
        cost = math.nan
    if isinstance(value, bool) or not math.isfinite(cost) or cost < 0:
        shown = repr(value) if not isinstance(value, float) else str(value)
        return None, f"cost not recorded: the API gave {shown[:40]}, not a finite amount >= 0"
    return cost, ""


class Reachability:
    """Whether the API is there: `note(cause)` per call outcome (cause: why it could not
    connect, "" for any answer); returns the cause once UNREACHABLE_TRIES calls in a row
    spanning UNREACHABLE_MIN_S could not connect (with the submit backoff, 8-16 s)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._failing: tuple[int, float] | None = None  # calls in a row, since when

    def note(self, cause: str) -> str:
        if not cause:
            self._failing = None  # an answer, even an error, means the API is there
            return ""
        tries, since = self._failing or (0, self.clock())
        self._failing = (tries + 1, since)
        gone = tries + 1 >= UNREACHABLE_TRIES and self.clock() - since >= UNREACHABLE_MIN_S
        return cause if gone else ""

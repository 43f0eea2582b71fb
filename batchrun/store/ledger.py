"""The ledger: one row per submit attempt in state.db, appended and never rewritten away, and
the one place money is worked out from it.

Every attempt is written `sending` (durably) before its submit leaves, then says what came
back; a retry, `--resubmit-unknown`, a cache hit or a merge adds rows, never removes one. What
each answer means for the bill:

    answer      what happened                                   counts as spent
    sending     sent, no answer recorded (a crash mid-submit)   its best estimate
    unknown     sent, the answer was lost (may be billed)       its best estimate
    accepted    the API took it (request id)                    its actual cost, else
                                                                its best estimate
    refused     certainly not taken (4xx, 429, 503, refused)    0
    cancelled   cancelled while still queued                    0
    cached      a cache hit: nothing sent                       0 (teaches nothing)

An attempt's best estimate is the higher of the estimate recorded when it was sent (the
catalog price) and the highest actual cost seen for its model in this folder. An attempt of
an unpriced model that no actual cost has told us about has no estimate at all: it is counted
apart (`unknown_cost`), and under a cap it holds all the room left, so nothing more is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

SENDING = "sending"
ACCEPTED = "accepted"
UNKNOWN = "unknown"
REFUSED = "refused"
CANCELLED = "cancelled"
CACHED = "cached"

MAYBE_BILLED = frozenset({SENDING, UNKNOWN, ACCEPTED})
ANSWERS = frozenset({SENDING, ACCEPTED, UNKNOWN, REFUSED, CANCELLED, CACHED})

# The attempts table's columns in the order `Attempt.from_row` reads them.
COLUMNS = (
    "job_id, attempt, model_id, origin, sent_at, answer, request_id, estimate_usd, actual_usd, "
    "saved_usd, finished_at"
)
# The same for SQLite's state.db of version 6 (store/migrations.py): the model id and origin
# held once in `names`, and a request id of '' meaning the job's own.
COLUMNS_V6 = COLUMNS.replace(
    "model_id, origin",
    "(SELECT name FROM names WHERE ref = attempts.model_id), "
    "(SELECT name FROM names WHERE ref = attempts.origin)",
).replace(
    "request_id",
    "CASE attempts.request_id WHEN '' THEN (SELECT j.request_id FROM jobs j WHERE "
    "j.job_id = attempts.job_id) ELSE attempts.request_id END",
)

_ZERO = Decimal(0)


def amount(text: str | None) -> Decimal | None:
    """An amount as state.db holds it (exact decimal text); a damaged one counts as none."""
    if text is None:
        return None
    try:
        value = Decimal(str(text))
    except ArithmeticError:
        return None
    return value if value.is_finite() and value >= 0 else None


@dataclass(frozen=True)
class Attempt:
    """One submit attempt as the ledger holds it."""

    job_id: str
    attempt: int
    model_id: str
    answer: str
    origin: str = ""
    sent_at: float | None = None
    request_id: str | None = None
    estimate: Decimal | None = None  # the job's catalog estimate when it was sent
    actual: Decimal | None = None  # what a result said it cost
    saved: Decimal | None = None  # a cache hit: what the result cost when it was made
    finished_at: float | None = None  # its outcome is known (result read, given up, cancelled)

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Attempt:
        return cls(
            job_id=r[0],
            attempt=r[1],
            model_id=r[2],
            origin=r[3] or "",
            sent_at=r[4],
            answer=r[5] if r[5] in ANSWERS else UNKNOWN,  # an edited answer: assume the worst
            request_id=r[6],
            estimate=amount(r[7]),
            actual=amount(r[8]),
            saved=amount(r[9]),
            finished_at=r[10],
        )

    @property
    def maybe_billed(self) -> bool:
        return self.answer in MAYBE_BILLED

    @property
    def in_flight(self) -> bool:
        """Accepted, its outcome not known yet: the server may still be working on it."""
        return self.answer == ACCEPTED and self.finished_at is None and self.actual is None


@dataclass
class Books:
    """What a folder's attempts add up to."""

    known: Decimal = _ZERO  # actual costs the results gave
    estimated: Decimal = _ZERO  # best estimates of attempts that may be billed, cost unknown
    unknown_cost: list[Attempt] = field(default_factory=list)  # no estimate at all
    saved: Decimal = _ZERO  # what cache hits would have cost
    cached: int = 0
    highest: dict[str, Decimal] = field(default_factory=dict)  # model -> highest actual seen
    attempts: int = 0  # attempts that may have been billed
    origins: set[str] = field(default_factory=set)

    @property
    def spent(self) -> Decimal:
        """Actual costs known + best estimates of every attempt that may have been billed
        and whose cost is not known (those with no estimate at all are in `unknown_cost`)."""
        return self.known + self.estimated

    def best(self, model_id: str, estimate: Decimal | None) -> Decimal | None:
        """The higher of `estimate` and the highest actual cost seen for the model."""
        seen = self.highest.get(model_id)
        if estimate is None or (seen is not None and seen > estimate):
            return seen
        return estimate

    def cost(self, a: Attempt) -> Decimal | None:
        """What one attempt counts as: 0 when it cannot have been billed, its actual cost,
        else its best estimate (None: nothing tells what it cost)."""
        if not a.maybe_billed:
            return _ZERO
        if a.actual is not None:
            return a.actual
        return self.best(a.model_id, a.estimate)


def books(attempts: Iterable[Attempt]) -> Books:
    """Add up `attempts`: what they cost, and the highest actual cost each model was seen at."""
    return books_of((a, 1) for a in attempts)


def books_of(groups: Iterable[tuple[Attempt, int]]) -> Books:
    """`books` of attempts given as (an attempt, how many are like it in all that money
    depends on: model, origin, answer and amounts), as state.db groups them."""
    groups = list(groups)
    out = Books()
    for a, _ in groups:
        if a.maybe_billed and a.actual is not None and a.actual > out.highest.get(a.model_id, -1):
            out.highest[a.model_id] = a.actual
    for a, n in groups:
        if a.origin:
            out.origins.add(a.origin)
        if a.answer == CACHED:
            out.cached += n
            out.saved += (a.saved or _ZERO) * n
            continue
        if not a.maybe_billed:
            continue
        out.attempts += n
        if a.actual is not None:
            out.known += a.actual * n
            continue
        best = out.best(a.model_id, a.estimate)
        if best is None:
            out.unknown_cost += [a] * n
        else:
            out.estimated += best * n
    return out


def per_job(attempts: Iterable[Attempt]) -> dict[str, Decimal]:
    """Each job's actual costs known, over all its attempts (report.csv's cost_usd)."""
    out: dict[str, Decimal] = {}
    for a in attempts:
        if a.maybe_billed and a.actual is not None:
            out[a.job_id] = out.get(a.job_id, _ZERO) + a.actual
    return out


def known_total(amounts: Iterable[str | None]) -> Decimal | None:
    """The sum of the amounts (as state.db holds them) of one job's attempts that may have
    been billed and have an actual cost: its entry in per_job (None when none is one)."""
    total = None
    for text in amounts:
        value = amount(text)
        if value is not None:
            total = (_ZERO if total is None else total) + value  # as per_job adds
    return total


def _usd(value: Decimal) -> float:
    return float(round(value, 6))


def summary(attempts: Iterable[Attempt], reported: set[str]) -> dict[str, object]:
    """The money of summary.json and `status --json`, from the ledger: `spent_usd` (actual
    costs known + best estimates of attempts that may have been billed, every attempt of the
    folder), its two parts, the attempts nothing tells the cost of, what jobs no longer in the
    manifest (not in `reported`) account for, and what the cache saved."""
    attempts = list(attempts)
    return summary_of(books(attempts), [a for a in attempts if a.job_id not in reported])


def summary_of(total: Books, gone: Iterable[Attempt]) -> dict[str, object]:
    """`summary` of a folder whose attempts add up to `total`, and `gone` those of its jobs
    no longer in the manifest."""
    out: dict[str, object] = {
        "spent_usd": _usd(total.spent),
        "spent_known_usd": _usd(total.known),
        "spent_estimated_usd": _usd(total.estimated),
        "unknown_cost_attempts": len(total.unknown_cost),
        "billable_attempts": total.attempts,
    }
    elsewhere, jobs = _ZERO, set()
    for a in gone:
        jobs.add(a.job_id)
        cost = total.cost(a)
        if a.maybe_billed and cost is not None:
            elsewhere += cost
    out["not_in_manifest"] = {"jobs": len(jobs), "spent_usd": _usd(elsewhere)}
    return out

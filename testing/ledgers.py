"""Ledgers for tests that build job rows by hand: the attempts a folder holding those rows
would have recorded (one per request, unknown submit or cache hit)."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from batchrun.store import ledger
from batchrun.store.records import CANCELLED, SUBMITTING, TERMINAL, UNKNOWN, JobRow


def attempts_for(rows: Iterable[JobRow]) -> list[ledger.Attempt]:
    """One attempt per row that was sent or taken from the cache, as its row shows it."""
    out = []
    for r in rows:
        if r.cached:
            saved = None if r.saved_usd is None else Decimal(repr(r.saved_usd))
            out.append(
                ledger.Attempt(
                    r.job_id, 1, r.model_id, ledger.CACHED, actual=Decimal(0), saved=saved
                )
            )
        elif r.request_id:
            answer = ledger.CANCELLED if r.status == CANCELLED else ledger.ACCEPTED
            actual = None if r.cost_usd is None else Decimal(repr(r.cost_usd))
            finished = r.finished_at if r.status in TERMINAL else None
            out.append(
                ledger.Attempt(
                    r.job_id, 1, r.model_id, answer, request_id=r.request_id, actual=actual,
                    finished_at=finished,
                )
            )  # fmt: skip
        elif r.status in (UNKNOWN, SUBMITTING):
            out.append(ledger.Attempt(r.job_id, 1, r.model_id, ledger.UNKNOWN))
    return out

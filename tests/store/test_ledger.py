"""The ledger: every transition that sends, answers or settles a submit writes its attempt;
attempts are appended, never removed; a folder made before the ledger gets one built; and
the arithmetic of what counts as spent, as a decision table."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as hyp

from batchrun.store import ledger, state as st
from batchrun.store.ledger import Attempt, books
from batchrun.store.migrations import SCHEMA_VERSION
from batchrun.store.records import JobRow
from batchrun.store.state import StateStore
from testing.folders import as_version_5


@dataclass(frozen=True)
class J:
    job_id: str
    model_id: str = "m/x"
    inputs: dict = field(default_factory=dict)
    vars: dict = field(default_factory=dict)
    repeat: int = 0
    position: int = 0


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore.open(tmp_path / "run")
    s.set_meta(origin="simulator")
    s.add_jobs([J(f"j{i}", position=i) for i in range(4)])
    yield s
    s.close()


def answers(store: StateStore) -> list[tuple[str, int, str, str | None]]:
    return [(a.job_id, a.attempt, a.answer, a.request_id) for a in store.attempts()]


def test_a_submit_is_in_the_ledger_before_it_leaves_and_its_answer_after(store):
    store.mark_submitting("j0", Decimal("0.04"))
    (sending,) = store.attempts()
    assert (sending.answer, sending.estimate, sending.origin) == (
        "sending",
        Decimal("0.04"),
        "simulator",
    )
    assert sending.sent_at is not None and sending.model_id == "m/x"
    store.record_request_id("j0", "r1", 1.0)
    store.mark_submitting("j1")
    store.mark_unknown("j1", "read timed out")
    store.mark_submitting("j2")
    store.close_attempt("j2", answer=ledger.REFUSED)  # a 429 before acceptance
    store.mark_pending("j2")
    assert answers(store) == [
        ("j0", 1, "accepted", "r1"),
        ("j1", 1, "unknown", None),
        ("j2", 1, "refused", None),
    ]


def test_retries_and_resubmits_add_attempts_and_never_remove_one(store):
    store.mark_submitting("j0", Decimal("0.04"))
    store.record_request_id("j0", "r1", 1.0)
    store.close_attempt("j0", actual=Decimal("0.04"))  # failed, billed
    store.requeue([st.QUEUED])  # a retry
    store.mark_submitting("j0", Decimal("0.04"))
    store.mark_unknown("j0", "lost")
    store.requeue([st.UNKNOWN])  # --resubmit-unknown
    store.mark_submitting("j0", Decimal("0.04"))
    store.record_request_id("j0", "r3", 2.0)
    assert answers(store) == [
        ("j0", 1, "accepted", "r1"),
        ("j0", 2, "unknown", None),
        ("j0", 3, "accepted", "r3"),
    ]
    assert books(store.attempts()).spent == Decimal("0.12")  # 0.04 known + 2 x 0.04 maybe


def test_a_crash_mid_submit_leaves_an_unknown_attempt_on_resume(store):
    store.mark_submitting("j0", Decimal("0.04"))
    store.submitting_to_unknown("the previous run stopped while submitting")
    assert answers(store) == [("j0", 1, "unknown", None)]


def test_a_cache_hit_is_an_attempt_of_cost_0_that_saved_what_it_once_cost(store):
    store.record_cached("j3", finished_at=1.0, output="u", saved_usd=0.3, files=[])
    (hit,) = store.attempts()
    assert (hit.answer, hit.actual, hit.saved, hit.sent_at) == ("cached", 0, Decimal("0.3"), None)
    totals = books(store.attempts())
    assert (totals.spent, totals.saved, totals.highest) == (0, Decimal("0.3"), {})


def test_a_folder_made_before_the_ledger_gets_one_built(tmp_path: Path):
    folder = tmp_path / "old"
    with StateStore.open(folder) as s:
        s.set_meta(origin="https://api.example")
        s.add_jobs([J(f"j{i}", position=i) for i in range(5)])
        s.import_job(JobRow("j0", 0, "m/x", {}, status=st.SUCCEEDED, request_id="r0",
                               attempts=1, cost_usd=0.05, finished_at=2.0))  # fmt: skip
        s.import_job(JobRow("j1", 1, "m/x", {}, status=st.UNKNOWN, attempts=2))
        s.import_job(JobRow("j2", 2, "m/x", {}, status=st.SUCCEEDED, cached=True,
                               saved_usd=0.3, cost_usd=0.0))  # fmt: skip
        s.import_job(JobRow("j3", 3, "m/x", {}, status=st.QUEUED, request_id="r3",
                               attempts=3))  # fmt: skip
    conn = sqlite3.connect(folder / "state.db")
    as_version_5(conn)
    with conn:  # as batchrun made it before the ledger
        conn.execute("ALTER TABLE jobs DROP COLUMN retries_from")
        conn.execute("DROP TABLE attempts")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    expected = [
        ("j1", 1, "unknown", None),  # an earlier attempt it counted: may have been billed
        ("j3", 1, "unknown", None),
        ("j3", 2, "unknown", None),
        ("j0", 1, "accepted", "r0"),
        ("j1", 2, "unknown", None),
        ("j2", 1, "cached", None),
        ("j3", 3, "accepted", "r3"),
    ]
    with StateStore.open(folder, create=False, lock=False) as s:  # read as it is (status)
        assert s.meta()["schema_version"] == "2"
        assert answers(s) == expected
    with StateStore.open(folder) as s:  # a run migrates it
        assert s.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert answers(s) == expected
        got = s.attempts()
    assert {a.origin for a in got} == {"https://api.example"}
    assert [a.actual for a in got if a.job_id == "j0"] == [Decimal("0.05")]
    assert books(got).spent == Decimal("0.05") * 6  # 0.05 known + 5 attempts at the highest seen


def test_a_folder_made_before_retries_from_counts_every_attempt_against_the_allowance(
    tmp_path: Path,
):
    folder = tmp_path / "v3"
    with StateStore.open(folder) as s:
        s.add_jobs([J("j0")])
        for n in range(2):
            s.mark_submitting("j0", Decimal("0.04"))
            s.record_request_id("j0", f"r{n}", 1.0)
        s.close_attempt("j0", actual=Decimal("0.05"))
    conn = sqlite3.connect(folder / "state.db")
    as_version_5(conn)
    with conn:  # as batchrun made it before jobs.retries_from (version 4: the mirror)
        conn.execute("ALTER TABLE jobs DROP COLUMN retries_from")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    expected = [("j0", 1, "accepted", "r0"), ("j0", 2, "accepted", "r1")]
    with StateStore.open(folder, create=False, lock=False) as s:  # read as it is (status)
        assert s.meta()["schema_version"] == "3"
        assert answers(s) == expected  # its own ledger, not one rebuilt from the rows
        assert (s.get("j0").retries_from, s.get("j0").retries_used) == (0, 2)
    with StateStore.open(folder) as s:  # a run migrates it: no attempt is forgotten
        assert s.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert answers(s) == expected
        assert (s.get("j0").retries_from, s.get("j0").retries_used) == (0, 2)


# ---- the arithmetic, a decision table -----------------------------------------------------

P, U = "m/priced", "m/unpriced"
EST = Decimal("0.04")


@pytest.mark.parametrize(
    ("answer", "actual", "model", "counts"),
    [
        ("sending", None, P, "0.04"),  # killed mid-submit: may be billed
        ("unknown", None, P, "0.04"),
        ("accepted", None, P, "0.04"),  # given up, or results without a cost
        ("accepted", "0.03", P, "0.03"),  # the actual cost, whatever the estimate
        ("accepted", "0.00", P, "0.00"),  # a failure the API did not bill
        ("refused", None, P, "0"),
        ("cancelled", None, P, "0"),
        ("cached", "0", P, "0"),
        ("sending", None, U, None),  # unpriced and nothing seen: unknown, holds the room
        ("unknown", None, U, None),
        ("accepted", None, U, None),
        ("accepted", "0.25", U, "0.25"),
        ("refused", None, U, "0"),
        ("cancelled", None, U, "0"),
    ],
)
def test_what_one_attempt_counts_as(answer, actual, model, counts):
    a = Attempt("j", 1, model, answer, estimate=EST if model == P else None,
                actual=None if actual is None else Decimal(actual))  # fmt: skip
    totals = books([a])
    if counts is None:
        assert totals.unknown_cost == [a] and totals.spent == 0
    else:
        assert totals.cost(a) == Decimal(counts) and totals.spent == Decimal(counts)
        assert totals.unknown_cost == []


@pytest.mark.parametrize(
    ("model", "estimate", "seen", "best"),
    [
        (P, "0.04", None, "0.04"),
        (P, "0.04", "0.10", "0.10"),  # a stale low price: the highest actual seen wins
        (P, "0.04", "0.01", "0.04"),  # a cheaper result: the price still holds
        (U, None, "0.25", "0.25"),  # unpriced: the highest actual seen
    ],
)
def test_an_attempt_without_a_cost_counts_at_its_best_estimate(model, estimate, seen, best):
    lost = Attempt(
        "lost", 1, model, "unknown", estimate=None if estimate is None else Decimal(estimate)
    )
    known = [] if seen is None else [Attempt("done", 1, model, "accepted", actual=Decimal(seen))]
    totals = books([lost, *known])
    assert totals.cost(lost) == Decimal(best)


def test_cache_hits_and_refusals_teach_nothing_about_a_price():
    attempts = [
        Attempt("c", 1, U, "cached", actual=Decimal(0)),
        Attempt("lost", 1, U, "unknown"),
    ]
    assert books(attempts).unknown_cost == [attempts[1]]


def test_an_edited_answer_counts_as_may_be_billed():
    row = ("j", 1, P, "", None, "paid?", None, "0.04", None, None, None)
    assert Attempt.from_row(row).answer == "unknown"
    bad = ("j", 1, P, "", None, "accepted", "r", "Infinity", "-1", "NaN", None)
    a = Attempt.from_row(bad)
    assert (a.estimate, a.actual, a.saved) == (None, None, None)


# ---- the books of a folder read in groups ---------------------------------------------------

_AMOUNTS = hyp.sampled_from([None, "0.01", "0.04", "0.3", "1e-3", "nan", "-1", "junk"])


@given(
    hyp.lists(
        hyp.tuples(
            hyp.sampled_from(["m/a", "m/b", "m/c"]),
            hyp.sampled_from(["", "simulator", "https://api.example"]),
            hyp.sampled_from([*sorted(ledger.ANSWERS), "edited"]),
            _AMOUNTS,
            _AMOUNTS,
            _AMOUNTS,
            hyp.sampled_from([None, 100.0]),
        ),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_the_books_read_in_groups_are_the_books_of_every_attempt(tmp_path_factory, attempts):
    """What a run starts from (settled_attempts in groups + open_attempts one by one) adds up
    to exactly what books() of every attempt does, whatever the amounts and answers."""
    folder = tmp_path_factory.mktemp("groups") / "run"
    with StateStore.open(folder) as s:
        s.add_jobs([J(f"j{i}", position=i) for i in range(len(attempts))])
        with sqlite3.connect(folder / "state.db") as conn:
            for i, (model, origin, answer, est, actual, saved, finished) in enumerate(attempts):
                conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?), (?)", (model, origin))
                conn.execute(
                    "INSERT INTO attempts (job_id, attempt, model_id, origin, answer, "
                    "request_id, estimate_usd, actual_usd, saved_usd, finished_at) VALUES "
                    "(?, 1, (SELECT ref FROM names WHERE name = ?), (SELECT ref FROM names "
                    "WHERE name = ?), ?, ?, ?, ?, ?, ?)",
                    (f"j{i}", model, origin, answer, f"r{i}", est, actual, saved, finished),
                )
        every = books(s.attempts())
        grouped = ledger.books_of([*s.settled_attempts(), *((a, 1) for a in s.open_attempts())])
        assert len(s.open_attempts()) + sum(n for _, n in s.settled_attempts()) == len(attempts)
    assert (grouped.known, grouped.estimated, grouped.saved) == (
        every.known,
        every.estimated,
        every.saved,
    )
    assert (grouped.cached, grouped.attempts, grouped.origins, grouped.highest) == (
        every.cached,
        every.attempts,
        every.origins,
        every.highest,
    )
    assert sorted(a.model_id for a in grouped.unknown_cost) == sorted(
        a.model_id for a in every.unknown_cost
    )

"""Hostile servers that could make a run pay twice or record nonsense costs: a /result that
answers 404 for a request just submitted, a gateway or captive portal that swallows every
submit, and costs that are not amounts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchrun.run.breaker import MAX_AMBIGUOUS_SUBMITS
from batchrun.store import state as st

from .hostile_api import Call, HostileApi, Jumps, Reply, manifest_for, run_here

NOT_FOUND_ANSWERS = {
    "404-json": Reply(404, {"error_code": 404001, "error_message": "request not found"}),
    "200-error-code": Reply(200, {"error_code": 404001, "error_message": "not found"}),
    "404-html": Reply(404, "<html><title>Not Found</title></html>", {"Content-Type": "text/html"}),
    "404-empty": Reply(404, b""),
}


@pytest.mark.parametrize("variant", sorted(NOT_FOUND_ANSWERS))
def test_a_transient_404_on_a_fresh_request_is_read_again(tmp_path: Path, variant: str) -> None:
    """The first reads of a request just submitted answer 404; it is not abandoned."""

    def answer(call: Call) -> Reply | None:
        if call.kind == "result" and call.n <= 3:
            return NOT_FOUND_ANSWERS[variant]
        return None

    manifest_for(tmp_path, 1)
    with HostileApi(answer) as api:
        code, _, rows = run_here(tmp_path, api)
    assert code == 0, rows
    assert [r.status for r in rows] == [st.SUCCEEDED]
    assert api.calls["submit"] == 1 and api.calls["result"] == 4


def test_a_request_missing_for_long_is_not_resubmitted_by_retry_failed(tmp_path: Path) -> None:
    """After reads over the grace time it is left for --resubmit-unknown; --retry-failed neither
    resubmits it nor replaces its request id."""

    def answer(call: Call) -> Reply | None:
        if call.kind == "result":
            return NOT_FOUND_ANSWERS["404-json"]
        return None

    manifest_for(tmp_path, 2)
    with HostileApi(answer) as api:
        # Each read of the wall clock moves it 30 s on: the grace time passes in a few reads.
        code, messages, rows = run_here(tmp_path, api, wall=Jumps(30.0))
        assert code == 1
        assert {r.status for r in rows} == {st.FAILED}
        for r in rows:
            assert r.request_id and "unknown or expired" in r.error
            assert "--resubmit-unknown" in r.error
        assert api.calls["result"] >= 2 * 3  # read more than once each before concluding
        ids = {r.job_id: r.request_id for r in rows}

        code, _, rows = run_here(tmp_path, api, retry_failed=True)
        assert api.calls["submit"] == 2, "--retry-failed paid again for an unread request"
        assert {r.job_id: r.request_id for r in rows} == ids

        code, _, rows = run_here(tmp_path, api, resubmit_unknown=True, wall=Jumps(30.0))
        assert api.calls["submit"] == 4  # asked for: sent again


TRIP = MAX_AMBIGUOUS_SUBMITS

AMBIGUOUS_SUBMITS = {
    "502-html": Reply(502, "<html><title>502 Bad Gateway</title></html>", {"Content-Type": "x"}),
    "504-empty": Reply(504, b""),
    "captive-portal-200-html": Reply(
        200, "<html><title>Sign in to Wi-Fi</title></html>", {"Content-Type": "text/html"}
    ),
    "200-no-request-id": Reply(200, {"status": "ok"}),
    "200-null": Reply(200, "null"),
    "dropped": Reply(drop=True),
}


@pytest.mark.parametrize("variant", sorted(AMBIGUOUS_SUBMITS))
def test_ambiguous_submits_trip_a_circuit_breaker(tmp_path: Path, variant: str) -> None:
    def answer(call: Call) -> Reply | None:
        return AMBIGUOUS_SUBMITS[variant] if call.kind == "submit" else None

    manifest_for(tmp_path, 12)
    with HostileApi(answer) as api:
        code, messages, rows = run_here(tmp_path, api, workers=4)
        assert code != 0
        assert api.calls["submit"] == TRIP, f"{api.calls['submit']} submits sent"
        said = "\n".join(messages)
        assert "stopped submitting" in said and "in a row" in said, said
        counts = {s: sum(r.status == s for r in rows) for s in (st.UNKNOWN, st.PENDING)}
        assert counts == {st.UNKNOWN: TRIP, st.PENDING: 12 - TRIP}

        # The resume path is unchanged: a rerun submits the jobs never sent, not the others.
        api.answer = lambda call: None
        code, _, rows = run_here(tmp_path, api)
    assert api.calls["submit"] == 12
    assert sum(r.status == st.UNKNOWN for r in rows) == TRIP


def test_an_ambiguous_submit_between_accepted_ones_does_not_trip_it(tmp_path: Path) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "submit" and call.n % 2 == 0:
            return AMBIGUOUS_SUBMITS["502-html"]
        return None

    manifest_for(tmp_path, 8)
    with HostileApi(answer) as api:
        # One call at a time, so the answers arrive in the order above.
        code, messages, rows = run_here(tmp_path, api, workers=1)
    assert api.calls["submit"] == 8
    assert not any("stopped submitting" in m for m in messages)


COSTS = ["Infinity", "-Infinity", "NaN", "1e309", "-0.5", '"lots"', "true", "[1]", "1e400"]


@pytest.mark.parametrize("cost", COSTS)
def test_a_cost_that_is_not_an_amount_is_not_recorded(tmp_path: Path, cost: str) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "result":
            body = '{"status": "succeeded", "output": {}, "cost": COST}'.replace("COST", cost)
            return Reply(body=body)
        return None

    manifest_for(tmp_path, 2)
    with HostileApi(answer) as api:
        code, _, rows = run_here(tmp_path, api)
    assert [r.status for r in rows] == [st.SUCCEEDED] * 2
    for r in rows:
        assert r.cost_usd is None
        if cost != '"lots"':  # a word, not a number: no cost, as before
            assert "cost not recorded" in r.error
    # summary.json is strict JSON: no Infinity or NaN for other readers to choke on.
    text = (tmp_path / "run" / "summary.json").read_text()

    def refuse(name: str) -> float:
        raise ValueError(f"non-standard JSON constant {name}")

    summary = json.loads(text, parse_constant=refuse)
    assert summary
    for line in (tmp_path / "run" / "report.csv").read_text().splitlines():
        assert "inf" not in line.lower().split(",") and "nan" not in line.lower().split(",")


def test_a_good_cost_is_kept(tmp_path: Path) -> None:
    manifest_for(tmp_path, 1)
    with HostileApi() as api:
        _, _, rows = run_here(tmp_path, api)
    assert rows[0].cost_usd is not None and math.isclose(rows[0].cost_usd, 0.04)
    assert rows[0].error == ""


@pytest.mark.parametrize("where", ["failed-result", "submit-refused"])
def test_a_huge_error_is_stored_capped_with_its_start_and_end(tmp_path: Path, where: str) -> None:
    huge = "START" + "x" * 5_000_000 + "END"

    def answer(call: Call) -> Reply | None:
        if where == "failed-result" and call.kind == "result":
            return Reply(body={"status": "failed", "error": {"message": huge}})
        if where == "submit-refused" and call.kind == "submit":
            return Reply(422, {"error_message": huge})
        return None

    manifest_for(tmp_path, 2)
    with HostileApi(answer) as api:
        code, _, rows = run_here(tmp_path, api)
    assert code == 1
    # a refused submit stops its model (the same refusal would come for every job)
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == (2 if where == "failed-result" else 1)
    for r in failed:
        assert len(r.error) <= 4000
        assert "START" in r.error[:200] and "END" in r.error[-200:]
    run_dir = tmp_path / "run"
    for name in ("state.db", "report.csv", "report.html"):
        assert (run_dir / name).stat().st_size < 1_000_000, name

"""The engine against scripted API answers (`responses`): ambiguous submits, retries, terminals.

End-to-end behaviour against the simulator is in test_run_e2e.py; here each answer is exact.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers, registries

from batchrun.errors import InsufficientBalanceError
from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.run.polling import PollPlanner
from batchrun.run.progress import Progress, describe
from batchrun.store import state as st
from batchrun.store.output_urls import needs_files
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore

BASE = "https://api.test"
TOKEN = "tok-engine-SECRET"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/x.webp"
SUBMIT = f"{BASE}/v1/models/{FLUX}"
RESULT = f"{BASE}/v1/requests/r1/result"
DONE = {"request_id": "r1", "status": "succeeded", "output": "https://x.runcomfy.net/a.png"}


def manifest(tmp_path: Path, **run: object) -> Path:
    data = {
        "version": 1,
        "name": "unit",
        "run": {"rate_limit": "1000/s", "poll_interval": "10ms", **run},
        "outputs": {"download": False},
        "models": [{"id": FLUX, "inputs": {"prompt": "a cat", "image_url": IMAGE, "seed": 1}}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def go(tmp_path: Path, **opts) -> tuple[int, list[str]]:
    messages: list[str] = []
    options = RunOptions(
        BASE,
        TOKEN,
        run_dir=tmp_path / "run",
        quiet=True,
        handle_signals=False,
        echo=messages.append,
        **opts,
    )
    path = tmp_path / "m.yaml"
    return run_batch(build_plan(path), options), messages


def job(tmp_path: Path) -> JobRow:
    with StateStore.open(tmp_path / "run", create=False, lock=False) as s:
        return s.rows()[0]


def test_read_timeout_on_submit_is_unknown_and_never_resubmitted_blindly(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, body=requests.ReadTimeout("read timed out"))
        code, messages = go(tmp_path)
    assert code == 1
    row = job(tmp_path)
    assert row.status == st.UNKNOWN and row.attempts == 1
    assert row.error.startswith("submit may have reached the server (POST /v1/models/")
    assert row.error.endswith("rerun with --resubmit-unknown to submit again")
    assert any("--resubmit-unknown" in m for m in messages)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        submit = rsps.post(SUBMIT, json={"request_id": "r1"})
        assert go(tmp_path)[0] == 1
        assert submit.call_count == 0  # a plain rerun leaves it alone

    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, json={"request_id": "r1"})
        rsps.get(RESULT, json=DONE)
        assert go(tmp_path, resubmit_unknown=True)[0] == 0
    row = job(tmp_path)
    assert (row.status, row.attempts, row.request_id) == (st.SUCCEEDED, 2, "r1")


@pytest.mark.parametrize(
    "refusal",
    [
        {"status": 429, "json": {"error_message": "slow down"}, "headers": {"Retry-After": "0"}},
        {"status": 503, "body": "<html><title>503</title></html>", "content_type": "text/html"},
        {"status": 500, "json": {"error_code": 500001, "error_message": "try again"}},
        {"body": requests.ConnectionError("Connection refused")},
    ],
    ids=["429", "503", "500-with-error-code", "refused"],
)
def test_submit_refused_before_acceptance_is_retried(tmp_path, refusal):
    manifest(tmp_path)
    with responses.RequestsMock(registry=registries.OrderedRegistry) as rsps:
        rsps.post(SUBMIT, **refusal)
        rsps.post(
            SUBMIT,
            json={"request_id": "r1"},
            match=[
                matchers.json_params_matcher({"prompt": "a cat", "image_url": IMAGE, "seed": 1})
            ],
        )
        rsps.get(RESULT, json=DONE)
        code, _ = go(tmp_path)
    assert code == 0
    row = job(tmp_path)
    assert (row.status, row.attempts) == (st.SUCCEEDED, 1)


def test_gateway_502_on_submit_is_ambiguous(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, status=502, body="<html><title>502 Bad Gateway</title></html>")
        assert go(tmp_path)[0] == 1
    row = job(tmp_path)
    assert row.status == st.UNKNOWN
    assert "502 Bad Gateway" in row.error


def test_every_submit_is_committed_before_it_is_sent(tmp_path):
    """What the server has been sent is never ahead of what state.db holds (group commit)."""
    path = manifest(tmp_path)
    data = json.loads(path.read_text())
    data["models"][0]["matrix"] = {"seed": list(range(12))}
    path.write_text(json.dumps(data))
    seen: list[tuple[int, int]] = []  # (submits sent so far, jobs committed as submitted)
    one_at_a_time = threading.Lock()  # a submit's place and its read go together

    def on_submit(request):
        with one_at_a_time:
            conn = sqlite3.connect(tmp_path / "run" / "state.db")
            query = "SELECT count(*) FROM jobs WHERE status != 'pending'"
            (marked,) = conn.execute(query).fetchone()
            conn.close()
            seen.append((len(seen) + 1, marked))
        return 200, {}, json.dumps({"request_id": f"r{len(seen)}"})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, SUBMIT, callback=on_submit)
        rsps.get(re.compile(rf"{BASE}/v1/requests/r\d+/result"), json=DONE)
        assert go(tmp_path, workers=4)[0] == 0
    assert len(seen) == 12
    assert all(marked >= sent for sent, marked in seen), seen
    with StateStore.open(tmp_path / "run", create=False, lock=False) as s:
        assert {r.status for r in s.rows()} == {st.SUCCEEDED}


def test_insufficient_balance_stops_submitting_with_exit_3(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, status=402, json={"error_code": 400002, "error_message": "top up"})
        with pytest.raises(InsufficientBalanceError) as info:
            go(tmp_path)
    assert info.value.exit_code == 3
    row = job(tmp_path)
    assert row.status == st.PENDING and row.attempts == 0  # nothing was accepted
    assert (tmp_path / "run" / "report.csv").exists()


def test_invalid_input_fails_the_job_without_retry(tmp_path):
    manifest(tmp_path)
    detail = [{"loc": ["body", "seed"], "msg": "bad seed"}]
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, status=422, json={"error_message": "invalid", "detail": detail})
        assert go(tmp_path)[0] == 1
    row = job(tmp_path)
    assert row.status == st.FAILED and "body.seed: bad seed" in row.error


def test_polls_retry_5xx_and_transport_errors_then_finish(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock(registry=registries.OrderedRegistry) as rsps:
        rsps.post(SUBMIT, json={"request_id": "r1"})
        rsps.get(RESULT, json={"status": "in_queue", "queue_position": 1})
        rsps.get(RESULT, status=500, json={"error_code": 500001, "error_message": "x"})
        rsps.get(RESULT, body=requests.ConnectionError("reset"))
        rsps.get(RESULT, json={"status": "in_progress"})
        rsps.get(RESULT, json={**DONE, "cost": 0.04})
        assert go(tmp_path)[0] == 0
    row = job(tmp_path)
    assert row.status == st.SUCCEEDED and row.cost_usd == 0.04
    assert row.started_at is not None and row.output == DONE["output"]


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ({"status": "canceled"}, st.CANCELLED, 1),
        ({"status": "cancelled"}, st.CANCELLED, 1),
        ({"status": "completed", "output": ["https://x.runcomfy.net/a.png"]}, st.SUCCEEDED, 0),
        ({"status": "failed", "error": {"message": "nsfw"}}, st.FAILED, 1),
        ({"status": "failed", "error": "boom"}, st.FAILED, 1),
    ],
)
def test_terminal_answers(tmp_path, answer, status, code):
    manifest(tmp_path, retries=0)
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, json={"request_id": "r1"})
        rsps.get(RESULT, json={"request_id": "r1", **answer})
        assert go(tmp_path)[0] == code
    row = job(tmp_path)
    assert row.status == status
    if status == st.FAILED:
        assert row.error in ("nsfw", "boom")


def test_expired_request_on_resume_fails_with_reason(tmp_path):
    manifest(tmp_path)
    with StateStore.open(tmp_path / "run") as s:
        s.add_jobs(build_plan(tmp_path / "m.yaml").jobs)
        jid = s.rows()[0].job_id
        s.record_request_id(jid, "r1", 1.0)
    with responses.RequestsMock() as rsps:
        rsps.get(RESULT, status=404, json={"error_code": 404001, "error_message": "expired"})
        assert go(tmp_path)[0] == 1
    row = job(tmp_path)
    assert row.status == st.FAILED and "unknown or expired" in row.error


def test_killed_while_submitting_is_unknown_on_resume(tmp_path):
    manifest(tmp_path)
    with StateStore.open(tmp_path / "run") as s:
        s.add_jobs(build_plan(tmp_path / "m.yaml").jobs)
        s.mark_submitting(s.rows()[0].job_id)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        submit = rsps.post(SUBMIT, json={"request_id": "r1"})
        code, messages = go(tmp_path)
    assert code == 1 and submit.call_count == 0
    assert job(tmp_path).status == st.UNKNOWN
    assert any("were being submitted when the last run stopped" in m for m in messages)


def test_token_only_in_authorization_header(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock() as rsps:
        rsps.post(
            SUBMIT,
            json={"request_id": "r1"},
            match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})],
        )
        rsps.get(RESULT, json=DONE, match=[matchers.query_param_matcher({"include_cost": "true"})])
        assert go(tmp_path)[0] == 0
        for call in rsps.calls:
            body = call.request.body or b""
            body = body.decode() if isinstance(body, bytes) else body
            assert TOKEN not in (call.request.url or "") and TOKEN not in body
    for path in (tmp_path / "run").rglob("*"):
        assert TOKEN.encode() not in path.read_bytes()


# ---- pieces -------------------------------------------------------------------------------


def test_poll_planner_learns_from_server_timestamps():
    p = PollPlanner(0.5, cap=30)
    assert p.first_delay() == 0.5
    assert p.next_delay(age=0.5) == 0.5  # poll_interval at least
    assert p.next_delay(age=60) == 20.0  # backs off with age
    assert p.next_delay(age=1000) == 30.0  # capped
    for i, secs in enumerate([1.0, 1.2, 1.4, 1.6]):
        p.learn(
            {"created_at": "2026-01-01T00:00:00Z", "finished_at": f"2026-01-01T00:00:0{secs:.1f}Z"},
            now=float(i),
        )
    typical = p.typical()
    assert typical is not None and 1.4 < typical <= 1.6
    assert p.first_delay() == p.typical()
    assert p.next_delay(age=1.0) == pytest.approx(typical - 1.0)
    # in the queue: position / observed throughput (4 jobs in 3 s)
    assert p.next_delay(age=1.0, queue_position=6) == pytest.approx(6 / 1.0)


def testneeds_files(tmp_path):
    row = JobRow("ab12", 0, FLUX, {}, status=st.SUCCEEDED, output={"i": "https://h/a.png"})
    assert needs_files(tmp_path, row)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.png").write_bytes(b"1234")
    row.files = [OutputFile("https://h/a.png", "files/a.png", "x", 4)]
    assert not needs_files(tmp_path, row)
    row.files = [OutputFile("https://h/a.png", "files/a.png", "x", 9)]  # partial
    assert needs_files(tmp_path, row)
    row.output = None
    assert not needs_files(tmp_path, row)


def test_progress_without_tty_logs_every_few_seconds():
    now = [0.0]
    out = io.StringIO()
    prog = Progress(10, stream=out, interval=5.0, clock=lambda: now[0])
    counts = {"succeeded": 2, "running": 3, "pending": 5}
    prog.update(counts, 2, 7)
    assert out.getvalue() == ""
    now[0] = 5.0
    prog.update(counts, 2, 7)
    assert out.getvalue() == (
        "batchrun: 2/10 done (succeeded 2, running 3, pending 5); 7 API calls; elapsed 5s, ETA ?\n"
    )
    quiet = io.StringIO()
    Progress(10, stream=quiet, quiet=True, clock=lambda: 99.0).update(counts, 2, 7)
    assert quiet.getvalue() == ""


def test_describe_orders_states():
    assert describe({"pending": 1, "failed": 2, "succeeded": 3}) == (
        "succeeded 3, failed 2, pending 1"
    )


def test_give_up_at_job_timeout_names_the_last_error(tmp_path):
    # A result endpoint that keeps answering HTTP 200 with an error_code: the job gives up at
    # job_timeout, and the report says why, not only that time ran out.
    manifest(tmp_path, job_timeout="300ms")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(SUBMIT, json={"request_id": "r1"})
        rsps.get(RESULT, json={"error_code": 500001, "error_message": "backend on fire"})
        rsps.post(f"{BASE}/v1/requests/r1/cancel", status=202, json={"outcome": "not_cancellable"})
        code, _ = go(tmp_path)
    assert code == 1
    row = job(tmp_path)
    assert row.status == st.TIMED_OUT
    assert "job_timeout" in row.error and "backend on fire" in row.error


def test_resume_of_a_finished_run_calls_nothing_and_reports_the_same(tmp_path):
    manifest(tmp_path)
    with responses.RequestsMock() as rsps:
        rsps.post(SUBMIT, json={"request_id": "r1"})
        rsps.get(RESULT, json={**DONE, "cost": 0.04})
        assert go(tmp_path)[0] == 0
    first = (tmp_path / "run" / "report.csv").read_text()
    assert ",succeeded,r1," in first
    written = (tmp_path / "run" / "summary.json").read_text()
    with responses.RequestsMock():  # any call would fail: nothing is left to do
        assert go(tmp_path)[0] == 0
    assert (tmp_path / "run" / "report.csv").read_text() == first
    # Nothing changed: the files are those of the run that made the results, calls included.
    assert (tmp_path / "run" / "summary.json").read_text() == written
    summary = json.loads(written)
    assert summary["api_calls_this_run"]["total"] == 2 and summary["cost_usd"] == 0.04


def test_a_resume_that_changes_jobs_reports_the_stored_state(tmp_path):
    manifest(tmp_path)
    with StateStore.open(tmp_path / "run") as s:
        s.add_jobs(build_plan(tmp_path / "m.yaml").jobs)
        s.record_request_id(s.rows()[0].job_id, "r1", 1.0)
    with responses.RequestsMock() as rsps:
        rsps.get(RESULT, json={**DONE, "cost": 0.04})
        assert go(tmp_path)[0] == 0
    report = (tmp_path / "run" / "report.csv").read_text()
    assert ",succeeded,r1," in report and DONE["output"] in report

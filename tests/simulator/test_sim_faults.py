"""Each fault knob, driven over real HTTP, and reproducible from the seed."""

from __future__ import annotations

import time

import pytest
import requests
from simhelpers import T2I, SimClient, wait_for


def test_rate_limit_answers_429_with_retry_after_and_counts_it(make_sim) -> None:
    client = SimClient(make_sim(rate_limit=5))
    answers = [client.get("/v1/models") for _ in range(20)]
    limited = [r for r in answers if r.status_code == 429]
    assert 5 <= 20 - len(limited) <= 7  # a burst of one second's worth, then the rate
    for r in limited:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error_code"] == 429
    stats = client.sim.stats()
    assert stats["throttled"] == len(limited)
    assert stats["calls"]["catalog"] == 20  # throttled calls are still calls
    assert stats["peak_rate_1s"] == 20


def test_files_are_neither_rate_limited_nor_authenticated(make_sim) -> None:
    client = SimClient(make_sim(rate_limit=1))
    rid = client.submit_ok()
    assert client.get(f"/v1/requests/{rid}/status").status_code == 429
    sim = client.sim
    url = wait_for(lambda: next(iter(sim.files()), None))
    for _ in range(5):
        assert requests.get(url, timeout=5).status_code == 200


def test_error_rate_one_answers_5xx_some_as_html(make_sim) -> None:
    client = SimClient(make_sim(error_rate=1.0))
    answers = [client.submit() for _ in range(30)]
    assert {r.status_code for r in answers} <= {500, 502, 503}
    assert len({r.status_code for r in answers}) == 3
    html = [r for r in answers if r.headers["Content-Type"] == "text/html"]
    assert html and all("<html" in r.text.lower() for r in html)
    json_bodies = [r.json() for r in answers if r.headers["Content-Type"] == "application/json"]
    assert json_bodies and all(b["error_code"] == 500001 for b in json_bodies)
    stats = client.sim.stats()
    assert stats["submits"] == 0  # an injected 5xx happens before the submit is accepted
    assert sum(v for k, v in stats["faults"].items() if k.startswith("error_")) == 30


def _status_codes(sim, n: int) -> list[int]:
    client = SimClient(sim)
    return [client.get("/v1/models").status_code for _ in range(n)]


def test_error_faults_are_reproducible_from_the_seed(make_sim) -> None:
    first = _status_codes(make_sim(error_rate=0.4, seed=7), 40)
    again = _status_codes(make_sim(error_rate=0.4, seed=7), 40)
    other = _status_codes(make_sim(error_rate=0.4, seed=8), 40)
    assert first == again
    assert first != other
    assert 0 < sum(c != 200 for c in first) < 40


def test_drop_rate_closes_the_connection_and_a_dropped_submit_still_counts(make_sim) -> None:
    client = SimClient(make_sim(drop_rate=1.0))
    dropped = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)
    for _ in range(6):
        with pytest.raises(dropped):
            client.submit(T2I, {"prompt": "same"})
    stats = client.sim.stats()
    assert stats["submits_per_identity"] == {f'{T2I} {{"prompt":"same"}}': 6}
    assert stats["duplicate_submits"] == 1
    kinds = {k for k in stats["faults"] if k.startswith("drop_")}
    assert kinds == {"drop_silent", "drop_partial"}


def test_drop_partial_announces_more_bytes_than_it_sends(make_sim) -> None:
    import http.client
    import json

    sim = make_sim(drop_rate=1.0, seed=3)
    seen = set()
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
        conn.request("GET", "/v1/models", headers={"Authorization": "Bearer sim-token"})
        try:
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            seen.add("silent")
            continue
        with pytest.raises(http.client.IncompleteRead):
            json.loads(response.read())
        seen.add("partial")
        conn.close()
    assert seen == {"silent", "partial"}


def test_slow_adds_latency_to_api_calls(make_sim) -> None:
    client = SimClient(make_sim(slow=0.3))
    started = time.monotonic()
    assert client.get("/v1/models").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert client.sim.stats()["faults"]["slow"] == 1


def test_fail_rate_one_ends_every_job_completed_then_failed_with_an_error(make_sim) -> None:
    client = SimClient(make_sim(fail_rate=1.0))
    rids = [client.submit_ok(inputs={"prompt": f"p{i}"}) for i in range(12)]
    errors = []
    for rid in rids:
        assert client.wait_status(rid, "completed", "in_progress")  # never "failed" here
        client.wait_status(rid, "completed")
        result = client.result(rid, include_cost="true")
        assert result["status"] == "failed"
        assert "output" not in result and result["cost"] == 0
        errors.append(result["error"])
    assert all(e if isinstance(e, str) else e["message"] for e in errors)
    assert {type(e) for e in errors} == {dict, str}  # both documented readings occur
    assert client.sim.stats()["jobs"]["failed"] == 12


def _failed_prompts(sim, n: int) -> set[str]:
    client = SimClient(sim)
    rids = {client.submit_ok(inputs={"prompt": f"p{i}"}): f"p{i}" for i in range(n)}
    for rid in rids:
        client.wait_status(rid, "completed")
    return {p for rid, p in rids.items() if client.result(rid)["status"] == "failed"}


def test_failures_are_reproducible_from_the_seed(make_sim) -> None:
    first = _failed_prompts(make_sim(fail_rate=0.5, workers=0, seed=1), 20)
    again = _failed_prompts(make_sim(fail_rate=0.5, workers=0, seed=1), 20)
    assert first == again
    assert 0 < len(first) < 20


def test_a_resubmitted_failure_gets_a_fresh_draw(make_sim) -> None:
    client = SimClient(make_sim(fail_rate=0.5, workers=0, run_time=0))
    outcomes = []
    for _ in range(12):
        rid = client.submit_ok(inputs={"prompt": "same"})
        client.wait_status(rid, "completed")
        outcomes.append(client.result(rid)["status"])
    assert set(outcomes) == {"succeeded", "failed"}


def test_expire_after_makes_results_and_files_404(make_sim) -> None:
    client = SimClient(make_sim(expire_after=0.3))
    rid = client.submit_ok()
    client.wait_status(rid, "completed")
    url = client.result(rid)["output"]["image"]
    assert requests.get(url, timeout=5).status_code == 200
    wait_for(lambda: client.get(f"/v1/requests/{rid}/result").status_code == 404)
    r = client.get(f"/v1/requests/{rid}/status")
    assert (r.status_code, r.json()["error_code"]) == (404, 404001)
    assert requests.get(url, timeout=5).status_code == 404
    assert client.sim.files() == {}


def _bytes_per_prompt(sim, prompts: list[str]) -> dict[str, bytes]:
    client = SimClient(sim)
    rids = {p: client.submit_ok(inputs={"prompt": p}) for p in prompts}
    out = {}
    for p, rid in rids.items():
        client.wait_status(rid, "completed")
        out[p] = requests.get(client.result(rid)["output"]["image"], timeout=5).content
    return out


def test_drift_changes_the_bytes_of_a_reproducible_fraction_of_jobs(make_sim) -> None:
    prompts = [f"p{i}" for i in range(20)]
    base = _bytes_per_prompt(make_sim(run_time=0, workers=0), prompts)
    drifted = _bytes_per_prompt(make_sim(run_time=0, workers=0, drift=0.5), prompts)
    again = _bytes_per_prompt(make_sim(run_time=0, workers=0, drift=0.5), prompts)
    changed = {p for p in prompts if base[p] != drifted[p]}
    assert 0 < len(changed) < 20
    assert drifted == again
    all_changed = _bytes_per_prompt(make_sim(run_time=0, workers=0, drift=1.0), prompts[:3])
    assert all(all_changed[p] != base[p] for p in prompts[:3])

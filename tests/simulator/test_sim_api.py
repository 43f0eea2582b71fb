"""Conformance: the simulator speaks the documented RunComfy Model API over real HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest
import requests
from simhelpers import IMG, T2I, VALID_INPUTS, SimClient, wait_for

from batchrun.catalog import models


def test_submit_answers_request_id_and_urls_on_its_own_base(client: SimClient) -> None:
    r = client.submit()
    assert r.status_code == 200
    body = r.json()
    rid = body["request_id"]
    assert set(body) == {"request_id", "status_url", "result_url", "cancel_url"}
    for kind in ("status", "result", "cancel"):
        assert body[f"{kind}_url"] == f"{client.base}/v1/requests/{rid}/{kind}"


def test_lifecycle_in_progress_then_completed_and_result_succeeded(make_sim) -> None:
    client = SimClient(make_sim(run_time=0.3))
    rid = client.submit_ok()
    running = client.wait_status(rid, "in_progress")
    assert running["status_url"].endswith(f"/v1/requests/{rid}/status")
    assert running["result_url"].endswith(f"/v1/requests/{rid}/result")
    assert "queue_position" not in running
    assert client.result(rid)["status"] == "in_progress"  # result can be polled too
    done = client.wait_status(rid, "completed")
    assert set(done) == {"request_id", "status", "status_url", "result_url"}
    result = client.result(rid)
    assert result["status"] == "succeeded"
    assert result["model_id"] == T2I
    assert result["created_at"].endswith("Z") and result["finished_at"] >= result["created_at"]
    assert "cost" not in result


def test_queue_is_fifo_with_real_positions_and_cancel_only_while_queued(make_sim) -> None:
    client = SimClient(make_sim(workers=1, run_time=30))
    rids = [client.submit_ok(inputs={"prompt": f"p{i}"}) for i in range(4)]
    client.wait_status(rids[0], "in_progress")
    assert [client.status(r).get("queue_position") for r in rids] == [None, 1, 2, 3]
    assert client.result(rids[2]) | {"created_at": None} == {
        "request_id": rids[2],
        "status": "in_queue",
        "queue_position": 2,
        "created_at": None,
    }

    r = client.post(f"/v1/requests/{rids[1]}/cancel")
    assert r.status_code == 202
    assert r.json() == {"request_id": rids[1], "status": "cancelled", "outcome": "cancelled"}
    assert client.status(rids[1])["status"] == "cancelled"
    assert client.result(rids[1])["status"] == "cancelled"
    assert [client.status(r).get("queue_position") for r in rids[2:]] == [1, 2]

    r = client.post(f"/v1/requests/{rids[0]}/cancel")
    assert r.status_code == 202
    assert r.json() == {
        "request_id": rids[0],
        "status": "in_progress",
        "outcome": "not_cancellable",
    }
    again = client.post(f"/v1/requests/{rids[1]}/cancel").json()
    assert again["outcome"] == "not_cancellable"


def test_cancel_after_completion_is_not_cancellable(client: SimClient) -> None:
    rid = client.submit_ok()
    client.wait_status(rid, "completed")
    r = client.post(f"/v1/requests/{rid}/cancel")
    assert (r.status_code, r.json()["outcome"], r.json()["status"]) == (
        202,
        "not_cancellable",
        "completed",
    )
    assert client.result(rid)["status"] == "succeeded"


def test_zero_workers_means_every_job_starts_at_once(make_sim) -> None:
    client = SimClient(make_sim(workers=0, run_time=30))
    rids = [client.submit_ok(inputs={"prompt": f"p{i}"}) for i in range(10)]
    wait_for(lambda: all(client.status(r)["status"] == "in_progress" for r in rids))


def _urls(output):
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [u for item in output for u in _urls(item)]
    return [u for value in output.values() for u in _urls(value)]


EXPECTED_SHAPES = {
    "blackforestlabs/flux-1-kontext/pro/edit": str,
    "google/nano-banana-2-lite/text-to-image": dict,
    "google/nano-banana-2-lite/edit": dict,
    "bytedance/seedream-5.0-pro/image-to-image": list,
    "blackforestlabs/flux-3/text-to-video": dict,
    "bytedance/seedance-2.5/image-to-video/1080p": dict,
    "bytedance/seedance-2.5/text-to-video/1080p": list,
    "wan-ai/wan-3.0/image-to-video": dict,
}


@pytest.mark.parametrize("model", sorted(VALID_INPUTS))
def test_every_model_succeeds_with_its_output_shape_files_and_cost(
    client: SimClient, model: str
) -> None:
    rid = client.submit_ok(model)
    client.wait_status(rid, "completed")
    result = client.result(rid, include_cost="true")
    assert result["status"] == "succeeded"
    output = result["output"]
    assert isinstance(output, EXPECTED_SHAPES[model])
    urls = _urls(output)
    assert urls and all(u.startswith(f"{client.base}/files/{rid}/") for u in urls)
    video = models.output_type(model) == "VIDEO"
    assert any(u.endswith(".mp4") for u in urls) == video
    assert result["cost"] > 0
    hashes = client.get("/_sim/files").json()
    for url in urls:
        r = client.session.get(url, headers={"Authorization": ""})  # files need no auth
        assert r.status_code == 200
        assert r.headers["Content-Type"] == ("video/mp4" if url.endswith(".mp4") else "image/png")
        assert hashlib.sha256(r.content).hexdigest() == hashes[url]


def test_doc_example_shape_image_plus_videos(client: SimClient) -> None:
    rid = client.submit_ok("bytedance/seedance-2.5/image-to-video/1080p")
    client.wait_status(rid, "completed")
    output = client.result(rid)["output"]
    assert set(output) == {"image", "videos"}
    assert output["image"].endswith(".png") and len(output["videos"]) == 3


def test_cost_scales_with_video_duration(client: SimClient) -> None:
    model = "bytedance/seedance-2.5/text-to-video/1080p"
    costs = []
    for duration in (5, 10):
        rid = client.submit_ok(model, {"prompt": "x", "duration": duration})
        client.wait_status(rid, "completed")
        costs.append(client.result(rid, include_cost="true")["cost"])
    assert costs[1] == pytest.approx(2 * costs[0])


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", f"/v1/models/{T2I}"),
        ("GET", "/v1/requests/abc/status"),
        ("GET", "/v1/requests/abc/result"),
        ("POST", "/v1/requests/abc/cancel"),
        ("GET", "/v1/models"),
        ("GET", f"/v1/models/{T2I}"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "sim-token", "Bearer  sim-token"])
def test_every_api_call_needs_the_bearer_token(
    client: SimClient, method: str, path: str, auth: str | None
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    r = client.session.request(
        method,
        client.base + path,
        json={"prompt": "x"},
        headers={"Authorization": None, **headers},
    )
    assert r.status_code == 401
    assert r.json()["error_code"] == 400004
    assert "sim-token" not in r.text
    assert client.sim.stats()["submits"] == 0


@pytest.mark.parametrize(
    "inputs, loc",
    [
        ({}, ["body", "prompt"]),
        ({"prompt": 3}, ["body", "prompt"]),
        ({"prompt": "x", "aspect_ratio": "7:7"}, ["body", "aspect_ratio"]),
        ({"prompt": "x", "colour": "red"}, ["body"]),
    ],
)
def test_inputs_failing_the_schema_get_422_with_detail(
    client: SimClient, inputs: dict, loc: list
) -> None:
    r = client.submit(T2I, inputs)
    assert r.status_code == 422
    body = r.json()
    assert body["error_code"] == 422
    assert loc in [d["loc"] for d in body["detail"]]
    assert all(d["msg"] for d in body["detail"])
    assert client.sim.stats()["submits"] == 0


def test_body_that_is_not_json_gets_422(client: SimClient) -> None:
    r = client.session.post(f"{client.base}/v1/models/{T2I}", data=b"{not json")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body"]


def test_unknown_model_is_400_with_400001(client: SimClient) -> None:
    r = client.post("/v1/models/acme/nope/v1", json={"prompt": "x"})
    assert (r.status_code, r.json()["error_code"]) == (400, 400001)
    r = client.get("/v1/models/acme/nope/v1")
    assert (r.status_code, r.json()["error_code"]) == (400, 400001)


@pytest.mark.parametrize(
    "action, method", [("status", "GET"), ("result", "GET"), ("cancel", "POST")]
)
def test_unknown_request_id_is_404_with_404001(client: SimClient, action: str, method: str) -> None:
    r = client.session.request(method, f"{client.base}/v1/requests/no-such-id/{action}")
    assert (r.status_code, r.json()["error_code"]) == (404, 404001)


def test_catalog_lists_searches_and_pages(client: SimClient) -> None:
    everything = client.get("/v1/models", params={"limit": 100}).json()
    assert everything["total"] == len(VALID_INPUTS)
    assert sorted(m["model_id"] for m in everything["models"]) == sorted(VALID_INPUTS)
    found = client.get("/v1/models", params={"search": "NANO"}).json()
    assert found["total"] == 2
    assert {m["model_id"] for m in found["models"]} == {T2I, "google/nano-banana-2-lite/edit"}
    page = client.get("/v1/models", params={"limit": 3, "offset": 6}).json()
    assert page["total"] == 8 and len(page["models"]) == 2
    videos = client.get("/v1/models", params={"category": "image-to-video"}).json()
    assert videos["total"] == 2


def test_catalog_entry_carries_the_raw_schema_and_price(client: SimClient) -> None:
    model = "wan-ai/wan-3.0/image-to-video"
    entry = client.get(f"/v1/models/{model}").json()
    assert entry["model_id"] == model
    assert entry["input_schema"] == models.raw_schema(model)
    assert entry["base_price_usd"] > 0
    for key in ("display_name", "categories", "price_unit", "pricing_note"):
        assert entry[key]


def test_keep_alive_serves_many_requests_on_one_connection(sim) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    headers = {"Authorization": f"Bearer {sim.token}", "Content-Type": "application/json"}
    for i in range(5):
        conn.request("POST", f"/v1/models/{T2I}", json.dumps({"prompt": f"{i}"}), headers)
        response = conn.getresponse()
        assert response.status == 200
        json.loads(response.read())
    conn.request("GET", "/_sim/stats")
    stats = json.loads(conn.getresponse().read())
    assert stats["submits"] == 5
    conn.close()


def test_stats_count_calls_identities_duplicates_and_reset(client: SimClient) -> None:
    a = client.submit_ok(T2I, {"prompt": "a"})
    client.submit_ok(T2I, {"prompt": "a"})
    client.submit_ok(T2I, {"prompt": "b"})
    client.status(a)
    client.result(a)
    client.post(f"/v1/requests/{a}/cancel")
    client.get("/v1/models")
    stats = client.get("/_sim/stats").json()
    assert stats["calls"] == {
        "submit": 3,
        "status": 1,
        "result": 1,
        "cancel": 1,
        "catalog": 1,
        "files": 0,
    }
    assert stats["submits_per_identity"] == {
        f'{T2I} {{"prompt":"a"}}': 2,
        f'{T2I} {{"prompt":"b"}}': 1,
    }
    assert stats["duplicate_submits"] == 1
    assert stats["peak_rate_1s"] >= 1
    assert sum(stats["jobs"][s] for s in ("in_queue", "in_progress", "completed", "cancelled")) == 3
    assert client.sim.stats()["submits"] == 3

    assert client.post("/_sim/reset").status_code == 200
    stats = client.get("/_sim/stats").json()
    assert stats["submits"] == 0 and stats["calls"]["submit"] == 0
    assert client.get(f"/v1/requests/{a}/status").status_code == 404


def test_identity_ignores_key_order(client: SimClient) -> None:
    model = "blackforestlabs/flux-1-kontext/pro/edit"
    client.submit_ok(model, {"prompt": "a", "image_url": IMG, "seed": 1})
    client.submit_ok(model, {"seed": 1, "image_url": IMG, "prompt": "a"})
    assert client.sim.stats()["duplicate_submits"] == 1


def test_unknown_endpoint_and_wrong_method(client: SimClient) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/requests/x/cancel").status_code == 405
    assert client.get("/nowhere.png").status_code == 404


def test_stop_closes_keep_alive_connections(make_sim) -> None:
    sim = make_sim()
    client = SimClient(sim)
    client.submit_ok()
    sim.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.submit()

"""The RunComfy client against `responses`: shapes, error mapping, and the token kept secret."""

from __future__ import annotations

import socket

import pytest
import requests
import responses
from responses import matchers, registries

from batchrun.api.client import Client, parse_retry_after
from batchrun.errors import (
    AcceptedWithError,
    ApiError,
    AuthError,
    InsufficientBalanceError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)

BASE = "https://api.test"
TOKEN = "sk-secret-token-123"
MODEL = "blackforestlabs/flux-1-kontext/pro/edit"
RID = "req-1"


@pytest.fixture
def mocked_responses():
    with responses.RequestsMock() as rsps:
        yield rsps


@pytest.fixture
def client() -> Client:
    return Client(BASE, TOKEN)


def test_submit_sends_inputs_and_bearer_token(mocked_responses, client):
    mocked_responses.post(
        f"{BASE}/v1/models/{MODEL}",
        json={"request_id": RID, "status_url": "x"},
        match=[
            matchers.json_params_matcher({"prompt": "a cat", "seed": 1}),
            matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"}),
        ],
    )
    assert client.submit(MODEL, {"prompt": "a cat", "seed": 1}) == RID
    assert client.calls["submit"] == 1


def test_result_asks_for_cost(mocked_responses, client):
    mocked_responses.get(
        f"{BASE}/v1/requests/{RID}/result",
        json={"request_id": RID, "status": "succeeded", "output": "https://x/a.png", "cost": 0.04},
        match=[matchers.query_param_matcher({"include_cost": "true"})],
    )
    assert client.result(RID)["cost"] == 0.04
    assert client.calls["result"] == 1


def test_status_sequence_with_ordered_registry():
    client = Client(BASE, TOKEN)
    with responses.RequestsMock(registry=registries.OrderedRegistry) as rsps:
        url = f"{BASE}/v1/requests/{RID}/status"
        rsps.get(url, json={"status": "in_queue", "queue_position": 2})
        rsps.get(url, json={"status": "in_progress"})
        rsps.get(url, json={"status": "completed"})
        seen = [client.status(RID)["status"] for _ in range(3)]
    assert seen == ["in_queue", "in_progress", "completed"]
    assert client.calls["status"] == 3


def test_cancel_and_catalog(mocked_responses, client):
    mocked_responses.post(
        f"{BASE}/v1/requests/{RID}/cancel", json={"outcome": "cancelled"}, status=202
    )
    mocked_responses.get(f"{BASE}/v1/models/{MODEL}", json={"model_id": MODEL})
    mocked_responses.get(f"{BASE}/v1/models", json={"models": [], "total": 0})
    assert client.cancel(RID)["outcome"] == "cancelled"
    assert client.model(MODEL)["model_id"] == MODEL
    assert client.models()["total"] == 0


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (401, {"error_code": 400004, "error_message": "token expired"}, AuthError, 400004),
        (403, {"error_code": 403001, "message": "not your request"}, AuthError, 403001),
        (200, {"error_code": 400004, "error_message": "missing token"}, AuthError, 400004),
        (402, {"error_code": 400002, "error": "no money"}, InsufficientBalanceError, 400002),
        (400, {"error_code": 400002, "error": "no money"}, InsufficientBalanceError, 400002),
        (400, {"error_code": 400001, "error_message": "bad model"}, InvalidInputError, 400001),
        (404, {"error_code": 404001, "error_message": "expired"}, NotFoundError, 404001),
        (200, {"error_code": 404001, "error_message": "expired"}, NotFoundError, 404001),
        (429, {"error_message": "slow down"}, RateLimitedError, None),
        (500, {"error_code": 500001, "error_message": "boom"}, ServerError, 500001),
        (200, {"error_code": 500001, "error_message": "boom"}, ServerError, 500001),
        (418, {"error_message": "teapot"}, ApiError, None),
    ],
)
def test_error_mapping(mocked_responses, client, status, body, cls, code):
    mocked_responses.get(f"{BASE}/v1/requests/{RID}/status", json=body, status=status)
    with pytest.raises(cls) as info:
        client.status(RID)
    exc = info.value
    assert type(exc) is cls
    assert exc.status == status
    assert exc.error_code == code
    text = str(exc)
    assert text.startswith(f"GET /v1/requests/{RID}/status HTTP {status}")
    assert (body.get("error_message") or body.get("message") or body.get("error")) in text
    assert TOKEN not in text and TOKEN not in repr(exc)


def test_422_detail_is_in_the_message(mocked_responses, client):
    detail = [{"loc": ["body", "seed"], "msg": "must be an integer"}]
    mocked_responses.post(
        f"{BASE}/v1/models/{MODEL}",
        json={"error_message": "invalid inputs", "detail": detail},
        status=422,
    )
    with pytest.raises(InvalidInputError) as info:
        client.submit(MODEL, {"seed": "x"})
    assert "body.seed: must be an integer" in str(info.value)
    assert info.value.detail == detail


@pytest.mark.parametrize(
    ("header", "expected"), [("7", 7.0), ("0.5", 0.5), (None, None), ("soon", None)]
)
def test_429_retry_after_seconds(mocked_responses, client, header, expected):
    headers = {"Retry-After": header} if header is not None else {}
    mocked_responses.get(
        f"{BASE}/v1/requests/{RID}/result", json={"error": "busy"}, status=429, headers=headers
    )
    with pytest.raises(RateLimitedError) as info:
        client.result(RID)
    assert info.value.retry_after == expected


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0


def test_html_5xx_body(mocked_responses, client):
    mocked_responses.get(
        f"{BASE}/v1/requests/{RID}/result",
        body="<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        status=502,
        content_type="text/html",
    )
    with pytest.raises(ServerError) as info:
        client.result(RID)
    assert "502 Bad Gateway" in str(info.value)
    assert "<html>" not in str(info.value)


def test_non_json_200_is_transport_error(mocked_responses, client):
    mocked_responses.get(f"{BASE}/v1/requests/{RID}/status", body="OK", status=200)
    with pytest.raises(TransportError) as info:
        client.status(RID)
    assert "not a JSON object" in str(info.value)


def test_submit_without_request_id_is_ambiguous(mocked_responses, client):
    mocked_responses.post(f"{BASE}/v1/models/{MODEL}", json={"status": "ok"})
    with pytest.raises(TransportError) as info:
        client.submit(MODEL, {})
    assert info.value.maybe_sent is True


def test_read_timeout_may_have_been_sent(mocked_responses, client):
    mocked_responses.post(f"{BASE}/v1/models/{MODEL}", body=requests.ReadTimeout("timed out"))
    with pytest.raises(TransportError) as info:
        client.submit(MODEL, {})
    assert info.value.maybe_sent is True
    assert "read timed out" in str(info.value)


def test_connect_timeout_was_not_sent(mocked_responses, client):
    mocked_responses.post(f"{BASE}/v1/models/{MODEL}", body=requests.ConnectTimeout("nope"))
    with pytest.raises(TransportError) as info:
        client.submit(MODEL, {})
    assert info.value.maybe_sent is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_was_not_sent():
    client = Client(f"http://127.0.0.1:{_free_port()}", TOKEN, timeout=(2, 2))
    with pytest.raises(TransportError) as info:
        client.submit(MODEL, {"prompt": "x"})
    assert info.value.maybe_sent is False
    assert TOKEN not in str(info.value)


def test_dropped_connection_after_sending_may_have_been_sent():
    # a real server that reads the request and closes without answering
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Client(f"http://127.0.0.1:{port}", TOKEN, timeout=(2, 5))
    try:
        with pytest.raises(TransportError) as info:
            client.submit(MODEL, {"prompt": "x"})
    finally:
        thread.join(5)
        srv.close()
    assert info.value.maybe_sent is True


def test_token_never_in_repr_or_echoed_messages(mocked_responses, client):
    assert TOKEN not in repr(client)
    mocked_responses.get(
        f"{BASE}/v1/requests/{RID}/status",
        json={"error_code": 400004, "error_message": f"bad token {TOKEN}"},
        status=401,
    )
    with pytest.raises(AuthError) as info:
        client.status(RID)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize("model_id", ["acme/model/../../requests/RID/cancel", "acme/m?x", "a//b"])
def test_no_url_is_built_from_a_model_id_that_could_reach_another_endpoint(
    mocked_responses, client, model_id
):
    with pytest.raises(InvalidInputError, match="not sent"):
        client.submit(model_id, {"prompt": "x"})
    with pytest.raises(InvalidInputError, match="not sent"):
        client.model(model_id)
    assert len(mocked_responses.calls) == 0


@pytest.mark.parametrize("code", [None, 0, ""])
def test_a_200_with_a_request_id_and_a_null_error_code_is_accepted(mocked_responses, client, code):
    mocked_responses.post(f"{BASE}/v1/models/acme/m", json={"request_id": "r1", "error_code": code})
    assert client.submit("acme/m", {}) == "r1"


def test_a_200_with_a_request_id_and_an_error_code_keeps_the_request_id(mocked_responses, client):
    mocked_responses.post(
        f"{BASE}/v1/models/acme/m",
        json={"request_id": "r1", "error_code": 500001, "error_message": "odd"},
    )
    with pytest.raises(AcceptedWithError) as caught:
        client.submit("acme/m", {})
    assert caught.value.request_id == "r1" and caught.value.error_code == 500001

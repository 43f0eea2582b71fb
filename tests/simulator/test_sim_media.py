"""The simulator treats media inputs as the service does: data: URIs decoded at submit (bad
ones refused with 422), URL inputs fetched with a plain GET when the job runs (a URL it cannot
fetch fails the job, naming the field and the status), public hosts skipped unless asked."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Callable, Iterator

import pytest
from simhelpers import SimClient

from batchrun.simulator import Simulator
from testing.media import image_bytes

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana-2-lite/edit"


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class _Files(http.server.BaseHTTPRequestHandler):
    """/ok.png answers 200, /private.png 403; every request's headers are kept."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, **dict(self.headers)})
        status = 200 if self.path.startswith("/ok.png") else 403
        body = image_bytes((1, 2, 3)) if status == 200 else b"denied"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def files() -> Iterator[str]:
    _Files.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_data_uri_image_runs_and_counts_by_its_bytes(sim: Simulator, client: SimClient) -> None:
    png = image_bytes((7, 8, 9))
    rid = client.submit_ok(FLUX, {"prompt": "p", "image_url": data_uri(png)})
    assert client.wait_status(rid, "completed")["status"] == "completed"
    assert client.result(rid)["status"] == "succeeded"
    again = client.submit_ok(FLUX, {"prompt": "p", "image_url": data_uri(png)})
    assert rid != again
    per_identity = sim.app.snapshot()["submits_per_identity"]
    assert list(per_identity.values()) == [2]  # one input, however it was encoded
    (identity,) = per_identity
    assert "base64" not in identity and "sha256," in identity


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("data:image/png;base64,@@not-base64@@", "invalid base64"),
        ("data:image/png,raw-bytes", "must be base64"),
        (data_uri(bytes(6 * 1024 * 1024 + 1)), "over the 6 MiB limit"),
    ],
)
def test_bad_data_uris_are_refused_with_422(client: SimClient, value: str, words: str) -> None:
    r = client.submit(NANO, {"prompt": "p", "image_urls": ["https://x.example/a.png", value]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", "image_urls", 1]
    assert words in detail[0]["msg"]


def test_a_url_input_is_fetched_plainly_when_the_job_runs(
    make_sim: Callable[..., Simulator], files: str
) -> None:
    sim = make_sim(run_time=0.2)
    client = SimClient(sim)
    good = client.submit_ok(FLUX, {"prompt": "p", "image_url": f"{files}/ok.png?X-Amz-Sig=1"})
    bad = client.submit_ok(FLUX, {"prompt": "p", "image_url": f"{files}/private.png"})
    assert _Files.seen == []  # nothing fetched at submit
    client.wait_status(good, "completed")
    client.wait_status(bad, "completed")
    assert client.result(good)["status"] == "succeeded"
    failed = client.result(bad)
    assert failed["status"] == "failed"
    assert "input image_url could not be fetched: HTTP 403" in str(failed["error"])
    assert {s["path"] for s in _Files.seen} == {"/ok.png?X-Amz-Sig=1", "/private.png"}
    for headers in _Files.seen:  # no token, no cookie
        assert "Authorization" not in headers and "Cookie" not in headers
    assert "cost" not in failed or not failed["cost"]


def test_public_hosts_are_skipped_by_default_and_off_fetches_nothing(
    make_sim: Callable[..., Simulator],
) -> None:
    public = "http://203.0.113.9:9/in.png"  # TEST-NET-3: would never answer
    closed = "http://127.0.0.1:9/in.png"  # a port nothing listens on: refused at once
    default = SimClient(make_sim())
    skipped = default.submit_ok(FLUX, {"prompt": "p", "image_url": public})
    refused = default.submit_ok(FLUX, {"prompt": "p", "image_url": closed})
    default.wait_status(skipped, "completed")
    default.wait_status(refused, "completed")
    assert default.result(skipped)["status"] == "succeeded"
    error = str(default.result(refused)["error"])
    assert "input image_url could not be fetched: no answer" in error
    off = SimClient(make_sim(fetch_inputs="off"))
    rid = off.submit_ok(FLUX, {"prompt": "p", "image_url": closed})
    off.wait_status(rid, "completed")
    assert off.result(rid)["status"] == "succeeded"

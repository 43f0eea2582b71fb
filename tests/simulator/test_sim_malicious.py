"""Malicious mode: hostile URLs, oversized and truncated files, malformed result bodies."""

from __future__ import annotations

import json

import pytest
import requests
from simhelpers import SimClient

from batchrun.simulator.malicious import VARIANTS


@pytest.fixture
def hostile(make_sim) -> tuple[SimClient, dict[str, str]]:
    """A malicious simulator and one finished request id per variant (submit order = variant)."""
    client = SimClient(make_sim(malicious=True, run_time=0, workers=0, huge_file_bytes=300_000))
    rids = {name: client.submit_ok(inputs={"prompt": name}) for name in VARIANTS}
    for rid in rids.values():
        client.wait_status(rid, "completed")
    return client, rids


def _output_url(client: SimClient, rid: str) -> str:
    r = client.get(f"/v1/requests/{rid}/result")
    output = r.json()["output"]
    assert isinstance(output, list) and len(output) == 1
    return str(output[0])


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("dotdot", "/../../../escape.png"),
        ("pct_dotdot", "/%2e%2e%2f%2e%2e%2fescape.png"),
        ("backslash", "/..\\..\\escape.png"),
        ("absolute", "/%2Fetc%2Fpasswd"),
    ],
)
def test_traversal_urls_are_handed_out_and_served(hostile, variant: str, expected: str) -> None:
    client, rids = hostile
    url = _output_url(client, rids[variant])
    assert url == f"{client.base}/files/{rids[variant]}{expected}"
    r = requests.get(url, timeout=5)  # whatever requests does to the path, bytes come back
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "variant, url",
    [
        ("bare_path", "/etc/passwd"),
        ("file_scheme", "file:///etc/passwd"),
        ("ftp_scheme", "ftp://127.0.0.1/escape.png"),
        ("evil_host", "http://evil.example.com/x.png"),
    ],
)
def test_foreign_urls(hostile, variant: str, url: str) -> None:
    client, rids = hostile
    assert _output_url(client, rids[variant]) == url
    r = client.get(f"/v1/requests/{rids[variant]}/result")
    assert r.headers["X-Sim-Malicious"] == variant


def test_huge_file_is_served_at_its_full_announced_size(hostile) -> None:
    client, rids = hostile
    r = requests.get(_output_url(client, rids["huge"]), stream=True, timeout=5)
    assert int(r.headers["Content-Length"]) == 300_000
    assert sum(len(c) for c in r.iter_content(65536)) == 300_000


def test_huge_file_client_may_hang_up_early(hostile) -> None:
    client, rids = hostile
    r = requests.get(_output_url(client, rids["huge"]), stream=True, timeout=5)
    assert len(next(r.iter_content(1024))) == 1024
    r.close()
    assert client.get("/_sim/stats").status_code == 200  # the server is still fine


def test_truncated_file_announces_more_than_it_sends(hostile) -> None:
    client, rids = hostile
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(_output_url(client, rids["truncated"]), timeout=5)


def test_malformed_json_result(hostile) -> None:
    client, rids = hostile
    r = client.get(f"/v1/requests/{rids['malformed_json']}/result")
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    assert client.status(rids["malformed_json"])["status"] == "completed"


def test_error_code_inside_http_200(hostile) -> None:
    client, rids = hostile
    r = client.get(f"/v1/requests/{rids['error_200']}/result")
    assert r.status_code == 200
    assert r.json()["error_code"] == 500001 and "output" not in r.json()


def test_variants_follow_submit_order_and_are_counted(hostile) -> None:
    client, _ = hostile
    faults = client.sim.stats()["faults"]
    assert {k: v for k, v in faults.items() if k.startswith("malicious_")} == {
        f"malicious_{v}": 1 for v in VARIANTS
    }

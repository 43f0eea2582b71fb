"""Proxy and CA settings are read from the environment once, and still honoured."""

from __future__ import annotations

import pytest

from batchrun.api import proxies as netenv
from batchrun.api.client import Client
from batchrun.fetch.download import Downloader


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/my-ca.pem")


def test_client_takes_the_environment_once(proxy_env: None) -> None:
    client = Client("https://api.example", "t")
    assert client._session.trust_env is False  # no per-call scan, no ~/.netrc
    assert client._send_settings["proxies"]["https"] == "http://proxy.example:3128"
    assert client._send_settings["verify"] == "/etc/my-ca.pem"
    assert Client("https://direct.example", "t")._send_settings["proxies"] == {}


def test_downloader_honours_no_proxy_per_host(proxy_env: None) -> None:
    dl = Downloader(allow_hosts=["*"])
    assert dl.session.trust_env is False
    via = dl._send_settings("https://cdn.example/a.png")
    assert via["proxies"]["https"] == "http://proxy.example:3128"
    assert via["verify"] == "/etc/my-ca.pem" and via["stream"] is True
    assert "https" not in dl._send_settings("https://direct.example/a.png")["proxies"]


def test_str_headers_decodes_bytes_values_to_the_same_wire_bytes():
    headers = netenv.str_headers({"X-Str": "café", "X-Bytes": "café".encode("latin-1")})
    assert headers["x-bytes"] == headers["X-STR"] == "café"
    assert headers["X-Bytes"].encode("latin-1") == b"caf\xe9"  # what http.client sends

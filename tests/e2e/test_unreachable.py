"""A base URL nothing answers on is an unreachable API, not failed jobs: one line, exit 3,
every job still pending, and the same command resumes once the API is back."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import urllib3

from batchrun.api import answers as api_answers
from batchrun.api.client import Client
from batchrun.api.connection import unreachable_cause
from batchrun.cli import main
from batchrun.errors import TransportError
from batchrun.simulator import SimSettings, Simulator
from batchrun.store.state import StateStore

TOKEN = "tok-unreachable-5e1"
T2I = "google/nano-banana-2-lite/text-to-image"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_manifest(tmp_path: Path, jobs: int = 3) -> Path:
    data = {
        "version": 1,
        "name": "dead",
        "run": {"rate_limit": "50/s", "poll_interval": "50ms"},
        "models": [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(jobs)]}}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def test_a_dead_base_exits_3_with_one_line_and_resumes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(api_answers, "UNREACHABLE_MIN_S", 0.3)
    monkeypatch.setattr(api_answers, "UNREACHABLE_TRIES", 3)
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    port = closed_port()
    base = f"http://127.0.0.1:{port}"
    args = ["run", str(write_manifest(tmp_path)), "--run-dir", str(tmp_path / "r"), "-q"]
    assert main([*args, "--api-base", base]) == 3
    assert capsys.readouterr().err == (
        f"error: cannot reach the API at {base}: connection refused\n"
    )
    with StateStore.open(tmp_path / "r", create=False, lock=False) as store:
        assert [r.status for r in store.rows()] == ["pending"] * 3
    report = (tmp_path / "r/report.csv").read_text()
    assert "failed" not in report and "unknown" not in report
    sim = Simulator(SimSettings.from_mapping({"token": TOKEN, "run_time": 0.05}), port=port)
    sim.start()
    try:
        assert main([*args, "--api-base", base]) == 0
    finally:
        sim.stop()


@pytest.mark.slow
def test_the_default_retry_is_short_and_bounded(tmp_path) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    env = {"RUNCOMFY_TOKEN": TOKEN, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", str(write_manifest(tmp_path)), "-q"]
        + ["--run-dir", str(tmp_path / "r"), "--api-base", base],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    took = time.monotonic() - started
    assert proc.returncode == 3
    assert proc.stderr == f"error: cannot reach the API at {base}: connection refused\n"
    assert 7 <= took <= 20


def test_a_tls_handshake_with_a_plain_http_server_is_unreachable_and_never_sent() -> None:
    sim = Simulator(SimSettings.from_mapping({"token": TOKEN})).start()
    try:
        client = Client(sim.base_url.replace("http://", "https://"), TOKEN)
        with pytest.raises(TransportError) as info:
            client.submit(T2I, {"prompt": "x"})
        assert requests.get(f"{sim.base_url}/_sim/stats", timeout=5).json()["submits"] == 0
    finally:
        sim.stop()
    assert info.value.maybe_sent is False
    assert info.value.unreachable == "TLS handshake failed (is it an http:// server?)"


def _wrapped(reason: Exception) -> requests.ConnectionError:
    # No pool: the error is raised here by hand, not by urllib3.
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v1", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (
            _wrapped(urllib3.exceptions.NameResolutionError("h", None, OSError("no"))),  # type: ignore[arg-type]
            "host name not found (DNS)",
        ),
        (
            _wrapped(
                urllib3.exceptions.NewConnectionError(
                    None,  # type: ignore[arg-type]
                    "Failed to establish a new connection: [Errno 101] Network is unreachable",
                )
            ),
            "network is unreachable",
        ),
        (requests.ConnectTimeout("connect timed out"), "connection timed out"),
        (requests.ReadTimeout("read timed out"), ""),
        (_wrapped(urllib3.exceptions.ProtocolError("Connection aborted.")), ""),
        (
            requests.exceptions.SSLError(
                "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
            ),
            "TLS certificate verify failed",
        ),
    ],
)
def test_unreachable_causes(exc: requests.RequestException, cause: str) -> None:
    assert unreachable_cause(exc) == cause

"""Secrets: the token never reaches a file of the run folder, captured output, or the str/repr of
the client and of any exception it raises, even when a server echoes the token back."""

from __future__ import annotations

import inspect
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batchrun import errors
from batchrun.api.client import Client
from batchrun.errors import ApiError, BatchrunError
from testing.cli import batchrun_cmd

from .conftest import (
    IMAGE_URL,
    MODEL,
    TOKEN,
    SimFactory,
    clean_env,
    read_report,
    run_cli,
    state_rows,
    sweep,
    wait_until,
    write_manifest,
)

INPUTS = {"prompt": "hi", "image_url": IMAGE_URL, "seed": 1}


def leaks(exc: BaseException) -> list[str]:
    """The renderings of `exc` that contain the token."""
    views = {"str": str(exc), "repr": repr(exc), "args": repr(exc.args)}
    if isinstance(exc, ApiError):
        views["message"] = exc.message
        views["detail"] = repr(exc.detail)
    return [name for name, text in views.items() if TOKEN in text]


# ---- a hostile server that echoes the Authorization header into every part of its answers ----


def _echo_answer(kind: str, auth: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for each kind of answer the client maps to an exception."""
    echo = f"you sent {auth!r} ({TOKEN})"

    def js(status: int, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()

    html = f"<html><head><title>{echo}</title></head><body>{echo}</body></html>".encode()
    return {
        "401": js(401, {"error_code": 400004, "error_message": echo}),
        "403": js(403, {"error_code": 403001, "message": echo}),
        "402": js(402, {"error_code": 400002, "error": {"message": echo}}),
        "balance200": js(200, {"error_code": 400002, "error_message": echo}),
        "429": js(429, {"error_code": 429, "error_message": echo}, **{"Retry-After": TOKEN}),
        "404": js(404, {"error_code": 404001, "error_message": echo}),
        "422": js(
            422,
            {
                "error_code": 422,
                "error_message": echo,
                "detail": [{"loc": ["body", TOKEN], "msg": echo, "type": "x"}],
            },
        ),
        "400": js(400, {"error_code": 400001, "detail": echo}),
        "500html": (500, {"Content-Type": "text/html"}, html),
        "502text": (502, {"Content-Type": "text/plain"}, echo.encode()),
        "500json": js(500, {"error_code": 500001, "error_message": echo}),
        "418": js(418, {"error_message": echo}),
        "notjson": (200, {"Content-Type": "text/plain"}, echo.encode()),
        "list": js(200, [echo]),  # type: ignore[arg-type]
        "redirect": (302, {"Location": f"http://127.0.0.1:1/{TOKEN}"}, echo.encode()),
        "noid": js(200, {"status_url": echo}),
        "accepted": js(200, {"request_id": "r1", "error_code": 500001, "error_message": echo}),
    }[kind]


class _EchoHandler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        # The kind is the first path segment after /v1/requests/ or the model id.
        kind = self.path.split("/")[3].split("?")[0]
        if kind == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        status, headers, body = _echo_answer(kind, self.headers.get("Authorization", ""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


ECHO_KINDS = {
    "401": errors.AuthError,
    "403": errors.AuthError,
    "402": errors.InsufficientBalanceError,
    "balance200": errors.InsufficientBalanceError,
    "429": errors.RateLimitedError,
    "404": errors.NotFoundError,
    "422": errors.InvalidInputError,
    "400": errors.InvalidInputError,
    "500html": errors.ServerError,
    "502text": errors.ServerError,
    "500json": errors.ServerError,
    "418": errors.ApiError,
    "notjson": errors.TransportError,
    "list": errors.TransportError,
    "redirect": errors.TransportError,
    "drop": errors.TransportError,
}


def _api_error_classes() -> set[type]:
    return {
        cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, ApiError)
    }


# Errors only a submit raises: kind -> class.
SUBMIT_ECHO_KINDS = {"accepted": errors.AcceptedWithError}


def test_echo_kinds_cover_every_api_error_class() -> None:
    assert _api_error_classes() <= set(ECHO_KINDS.values()) | set(SUBMIT_ECHO_KINDS.values())


@pytest.mark.parametrize("kind", sorted(SUBMIT_ECHO_KINDS))
def test_submit_errors_never_show_the_token_even_when_echoed(echo_server: str, kind: str) -> None:
    client = Client(f"{echo_server}/v1/requests/{kind}/x", TOKEN, timeout=(2, 5))
    with pytest.raises(ApiError) as info:
        client.submit(MODEL, INPUTS)
    assert type(info.value) is SUBMIT_ECHO_KINDS[kind]
    assert leaks(info.value) == [], repr(info.value)


ECHO_PARAMS = sorted(ECHO_KINDS)


@pytest.mark.parametrize("kind", ECHO_PARAMS)
def test_client_errors_never_show_the_token_even_when_echoed(echo_server: str, kind: str) -> None:
    client = Client(echo_server, TOKEN, timeout=(2, 5))
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    with pytest.raises(ApiError) as info:
        client.status(kind)
    exc = info.value
    assert type(exc) is ECHO_KINDS[kind], f"{kind}: got {type(exc).__name__}: {exc}"
    assert leaks(exc) == [], f"{kind}: the token leaks through {leaks(exc)}: {exc!r}"
    # The same for a submit (the path the run engine uses most).
    with pytest.raises(ApiError) as info2:
        Client(f"{echo_server}/v1/requests/{kind}/x", TOKEN, timeout=(2, 5)).submit(MODEL, INPUTS)
    assert leaks(info2.value) == [], repr(info2.value)


def test_submit_without_request_id_and_refused_connection_hide_the_token(
    echo_server: str,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{closed_port}", TOKEN, timeout=(2, 5))
    with pytest.raises(errors.TransportError) as refused:
        client.status("abc")
    assert refused.value.maybe_sent is False
    assert leaks(refused.value) == []
    # A 200 submit answer with no request id.
    with pytest.raises(errors.TransportError) as noid:
        Client(f"{echo_server}/v1/requests/noid", TOKEN, timeout=(2, 5)).submit(MODEL, INPUTS)
    assert noid.value.maybe_sent is True
    assert leaks(noid.value) == []


def test_every_error_class_constructed_like_the_client_does_hides_the_token() -> None:
    """Every class in batchrun.errors, built with the client's keyword arguments."""
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BatchrunError)
    ]
    assert len(classes) >= 15
    for cls in classes:
        if issubclass(cls, ApiError):
            kw: dict[str, Any] = {"endpoint": "GET /v1/requests/abc/status", "status": 500}
            kw.update({"error_code": 500001, "detail": [{"loc": ["x"], "msg": "bad"}]})
            if cls is errors.RateLimitedError:
                kw["retry_after"] = 2.0
            if cls is errors.TransportError:
                kw["maybe_sent"] = True
            exc: BaseException = cls("server said no", **kw)
        elif cls is errors.ManifestError:
            exc = cls(["a.yaml: $.run: bad", "a.yaml: $.models: bad"])
        else:
            exc = cls("something went wrong")
        assert leaks(exc) == [], f"{cls.__name__}: {exc!r}"


# ---- the in-process simulator: exceptions as actually raised against a faithful server ----


def _sim(**settings: Any) -> Any:
    from batchrun.simulator import SimSettings, Simulator

    return Simulator(SimSettings(token=TOKEN, **settings)).start()


def test_errors_raised_against_the_simulator_hide_the_token() -> None:
    seen: dict[str, str] = {}

    def expect(cls: type[BaseException], fn: Any) -> None:
        with pytest.raises(cls) as info:
            fn()
        assert leaks(info.value) == [], repr(info.value)
        seen[cls.__name__] = repr(info.value)

    sim = _sim(run_time=0.05)
    try:
        good = Client(sim.base_url, TOKEN, timeout=(2, 10))
        assert TOKEN not in repr(good)
        expect(errors.AuthError, lambda: Client(sim.base_url, "wrong-" + TOKEN).status("x"))
        expect(errors.NotFoundError, lambda: good.status("no-such-request"))
        expect(errors.InvalidInputError, lambda: good.submit(MODEL, {"prompt": 3}))
        expect(errors.InvalidInputError, lambda: good.submit("no/such/model", {}))
    finally:
        sim.stop()
    for settings, cls in (
        ({"error_rate": 1.0}, errors.ServerError),
        ({"drop_rate": 1.0}, errors.TransportError),
    ):
        sim = _sim(**settings)
        try:
            client = Client(sim.base_url, TOKEN, timeout=(2, 10))
            expect(cls, lambda c=client: c.submit(MODEL, INPUTS))
            expect(cls, lambda c=client: c.status("abc"))
        finally:
            sim.stop()
    sim = _sim(rate_limit=0.01)
    try:
        client = Client(sim.base_url, TOKEN, timeout=(2, 10))
        with pytest.raises(ApiError):  # the first call spends the one-call burst
            client.status("abc")
        expect(errors.RateLimitedError, lambda: client.status("abc"))
    finally:
        sim.stop()
    print(f"exceptions raised against the simulator, token absent: {sorted(seen)}")


# ---- whole runs through every error path: the run folders and the output stay clean ----


def _grep_tree(root: Path) -> list[str]:
    """Files under root whose bytes contain the token (state.db, its WAL and -shm included)."""
    needle = TOKEN.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_token_absent_from_run_folders_and_output_after_every_error_path(
    simulator: SimFactory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    outputs: list[str] = []
    codes: dict[str, int] = {}

    def run(label: str, sim: Any, n: int, expect: tuple[int, ...], **run_opts: Any) -> None:
        manifest = write_manifest(tmp_path / f"{label}.yaml", sweep(n, run=run_opts))
        res = run_cli(
            "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(runs / label),
            timeout=180,
        )  # fmt: skip
        outputs.append(res.stdout + res.stderr)
        codes[label] = res.returncode
        assert res.returncode in expect, f"{label}: exit {res.returncode}: {res.stderr[-2000:]}"
        assert "Traceback" not in res.stdout + res.stderr, res.stderr[-2000:]

    # 401: the simulator expects another token.
    wrong = simulator("--seed", "1", token="a-different-token")
    run("unauthorized", wrong, 3, (3,))
    # 5xx, dropped connections, failed jobs, 429s and slow answers in one run.
    faulty = simulator(
        "--seed", "9", "--workers", "0", "--run-time", "0.1", "--error-rate", "0.2",
        "--drop-rate", "0.1", "--fail-rate", "0.5", "--rate-limit", "30/s", "--slow", "0.01",
    )  # fmt: skip
    # fail-rate 0.5 with one retry: a job fails for good with p 0.25, so some of 30 do
    # (p of none 0.75^30 < 2e-4; at 0.3 it was 0.91^30, about 6%)
    run("faults", faulty, 30, (1,), rate_limit="60/s", retries=1)
    # Hostile outputs.
    hostile = simulator("--malicious", "--seed", "3", "--workers", "0", "--run-time", "0.05")
    run("hostile", hostile, 12, (0, 1), job_timeout="4s")
    # Ctrl-C in the middle: the resume hint must not carry the token either.
    slow = simulator("--seed", "4", "--workers", "1", "--run-time", "0.5")
    manifest = write_manifest(tmp_path / "interrupted.yaml", sweep(20))
    proc = subprocess.Popen(
        batchrun_cmd(
            "run", str(manifest), "--api-base", slow.base_url,
            "--run-dir", str(runs / "interrupted"),
        ),
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert wait_until(
        lambda: (
            any(r.get("request_id") for r in state_rows(runs / "interrupted"))
            or proc.poll() is not None
        ),
        60,
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    outputs.append(out + err)
    codes["interrupted"] = proc.returncode
    assert proc.returncode == 130, err[-2000:]
    # Missing token: a configuration error, and nothing about a token in the message.
    res = run_cli("run", str(manifest), "--api-base", slow.base_url, "--run-dir",
                  str(runs / "notoken"), token=None)  # fmt: skip
    outputs.append(res.stdout + res.stderr)
    codes["no-token"] = res.returncode
    assert res.returncode == 3, res.stderr
    assert "RUNCOMFY_TOKEN" in res.stderr

    # status and report read the folders back: their output stays clean too.
    for folder in sorted(p for p in runs.iterdir() if (p / "state.db").exists()):
        for args in (("status", str(folder), "--json"), ("status", str(folder))):
            res = run_cli(*args)
            assert res.returncode == 0, res.stderr
            outputs.append(res.stdout + res.stderr)
        res = run_cli("report", str(folder))
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout + res.stderr)

    leaked_files = _grep_tree(runs)
    leaked_outputs = [i for i, text in enumerate(outputs) if TOKEN in text]
    n_files = sum(1 for p in runs.rglob("*") if p.is_file())
    print(
        f"\nsecrets: runs {codes}, files scanned {n_files}, outputs scanned {len(outputs)}, "
        f"files with the token {len(leaked_files)}, outputs with the token {len(leaked_outputs)}"
    )
    assert leaked_files == []
    assert leaked_outputs == []
    assert (runs / "faults" / "state.db").exists()
    report = read_report(runs / "faults")
    assert any(r["status"] == "failed" for r in report)


# ---- downloads never carry credentials ----


class _HeaderRecorder(BaseHTTPRequestHandler):
    headers_seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).headers_seen.append(dict(self.headers.items()))
        body = b"\x89PNG fake"
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_downloads_send_no_authorization_even_with_a_netrc(tmp_path: Path) -> None:
    """No bearer token and no ~/.netrc credentials ride along to an output host."""
    import os

    import requests

    from batchrun.fetch.download import Downloader

    netrc = Path(os.environ["HOME"]) / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login someone password {TOKEN}\n")
    netrc.chmod(0o600)
    _HeaderRecorder.headers_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeaderRecorder)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/files/x/image.png"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"  # as if shared by mistake
        dl = Downloader(allow_hosts=["127.0.0.1"], session=session, sleep=lambda s: None)
        [got] = dl.fetch(tmp_path / "run", "00112233aabb", [url])
    finally:
        server.shutdown()
        server.server_close()
    assert not got.error, got
    assert len(_HeaderRecorder.headers_seen) == 1
    sent = _HeaderRecorder.headers_seen[0]
    assert "Authorization" not in sent and "authorization" not in {k.lower() for k in sent}
    assert TOKEN not in repr(sent)

"""Servers that would hold a run: bodies trickled a byte at a time, gzip bombs, Retry-After
far in the future, numbers that only look like numbers; and the signals that must end a run
promptly (SIGTERM, SIGHUP, SIGINT) even while such an answer is being read."""

from __future__ import annotations

import gzip
import resource
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from batchrun.api import proxies as netenv
from batchrun.api.client import INTERRUPT_GRACE_S, Client, parse_retry_after
from batchrun.errors import TransportError
from batchrun.fetch.download import Downloader

from .conftest import TOKEN, batchrun_cmd, clean_env, read_report, state_rows, wait_until
from .hostile_api import Call, HostileApi, Reply, manifest_for

MODEL = "blackforestlabs/flux-1-kontext/pro/edit"
TRICKLE = 0.2  # seconds per byte


def _trickled(kind: str) -> HostileApi:
    body = b'{"request_id": "r1", "status": "in_progress", "padding": "' + b"x" * 200 + b'"}'

    def answer(call: Call) -> Reply | None:
        if call.kind == kind:
            return Reply(body=body, trickle_s=TRICKLE)
        return None

    return HostileApi(answer)


@pytest.mark.parametrize("kind", ["submit", "result", "cancel"])
def test_a_trickled_api_answer_ends_at_the_deadline(kind: str) -> None:
    with _trickled(kind) as api:
        client = Client(api.base_url, TOKEN, deadline=1.5)
        call = {
            "submit": lambda: client.submit(MODEL, {"prompt": "x"}),
            "result": lambda: client.result("r1"),
            "cancel": lambda: client.cancel("r1"),
        }[kind]
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            call()
        took = time.monotonic() - started
    assert took < 1.5 + 1.0, took
    assert info.value.maybe_sent  # a submit cut off so is ambiguous, never resent blindly
    assert "not in 1.5s" in str(info.value)


def test_a_trickled_file_ends_at_the_deadline(tmp_path: Path) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "file":
            return Reply(body=b"x" * 100, trickle_s=TRICKLE)
        return None

    with HostileApi(answer) as api:
        dl = Downloader(allow_hosts=["127.0.0.1"], retries=0, deadline=1.5, sleep=lambda s: None)
        started = time.monotonic()
        [got] = dl.fetch(tmp_path, "00112233aabb", [api.file_url("a.png")])
        took = time.monotonic() - started
    assert took < 1.5 + 1.0, took
    assert "not complete within" in got.error and not got.name
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def _bomb(encoding: str) -> bytes:
    data = b"0" * (200 * 1024 * 1024)
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=9)
    return zlib.compress(data, 9)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("kind", ["result", "submit"])
def test_a_compressed_answer_is_capped_once_decoded(encoding: str, kind: str) -> None:
    packed = _bomb(encoding)

    def answer(call: Call) -> Reply | None:
        if call.kind == kind:
            return Reply(body=packed, headers={"Content-Encoding": encoding})
        return None

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with HostileApi(answer) as api:
        client = Client(api.base_url, TOKEN)
        with pytest.raises(TransportError) as info:
            if kind == "result":
                client.result("r1")
            else:
                client.submit(MODEL, {"prompt": "x"})
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "larger than 8 MB" in str(info.value)
    assert grown_mb < 100, f"peak RSS grew {grown_mb:.0f} MB reading a {len(packed)}-byte answer"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0.5", 0.5),
        ("86400", 300.0),  # a day: capped
        ("99999999999999", 300.0),
        ("Fri, 31 Dec 2099 23:59:59 GMT", 300.0),  # a date far ahead: capped
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("1e9", None),
        ("-5", None),
        ("²", None),  # passes str.isdigit()
        ("٣", None),  # an Arabic-Indic three
        ("5 5", None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300.0),
        ("Mon, 32 Foo 20 99:99:99 GMT", None),
    ],
)
def test_retry_after_is_parsed_strictly_and_capped(header: str, expected: float | None) -> None:
    assert parse_retry_after(header, now=1_700_000_000.0) == expected


@pytest.mark.parametrize("header", ["Content-Length", "Retry-After"])
@pytest.mark.parametrize("value", ["²", "³¹", "1e3", "-1", "inf"])
def test_odd_numbers_in_file_headers_cost_one_file_not_the_job(
    tmp_path: Path, header: str, value: str
) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "file" and "odd" in call.path:
            status = 503 if header == "Retry-After" else 200
            # headers travel as latin-1: '²' is the byte 0xB2, and reads back as '²'
            return Reply(status, b"body", headers={header: value})
        return None

    with HostileApi(answer) as api:
        dl = Downloader(allow_hosts=["127.0.0.1"], retries=1, sleep=lambda s: None)
        urls = [api.file_url("good1.png"), api.file_url("odd.png"), api.file_url("good2.png")]
        got = dl.fetch(tmp_path, "00112233aabb", urls)
    assert len(got) == 3
    assert got[0].name and got[2].name and not got[0].error and not got[2].error
    if header == "Retry-After":
        assert "HTTP 503" in got[1].error


# ---- signals: a run reading a trickled answer ends promptly ------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_ends_a_run_promptly_while_an_answer_trickles(tmp_path: Path, sig: int) -> None:
    def answer(call: Call) -> Reply | None:
        if call.kind == "result":
            body = b'{"status": "in_progress", "pad": "' + b"x" * 10_000 + b'"}'
            return Reply(body=body, trickle_s=0.05)
        return None

    manifest = manifest_for(tmp_path, 3)
    run_dir = tmp_path / "run"
    with HostileApi(answer) as api:
        proc = subprocess.Popen(
            batchrun_cmd(
                "run", str(manifest), "--api-base", api.base_url, "--run-dir", str(run_dir)
            ),
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(lambda: api.calls["result"] >= 3, timeout=30)
            time.sleep(0.5)  # the reads are under way (the server trickles them)
            sent = time.monotonic()
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=20)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert took < 5.0, f"took {took:.1f}s to stop"
    assert "Traceback" not in err
    assert len(read_report(run_dir)) == 3  # report written
    assert all(r["request_id"] for r in state_rows(run_dir))  # every request id kept


# ---- a signal while an answer arrives: a short one is read, a trickle is not waited for ---


@pytest.fixture
def signal_with_the_answer():
    """The answer function calls netenv.interrupt(): the signal lands as the answer starts."""
    yield lambda: netenv.interrupt()
    netenv.interrupt(False)


# The kept answer arrives in 240 pieces over about 0.12 s: well inside the 1 s grace even when
# a loaded machine makes each pause several times longer (at 2 ms a piece it once took > 1 s).
@pytest.mark.parametrize(("trickle_s", "kept"), [(0.0005, True), (0.05, False)])
def test_a_signal_lets_an_arriving_submit_answer_finish_but_not_a_trickle(
    signal_with_the_answer, trickle_s: float, kept: bool
) -> None:
    body = b'{"request_id": "r1", "status": "in_queue", "pad": "' + b"x" * 200 + b'"}'

    def answer(call: Call) -> Reply | None:
        signal_with_the_answer()
        return Reply(body=body, trickle_s=trickle_s)

    with HostileApi(answer) as api:
        client = Client(api.base_url, TOKEN)
        started = time.monotonic()
        if kept:  # ~0.12 s of body: read to its end, the request id is kept
            assert client.submit(MODEL, {"prompt": "x"}) == "r1"
        else:  # ~12 s of body: cut off after the grace, left ambiguous
            with pytest.raises(TransportError, match="interrupted") as info:
                client.submit(MODEL, {"prompt": "x"})
            assert info.value.maybe_sent
        took = time.monotonic() - started
    assert took < INTERRUPT_GRACE_S + 1.0, took

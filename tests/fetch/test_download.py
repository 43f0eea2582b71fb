"""Downloader: URL collection, host and name safety, streaming, retries, resume."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses

from batchrun.fetch import download
from batchrun.fetch.download import Downloader
from batchrun.fetch.jobfiles import INTERRUPTED
from batchrun.store.output_urls import (
    Names,
    collect_urls,
    default_allow_hosts,
    host_allowed,
    output_keys,
    refusal,
    url_name,
)
from batchrun.store.records import OutputFile

JOB = "0123abcdef"
HOSTS = default_allow_hosts("https://model-api.runcomfy.net")
CDN = "https://cdn.runcomfy.net"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def dl(sleeps: list[float]) -> Downloader:
    return Downloader(allow_hosts=HOSTS, sleep=sleeps.append, max_file_bytes=1000)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- collecting URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("https://a.runcomfy.net/x.png", ["https://a.runcomfy.net/x.png"]),
        ({"image": "https://h/1", "video": "https://h/2"}, ["https://h/1", "https://h/2"]),
        (["https://h/1", "https://h/2"], ["https://h/1", "https://h/2"]),
        (
            {"images": ["https://h/1", {"deep": ["https://h/2"]}], "n": 3, "ok": True},
            ["https://h/1", "https://h/2"],
        ),
        (["https://h/2", "https://h/1", "https://h/2"], ["https://h/2", "https://h/1"]),
        (
            {"a": "https://h/1", "status_url": "https://h/s", "result_url": "https://h/r"},
            ["https://h/1"],
        ),
        ({"cancel_url": "https://h/c", "b": ["file:///etc/passwd"]}, ["file:///etc/passwd"]),
        (
            ["/etc/passwd", "\\\\server\\share", "plain text", ""],
            ["/etc/passwd", "\\\\server\\share"],
        ),
        (None, []),
    ],
)
def test_collect_urls(output: object, expected: list[str]) -> None:
    assert collect_urls(output) == expected


def test_output_keys_name_the_first_key_seen() -> None:
    keys = output_keys(
        {"image": ["https://h/1"], "video": {"mp4": "https://h/2"}, "again": "https://h/1"}
    )
    assert keys == {"https://h/1": "image", "https://h/2": "mp4"}


# --- hosts and refusals ------------------------------------------------------------------


def test_default_allow_hosts_adds_the_api_host() -> None:
    assert default_allow_hosts("http://127.0.0.1:8123/") == [
        "*.runcomfy.net",
        "*.runcomfy.com",
        "127.0.0.1",
    ]
    assert default_allow_hosts("https://model-api.runcomfy.net") == [
        "*.runcomfy.net",
        "*.runcomfy.com",
        "model-api.runcomfy.net",
    ]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("cdn.runcomfy.net", True),
        ("a.b.RUNCOMFY.NET", True),
        ("cdn.runcomfy.net.", True),
        ("runcomfy.net", False),  # "*.x" is sub-domains only
        ("runcomfy.net.evil.com", False),
        ("evilruncomfy.net", False),
        ("evilrunconfy.net", False),
        ("model-api.runcomfy.net", True),
        ("127.0.0.1", False),
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, HOSTS) is allowed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "refused: scheme 'file' not allowed (only http and https)"),
        ("ftp://cdn.runcomfy.net/x", "refused: scheme 'ftp' not allowed (only http and https)"),
        ("javascript:alert(1)", "refused: scheme 'javascript' not allowed (only http and https)"),
        ("/etc/passwd", "refused: not an absolute http(s) URL"),
        ("\\\\server\\share\\x.png", "refused: not an absolute http(s) URL"),
        ("https://[::1/x", "refused: not a valid URL"),
        ("https://cdn.runcomfy.net:99999/x", "refused: not a valid URL"),
        ("https:///x.png", "refused: URL has no host"),
        ("https://u:p@cdn.runcomfy.net/x", "refused: URL carries credentials"),
        (
            "https://runcomfy.net.evil.com/x.png",
            "refused: host runcomfy.net.evil.com not allowed"
            " (add it to outputs.allow_hosts to trust it)",
        ),
        (
            "https://evilrunconfy.net/x.png",
            "refused: host evilrunconfy.net not allowed"
            " (add it to outputs.allow_hosts to trust it)",
        ),
        ("https://cdn.runcomfy.net/x.png", ""),
        ("HTTP://CDN.RUNCOMFY.COM/x.png", ""),
    ],
)
def test_refusal(url: str, why: str) -> None:
    assert refusal(url, HOSTS) == why


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://h/a/b/image.png?sig=1#frag", "image.png"),
        ("https://h/a/..", ""),
        ("https://h/%2e%2e", ""),
        ("https://h/a%2F..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("https://h/x%5c..%5cevil.png", "evil.png"),
        ("https://h/..%5c..%5cwin.ini", "win.ini"),
        ("https://h/my%20cat%20%C3%A9.png", "my_cat_.png"),
        ("https://h/.bashrc", "bashrc"),
        ("https://h/...", ""),
        ("https://h/", ""),
        ("https://h/" + "a" * 300 + ".png", "a" * 96 + ".png"),
    ],
)
def test_url_name(url: str, name: str) -> None:
    assert url_name(url) == name


# --- fetching with `responses` -----------------------------------------------------------


def test_fetch_happy_path(tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{CDN}/a/image.png", body=b"png-bytes", content_type="image/png")
    mocked.get(f"{CDN}/b/clip.mp4", body=b"mp4", content_type="video/mp4")
    result = dl.fetch(tmp_path, JOB, [f"{CDN}/a/image.png", f"{CDN}/b/clip.mp4"])
    assert result == [
        OutputFile(
            url=f"{CDN}/a/image.png",
            name=f"files/{JOB}/image.png",
            sha256=hashlib.sha256(b"png-bytes").hexdigest(),
            size=9,
        ),
        OutputFile(
            url=f"{CDN}/b/clip.mp4",
            name=f"files/{JOB}/clip.mp4",
            sha256=hashlib.sha256(b"mp4").hexdigest(),
            size=3,
        ),
    ]
    assert (tmp_path / result[0].name).read_bytes() == b"png-bytes"
    assert files_under(tmp_path) == [f"files/{JOB}/clip.mp4", f"files/{JOB}/image.png"]


def test_same_last_segment_gets_unique_names(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    for n in (1, 2, 3):
        mocked.get(f"{CDN}/{n}/out.png", body=f"img{n}".encode())
    urls = [f"{CDN}/{n}/out.png" for n in (1, 2, 3)]
    names = [f.name for f in dl.fetch(tmp_path, JOB, urls)]
    assert names == [f"files/{JOB}/out.png", f"files/{JOB}/out-2.png", f"files/{JOB}/out-3.png"]
    assert (tmp_path / names[2]).read_bytes() == b"img3"


def test_fallback_names_from_keys_and_content_type(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    output = {"image": f"{CDN}/x/%2e%2e", "video": f"{CDN}/y/"}
    # requests sends %2e%2e decoded (an unreserved character); the name comes from the URL given.
    mocked.get(f"{CDN}/x/..", body=b"1", content_type="image/png")
    mocked.get(f"{CDN}/y/", body=b"2", content_type="application/x-unknown-thing")
    result = dl.fetch(tmp_path, JOB, collect_urls(output), keys=output_keys(output))
    assert [f.name for f in result] == [f"files/{JOB}/image.png", f"files/{JOB}/video"]
    plain = dl.fetch(tmp_path / "other", JOB, [f"{CDN}/x/%2e%2e"])
    assert plain[0].name == f"files/{JOB}/output-1.png"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://cdn.runcomfy.net/x",
        "javascript:alert(1)",
        "/etc/passwd",
        "\\\\server\\share\\x",
        "https://runcomfy.net.evil.com/x.png",
        "https://evilrunconfy.net/x.png",
    ],
)
def test_refused_urls_are_reported_not_fetched(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock, url: str
) -> None:
    mocked.get(url if url.startswith("http") else f"{CDN}/never", body=b"evil")
    [result] = dl.fetch(tmp_path, JOB, [url])
    assert result.error.startswith("refused: ")
    assert (result.name, result.sha256) == ("", "")
    assert len(mocked.calls) == 0
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/a/..%2f..%2f..%2fescape.png", "escape.png"),
        ("/a/%2e%2e", "output-1.png"),
        ("/a/..%5c..%5cescape.png", "escape.png"),
        ("/a/%2fetc%2fpasswd", "passwd.png"),
    ],
)
def test_hostile_names_stay_in_the_job_folder(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock, path: str, name: str
) -> None:
    run_dir = tmp_path / "run"
    mocked.get(f"{CDN}{path}".replace("%2e", "."), body=b"x", content_type="image/png")
    [result] = dl.fetch(run_dir, JOB, [f"{CDN}{path}"])
    assert result.error == ""
    assert result.name == f"files/{JOB}/{name}"
    assert files_under(tmp_path) == [f"run/files/{JOB}/{name}"]


def test_symlinked_job_folder_is_refused(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run" / "files").mkdir(parents=True)
    (tmp_path / "run" / "files" / JOB).symlink_to(elsewhere)
    mocked.get(f"{CDN}/a.png", body=b"x")
    [result] = dl.fetch(tmp_path / "run", JOB, [f"{CDN}/a.png"])
    assert result.error == "refused: name 'a.png' leaves the job folder"
    assert list(elsewhere.iterdir()) == []


def test_bad_job_id_is_a_programming_error(tmp_path: Path, dl: Downloader) -> None:
    with pytest.raises(ValueError, match="job id"):
        dl.fetch(tmp_path, "../../etc", [])


def test_cap_exceeded_with_content_length(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/big.bin", body=b"x" * 1001, auto_calculate_content_length=True)
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/big.bin"])
    assert result.error == "larger than the 1000-byte cap"
    assert len(mocked.calls) == 1  # not retried
    assert files_under(tmp_path) == []


def test_cap_exceeded_without_content_length(
    tmp_path: Path, sleeps: list[float], mocked: responses.RequestsMock
) -> None:
    dl = Downloader(allow_hosts=HOSTS, sleep=sleeps.append, max_file_bytes=3 * download.CHUNK)
    mocked.get(f"{CDN}/big.bin", body=b"x" * (3 * download.CHUNK + 1))
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/big.bin"])
    response = mocked.calls[0].response
    assert isinstance(response, requests.Response)
    assert "Content-Length" not in response.headers
    assert result.error == f"larger than the {3 * download.CHUNK}-byte cap"
    assert files_under(tmp_path) == []


def test_exactly_the_cap_is_fine(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/edge.bin", body=b"x" * 1000, auto_calculate_content_length=True)
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/edge.bin"])
    assert (result.error, result.size) == ("", 1000)


def test_short_body_is_retried_then_an_error(
    tmp_path: Path, dl: Downloader, sleeps: list[float], mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/short.png", body=b"half", headers={"Content-Length": "8"})
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/short.png"])
    assert result.error.startswith("body cut short")
    assert result.error.endswith("(after 4 attempts)")
    assert len(mocked.calls) == 4 and len(sleeps) == 3
    assert all(0 < s <= download.BACKOFF_CAP_S for s in sleeps)
    assert sleeps[2] > sleeps[0]  # exponential: 4 s * [0.5, 1] > 1 s * [0.5, 1]
    assert files_under(tmp_path) == []


def test_short_body_then_complete(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", body=b"half", headers={"Content-Length": "8"})
    mocked.get(f"{CDN}/a.png", body=b"complete", headers={"Content-Length": "8"})
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert (result.error, result.size) == ("", 8)
    assert (tmp_path / result.name).read_bytes() == b"complete"


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_retried_then_ok(
    tmp_path: Path, dl: Downloader, sleeps: list[float], mocked: responses.RequestsMock, status: int
) -> None:
    mocked.get(f"{CDN}/a.png", status=status)
    mocked.get(f"{CDN}/a.png", status=status)
    mocked.get(f"{CDN}/a.png", body=b"ok")
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "" and (tmp_path / result.name).read_bytes() == b"ok"
    assert len(mocked.calls) == 3 and len(sleeps) == 2


def test_retry_after_is_honoured(
    tmp_path: Path, dl: Downloader, sleeps: list[float], mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", status=429, headers={"Retry-After": "7"})
    mocked.get(f"{CDN}/a.png", body=b"ok")
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "" and sleeps == [7.0]


def test_connection_errors_retried_then_error(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", body=requests.ConnectionError("reset"))
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "connection error: ConnectionError (after 4 attempts)"
    assert len(mocked.calls) == 4


def test_404_is_expired_with_one_retry(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", status=404)
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "expired (HTTP 404)"
    assert len(mocked.calls) == 2


def test_403_is_not_retried(tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{CDN}/a.png", status=403)
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "HTTP 403" and len(mocked.calls) == 1


def test_no_authorization_header_is_sent(
    tmp_path: Path, sleeps: list[float], mocked: responses.RequestsMock
) -> None:
    # A session that carries a token, and a ~/.netrc that would add one: neither leaks.
    (Path.home() / ".netrc").write_text("machine cdn.runcomfy.net login u password secret\n")
    session = requests.Session()
    session.headers["Authorization"] = "Bearer sk-SECRET"
    mocked.get(f"{CDN}/a.png", body=b"a")
    for dl in (Downloader(allow_hosts=HOSTS, session=session), Downloader(allow_hosts=HOSTS)):
        [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
        assert result.error == ""
    assert len(mocked.calls) == 2
    for call in mocked.calls:
        assert "Authorization" not in call.request.headers
    assert session.headers["Authorization"] == "Bearer sk-SECRET"  # a shared session is untouched


def test_existing_entry_with_a_hostile_name_is_not_trusted(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    forged = OutputFile(
        url=f"{CDN}/a.png", name=f"files/{JOB}/../../outside.png", sha256="s", size=1
    )
    mocked.get(f"{CDN}/a.png", body=b"real")
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"], [forged])
    assert result.name == f"files/{JOB}/a.png" and len(mocked.calls) == 1
    assert outside.read_bytes() == b"x"


def test_redirects_are_rechecked(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/ok.png", status=302, headers={"Location": "https://b.runcomfy.com/r.png"})
    mocked.get("https://b.runcomfy.com/r.png", body=b"moved")
    mocked.get(f"{CDN}/evil.png", status=302, headers={"Location": "https://evil.example.com/x"})
    mocked.get("https://evil.example.com/x", body=b"evil")
    ok, evil = dl.fetch(tmp_path, JOB, [f"{CDN}/ok.png", f"{CDN}/evil.png"])
    assert (ok.name, ok.size) == (f"files/{JOB}/ok.png", 5)
    assert evil.error == (
        "redirect refused: host evil.example.com not allowed"
        " (add it to outputs.allow_hosts to trust it)"
    )
    assert [c.request.url for c in mocked.calls] == [
        f"{CDN}/ok.png",
        "https://b.runcomfy.com/r.png",
        f"{CDN}/evil.png",
    ]


def test_existing_files_are_kept_without_a_request(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", body=b"aaa")
    mocked.get(f"{CDN}/b.png", body=b"bbb")
    first = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png", f"{CDN}/b.png"])
    assert len(mocked.calls) == 2
    again = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png", f"{CDN}/b.png"], first)
    assert again == first and len(mocked.calls) == 2
    # A missing file and a truncated one are fetched again, under their old names.
    (tmp_path / first[0].name).unlink()
    (tmp_path / first[1].name).write_bytes(b"b")
    third = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png", f"{CDN}/b.png"], first)
    assert third == first and len(mocked.calls) == 4


def test_stale_part_from_a_crash_is_removed(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    job_dir = tmp_path / "files" / JOB
    job_dir.mkdir(parents=True)
    (job_dir / "a.png.part").write_bytes(b"stale partial data, longer than the body")
    (job_dir / "other.bin.part").write_bytes(b"stale")
    mocked.get(f"{CDN}/a.png", body=b"new")
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert (tmp_path / result.name).read_bytes() == b"new"
    assert files_under(tmp_path) == [f"files/{JOB}/a.png"]


def test_write_error_midway_leaves_nothing_then_next_fetch_works(
    tmp_path: Path, sleeps: list[float], mocked: responses.RequestsMock, monkeypatch
) -> None:
    dl = Downloader(allow_hosts=HOSTS, sleep=sleeps.append)
    body = b"y" * (2 * download.CHUNK + 5)
    mocked.get(f"{CDN}/a.png", body=body)
    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes == 2:
                raise OSError(28, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    # Downloads write through the one atomic writer, which opens its .part with os.fdopen.
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k)))
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    assert result.error == "write failed: No space left on device"
    assert files_under(tmp_path) == []
    monkeypatch.undo()
    [result] = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"], [result])
    assert result.error == "" and result.sha256 == hashlib.sha256(body).hexdigest()
    assert files_under(tmp_path) == [f"files/{JOB}/a.png"]


# --- a real HTTP server on 127.0.0.1 -----------------------------------------------------

BIG = bytes(range(256)) * (12 * 1024 + 7)  # ~3 MiB: several 1 MiB chunks


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization"):
            self.send_error(400, "Authorization header received")
            return
        if self.path == "/files/big.bin":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(BIG)))
            self.end_headers()
            self.wfile.write(BIG)
        elif self.path == "/files/cut.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BIG)))
            self.end_headers()
            self.wfile.write(BIG[: len(BIG) // 2])
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_real_server_streaming(tmp_path: Path, server: str, sleeps: list[float]) -> None:
    dl = Downloader(allow_hosts=default_allow_hosts(server), sleep=sleeps.append, timeout=10)
    big, cut, missing = dl.fetch(
        tmp_path, JOB, [f"{server}/files/big.bin", f"{server}/files/cut.bin", f"{server}/nope"]
    )
    assert big.error == "" and big.size == len(BIG)
    assert big.sha256 == hashlib.sha256(BIG).hexdigest()
    assert (tmp_path / big.name).read_bytes() == BIG
    assert cut.error.startswith("body cut short") and len(sleeps) == 3 + 1
    assert missing.error == "expired (HTTP 404)"
    assert files_under(tmp_path) == [f"files/{JOB}/big.bin"]


def test_hostile_simulator_outputs(tmp_path: Path, sleeps: list[float]) -> None:
    """Issue 6's URL variants, served for real by the simulator's malicious mode."""
    from batchrun.simulator import malicious
    from batchrun.simulator.server import Simulator
    from batchrun.simulator.settings import SimSettings

    settings = SimSettings(malicious=True, concurrency=0, run_time=0.0, run_time_jitter=0.0)
    run_dir = tmp_path / "run"
    outcomes: dict[str, str] = {}
    with Simulator(settings) as sim:
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {sim.token}"
        dl = Downloader(
            allow_hosts=default_allow_hosts(sim.base_url),
            max_file_bytes=download.CHUNK,
            sleep=sleeps.append,
            timeout=10,
        )
        model = "blackforestlabs/flux-1-kontext/pro/edit"
        for n, name in enumerate(malicious.VARIANTS):
            if name in malicious.BODY_VARIANTS:
                continue
            body = {"prompt": f"p{n}", "image_url": "https://a.runcomfy.net/in.png"}
            submitted = api.post(f"{sim.base_url}/v1/models/{model}", json=body, timeout=10)
            request_id = submitted.json()["request_id"]
            for _ in range(200):  # the job runs in no time; a few polls at most
                result = api.get(f"{sim.base_url}/v1/requests/{request_id}/result", timeout=10)
                if result.json().get("status") == "succeeded":
                    break
            job_id = hashlib.sha256(name.encode()).hexdigest()[:12]
            [file] = dl.fetch(run_dir, job_id, collect_urls(result.json()["output"]))
            outcomes[name] = file.error or file.name.split("/", 2)[2]
    assert outcomes == {
        "dotdot": "escape.png",
        "pct_dotdot": "escape.png",
        "backslash": "escape.png",
        "absolute": "passwd.png",  # extension from the Content-Type
        "bare_path": "refused: not an absolute http(s) URL",
        "file_scheme": "refused: scheme 'file' not allowed (only http and https)",
        "ftp_scheme": "refused: scheme 'ftp' not allowed (only http and https)",
        "evil_host": "refused: host evil.example.com not allowed"
        " (add it to outputs.allow_hosts to trust it)",
        "huge": f"larger than the {download.CHUNK}-byte cap",
        "truncated": outcomes["truncated"],
    }
    assert outcomes["truncated"].startswith("body cut short")
    escaped = [p for p in tmp_path.rglob("*") if p.is_file() and run_dir not in p.parents]
    assert escaped == []
    assert not list(run_dir.rglob("*.part"))


# --- a job's files one at a time: plan, then transfers in any order ----------------------


def test_plan_names_every_file_before_any_transfer(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    urls = [f"{CDN}/1/out.png", f"{CDN}/2/out.png", f"{CDN}/a/out", f"{CDN}/b/out"]
    for url in urls:
        mocked.get(url, body=url.encode(), content_type="image/png")
    files = dl.plan(tmp_path, JOB, urls)
    assert [t.name for t in files.todo] == ["out.png", "out-2.png", "out-3", "out-4"]
    for task in reversed(files.todo):  # the last file lands first: the names stay
        files.results[task.index] = files.transfer(task)
    names = [f.name for f in files.landed()]
    assert names == [f"files/{JOB}/{n}" for n in ("out.png", "out-2.png", "out-3.png", "out-4.png")]
    assert (tmp_path / names[2]).read_bytes() == urls[2].encode()


def test_plan_settles_refused_and_intact_files_without_a_request(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", body=b"aaa")
    first = dl.fetch(tmp_path, JOB, [f"{CDN}/a.png"])
    urls = ["ftp://x/y.png", f"{CDN}/a.png", f"{CDN}/b.png"]
    files = dl.plan(tmp_path, JOB, urls, first)
    assert files.results[0] is not None and files.results[0].error.startswith("refused")
    assert files.results[1] == first[0]
    assert [(t.index, t.url) for t in files.todo] == [(2, f"{CDN}/b.png")]
    assert len(mocked.calls) == 1


def test_a_transfer_after_a_stop_sends_nothing(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{CDN}/a.png", body=b"aaa")
    files = dl.plan(tmp_path, JOB, [f"{CDN}/a.png"])
    result = files.transfer(files.todo[0], lambda: True)
    assert result == OutputFile(url=f"{CDN}/a.png", error=INTERRUPTED)
    assert len(mocked.calls) == 0


def test_a_stop_mid_body_abandons_the_transfer_and_its_part_file(
    tmp_path: Path, dl: Downloader, mocked: responses.RequestsMock
) -> None:
    dl.max_file_bytes = 10 * download.CHUNK
    mocked.get(f"{CDN}/a.png", body=b"z" * (3 * download.CHUNK))
    asked: list[bool] = []
    parts: list[list[str]] = []

    def stopped() -> bool:
        parts.append(files_under(tmp_path))
        asked.append(len(asked) >= 2)  # before the request, then once per chunk
        return asked[-1]

    files = dl.plan(tmp_path, JOB, [f"{CDN}/a.png"])
    result = files.transfer(files.todo[0], stopped)
    assert result.error == INTERRUPTED and not result.name
    assert parts[-1] == [f"files/{JOB}/.a.png.part"]  # a chunk was written, then the stop
    assert files_under(tmp_path) == []


def test_names_hand_out_suffixes_in_turn() -> None:
    names = Names({"a.png", "a-3.png"})
    assert [names.claim("a.png") for _ in range(3)] == ["a-2.png", "a-4.png", "a-5.png"]
    assert names.claim("a-6.png") == "a-6.png" and names.claim("a.png") == "a-7.png"
    assert [names.claim("bare") for _ in range(2)] == ["bare", "bare-2"]
    many = Names({"x"})
    got = [many.claim("x") for _ in range(999)]
    assert len(set(got)) == 999 and got[0] == "x-2" and got[-1] == "x-1000"

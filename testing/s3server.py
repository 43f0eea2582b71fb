"""A real S3 server for tests: moto's server mode (ThreadedMotoServer) on 127.0.0.1, on a free
port, with the parts of S3 that moto leaves out and the tests need in front of it:

- a presigned URL expires as S3's does: past X-Amz-Date + X-Amz-Expires, a GET of it is
  403 AccessDenied "Request has expired" (moto serves it for ever);
- every request is counted by method and path (what a test says was sent, server-side);
- `fail(method, times, status)` makes the next requests of a method fail as a busy store's
  do (503 SlowDown), to test retries against the server rather than a stub.

boto3 talks to it over HTTP like to any S3-compatible endpoint: nothing of boto3 is stubbed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote

import requests
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

FAKE_KEY_ID = "AKIATESTBATCHRUN0001"
FAKE_SECRET = "batchrun-test-secret-never-real-0000000"

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error>"
)
_REASONS = {403: "Forbidden", 500: "Internal Server Error", 503: "Slow Down"}

StartResponse = Callable[..., Any]


class _Front:
    """WSGI middleware before moto's app: counts, expiry, faults."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        self.faults: list[tuple[str, int, str]] = []  # (method, status, code), in order
        self.held: dict[str, int] = {}  # method -> how many more pass before the rest wait
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = unquote(environ.get("PATH_INFO", ""))
        with self.lock:
            self.seen.append((method, path))
            fault = next((f for f in self.faults if f[0] == method), None)
            if fault is not None:
                self.faults.remove(fault)
            wait = method in self.held and self.held[method] <= 0
            if method in self.held:
                self.held[method] -= 1
        if wait:  # a request cut off by a killed client: it never reaches moto
            self.release.wait(60)
            return _error(start_response, 503, "SlowDown", "held by the test")
        if fault is not None:
            return _error(start_response, fault[1], fault[2], "injected by the test")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if _expired(query):
            return _error(start_response, 403, "AccessDenied", "Request has expired")
        return self.app(environ, start_response)


def _expired(query: dict[str, list[str]]) -> bool:
    if "X-Amz-Date" not in query or "X-Amz-Expires" not in query:
        return False
    signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    signed = signed.replace(tzinfo=timezone.utc)
    return time.time() > signed.timestamp() + int(query["X-Amz-Expires"][0])


def _error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
    body = _ERROR.format(code=code, message=message).encode()
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
    )
    return [body]


class S3Server(ThreadedMotoServer):
    """moto's S3 on 127.0.0.1:<free port>; `endpoint` once started."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.front = _Front(DomainDispatcherApplication(create_backend_app))

    def _server_entry(self) -> None:  # ThreadedMotoServer's, with the front before moto's app
        self._server = make_server(
            self._ip_address, self._port, self.front, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every bucket (moto's state is per process), request counted and fault."""
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        with self.front.lock:
            self.front.seen.clear()
            self.front.faults.clear()
            self.front.held.clear()
        self.front.release.set()

    def hold(self, method: str, *, after: int) -> None:
        """Let `after` requests of `method` through, then hold the rest until `release()`,
        which answers them 503 (they never reach moto: as if their client died sending)."""
        with self.front.lock:
            self.front.held[method] = after
            self.front.release.clear()

    def release(self) -> None:
        with self.front.lock:
            self.front.held.clear()
        self.front.release.set()

    def count(self, method: str, path_prefix: str = "") -> int:
        """Requests of `method` whose path starts with `path_prefix` (e.g. /bucket/prefix)."""
        with self.front.lock:
            return sum(1 for m, p in self.front.seen if m == method and p.startswith(path_prefix))

    def counts(self) -> Counter[str]:
        with self.front.lock:
            return Counter(m for m, _ in self.front.seen)

    def fail(
        self, method: str, times: int = 1, *, status: int = 503, code: str = "SlowDown"
    ) -> None:
        """The next `times` requests of `method` answer `status` `code`."""
        with self.front.lock:
            self.front.faults += [(method, status, code)] * times


class S3Bucket:
    """A bucket made on an S3Server, as a test looks at it."""

    def __init__(self, server: S3Server, name: str) -> None:
        self.server = server
        self.name = name
        self.endpoint = server.endpoint

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)

    def url(self, prefix: str = "") -> str:
        """s3://NAME[/PREFIX]."""
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and its user metadata."""
        found = self.client().get_object(Bucket=self.name, Key=key)
        return found["Body"].read(), dict(found.get("Metadata") or {})

    def puts(self, prefix: str = "") -> int:
        """PUT requests sent to keys under PREFIX of this bucket."""
        return self.server.count("PUT", f"/{self.name}/{prefix}")

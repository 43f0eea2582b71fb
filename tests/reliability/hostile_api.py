"""A scriptable hostile RunComfy API on 127.0.0.1 (http.server), and a way to run batchrun
against it in this process (clocks injectable) or as a subprocess (exit codes, signals).

`HostileApi(answer)` calls `answer(call)` for every request; `call.kind` is submit, result,
cancel or file, `call.n` counts the calls of that kind from 1. `answer` returns a `Reply`, or
None for the well-behaved answer (`honest`): every submit accepted, every result succeeded with
one small PNG served by the same server. `call.body` is the request's body (a submit's inputs).
`nodelay=True` sends each answer without Nagle's delay (for runs fetching thousands of files).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from batchrun.errors import StateError
from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.store.records import JobRow
from batchrun.store.state import StateStore

from .conftest import TOKEN, sweep, write_manifest

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@dataclass
class Call:
    kind: str  # submit | result | cancel | file | other
    n: int  # the n-th call of this kind, from 1
    method: str
    path: str
    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # the request's body (a submit's JSON inputs)


@dataclass
class Reply:
    status: int = 200
    body: Any = b""  # bytes, str, or JSON-able
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # the HTTP reason phrase (default: the standard one)
    trickle_s: float = 0.0  # seconds between single bytes of the body
    drop: bool = False  # close the connection without answering


Answer = Callable[[Call], Reply | None]


class HostileApi:
    def __init__(self, answer: Answer | None = None, *, nodelay: bool = False) -> None:
        self.answer = answer or (lambda call: None)
        self.calls: Counter[str] = Counter()
        self.log: list[Call] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: with Nagle on, each answer on a kept-alive
            # connection waits ~40 ms for the client's delayed ACK (`nodelay` for many files).
            disable_nagle_algorithm = nodelay

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                api._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                api._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client that hangs up mid-answer is part of the game, not an error to print.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HostileApi:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def file_url(self, name: str = "out.png") -> str:
        return f"{self.base_url}/files/{name}"

    def honest(self, call: Call) -> Reply:
        if call.kind == "submit":
            return Reply(body={"request_id": f"r{call.n}"})
        if call.kind == "result":
            return Reply(
                body={
                    "request_id": call.request_id,
                    "status": "succeeded",
                    "output": {"image": self.file_url(f"{call.request_id}.png")},
                    "cost": 0.04,
                }
            )
        if call.kind == "cancel":
            return Reply(body={"outcome": "not_cancellable"})
        if call.kind == "file":
            return Reply(body=PNG, headers={"Content-Type": "image/png"})
        return Reply(404, body={"error_code": 404001, "error_message": "no such thing"})

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        sent = h.rfile.read(length) if length else b""
        path = h.path.split("?")[0]
        parts = path.strip("/").split("/")
        request_id = ""
        if path.startswith("/files/"):
            kind = "file"
        elif h.command == "POST" and path.startswith("/v1/models/"):
            kind = "submit"
        elif path.startswith("/v1/requests/") and len(parts) >= 4:
            kind, request_id = parts[3], parts[2]
            kind = "result" if kind in ("result", "status") else kind
        else:
            kind = "other"
        with self._lock:
            self.calls[kind] += 1
            call = Call(
                kind, self.calls[kind], h.command, h.path, request_id, dict(h.headers), sent
            )
            self.log.append(call)
        reply = self.answer(call) or self.honest(call)
        if reply.drop:
            h.close_connection = True
            return
        body = reply.body
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        headers.setdefault("Content-Length", str(len(body)))
        if not headers["Content-Length"].isascii() or not headers["Content-Length"].isdigit():
            # no usable length: the body ends where the connection does
            headers["Connection"] = "close"
            h.close_connection = True
        h.send_response_only(reply.status, reply.reason)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        try:
            if reply.trickle_s:
                for i in range(len(body)):
                    if self.stopping.wait(reply.trickle_s):
                        break
                    h.wfile.write(body[i : i + 1])
                    h.wfile.flush()
            else:
                h.wfile.write(body)
        except OSError:
            pass


def manifest_for(
    tmp_path: Path, n_jobs: int, *, run: dict[str, Any] | None = None, **outputs: Any
) -> Path:
    run = {"poll_interval": "0.05s", "retries": 0, **(run or {})}
    data = sweep(n_jobs, run=run, outputs={"download": False, **outputs})
    return write_manifest(tmp_path / "m.yaml", data)


def run_here(tmp_path: Path, api: HostileApi, **opts: Any) -> tuple[int, list[str], list[JobRow]]:
    """Run (or resume) tmp_path/m.yaml against `api` in this process: (exit code, messages,
    rows). Exceptions escape as they would reach cli.main."""
    messages: list[str] = []
    options = RunOptions(
        api.base_url,
        opts.pop("token", TOKEN),
        run_dir=tmp_path / "run",
        quiet=True,
        handle_signals=False,
        echo=messages.append,
        **opts,
    )
    try:
        code = run_batch(build_plan(tmp_path / "m.yaml"), options)
    finally:
        rows = state_of(tmp_path)
    return code, messages, rows


def state_of(tmp_path: Path) -> list[JobRow]:
    if not (tmp_path / "run" / "state.db").exists():
        return []
    try:
        with StateStore.open(tmp_path / "run", create=False, lock=False) as s:
            return s.rows()
    except StateError:
        return []  # the run's own error says why


class Jumps:
    """A wall clock that moves `step` seconds each time it is read (thread-safe)."""

    def __init__(self, step: float, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now

"""The HTTP transport: a keep-alive ThreadingHTTPServer on 127.0.0.1 and the `Simulator` handle."""

from __future__ import annotations

import socket
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from batchrun.simulator.api import Response, SimApp, api_error
from batchrun.simulator.settings import SimSettings

_IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a requests.Session reuses its connection
    server_version = "batchrun-simulator"
    timeout = _IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Whole responses go out in one write; no Nagle delay between a request's packets.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet: a load test would otherwise print thousands of lines

    def _dispatch(self, head: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        method = "GET" if head else self.command
        try:
            response = self.server.app.handle(method, self.path, self.headers, body)
        except Exception:  # a simulator bug must not look like a dropped connection
            traceback.print_exc()
            response = api_error(500, 500001, "simulator internal error (see its stderr)")
        self._send(response, head)

    def _send(self, r: Response, head: bool) -> None:
        if r.drop == "silent":
            self.close_connection = True
            return
        length = r.declared_length if r.declared_length is not None else len(r.body)
        try:
            reason = HTTPStatus(r.status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {r.status} {reason}",
            f"Server: {self.server_version}",
            f"Content-Type: {r.content_type}",
            f"Content-Length: {length}",
        ]
        lines += [f"{k}: {v}" for k, v in r.headers.items()]
        if self.close_connection or r.drop:
            lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head:
            self.wfile.write(head_bytes)
            return
        if r.drop == "partial":
            # Announce the full length, send part of it, hang up.
            self.wfile.write(head_bytes + r.body[: max(0, len(r.body) // 2)])
            self.close_connection = True
            return
        if r.chunks is not None:
            self.wfile.write(head_bytes)
            try:
                for chunk in r.chunks:
                    self.wfile.write(chunk)
            except OSError:  # the client stopped reading (size cap): fine
                self.close_connection = True
            return
        self.wfile.write(head_bytes + r.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: SimApp) -> None:
        self.app = app
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up keep-alive connections so no client talks to a stopped simulator."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Simulator:
    """A running local RunComfy Model API. `Simulator(settings).start()`; `.stop()` or `with`."""

    def __init__(self, settings: SimSettings | None = None, port: int = 0) -> None:
        self.settings = settings or SimSettings()
        self.port = port
        self.app = SimApp(self.settings)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.app.base_url

    @property
    def token(self) -> str:
        return self.settings.token

    def start(self) -> Simulator:
        """Bind 127.0.0.1 (a free port unless one was given) and serve in a daemon thread.

        With a `state_dir` that holds jobs, their port is tried first when none was given
        (so stored output URLs keep working), a free one if it is taken; the jobs are reloaded.
        """
        if self._server is not None:
            return self
        saved = self.app.restored.port if self.app.restored and not self.port else None
        try:
            self._server = _Server(("127.0.0.1", saved or self.port), self.app)
        except OSError:
            if not saved:
                raise
            self._server = _Server(("127.0.0.1", self.port), self.app)
        self.port = self._server.server_address[1]
        self.app.base_url = f"http://127.0.0.1:{self.port}"
        self.app.reload()
        self.app.served_on(self.port)
        self.app.queue.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sim-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block until stopped (KeyboardInterrupt propagates to the caller)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        if self._server is None:
            return
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        try:  # wake serve_forever's select() now rather than at its next poll
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            pass
        stopper.join(timeout=5)  # bounded: Ctrl-C must end the process even if serving hangs
        self._server.close_connections()
        self._server.server_close()
        self.app.queue.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.app.close()
        self._server = None

    def stats(self) -> dict[str, Any]:
        """The same counters as `GET /_sim/stats`."""
        return self.app.snapshot()

    def files(self) -> dict[str, str]:
        """url -> sha256 of every served output file (`GET /_sim/files`)."""
        return self.app.file_hashes()

    def reset(self) -> None:
        """Forget every job, file and counter (`POST /_sim/reset`)."""
        self.app.reset()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The simulated RunComfy Model API: routing, auth, faults, and the documented JSON shapes.

Transport-free: `SimApp.handle()` takes a parsed request and returns a `Response`; server.py
moves the bytes. Error answers (always JSON with `error_code` and `error_message`):

- 401 `error_code` 400004: missing or wrong bearer token (every /v1/ call);
- 400 `error_code` 400001: unknown model id on submit or catalog lookup (this simulator answers
  400, not 404, for an unknown model, consistently);
- 404 `error_code` 404001: unknown or expired request id (`expire_after` past its finish);
- 422 `error_code` 422 + `detail: [{loc, msg, type}]`: inputs failing the model's schema;
- 429 `error_code` 429 + `Retry-After`: above `rate_limit`;
- 500/502/503 (`error_rate`), some with HTML bodies like a proxy's.

A dropped connection (`drop_rate`) happens after the call was processed: a dropped submit has
created its job, exactly the case where a client cannot know whether it was accepted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from hmac import compare_digest
from typing import Any
from urllib.parse import parse_qs, unquote

from jsonschema import Draft202012Validator

from batchrun.catalog import models
from batchrun.simulator import catalog, media, persist
from batchrun.simulator.faults import Faults
from batchrun.simulator.finish import drift_draw, finish_job
from batchrun.simulator.jobqueue import CANCELLED, COMPLETED, IN_QUEUE, Job, JobQueue
from batchrun.simulator.outputs import FileStore, huge_chunks, identity
from batchrun.simulator.settings import SimSettings
from batchrun.simulator.stats import Stats


@dataclass
class Response:
    """What to send back; `declared_length`/`chunks`/`drop` express the wire-level quirks."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # Content-Length to announce if not len(body)
    chunks: Iterator[bytes] | None = None  # streamed body (huge files)
    drop: str | None = None  # "silent" | "partial": close the connection mid-response


def json_response(status: int, data: Any, **headers: str) -> Response:
    return Response(status, json.dumps(data, ensure_ascii=False).encode(), headers=headers)


def api_error(status: int, code: int, message: str, **extra: Any) -> Response:
    return json_response(status, {"error_code": code, "error_message": message, **extra})


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


@cache
def _validator(model_id: str) -> Draft202012Validator:
    return Draft202012Validator(models.input_schema(model_id) or {})


def schema_detail(model_id: str, inputs: Any) -> list[dict[str, Any]]:
    """FastAPI-style `detail` entries for every schema problem of `inputs` (empty: valid)."""
    if not isinstance(inputs, dict):
        return [{"loc": ["body"], "msg": "the body must be a JSON object", "type": "type_error"}]
    validator = _validator(model_id)
    if validator.is_valid(inputs):
        return []
    detail = []
    for err in validator.iter_errors(inputs):
        loc: list[Any] = ["body", *err.path]
        if err.validator == "required":
            missing = [f for f in err.validator_value if f not in err.instance]
            loc += missing[:1]
        detail.append({"loc": loc, "msg": err.message, "type": str(err.validator)})
    return sorted(detail, key=lambda d: [str(p) for p in d["loc"]])


class SimApp:
    """The API's state: jobs, files, faults and counters, shared by every handler thread."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.base_url = "http://127.0.0.1"
        self.stats = Stats()
        self.faults = Faults(settings)
        self.files = FileStore()
        self.queue = JobQueue(settings, self._finish)
        self._auth = f"Bearer {settings.token}".encode()
        self.port: int | None = None
        self.journal = persist.Journal(settings.state_dir) if settings.state_dir else None
        self.restored = persist.restore(self.journal.records()) if self.journal else None
        # Accepted jobs that will be billed (not failing, not cancelled): request id -> USD,
        # what `balance` is measured against.
        self._committed: dict[str, float] = {}
        # `_billing` makes a submit's balance check and its acceptance one step; `_committed`
        # is only touched under `_committed_lock`, held for a dict operation and nothing else
        # (the job scheduler, holding the queue's lock, releases a failed job's amount: taking
        # `_billing` there would deadlock with a submit holding it and waiting for the queue).
        self._billing = threading.Lock()
        self._committed_lock = threading.Lock()

    def reload(self) -> int:
        """Take back the journal's jobs (call once base_url is final); returns how many."""
        if self.restored is None:
            return 0
        now = time.time()
        restored, self.restored = self.restored, None
        jobs = restored.jobs
        for job in jobs:
            self.queue.adopt(job, now)
            self.stats.submitted(job.identity, job.request_id)
            if job.request_id in restored.asked:
                self.stats.asked(job.request_id)
            if not job.fails and job.state != CANCELLED:
                self._committed[job.request_id] = catalog.cost(
                    catalog.CATALOG[job.model_id], job.inputs
                )
        return len(jobs)

    def served_on(self, port: int) -> None:
        self.port = port
        if self.journal is not None:
            self.journal.append({"type": "port", "port": port})

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def reset(self) -> None:
        self.queue.reset()
        self.files.clear()
        self.stats.reset()
        self.faults.reset()
        with self._committed_lock:
            self._committed.clear()
        if self.journal is not None:
            self.journal.clear()
            if self.port is not None:
                self.served_on(self.port)

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot(self.queue.counts(), self.queue.run_times())

    def file_hashes(self) -> dict[str, str]:
        """url -> sha256 of every file currently served (expired ones left out)."""
        now = time.monotonic()
        out = {}
        for path in self.files.paths(now):
            spec = self.files.get(path, now)
            if spec is not None and path.startswith("/files/"):
                out[self.base_url + path] = self.files.sha256(spec)
        return out

    # ---- dispatch -----------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        path, _, query = target.partition("?")
        if path.startswith("/v1/") or path == "/v1":
            return self._api(method, path, query, headers, body)
        if path in ("/balance", "/prod/v2/balance") and method == "GET":
            return self._balance(headers)
        if path == "/_sim/stats" and method == "GET":
            return json_response(200, self.snapshot())
        if path == "/_sim/files" and method == "GET":
            return json_response(200, self.file_hashes())
        if path == "/_sim/reset" and method == "POST":
            self.reset()
            return json_response(200, {"reset": True})
        return self._file(method, unquote(path))

    def _api(self, method: str, path: str, query: str, headers: Any, body: bytes) -> Response:
        parts = path.strip("/").split("/")
        endpoint, route = self._route(method, parts)
        self.stats.api_call(endpoint)
        retry_after = self.faults.throttle()
        if retry_after is not None:
            self.stats.throttled()
            response = api_error(429, 429, f"rate limit exceeded; retry after {retry_after} s")
            response.headers["Retry-After"] = str(retry_after)
            return response
        injected = self.faults.error()
        if injected is not None:
            self.stats.fault(f"error_{injected.status}")
            extra = {"Retry-After": str(injected.retry_after)} if injected.retry_after else {}
            return Response(injected.status, injected.body, injected.content_type, extra)
        if self.settings.slow > 0:
            self.stats.fault("slow")
            time.sleep(self.settings.slow)
        auth = headers.get("Authorization", "") or ""
        if not compare_digest(auth.encode(), self._auth):
            return api_error(401, 400004, "missing, invalid or expired token")
        response = route(query, body) if route else self._no_route(method, parts)
        drop = self.faults.drop()
        if drop is not None:
            self.stats.fault(f"drop_{drop}")
            response.drop = drop
        return response

    def _route(self, method: str, parts: list[str]) -> tuple[str, Any]:
        """(stats endpoint name, bound handler or None) for /v1/ paths."""
        if len(parts) >= 2 and parts[1] == "models":
            model_id = "/".join(parts[2:])
            if method == "POST" and model_id:
                return "submit", lambda q, b: self.submit(model_id, b)
            if method == "GET" and not model_id:
                return "catalog", lambda q, b: self.catalog_list(q)
            if method == "GET":
                return "catalog", lambda q, b: self.catalog_entry(model_id)
            return "catalog", None
        if len(parts) == 4 and parts[1] == "requests":
            request_id, action = parts[2], parts[3]
            if action == "status" and method == "GET":
                return "status", lambda q, b: self.status(request_id)
            if action == "result" and method == "GET":
                return "result", lambda q, b: self.result(request_id, q)
            if action == "cancel" and method == "POST":
                return "cancel", lambda q, b: self.cancel(request_id)
            if action in ("status", "result", "cancel"):
                return action, None
        return "other", None

    def _no_route(self, method: str, parts: list[str]) -> Response:
        path = "/" + "/".join(parts)
        if parts[-1] in ("status", "result", "cancel") or "models" in parts[:2]:
            return api_error(405, 405, f"method {method} not allowed on {path}")
        return api_error(404, 404, f"no such endpoint: {method} {path}")

    # ---- endpoints ----------------------------------------------------------------------

    def submit(self, model_id: str, body: bytes) -> Response:
        if catalog.get(model_id) is None:
            return api_error(400, 400001, f"invalid model id: {model_id!r}")
        try:
            inputs = json.loads(body or b"{}")
        except ValueError as exc:
            detail = [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
            return api_error(422, 422, "request body is not valid JSON", detail=detail)
        if len(body) > media.REQUEST_MAX_BYTES:
            return api_error(413, 413, "request body is larger than 64 MiB")
        detail = schema_detail(model_id, inputs)
        if detail:
            return api_error(422, 422, "inputs do not match the model's schema", detail=detail)
        inputs, detail = media.decode_data_uris(inputs)
        if detail:
            return api_error(422, 422, "inputs hold a data: URI the API refuses", detail=detail)
        ident = identity(model_id, media.identity_form(inputs))
        price = catalog.cost(catalog.CATALOG[model_id], inputs)
        with self._billing:
            balance = self.settings.balance
            with self._committed_lock:
                committed = sum(self._committed.values())
            if balance is not None and committed + price > balance + 1e-9:
                return api_error(402, 400002, "insufficient balance: top up your account")
            job = self.queue.submit(model_id, inputs, ident)
            if not job.fails or self.settings.bill_on == "accept":
                with self._committed_lock:
                    self._committed[job.request_id] = price
        if self.settings.bill_on == "accept":
            self.stats.billed(job.request_id, ident, price)
        if self.journal is not None:
            # On disk before the 200 leaves: an acknowledged job survives a restart.
            drifted = drift_draw(self.settings, ident)
            job.extra.setdefault("drifted", drifted)
            self.journal.append(persist.submit_record(job, drifted))
        self.stats.submitted(ident, job.request_id)
        urls = self._urls(job.request_id)
        return json_response(200, {"request_id": job.request_id, **urls})

    def status(self, request_id: str) -> Response:
        job = self.queue.get(request_id)
        if job is None:
            return self._unknown(request_id)
        self._asked(request_id)
        data: dict[str, Any] = {"request_id": request_id, "status": job.state}
        if job.state == IN_QUEUE:
            position = self.queue.position(job)
            if position is not None:
                data["queue_position"] = position
            else:  # started between the two reads
                data["status"] = job.state
        urls = self._urls(request_id)
        data["status_url"], data["result_url"] = urls["status_url"], urls["result_url"]
        return json_response(200, data)

    def result(self, request_id: str, query: str) -> Response:
        job = self.queue.get(request_id)
        if job is None:
            return self._unknown(request_id)
        self._asked(request_id)
        data: dict[str, Any] = {"request_id": request_id, "status": job.state}
        data["created_at"] = _iso(job.created_at)
        if job.state == IN_QUEUE:
            position = self.queue.position(job)
            if position is not None:
                data["queue_position"] = position
        if job.state == CANCELLED:
            data["finished_at"] = _iso(job.finished_at)
        if job.state != COMPLETED:
            return json_response(200, data)
        variant = job.extra.get("malicious")
        headers = {"X-Sim-Malicious": variant} if variant else {}
        if variant == "malformed_json":
            cut = f'{{"request_id": "{request_id}", "status": "succeeded", "output": {{"ima'
            return Response(200, cut.encode(), headers=headers)
        if variant == "error_200":
            body = {"error_code": 500001, "error_message": "internal error (simulated, HTTP 200)"}
            return json_response(200, body, **headers)
        data["status"] = "succeeded" if job.succeeded else "failed"
        self.stats.result_read()
        if job.succeeded:
            data["output"] = job.output
        else:
            data["error"] = job.error
        data["model_id"] = job.model_id
        data["finished_at"] = _iso(job.finished_at)
        asked = parse_qs(query).get("include_cost", [""])[-1].lower() in ("true", "1")
        if asked and self.settings.result_costs:
            data["cost"] = self.stats.billed_for(request_id)
        return json_response(200, data, **headers)

    def cancel(self, request_id: str) -> Response:
        job = self.queue.get(request_id)
        if job is None:
            return self._unknown(request_id)
        self._asked(request_id)
        outcome = self.queue.cancel(job)
        if outcome == "cancelled":
            with self._committed_lock:
                self._committed.pop(request_id, None)
            self.stats.unbill(request_id)  # billed at the door: a cancelled job is refunded
        if outcome == "cancelled" and self.journal is not None:
            self.journal.append(persist.cancel_record(job))
        return json_response(
            202, {"request_id": request_id, "status": job.state, "outcome": outcome}
        )

    def _asked(self, request_id: str) -> None:
        """The client knows this request (stats: not a lost submit); kept across a restart."""
        if self.stats.asked(request_id) and self.journal is not None:
            # Not fsynced: a mark lost to a crash only makes a tracked job look untracked.
            self.journal.append({"type": "asked", "request_id": request_id}, durable=False)

    def catalog_list(self, query: str) -> Response:
        q = parse_qs(query)
        try:
            limit = int(q.get("limit", ["20"])[-1])
            offset = int(q.get("offset", ["0"])[-1])
            if limit < 0 or offset < 0:
                raise ValueError
        except ValueError:
            detail = [{"loc": ["query"], "msg": "limit and offset must be >= 0", "type": "int"}]
            return api_error(422, 422, "bad query", detail=detail)
        search = q.get("search", [""])[-1]
        category = q.get("category", [""])[-1]
        return json_response(200, catalog.search(search, category, limit, offset))

    def catalog_entry(self, model_id: str) -> Response:
        info = catalog.get(model_id)
        if info is None:
            return api_error(400, 400001, f"invalid model id: {model_id!r}")
        return json_response(200, catalog.entry(info))

    def _balance(self, headers: Any) -> Response:
        """The serverless API's account balance: what is left of `balance` after the bills."""
        if not compare_digest(str(headers.get("Authorization", "")).encode(), self._auth):
            return api_error(401, 400004, "missing or invalid token")
        if self.settings.balance is None:
            return json_response(200, {"balance_usd": 1000000.0, "currency": "USD"})
        left = max(0.0, self.settings.balance - self.stats.billed_usd())
        return json_response(200, {"balance_usd": round(left, 6), "currency": "USD"})

    def _unknown(self, request_id: str) -> Response:
        return api_error(404, 404001, f"request {request_id!r} not found (unknown or expired)")

    def _urls(self, request_id: str) -> dict[str, str]:
        base = f"{self.base_url}/v1/requests/{request_id}"
        return {
            "status_url": f"{base}/status",
            "result_url": f"{base}/result",
            "cancel_url": f"{base}/cancel",
        }

    # ---- files --------------------------------------------------------------------------

    def _file(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return api_error(405, 405, "files are read-only")
        spec = self.files.get(path, time.monotonic())
        if spec is None:
            return api_error(404, 404, "file not found (unknown or expired)")
        self.stats.file_call()
        if spec.kind == "huge":
            return Response(
                200,
                b"",
                spec.content_type,
                declared_length=spec.size,
                chunks=huge_chunks(spec.size),
            )
        data = self.files.render(spec)
        if spec.kind == "truncated":
            return Response(
                200,
                data[: len(data) // 2],
                spec.content_type,
                declared_length=len(data),
                drop="partial",
            )
        return Response(200, data, spec.content_type)

    # ---- job completion (called by the scheduler thread) ----------------------------------

    def _finish(self, job: Job) -> None:
        finish_job(job, self.settings, self.files, self.stats, self.base_url)
        if job.fails and self.settings.bill_on != "accept":  # e.g. an input it could not fetch
            with self._committed_lock:
                self._committed.pop(job.request_id, None)

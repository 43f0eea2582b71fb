"""Counters behind `GET /_sim/stats`: calls, submits per input identity, throttles, peak rate.

The snapshot's keys:
- `calls`: {submit, status, result, cancel, catalog, files} -> count (every /v1/ call arriving,
  429s and injected faults included; `files` counts files served);
- `api_calls`: all /v1/ calls; `peak_rate_1s`: most /v1/ calls within any one second;
- `submits`: accepted submits (a job was created); `submits_per_identity`: "model canonical-json"
  -> accepted submits; `untracked_submits`: accepted submits whose request id the client never
  asked about (status, result or cancel): the client lost the answer, or has not polled yet;
  `duplicate_submits`: identities accepted more than once of which at least one is untracked,
  i.e. one input paid again after its answer was lost. Identical bodies are not enough: the
  manifest's `repeat:` sends N jobs with one body, each tracked by its own request id, and
  those are not duplicates. Read it once the client has finished;
- `throttled`: 429 answers; `faults`: injected faults per kind (rate_limited, error_500/502/503,
  drop_silent, drop_partial, slow, fail, drift, malicious_<variant>);
- `jobs`: jobs per state (in_queue, in_progress, completed, cancelled; completed = succeeded +
  failed);
- `run_times`: the finished jobs' runs as the server timed them (`jobs`, `total_s`, `max_s`)
  and when the first submit arrived and the first and last job finished (epoch seconds);
  `first_result_at` / `last_result_at` / `last_file_at`: the first and last /result answered
  with a finished job and the last file served (epoch seconds), so a client's makespan can
  be read off the server.
- `billed_usd`: what the jobs were billed, in USD; `billed`: request id -> USD;
  `billed_per_identity`: "model canonical-json" -> USD, what each input was billed over all
  its requests (a job's attempts, retries and resubmits included). With `bill_on:
  success` (the default) a job is billed once, when it succeeds; failed and cancelled jobs cost
  nothing. With `bill_on: accept` every accepted submit is billed as it is accepted, failed or
  not; a job cancelled while queued is refunded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

ENDPOINTS = ("submit", "status", "result", "cancel", "catalog", "files")


class Stats:
    """Thread-safe counters; `snapshot()` is the JSON the stats endpoint returns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._calls: Counter[str] = Counter({e: 0 for e in ENDPOINTS})
            self._identities: Counter[str] = Counter()
            self._requests: dict[str, str] = {}  # request id -> identity (accepted submits)
            self._asked: set[str] = set()  # request ids the client asked about
            self._faults: Counter[str] = Counter()
            self._throttled = 0
            self._window: deque[float] = deque()
            self._peak = 0
            self._api_calls = 0
            self._first_result_at: float | None = None
            self._last_result_at: float | None = None
            self._last_file_at: float | None = None
            self._billed: dict[str, float] = {}
            self._billed_identity: dict[str, str] = {}  # request id -> the input it billed

    def api_call(self, endpoint: str) -> None:
        """One /v1/ call arrived (counted whatever its answer, 429s included)."""
        now = self._clock()
        with self._lock:
            self._calls[endpoint] += 1
            self._api_calls += 1
            window = self._window
            window.append(now)
            while now - window[0] >= 1.0:
                window.popleft()
            if len(window) > self._peak:
                self._peak = len(window)

    def file_call(self) -> None:
        with self._lock:
            self._calls["files"] += 1
            self._last_file_at = time.time()

    def result_read(self) -> None:
        """A /result call was answered with a finished job's result."""
        with self._lock:
            self._last_result_at = time.time()
            if self._first_result_at is None:
                self._first_result_at = self._last_result_at

    def submitted(self, identity: str, request_id: str) -> None:
        """A submit was accepted (a job exists, whether or not the client got the answer)."""
        with self._lock:
            self._identities[identity] += 1
            self._requests[request_id] = identity

    def asked(self, request_id: str) -> bool:
        """The client asked about an accepted request by its id; True the first time."""
        with self._lock:
            if request_id in self._asked or request_id not in self._requests:
                return False
            self._asked.add(request_id)
            return True

    def throttled(self) -> None:
        with self._lock:
            self._throttled += 1
            self._faults["rate_limited"] += 1

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def billed(self, request_id: str, identity: str, usd: float) -> None:
        """A job of input `identity` was billed `usd` (once per request id)."""
        with self._lock:
            self._billed[request_id] = usd
            self._billed_identity[request_id] = identity

    def unbill(self, request_id: str) -> None:
        """A job cancelled while queued: whatever it was billed is refunded."""
        with self._lock:
            self._billed.pop(request_id, None)
            self._billed_identity.pop(request_id, None)

    def billed_for(self, request_id: str) -> float:
        """What one request was billed (0 when it was not)."""
        with self._lock:
            return self._billed.get(request_id, 0.0)

    def billed_usd(self) -> float:
        with self._lock:
            return float(sum((Decimal(repr(v)) for v in self._billed.values()), Decimal(0)))

    def snapshot(
        self, jobs: dict[str, int], run_times: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        total = self.billed_usd()
        with self._lock:
            identities = dict(self._identities)
            untracked = [i for r, i in self._requests.items() if r not in self._asked]
            lost = set(untracked)
            per_identity: dict[str, Decimal] = {}
            for request_id, usd in self._billed.items():
                ident = self._billed_identity[request_id]
                per_identity[ident] = per_identity.get(ident, Decimal(0)) + Decimal(repr(usd))
            return {
                "calls": dict(self._calls),
                "api_calls": self._api_calls,
                "submits": sum(identities.values()),
                "submits_per_identity": identities,
                "untracked_submits": len(untracked),
                "duplicate_submits": sum(1 for i, n in identities.items() if n > 1 and i in lost),
                "throttled": self._throttled,
                "peak_rate_1s": self._peak,
                "faults": dict(self._faults),
                "jobs": jobs,
                "run_times": run_times or {},
                "first_result_at": self._first_result_at,
                "last_result_at": self._last_result_at,
                "last_file_at": self._last_file_at,
                "billed_usd": total,
                "billed": dict(self._billed),
                "billed_per_identity": {k: float(v) for k, v in per_identity.items()},
            }

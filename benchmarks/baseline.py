"""The hand-written script a user would otherwise write: the baseline batchrun is measured against.

A thread pool; each thread takes one job at a time: submit it, poll /status every second until
it is finished, fetch /result (or, with --read-result, poll /result itself), download every
output URL. Jobs: one model and a prompts file, or --jobs (the JSON lines of `plan --json`).
A 429 is retried after sleeping (Retry-After when given, else one second). No state file, no
shared rate limit.

    RUNCOMFY_TOKEN=... python benchmarks/baseline.py --api-base http://127.0.0.1:8000 \\
        --model google/nano-banana-2-lite/text-to-image --prompts prompts.txt --threads 16

Prints one JSON object on stdout: makespan, calls per endpoint, 429s received, jobs done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

FINISHED = {"completed", "succeeded", "failed", "cancelled", "canceled"}


@dataclass
class Tally:
    """Calls per endpoint and 429s, shared by every thread."""

    calls: Counter = field(default_factory=Counter)
    throttled: int = 0
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.calls[endpoint] += 1
            if status == 429:
                self.throttled += 1


class Client:
    """Per-thread session (a requests.Session is not shared across threads)."""

    def __init__(self, base: str, token: str, tally: Tally, deadline: float) -> None:
        self.base = base.rstrip("/")
        self.tally = tally
        self.deadline = deadline
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, endpoint: str, path: str, **kw: Any) -> dict[str, Any]:
        """One API call, retried on 429 after a sleep, until the deadline."""
        while time.monotonic() < self.deadline:
            resp = self.session.request(method, self.base + path, timeout=60, **kw)
            self.tally.count(endpoint, resp.status_code)
            if resp.status_code == 429:
                time.sleep(_retry_after(resp))
                continue
            resp.raise_for_status()
            return resp.json()
        raise TimeoutError("deadline passed")


def _retry_after(resp: requests.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _urls(output: Any) -> list[str]:
    """Every http(s) URL in a result's `output`, in document order."""
    if isinstance(output, str):
        return [output] if output.startswith(("http://", "https://")) else []
    if isinstance(output, dict):
        return [u for v in output.values() for u in _urls(v)]
    if isinstance(output, list):
        return [u for v in output for u in _urls(v)]
    return []


def run_job(
    client: Client,
    model: str,
    inputs: dict[str, Any],
    out_dir: Path,
    poll: float,
    read_result: bool = False,
) -> str:
    """Submit, then every `poll` seconds ask /status (then /result once finished), or with
    `read_result` ask /result itself until it holds a finished job."""
    sub = client.call("POST", "submit", f"/v1/models/{model}", json=inputs)
    rid = sub["request_id"]
    endpoint = "result" if read_result else "status"
    while True:
        time.sleep(poll)
        st = client.call("GET", endpoint, f"/v1/requests/{rid}/{endpoint}")
        if st.get("status") in FINISHED:
            break
    res = st if read_result else client.call("GET", "result", f"/v1/requests/{rid}/result")
    for i, url in enumerate(_urls(res.get("output"))):
        data = client.session.get(url, timeout=60)
        client.tally.count("download", data.status_code)
        data.raise_for_status()
        (out_dir / f"{rid}-{i}{Path(url).suffix[:8]}").write_bytes(data.content)
    return str(res.get("status"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api-base", required=True)
    ap.add_argument("--model", help="the model of every prompt (with --prompts)")
    ap.add_argument("--prompts", help="a file, one prompt a line")
    ap.add_argument("--jobs", help="a file of JSON lines with model_id and inputs (plan --json)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    ap.add_argument("--read-result", action="store_true", help="poll /result, not /status")
    ap.add_argument("--out-dir", default="baseline-out")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this long")
    args = ap.parse_args(argv)

    token = os.environ.get("RUNCOMFY_TOKEN", "")
    if args.jobs:
        lines = Path(args.jobs).read_text().splitlines()
        jobs = [(j["model_id"], j["inputs"]) for j in map(json.loads, lines) if j]
    elif args.prompts and args.model:
        prompts = Path(args.prompts).read_text().splitlines()
        jobs = [(args.model, {"prompt": p}) for p in prompts]
    else:
        ap.error("give --jobs, or --model and --prompts")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    deadline = time.monotonic() + args.timeout
    local = threading.local()

    def one(job: tuple[str, dict[str, Any]]) -> str:
        if not hasattr(local, "client"):
            local.client = Client(args.api_base, token, tally, deadline)
        try:
            model, inputs = job
            return run_job(local.client, model, inputs, out_dir, args.poll, args.read_result)
        except Exception as exc:  # a user's script logs and goes on
            with tally.lock:
                tally.errors[type(exc).__name__] += 1
            return "error"

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        outcomes = Counter(pool.map(one, jobs))
    makespan = time.monotonic() - start
    json.dump(
        {
            "jobs": len(jobs),
            "threads": args.threads,
            "makespan_s": round(makespan, 3),
            "calls": dict(tally.calls),
            "throttled": tally.throttled,
            "outcomes": dict(outcomes),
            "errors": dict(tally.errors),
        },
        sys.stdout,
    )
    print()
    return 0 if outcomes.get("succeeded", 0) == len(jobs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

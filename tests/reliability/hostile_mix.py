"""The hostile soak's server: one seeded answer function (`Mix`) that gives each of 300 jobs
a fault drawn from SEED, and counts what it saw. A job is known by its `seed` input."""

from __future__ import annotations

import gzip
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .conftest import TOKEN
from .hostile_api import PNG, Call, Reply

N_JOBS = 300
SEED = 1515
MANY = 2_000  # outputs of the one job with many
BOMB = gzip.compress(b"0" * (20 * 1024 * 1024), compresslevel=9)  # 20 MB once decoded

# Faults on a job's first submit that leave it unknown ("may have reached the server"). They
# go to seeds at least 9 apart, so the circuit breaker (MAX_AMBIGUOUS_SUBMITS in a row) holds.
AMBIGUOUS = {"s502": 6, "shtml": 4, "sdrop": 2}
OTHERS = {
    "s429": 3,  # 429, Retry-After inf / ², the token in the reason phrase
    "srid": 3,  # a request id with the token in JSON escapes
    "r404": 12,  # the first /result read answers 404 404001
    "rtrickle": 8,  # the first /result read trickles (about 2.4 s)
    "rgzip": 6,  # a gzip-encoded /result
    "rbomb": 1,  # the first /result read is 20 MB of zeros once decoded
    "rreason": 4,  # the first /result read answers 500 with the token in the reason phrase
    "r429": 2,  # the first /result read answers 429 with Retry-After ²
    "cost": 8,  # Infinity, NaN, 1e309, -0.5
    "ferr": 4,  # failed, the error holding the token in JSON escapes
    "fbig": 2,  # failed with 200 KB of error text
    "fctrl": 3,  # failed with control characters in the error
    "noout": 1,  # succeeded without output
    "urlesc": 3,  # an output URL holding the token in JSON escapes
    "traverse": 4,  # output URLs and redirects that lead outside
    "part": 2,  # outputs a.png and a.png.part
    "clen": 2,  # a file with Content-Length ²
    "f503": 2,  # a file answering 503, Retry-After a date in 2099, then the file
    "many": 1,  # 2,000 outputs (answered only from the third run on)
}
COSTS = ["Infinity", "NaN", "1e309", "-0.5"]
FIRST_READ = ("r404", "rtrickle", "rbomb", "rreason", "r429")  # faults of a job's first read
ON_SUBMIT = {"s429", "srid", *AMBIGUOUS}


def u_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def half_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04X}" if i % 2 else c for i, c in enumerate(text))


TOKEN_FORMS = [TOKEN, u_escaped(TOKEN), u_escaped(TOKEN).upper(), half_escaped(TOKEN)]


def draw_faults() -> dict[int, str]:
    """seed -> fault, reproducible from SEED (seeds without one are answered honestly)."""
    rng = random.Random(SEED)
    spaced = rng.sample(range(5, N_JOBS + 1, 9), sum(AMBIGUOUS.values()))
    kinds = [k for k, n in AMBIGUOUS.items() for _ in range(n)]
    faults = dict(zip(spaced, kinds, strict=True))
    rest = [s for s in range(1, N_JOBS + 1) if s not in faults]
    kinds = [k for k, n in OTHERS.items() for _ in range(n)]
    faults.update(zip(rng.sample(rest, len(kinds)), kinds, strict=True))
    return faults


@dataclass
class Mix:
    """The seeded hostile server's answers, and what it saw: `paid` counts the submits of each
    seed that may have created a job (accepted or ambiguous; 429s refuse, so they do not)."""

    outside: Path
    faults: dict[int, str] = field(default_factory=draw_faults)
    phase: int = 1  # which batchrun run is going (the many-output job answers from 3 on)
    paid: Counter[int] = field(default_factory=Counter)
    submits: list[tuple[int, int]] = field(default_factory=list)  # (phase, seed), paid ones
    tries: Counter[int] = field(default_factory=Counter)  # submit attempts per seed
    reads: Counter[str] = field(default_factory=Counter)  # /result reads per request id
    files: Counter[str] = field(default_factory=Counter)  # GETs per file path
    by_rid: dict[str, int] = field(default_factory=dict)
    trickle_at: float = 0.0  # when the last trickled answer began (monotonic)
    seen: Counter[str] = field(default_factory=Counter)  # faults answered, by kind
    base: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, call: Call) -> Reply | None:
        handler = {"submit": self.submit, "result": self.result, "file": self.file}.get(call.kind)
        return handler(call) if handler else None

    def variant(self, seed: int) -> int:
        """Which of its fault's jobs this one is (0, 1, ...): variations go round in turn."""
        fault = self.faults[seed]
        return sorted(s for s, f in self.faults.items() if f == fault).index(seed)

    def _saw(self, kind: str) -> None:
        with self.lock:
            self.seen[kind] += 1

    def submit(self, call: Call) -> Reply:
        seed = int(json.loads(call.body)["seed"])
        with self.lock:
            first = self.tries[seed] == 0
            self.tries[seed] += 1
        fault = self.faults.get(seed, "") if first else ""
        if fault == "s429":
            self._saw(fault)
            wait = ["inf", "²", "Infinity"][self.variant(seed) % 3]
            return Reply(
                429, {"error_code": 429, "error_message": "slow down"},
                headers={"Retry-After": wait}, reason=f"Too Many Requests Bearer {TOKEN}",
            )  # fmt: skip
        with self.lock:
            self.paid[seed] += 1
            self.submits.append((self.phase, seed))
            rid = f"r{call.n}"
            self.by_rid[rid] = seed
        if fault in AMBIGUOUS:
            self._saw(fault)
        if fault == "s502":
            page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return Reply(502, page, headers={"Content-Type": "text/html"})
        if fault == "shtml":
            page = "<html><head><title>Sign in to the Wi-Fi</title></head></html>"
            return Reply(200, page, headers={"Content-Type": "text/html"})
        if fault == "sdrop":
            return Reply(drop=True)
        if fault == "srid":
            self._saw(fault)
            escaped = u_escaped(TOKEN)
            return Reply(
                body='{"request_id": "RID-ESC"}'.replace("RID", rid).replace("ESC", escaped)
            )
        return Reply(body={"request_id": rid})

    def result(self, call: Call) -> Reply:
        rid = call.request_id.split("-")[0]  # "r17-***", the scrubbed id, is r17
        with self.lock:
            seed = self.by_rid.get(rid)
            n = self.reads[rid]
            self.reads[rid] += 1
        if seed is None:
            return Reply(404, {"error_code": 404001, "error_message": "no such request"})
        fault = self.faults.get(seed, "")
        waiting = {"request_id": rid, "status": "in_progress"}
        if n == 0 and fault in FIRST_READ:
            self._saw(fault)
            if fault == "r404":
                return Reply(404, {"error_code": 404001, "error_message": "request not found"})
            if fault == "rtrickle":
                with self.lock:
                    self.trickle_at = time.monotonic()
                body = json.dumps({**waiting, "pad": "x" * 40}).encode()
                return Reply(body=body, trickle_s=2.4 / len(body))
            if fault == "rbomb":
                return Reply(body=BOMB, headers={"Content-Encoding": "gzip"})
            if fault == "rreason":
                return Reply(500, b"", reason=f"Internal Server Error Bearer {TOKEN}")
            return Reply(429, b"", headers={"Retry-After": "²"})
        if fault == "many" and self.phase < 3:
            return Reply(body=waiting)
        return self.finished(rid, seed, fault)

    def finished(self, rid: str, seed: int, fault: str) -> Reply:
        """The /result of a finished job, with the job's fault."""
        url = f"{self.base}/files/{rid}.png"
        done: dict[str, Any] = {"request_id": rid, "status": "succeeded", "cost": 0.04}
        if fault and fault not in ON_SUBMIT and fault not in FIRST_READ:
            self._saw(fault)
        if fault == "cost":
            cost = COSTS[self.variant(seed) % len(COSTS)]
            text = json.dumps({**done, "output": {"image": url}, "cost": "COST"})
            return Reply(body=text.replace('"COST"', cost))  # not JSON numbers: raw text
        if fault == "ferr":
            escape = [u_escaped, half_escaped][self.variant(seed) % 2](TOKEN)
            text = '{"status": "failed", "error": {"message": "bad key %s", "code": "%s"}}'
            return Reply(body=text % (escape, escape))
        if fault == "fbig":
            message = "start " + "x" * 200_000 + " end"
            return Reply(body={"status": "failed", "error": {"message": message}})
        if fault == "fctrl":
            message = "\x1b[31mboom\x1b[0m\x07\x00\x08\r\x1b]0;title\x07 done"
            return Reply(body={"status": "failed", "error": message})
        if fault == "noout":
            return Reply(body=done)
        if fault == "urlesc":
            text = '{"status": "succeeded", "output": {"image": "%s/files/%s.png"}}'
            return Reply(body=text % (self.base, u_escaped(TOKEN)))
        if fault == "traverse":
            return Reply(body={**done, "output": {"images": self.traversals(rid)}})
        if fault == "part":
            output = {
                "image": f"{self.base}/files/{rid}/a.png",
                "b": f"{self.base}/files/{rid}/a.png.part",
            }
            return Reply(body={**done, "output": output})  # fmt: skip
        if fault in ("clen", "f503"):
            return Reply(body={**done, "output": {"image": f"{self.base}/files/{fault}-{rid}.png"}})
        if fault == "many":
            urls = [f"{self.base}/files/{rid}/m{i}.png" for i in range(MANY)]
            return Reply(body={**done, "output": {"images": urls}})
        reply = Reply(body={**done, "output": {"image": url}})
        if fault == "rgzip":
            reply = Reply(
                body=gzip.compress(json.dumps(reply.body).encode()),
                headers={"Content-Encoding": "gzip"},
            )
        return reply

    def traversals(self, rid: str) -> list[str]:
        base, port = self.base, self.base.rsplit(":", 1)[1]
        return [
            f"{base}/files/..%2F..%2F..%2Foutside%2Fpwn1.png",
            f"{base}/files/%2e%2e/%2e%2e/%2e%2e/outside/pwn2.png",
            f"{base}/files/..%5C..%5C..%5Coutside%5Cpwn3.png",
            f"{base}/files/{quote(str(self.outside))}/pwn4.png",
            f"file://{self.outside}/sentinel.txt",
            f"http://localhost:{port}/files/other-host.png",
            f"{base}/files/redir-file",
            f"{base}/files/redir-host",
            f"{base}/files/redir-traverse",
            f"{base}/files/{rid}.png",
        ]

    def file(self, call: Call) -> Reply:
        path = call.path
        with self.lock:
            n = self.files[path]
            self.files[path] += 1
        if path.endswith("/redir-file"):
            return Reply(302, b"", headers={"Location": f"file://{self.outside}/sentinel.txt"})
        if path.endswith("/redir-host"):
            port = self.base.rsplit(":", 1)[1]
            return Reply(302, b"", headers={"Location": f"http://localhost:{port}/files/x.png"})
        if path.endswith("/redir-traverse"):
            where = f"{self.base}/files/..%2F..%2F..%2Foutside%2Fpwn5.png"
            return Reply(302, b"", headers={"Location": where})
        if "/clen-" in path:
            return Reply(body=PNG, headers={"Content-Type": "image/png", "Content-Length": "²"})
        if "/f503-" in path and n == 0:
            return Reply(503, b"busy", headers={"Retry-After": "Fri, 31 Dec 2099 23:59:59 GMT"})
        body = PNG + path.encode()  # each file its own bytes (a.png and a.png.part differ)
        return Reply(body=body, headers={"Content-Type": "image/png"})

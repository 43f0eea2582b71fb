"""Hostile soak (issue #15's acceptance run): 300 jobs against one seeded server that mixes the
fault classes, interrupted once by SIGTERM and once by SIGHUP, then run again until done.

The server (`Mix`) answers each job by a fault drawn for it from SEED: gateway 502s, captive
portal pages and dropped connections on submits; 429s with odd Retry-After and the token in the
reason phrase; a request id carrying the token in JSON escapes; transient 404s, trickled, gzip
and gzip-bomb /result bodies; costs that are not amounts; failed results whose error holds the
escaped token, 200 KB of text or control characters; succeeded without output; output URLs
that traverse, leave the host or redirect outside; `a.png` next to `a.png.part`; a file whose
Content-Length is `²`, one that answers 503 with a Retry-After in 2099; and one job with 2,000
outputs. A job is known on the server by its `seed` input (each job's seed is its own).

At the end: the token in no file and no output, nothing written outside the run folder, no job
paid twice unless it was marked unknown first (and --resubmit-unknown sent exactly those),
each signal honoured within 5 s with exit 130, and peak RSS of batchrun under 300 MB.
"""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest

from .conftest import (
    TOKEN,
    ambiguous_jobs,
    batchrun_cmd,
    clean_env,
    plan_jobs,
    read_report,
    run_cli,
    state_rows,
    tree_snapshot,
    wait_until,
)
from .hostile_api import PNG, Call, HostileApi, Reply, manifest_for

N_JOBS = 300
SEED = 1515
MANY = 2_000  # outputs of the one job with many
SIGNAL_BUDGET_S = 5.0
RSS_BUDGET_MB = 300.0
BOMB = gzip.compress(b"0" * (20 * 1024 * 1024), compresslevel=9)  # 20 MB once decoded
SENTINELS = {"sentinel.txt": b"outside, must survive\n", "pwn1.png": b"not yours\n"}

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


@dataclass
class Run:
    """One `batchrun run` process: exit code, output, and figures."""

    code: int
    out: str
    peak_rss_mb: float
    took_s: float
    signal_to_exit_s: float | None = None


def _vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode("utf-8", "replace")


def run_batchrun(cmd: list[str], when: Any = None, sig: int | None = None) -> Run:
    """Run `cmd`, polling its peak RSS; with `sig`, send it once `when()` is true and time the
    exit from there."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.monotonic()
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=out, stderr=err)
        peak = [0.0]

        def watch() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _vm_hwm_mb(proc.pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        took = None
        try:
            if sig is not None:
                assert wait_until(when, timeout=60), "the run never reached the signal point"
                assert proc.poll() is None, "the run ended before the signal"
                sent = time.monotonic()
                proc.send_signal(sig)
                proc.wait(timeout=30)
                took = time.monotonic() - sent
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        watcher.join()
        elapsed = time.monotonic() - began
        return Run(proc.returncode, _read(out) + _read(err), peak[0], elapsed, took)


def _leaks(root: Path, texts: list[str]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes().decode("utf-8", "replace")
            found += [f"{p.relative_to(root)}: {f!r}" for f in TOKEN_FORMS if f in data]
    for i, text in enumerate(texts):
        found += [f"output {i}: {f!r}" for f in TOKEN_FORMS if f in text]
    return found


@pytest.mark.slow
def test_hostile_soak(tmp_path: Path) -> None:
    started = time.monotonic()
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, data in SENTINELS.items():
        (outside / name).write_bytes(data)
    run_dir = tmp_path / "run"
    manifest = manifest_for(
        tmp_path, N_JOBS,
        run={"rate_limit": "40/s", "max_in_flight": 10},  # retries: 0, failed jobs stay failed
        download=True,
    )  # fmt: skip
    seed_of = {j["job_id"]: int(j["inputs"]["seed"]) for j in plan_jobs(manifest)}
    before = tree_snapshot(tmp_path, exclude=run_dir)
    mix = Mix(outside)
    runs: list[Run] = []
    unknown_at_start: dict[int, set[int]] = {}  # phase -> seeds marked unknown as it began
    resubmit_phase = 0
    mid_trickle: list[bool] = []  # signals sent while a trickled answer was being read

    with HostileApi(mix.answer, nodelay=True) as api:
        mix.base = api.base_url
        cmd = batchrun_cmd(
            "run", str(manifest), "--api-base", api.base_url, "--run-dir", str(run_dir)
        )  # fmt: skip

        def unknown_now() -> set[int]:
            return {seed_of[j] for j in ambiguous_jobs(run_dir)}

        def trickling() -> bool:
            return time.monotonic() - mix.trickle_at < 1.5

        def after(n: int) -> Any:
            # n paid submits in, and (for a while) a trickled answer being read
            deadline: list[float] = []

            def ready() -> bool:
                if len(mix.submits) < n:
                    return False
                deadline[:] = deadline or [time.monotonic() + 5]
                if trickling():
                    mid_trickle.append(True)
                    return True
                return time.monotonic() > deadline[0]

            return ready

        for phase, sig, at in ((1, signal.SIGTERM, 80), (2, signal.SIGHUP, 160)):
            mix.phase = phase
            unknown_at_start[phase] = unknown_now()
            run = run_batchrun(cmd, after(at), sig)
            runs.append(run)
            assert run.code == 130, f"exit {run.code} after signal {sig}: {run.out[-3000:]}"
            print(f"\n{signal.Signals(sig).name}: exit after {run.signal_to_exit_s:.2f}s")

        # Run again until every job ended or is left unknown; then send the unknown ones.
        for phase in range(3, 7):
            mix.phase = phase
            unknown_at_start[phase] = unknown_now()
            resubmit = phase > 3 and not _open_jobs(run_dir)
            run = run_batchrun([*cmd, "--resubmit-unknown"] if resubmit else cmd)
            runs.append(run)
            assert run.code in (0, 1), f"exit {run.code}: {run.out[-3000:]}"
            if resubmit:
                resubmit_phase = phase
                break
        assert resubmit_phase, "the runs did not settle"
        status = run_cli("status", str(run_dir), token=None, timeout=60)
        report = run_cli("report", str(run_dir), token=None, timeout=60)

    outs = [r.out for r in runs] + [status.stdout + status.stderr, report.stdout + report.stderr]
    for text in outs:
        assert "Traceback" not in text, text[-3000:]
    rows = read_report(run_dir)
    states = Counter(r["status"] for r in rows)
    elapsed = time.monotonic() - started

    # (1) the token, in any form, in no file under tmp_path and in no output
    leaks = _leaks(tmp_path, outs)
    # (2) nothing written outside the run folder
    after_runs = tree_snapshot(tmp_path, exclude=run_dir)
    changed = sorted(k for k in set(before) | set(after_runs) if before.get(k) != after_runs.get(k))
    # (3) a job submitted again was marked unknown before; --resubmit-unknown sent exactly those
    per_phase = Counter(mix.submits)
    twice_in_a_run = sorted(f"seed {s} x{n} in run {p}" for (p, s), n in per_phase.items() if n > 1)
    unexplained = []
    first_phase: dict[int, int] = {}
    for p, s in mix.submits:
        if s in first_phase and first_phase[s] < p:
            if p != resubmit_phase or s not in unknown_at_start[p]:
                unexplained.append(f"seed {s} again in run {p}")
        first_phase.setdefault(s, p)
    resent = {s for p, s in mix.submits if p == resubmit_phase}
    paid_twice = sorted(s for s, n in mix.paid.items() if n > 1)
    # (4) signals, (5) memory
    signal_times = [r.signal_to_exit_s for r in runs if r.signal_to_exit_s is not None]
    peak_rss = max(r.peak_rss_mb for r in runs)

    print(
        f"hostile soak: {N_JOBS} jobs in {elapsed:.1f}s over {len(runs)} runs "
        f"(exit codes {[r.code for r in runs]}, {[round(r.took_s, 1) for r in runs]} s), "
        f"final statuses {dict(states)}\n"
        f"  faults answered {dict(sorted(mix.seen.items()))}\n"
        f"  submits paid {sum(mix.paid.values())} for {len(mix.paid)} jobs; paid twice "
        f"{len(paid_twice)}, all marked unknown first: {not unexplained}; "
        f"--resubmit-unknown sent {len(resent)} of {len(unknown_at_start[resubmit_phase])} "
        f"unknown\n"
        f"  signal to exit {[f'{t:.2f}s' for t in signal_times]} ({len(mid_trickle)} of them "
        f"during a trickled read), peak RSS {peak_rss:.0f} MB\n"
        f"  token occurrences {len(leaks)}, writes outside the run folder {len(changed)}"
    )
    assert leaks == [], leaks[:20]
    assert changed == [], changed[:20]
    for name, data in SENTINELS.items():
        assert (outside / name).read_bytes() == data
    assert twice_in_a_run == [], twice_in_a_run
    assert unexplained == [], unexplained
    assert resent == unknown_at_start[resubmit_phase], (resent, unknown_at_start[resubmit_phase])
    assert len(signal_times) == 2 and all(t < SIGNAL_BUDGET_S for t in signal_times)
    assert 0 < peak_rss < RSS_BUDGET_MB, f"peak RSS {peak_rss:.0f} MB"
    # The mix was what it claims: every fault kind was answered, jobs were resubmitted, and
    # every job ended (none left unknown once resubmitted).
    assert set(mix.seen) == set(AMBIGUOUS) | set(OTHERS), set(AMBIGUOUS) | set(OTHERS) - set(
        mix.seen
    )
    assert len(rows) == N_JOBS and len(resent) >= sum(AMBIGUOUS.values())
    # Costs that are not amounts left summary.json strict JSON; the 2,000 outputs all listed.
    json.loads((run_dir / "summary.json").read_text(), parse_constant=_not_json)
    [many] = [r for r in rows if mix.faults.get(seed_of[r["job_id"]]) == "many"]
    assert many["status"] == "succeeded" and len(many["output_files"].split(";")) == MANY
    assert not _open_jobs(run_dir) and states["unknown"] == 0, dict(states)


def _not_json(word: str) -> None:
    raise AssertionError(f"summary.json holds {word}, which strict JSON readers refuse")


def _open_jobs(run_dir: Path) -> list[str]:
    """Jobs neither ended nor left unknown (a plain rerun would still work on them)."""
    ended = {"succeeded", "failed", "timed_out", "cancelled", "unknown"}
    return [r["job_id"] for r in state_rows(run_dir) if r.get("status") not in ended]

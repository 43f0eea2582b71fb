"""Hostile soak (issue #15's acceptance run): 300 jobs against one seeded server that mixes the
fault classes, interrupted once by SIGTERM and once by SIGHUP, then run again until done.

The server (`Mix`, in hostile_mix.py) answers each job by a fault drawn for it from SEED:
gateway 502s, captive portal pages and dropped connections on submits; 429s with odd Retry-After
and the token in the reason phrase; a request id carrying the token in JSON escapes; transient
404s, trickled, gzip and gzip-bomb /result bodies; costs that are not amounts; failed results
whose error holds the escaped token, 200 KB of text or control characters; succeeded without
output; output URLs that traverse, leave the host or redirect outside; `a.png` next to
`a.png.part`; a file whose Content-Length is `²`, one that answers 503 with a Retry-After in
2099; and one job with 2,000 outputs. A job is known on the server by its `seed` input.

At the end: the token in no file and no output, nothing written outside the run folder, no job
paid twice unless it was marked unknown first (and --resubmit-unknown sent exactly those),
each signal honoured within 5 s with exit 130, and peak RSS of batchrun under 300 MB.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from tests.reliability.conftest import (
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
from tests.reliability.hostile_api import HostileApi, manifest_for
from tests.reliability.hostile_mix import AMBIGUOUS, MANY, N_JOBS, OTHERS, TOKEN_FORMS, Mix

SIGNAL_BUDGET_S = 5.0
RSS_BUDGET_MB = 300.0
# What a person reads: no control character a server sent may reach them raw (tab, newline ok).
READABLE = ("report.csv", "report.html", "summary.json")
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
SENTINELS = {"sentinel.txt": b"outside, must survive\n", "pwn1.png": b"not yours\n"}


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
    # Control characters from the server reach no output or report file; the succeeded job
    # without output is counted and said.
    shown = [*outs, *((run_dir / n).read_text(errors="replace") for n in READABLE)]
    raw = sorted({repr(c) for text in shown for c in CONTROL.findall(text)})
    assert raw == [], raw
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["succeeded_without_output"] == OTHERS["noout"]
    assert "without output" in runs[-1].out


def _not_json(word: str) -> None:
    raise AssertionError(f"summary.json holds {word}, which strict JSON readers refuse")


def _open_jobs(run_dir: Path) -> list[str]:
    """Jobs neither ended nor left unknown (a plain rerun would still work on them)."""
    ended = {"succeeded", "failed", "timed_out", "cancelled", "unknown"}
    return [r["job_id"] for r in state_rows(run_dir) if r.get("status") not in ended]

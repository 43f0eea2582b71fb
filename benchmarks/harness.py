"""What every benchmark section shares: child processes measured with their own rusage, the
simulator process, the counts it keeps, manifests, sizes (Params) and the run's context (Bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # the repo's testing/ helpers, also when run as a script
from testing import cli  # noqa: E402
from testing.simproc import SimProcess, start_simulator  # noqa: E402

RUN_PY = HERE / "run.py"  # the entry point; `run.py --worker NAME ...` runs a worker
MODEL = "google/nano-banana-2-lite/text-to-image"
TOKEN = "bench-token"
API_ENDPOINTS = ("submit", "status", "result", "cancel")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- child processes, measured -------------------------------------------------------------


@dataclass
class Measured:
    """A finished child process: exit code, wall time, its own CPU time and peak RSS.

    maxrss_mb is the child's own high-water mark (VmHWM, sampled while it runs): its rusage
    ru_maxrss starts from this process's own peak, which the child is spawned from, and this
    process may have read a big output before (rusage_maxrss_mb keeps that figure)."""

    rc: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    stdout: str
    stderr: str
    timed_out: bool = False
    rusage_maxrss_mb: float = 0.0


def run_measured(cmd: list[str], *, timeout: float, env: dict | None = None) -> Measured:
    """Run `cmd`, reap it with os.wait4 so the rusage is this child's alone; kill at timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        reaped: dict[str, Any] = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(end=time.perf_counter(), status=status, usage=usage)

        hwm_kb = [0]
        sampler = threading.Thread(target=_sample_hwm, args=(proc.pid, hwm_kb, reaped), daemon=True)
        waiter = threading.Thread(target=reap, daemon=True)
        sampler.start()
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            proc.kill()
            waiter.join(10)
        sampler.join(10)
        proc.returncode = os.waitstatus_to_exitcode(reaped["status"])
        usage = reaped["usage"]
        out.seek(0)
        err.seek(0)
        return Measured(
            rc=proc.returncode,
            wall_s=reaped["end"] - start,
            cpu_s=usage.ru_utime + usage.ru_stime,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            maxrss_mb=(hwm_kb[0] or usage.ru_maxrss) / 1024,  # KiB on Linux
            rusage_maxrss_mb=usage.ru_maxrss / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out,
        )


def _sample_hwm(pid: int, peak_kb: list[int], reaped: dict[str, Any]) -> None:
    """The child's VmHWM, every 10 ms until it is reaped (the last reading is its peak)."""
    status = Path(f"/proc/{pid}/status")
    while not reaped:
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
        time.sleep(0.01)


def batchrun_cmd(*args: str, profile: Path | None = None) -> list[str]:
    if profile is not None:  # every thread, CPU time: see profiling.worker_profile
        return [sys.executable, str(RUN_PY), "--worker", "profile", str(profile), *args]
    return cli.batchrun_cmd(*args)


def compile_bytecode() -> None:
    """Byte-compile the batchrun the children import (`-m batchrun` from REPO), as installing
    it does. Where PYTHONDONTWRITEBYTECODE is set (some shells and CI images set it), a child
    compiles every source changed since its bytecode was written, on every run: 35 ms more for
    a `report`, which no installed batchrun pays."""
    where = "import batchrun, os; print(os.path.dirname(batchrun.__file__))"
    probe = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, cwd=REPO, check=True
    )
    folder = probe.stdout.strip()
    subprocess.run([sys.executable, "-m", "compileall", "-q", folder], cwd=REPO, check=True)


def has_command(name: str) -> bool:
    probe = subprocess.run(batchrun_cmd(name, "--help"), capture_output=True, cwd=REPO)
    return probe.returncode == 0


def token_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RUNCOMFY_TOKEN"] = TOKEN
    env.pop("RUNCOMFY_MODEL_API_BASE", None)
    return env


# ---- the simulator ----------------------------------------------------------------------------
# ---- the simulator ----------------------------------------------------------------------------


def simulator(
    *, run_time: float, rate_limit: float | None, log_path: Path, **settings: Any
) -> SimProcess:
    """`batchrun simulate` in its own process (one per measurement, so counters start at 0).

    Every job takes exactly `run_time` (no jitter) unless `settings` say otherwise."""
    base = {"concurrency": 0, "token": TOKEN, "seed": 1, "run_time": run_time}
    base["run_time_jitter"] = 0
    base["rate_limit"] = f"{rate_limit:g}/s" if rate_limit else None
    return start_simulator(token=TOKEN, settings={**base, **settings}, log=log_path)


@dataclass
class SimCounts:
    """What the simulator saw between two /_sim/stats snapshots."""

    calls: dict[str, int]  # per endpoint: submit, status, result, cancel, catalog, files
    throttled: int
    peak_rate_1s: float | None
    max_submits_per_identity: int | None

    @property
    def api_calls(self) -> int:
        return sum(self.calls.get(k, 0) for k in API_ENDPOINTS)


def _endpoint_counts(stats: dict[str, Any]) -> dict[str, int]:
    """Calls per endpoint (submit, status, result, cancel, catalog, files) of a stats snapshot."""
    return {str(k): int(v) for k, v in (stats.get("calls") or {}).items()}


def sim_delta(before: dict[str, Any], after: dict[str, Any]) -> SimCounts:
    b, a = _endpoint_counts(before), _endpoint_counts(after)
    submits = after.get("submits_per_identity") or {}
    values = list(submits.values()) if isinstance(submits, dict) else []
    return SimCounts(
        calls={k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b))},
        throttled=int(after.get("throttled", 0)) - int(before.get("throttled", 0)),
        peak_rate_1s=after.get("peak_rate_1s"),
        max_submits_per_identity=max(values) if values else None,
    )


# ---- manifests --------------------------------------------------------------------------------


def write_manifest(
    path: Path, *, name: str, prompts: int, run: dict[str, Any], out_dir: Path, download: bool
) -> Path:
    """A sweep of `prompts` distinct prompts over one model (distinct inputs, distinct jobs)."""
    doc = {
        "version": 1,
        "name": name,
        "run": run,
        "outputs": {"dir": str(out_dir), "download": download},
        "models": [
            {"id": MODEL, "matrix": {"prompt": [f"benchmark prompt {i}" for i in range(prompts)]}}
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Params:
    """Sizes of every scenario; `--quick` shrinks them."""

    quick: bool
    rate_jobs: int
    rate: float
    run_time: float = 1.0
    threads: tuple[int, ...] = (16, 64)
    overhead_jobs: int = 2000
    overhead_run_time: float = 0.2
    overhead_in_flight: int = 200
    overhead_repeats: int = 3  # runs of each overhead scenario; the median is the figure
    scale_jobs: int = 100_000
    big_run_jobs: int = 1_000_000  # the run whose memory is measured (bench_big_run)
    big_run_done: int = 100_000  # ... until this many of its jobs are done
    plan_sizes: tuple[int, ...] = (100_000, 1_000_000)
    transition_sizes: tuple[int, ...] = (1_000, 100_000)
    transitions: int = 1_000
    cap_s: float = 300.0  # longest any one scale step may take (then killed, figure = "> cap")

    @classmethod
    def make(cls, quick: bool) -> Params:
        if quick:
            return cls(
                quick,
                rate_jobs=300,
                rate=50,
                overhead_jobs=500,
                scale_jobs=20_000,
                big_run_jobs=100_000,
                big_run_done=5_000,
                plan_sizes=(20_000, 100_000),
                cap_s=40.0,
            )
        return cls(quick, rate_jobs=1000, rate=100)

    @property
    def ideal_s(self) -> float:
        return 2 * self.rate_jobs / self.rate + self.run_time


@dataclass
class Bench:
    """Shared context of one benchmark run: sizes, a scratch folder, results so far."""

    params: Params
    tmp: Path
    profile_dir: Path | None
    results: dict[str, Any] = field(default_factory=dict)

    def profile(self, name: str) -> Path | None:
        return None if self.profile_dir is None else self.profile_dir / f"{name}.prof"

    def prompts_file(self, n: int) -> Path:
        path = self.tmp / f"prompts-{n}.txt"
        path.write_text("".join(f"benchmark prompt {i}\n" for i in range(n)))
        return path


def per_job(counts: SimCounts, jobs: int) -> dict[str, float]:
    return {k: round(v / jobs, 3) for k, v in counts.calls.items()}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

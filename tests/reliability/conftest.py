"""Harness for the reliability tests: a standalone simulator process, `batchrun` subprocesses,
manifests, and readers for the run folder (report.csv, state.db, files)."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import cli, simproc
from testing.cli import batchrun_cmd as batchrun_cmd  # re-exported for the suites here
from testing.simproc import SimProcess

# Distinctive, so a grep for it cannot match anything by accident.
TOKEN = "tok-SECRET-7f3a9c"
MODEL = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE_URL = (
    "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp"
)


def clean_env(token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    """The environment for a child process: no inherited RunComfy settings, our token."""
    return cli.clean_env(token, **extra)


# Started from a small process: a child's peak RSS (ru_maxrss) starts at the peak of the
# process it was spawned from (the memory it shared until its exec), here pytest's, which can
# be larger than the command's own. The launcher's one child is all RUSAGE_CHILDREN counts.
_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)\n"
    "try:\n"
    "    code = proc.wait(float(sys.argv[1]))\n"
    "except subprocess.TimeoutExpired:\n"
    "    proc.kill()\n"
    "    raise\n"
    "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def own_peak_rss_mb(cmd: list[str], timeout: float) -> tuple[int, float]:
    """Run `cmd` to its end (killed after `timeout` s); (exit code, its own peak RSS in MB,
    as Linux counts it: ru_maxrss in KiB)."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(timeout), *cmd], env=clean_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    code, kib = done.stdout.split()
    return int(code), int(kib) / 1024


def start_simulator(*flags: str, token: str = TOKEN, timeout: float = 30.0) -> SimProcess:
    """A standalone simulator process that accepts our token (testing.simproc)."""
    return simproc.start_simulator(*flags, token=token, timeout=timeout)


SimFactory = Callable[..., SimProcess]


@pytest.fixture
def simulator() -> Iterator[SimFactory]:
    """A factory: `simulator(*flags)` starts a standalone simulator, stopped after the test."""
    started: list[SimProcess] = []

    def factory(*flags: str, token: str = TOKEN) -> SimProcess:
        sim = start_simulator(*flags, token=token)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


def total_calls(stats: dict[str, Any]) -> int:
    """Every API call the simulator counted (all endpoints, its own /_sim endpoints excluded)."""
    calls = stats.get("calls", stats.get("calls_per_endpoint", {}))
    return sum(int(v) for k, v in calls.items() if not str(k).startswith("/_sim"))


def run_cli(
    *args: str,
    token: str | None = TOKEN,
    timeout: float = 120.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m batchrun ARGS` to completion with our token, capturing its output."""
    return cli.run_cli(*args, token=token, timeout=timeout, cwd=cwd)


def write_manifest(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def sweep(
    n_jobs: int,
    *,
    run: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    name: str = "rel",
    prompt: str = "a red umbrella",
) -> dict[str, Any]:
    """A valid manifest of `n_jobs` jobs on the Kontext edit model (one per seed)."""
    manifest: dict[str, Any] = {
        "version": 1,
        "name": name,
        "run": {"rate_limit": "200/s", "max_in_flight": 50, "poll_interval": "0.1s"},
        "matrix": {"seed": list(range(1, n_jobs + 1))},
        "models": [{"id": MODEL, "inputs": {"prompt": prompt, "image_url": IMAGE_URL}}],
    }
    manifest["run"].update(run or {})
    if outputs:
        manifest["outputs"] = outputs
    return manifest


def read_report(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "report.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def part_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".part"))


def split_cell(cell: str | None) -> list[str]:
    return [x for x in (cell or "").split(";") if x]


def state_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of the jobs table of state.db, read-only (the engine may hold it open)."""
    db = run_dir / "state.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        table = _jobs_table(conn)
        if table is None:
            return []
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def integrity(run_dir: Path) -> str:
    """SQLite's own consistency check of state.db ("ok" when sound)."""
    conn = sqlite3.connect(f"file:{run_dir / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def _jobs_table(conn: sqlite3.Connection) -> str | None:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for name in ("jobs", "job"):
        if name in names:
            return name
    return None


def tree_snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under root, skipping `exclude` and below."""
    snap: dict[str, tuple[int, int]] = {}
    for p in root.rglob("*"):
        if exclude is not None and (p == exclude or exclude in p.parents):
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        snap[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return snap


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)[:4000]


def wait_until(condition: Any, timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def canonical_identity(model_id: str, inputs: dict[str, Any]) -> str:
    """model id + canonical JSON of the inputs: what the simulator counts submits by."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{model_id} {text}"


def plan_jobs(manifest: Path) -> list[dict[str, Any]]:
    """The jobs `batchrun plan --json` expands the manifest to (an independent job list)."""
    res = run_cli("plan", str(manifest), "--json", token=None, timeout=60)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def ambiguous_jobs(run_dir: Path) -> set[str]:
    """Job ids whose submit may have reached the server without our knowing its request id:
    rows the engine marked `unknown` with an error saying so, and rows a kill left in
    `submitting` (the next start must treat those as unknown)."""
    out = set()
    for r in state_rows(run_dir):
        if r.get("status") == "submitting":
            out.add(r["job_id"])
        elif r.get("status") == "unknown" and "may have reached the server" in (r["error"] or ""):
            out.add(r["job_id"])
    return out


@dataclass
class FolderCheck:
    """Figures a finished run folder was checked for."""

    jobs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    files_verified: int = 0
    duplicates: list[str] = field(default_factory=list)  # identities submitted twice, unexplained
    explained_duplicates: int = 0


def check_run_folder(
    run_dir: Path,
    sim: SimProcess,
    planned: list[dict[str, Any]],
    ambiguous: set[str],
) -> FolderCheck:
    """The invariants every run folder must hold once the run ended (asserted here):
    report.csv lists each planned job exactly once; summary.json agrees with it; no `.part`
    remains; every output file of a succeeded job exists and its sha256, recomputed from disk,
    equals the one recorded and the one the simulator served. Submits of one input identity
    more than once are returned in `duplicates` unless its job is in `ambiguous`."""
    rows = read_report(run_dir)
    ids = [r["job_id"] for r in rows]
    assert len(ids) == len(set(ids)), "report.csv lists a job more than once"
    assert sorted(ids) == sorted(j["job_id"] for j in planned), "report.csv lost or added jobs"
    assert part_files(run_dir) == [], f".part files remain: {part_files(run_dir)[:5]}"
    check = FolderCheck(jobs=len(rows))
    for r in rows:
        check.by_status[r["status"]] = check.by_status.get(r["status"], 0) + 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["jobs"] == len(rows), summary
    nonzero = {k: v for k, v in summary["statuses"].items() if v}
    assert nonzero == check.by_status, f"summary.json {nonzero} != report.csv {check.by_status}"
    served = sim.files()
    for r in rows:
        if r["status"] != "succeeded":
            continue
        names = split_cell(r["output_files"])
        shas = split_cell(r["output_sha256"])
        urls = split_cell(r["output_urls"])
        assert names and len(names) == len(shas) == len(urls), f"job {r['job_id']}: {r}"
        for name, sha, url in zip(names, shas, urls, strict=True):
            path = (run_dir / name).resolve()
            assert run_dir.resolve() in path.parents, f"{name} is outside the run folder"
            assert path.is_file(), f"job {r['job_id']}: {name} missing"
            assert sha256_file(path) == sha, f"job {r['job_id']}: {name} differs from its sha256"
            assert served.get(url) == sha, f"job {r['job_id']}: {url} is not what was served"
            check.files_verified += 1
    by_identity = {canonical_identity(j["model_id"], j["inputs"]): j["job_id"] for j in planned}
    stats = sim.stats()
    for ident, n in stats["submits_per_identity"].items():
        assert ident in by_identity, f"the simulator got a submit no job explains: {ident}"
        if n > 1:
            if by_identity[ident] in ambiguous:
                check.explained_duplicates += 1
            else:
                check.duplicates.append(f"{by_identity[ident]} x{n}")
    return check

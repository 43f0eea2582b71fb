"""`batchrun run --simulate`, interrupted (Ctrl-C or kill -9) and run again, resumes.

The in-process simulator keeps its jobs in <run folder>/.simulator/, so the rerun's simulator
still knows the request ids in flight and serves the files of jobs not yet downloaded. And when
stored output URLs have gone stale anyway, a resumed download asks /result for fresh ones.
"""

from __future__ import annotations

import csv
import hashlib
import json
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.simulator import SimSettings, Simulator
from batchrun.simulator.persist import JOURNAL
from batchrun.store.state import StateStore
from testing.cli import batchrun_cmd, clean_env

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
SIM_TOKEN = SimSettings().token
JOBS = 30


def _manifest(tmp_path: Path, jobs: int = JOBS) -> Path:
    data = {
        "version": 1,
        "name": "sim-resume",
        "run": {"rate_limit": "100/s", "poll_interval": "50ms", "max_in_flight": 8},
        "models": [
            {
                "id": FLUX,
                "inputs": {"prompt": "a cat", "image_url": IMAGE},
                "matrix": {"seed": list(range(1, jobs + 1))},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def _cmd(manifest: Path, run_dir: Path, *extra: str) -> list[str]:
    return batchrun_cmd(
        *("run", str(manifest), "--simulate", "--run-dir", str(run_dir)),
        *("--sim", "run_time=0.3", "--quiet", *extra),
    )


def _until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _journal(run_dir: Path) -> list[dict]:
    path = run_dir / ".simulator" / JOURNAL
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the writer's current line
            pass
    return out


def _submits(run_dir: Path) -> Counter[str]:
    """Accepted submits per input identity, across every simulator the run folder had."""
    return Counter(
        json.dumps([r["model_id"], r["inputs"]], sort_keys=True)
        for r in _journal(run_dir)
        if r["type"] == "submit"
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _assert_complete(run_dir: Path, jobs: int = JOBS, *, twice: int = 0) -> None:
    """Every job succeeded, its files there, each paid for once: but for at most `twice`
    jobs submitted again (their first submit's answer was lost: `--resubmit-unknown`)."""
    rows = _rows(run_dir)
    assert len(rows) == jobs
    assert {r["status"] for r in rows} == {"succeeded"}, [r["error"] for r in rows]
    for row in rows:
        names, digests = row["output_files"].split(";"), row["output_sha256"].split(";")
        assert len(names) == len(digests) >= 1
        for name, digest in zip(names, digests, strict=True):
            assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == digest
    submits = _submits(run_dir)
    assert len(submits) == jobs and max(submits.values()) <= 2
    assert sum(n - 1 for n in submits.values()) <= twice, "an identity submitted twice"
    request_ids = {r["request_id"] for r in rows}
    journaled = {r["request_id"] for r in _journal(run_dir) if r["type"] == "submit"}
    assert request_ids <= journaled and len(journaled - request_ids) <= twice


def _assert_no_token(run_dir: Path, *texts: str) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SIM_TOKEN.encode() not in path.read_bytes(), path
    for text in texts:
        assert SIM_TOKEN not in text


def test_ctrl_c_then_rerun_resumes_on_the_simulator(tmp_path: Path) -> None:
    manifest, run_dir = _manifest(tmp_path), tmp_path / "run"
    cmd = _cmd(manifest, run_dir)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    _until(lambda: sum(_submits(run_dir).values()) >= 12, 10, "12 submits")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "resume with:" in err
    with StateStore.open(run_dir, create=False, lock=False) as store:
        in_flight = [r for r in store.rows() if r.status in ("queued", "running")]
    interrupted_at = time.monotonic()
    first_s = interrupted_at - started

    again = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert again.returncode == 0, again.stderr
    assert "request unknown" not in again.stderr
    _assert_complete(run_dir)
    _assert_no_token(run_dir, err, again.stdout, again.stderr)
    print(
        f"\nsimulate resume (SIGINT): {len(in_flight)} in flight at the interrupt; "
        f"first run {first_s:.2f} s, rerun {time.monotonic() - interrupted_at:.2f} s"
    )


def test_sigkill_then_rerun_resumes_on_the_simulator(tmp_path: Path) -> None:
    manifest, run_dir = _manifest(tmp_path), tmp_path / "run"
    cmd = _cmd(manifest, run_dir)
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.DEVNULL, cwd=tmp_path)
    _until(lambda: sum(_submits(run_dir).values()) >= 12, 10, "12 submits")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    again = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30)
    with StateStore.open(run_dir, create=False, lock=False) as store:
        unknown = [r for r in store.rows() if r.status == "unknown"]
    if unknown:
        # Killed between "submitting" (committed) and the answer: batchrun cannot know whether
        # the server took it. The simulator's journal can: only those may be submitted twice.
        assert again.returncode == 1, again.stderr
        again = subprocess.run(
            [*cmd, "--resubmit-unknown"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert again.returncode == 0, again.stderr
    assert "request unknown" not in again.stderr
    _assert_complete(run_dir, twice=len(unknown))
    _assert_no_token(run_dir, again.stdout, again.stderr)


def test_second_simulate_run_on_a_busy_folder_fails_clearly(tmp_path: Path) -> None:
    manifest, run_dir = _manifest(tmp_path, jobs=20), tmp_path / "run"
    cmd = _cmd(manifest, run_dir)
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        _until(lambda: sum(_submits(run_dir).values()) >= 1, 10, "a submit")
        second = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=30)
        assert second.returncode != 0 and "in use" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        ports = [r["port"] for r in _journal(run_dir) if r["type"] == "port"]
        assert len(ports) == 1  # the refused run did not take over the state
    finally:
        proc.wait(30)
    assert proc.returncode == 0


def test_stale_output_urls_are_fetched_again_from_result_on_resume(tmp_path: Path) -> None:
    """Files missing and the stored URLs dead (the server moved): one /result call per job."""
    manifest, run_dir, state = _manifest(tmp_path, jobs=6), tmp_path / "run", tmp_path / "sim"

    def run(sim: Simulator) -> int:
        options = RunOptions(
            api_base=sim.base_url, token=sim.token, run_dir=run_dir, quiet=True,
            handle_signals=False, echo=lambda _: None,
        )  # fmt: skip
        return run_batch(build_plan(manifest), options)

    first = Simulator(SimSettings(run_time=0.05, state_dir=str(state))).start()
    try:
        assert run(first) == 0
    finally:
        first.stop()
    rows = _rows(run_dir)
    gone = rows[:3]
    for row in gone:  # lost files: a resume must fetch them again
        for name in row["output_files"].split(";"):
            (run_dir / name).unlink()
    with socket.socket() as squatter:  # the old port is taken: stored URLs point nowhere
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", first.port))
        squatter.listen()
        second = Simulator(SimSettings(run_time=0.05, state_dir=str(state))).start()
        try:
            assert second.port != first.port
            assert run(second) == 0
            stats = second.stats()
        finally:
            second.stop()
    assert stats["calls"]["result"] == len(gone)  # one fresh read each, nothing else
    assert stats["calls"]["submit"] == 0 and stats["calls"]["files"] == len(gone)
    after = _rows(run_dir)
    assert [r["output_sha256"] for r in after] == [r["output_sha256"] for r in rows]
    for old, new in zip(rows, after, strict=True):
        moved = old in gone
        assert (f":{second.port}/" in new["output_urls"]) is moved
        for name in new["output_files"].split(";"):
            assert (run_dir / name).is_file()

"""`batchrun run` end to end against the simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchrun.cli import cli
from batchrun.errors import AuthError, RunFolderInUse, StateError
from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.store.state import StateStore
from testing.cli import batchrun_cmd, clean_env
from testing.inprocess import report_rows as report, run_here as run
from testing.simproc import start_simulator
from testing.simulators import simulators

TOKEN = "tok-e2e-SECRET-5b1f9c"
IMAGE = (
    "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp"
)
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_sim():
    with simulators(token=TOKEN, run_time=0.1, workers=0) as start:
        yield start


def manifest(tmp_path: Path, *, jobs: int = 4, run: dict | None = None, models=None) -> Path:
    """A manifest of `jobs` flux jobs (seeds 1..jobs), or the given models."""
    settings = {"rate_limit": "100/s", "poll_interval": "50ms", "max_in_flight": 20}
    settings.update(run or {})
    models = models or [
        {
            "id": FLUX,
            "inputs": {"prompt": "a cat", "image_url": IMAGE},
            "matrix": {"seed": list(range(1, jobs + 1))},
        }
    ]
    data = {"version": 1, "name": "e2e", "run": settings, "models": models}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def until(condition, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_token_absent(run_dir: Path, *texts: str) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for text in texts:
        assert TOKEN not in text


def run_cmd(path: Path, run_dir: Path, api_base: str, *extra: str) -> list[str]:
    """`batchrun run` as a user types it, for a child process."""
    return batchrun_cmd("run", str(path), "--run-dir", str(run_dir), "--api-base", api_base, *extra)


def test_output_shapes_downloads_and_report(tmp_path, start_sim):
    sim = start_sim()
    models = [
        {"id": FLUX, "inputs": {"prompt": "a cat", "image_url": IMAGE, "seed": 1}},  # string
        {"id": "google/nano-banana-2-lite/text-to-image", "inputs": {"prompt": "a dog"}},  # object
        {  # array of two
            "id": "bytedance/seedream-5.0-pro/image-to-image",
            "inputs": {"prompt": "a fox", "image": [IMAGE]},
        },
        {  # object with an image and an array of three videos
            "id": "bytedance/seedance-2.5/image-to-video/1080p",
            "inputs": {"prompt": "a owl", "image": IMAGE, "duration": 4},
        },
    ]
    run_dir = tmp_path / "run"
    code, messages = run(manifest(tmp_path, models=models), sim, run_dir)
    assert code == 0, messages
    rows = report(run_dir)
    assert [r["status"] for r in rows] == ["succeeded"] * 4
    assert [len(r["output_files"].split(";")) for r in rows] == [1, 1, 2, 4]
    served = sim.files()
    for row in rows:
        urls = row["output_urls"].split(";")
        names = row["output_files"].split(";")
        sums = row["output_sha256"].split(";")
        for url, name, digest in zip(urls, names, sums, strict=True):
            data = (run_dir / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest == served[url]
        assert float(row["cost_usd"]) > 0
        assert row["request_id"] and row["attempts"] == "1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["api_calls"]["submit"] == 4
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0
    assert summary["api_calls"]["total"] == stats["api_calls"]
    assert_token_absent(run_dir, *messages)


def test_failed_jobs_carry_the_api_error_and_exit_1(tmp_path, start_sim):
    sim = start_sim(fail_rate=1.0)
    run_dir = tmp_path / "run"
    code, _ = run(manifest(tmp_path, jobs=3, run={"retries": 1}), sim, run_dir)
    assert code == 1
    rows = report(run_dir)
    assert [r["status"] for r in rows] == ["failed"] * 3
    for row in rows:
        assert "simulated failure" in row["error"]
        assert row["attempts"] == "2"  # one retry
    assert sim.stats()["submits"] == 6


def test_invalid_inputs_refused_by_the_api_fail_with_detail(tmp_path, start_sim):
    sim = start_sim()
    models = [{"id": FLUX, "inputs": {"prompt": "x", "image_url": IMAGE, "seed": 1}}]
    path = manifest(tmp_path, models=models)
    plan = build_plan(path)
    # the API knows better than the local schema: make the job invalid after planning
    plan.jobs[0].inputs["seed"] = "not a number"
    messages: list[str] = []
    opts = RunOptions(
        sim.base_url,
        TOKEN,
        run_dir=tmp_path / "run",
        quiet=True,
        handle_signals=False,
        echo=messages.append,
    )
    assert run_batch(plan, opts) == 1
    row = report(tmp_path / "run")[0]
    assert row["status"] == "failed"
    assert "HTTP 422" in row["error"] and "seed" in row["error"]
    assert row["request_id"] == ""


def test_429s_are_honoured_and_no_job_is_lost(tmp_path, start_sim):
    sim = start_sim(rate_limit="8/s")
    run_dir = tmp_path / "run"
    code, messages = run(manifest(tmp_path, jobs=12, run={"rate_limit": "40/s"}), sim, run_dir)
    assert code == 0, messages
    stats = sim.stats()
    assert stats["throttled"] > 0
    assert stats["duplicate_submits"] == 0 and stats["submits"] == 12
    assert [r["status"] for r in report(run_dir)] == ["succeeded"] * 12
    assert json.loads((run_dir / "summary.json").read_text())["throttled"] > 0


@pytest.mark.parametrize("limit", ["10/s", "5/s"])
def test_rate_at_the_servers_limit_draws_no_429(tmp_path, start_sim, limit):
    sim = start_sim(rate_limit=limit, run_time=0.05)
    n = int(limit.split("/")[0])
    run_dir = tmp_path / "run"
    code, _ = run(manifest(tmp_path, jobs=2 * n, run={"rate_limit": limit}), sim, run_dir)
    assert code == 0
    stats = sim.stats()
    assert stats["throttled"] == 0
    assert stats["peak_rate_1s"] <= n + 1


def test_job_timeout_cancels_queued_and_gives_up_on_running(tmp_path, start_sim):
    sim = start_sim(workers=1, run_time=3.0, run_time_jitter=0)
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=3, run={"job_timeout": 0.6, "poll_interval": "100ms"})
    code, _ = run(path, sim, run_dir)
    assert code == 1
    rows = report(run_dir)
    assert [r["status"] for r in rows] == ["timed_out"] * 3
    errors = sorted(r["error"] for r in rows)
    assert sum("cancelled: still queued after job_timeout (0.6s)" in e for e in errors) == 2
    assert sum("gave up after job_timeout (0.6s): still running" in e for e in errors) == 1
    assert sim.stats()["calls"]["cancel"] == 2


def test_retry_failed_resubmits_failed_jobs_only(tmp_path, start_sim):
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=3, run={"retries": 0})
    assert run(path, start_sim(fail_rate=1.0), run_dir)[0] == 1
    healthy = start_sim()
    assert run(path, healthy, run_dir)[0] == 1  # a plain rerun leaves failed jobs alone
    assert healthy.stats()["submits"] == 0
    code, _ = run(path, healthy, run_dir, retry_failed=True)
    assert code == 0
    rows = report(run_dir)
    assert [(r["status"], r["attempts"]) for r in rows] == [("succeeded", "2")] * 3
    assert healthy.stats()["submits"] == 3


def test_second_run_on_the_same_folder_is_refused(tmp_path, start_sim):
    sim = start_sim(run_time=0.5)
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=4)
    with StateStore.open(run_dir):
        with pytest.raises(RunFolderInUse, match=rf"in use by pid {os.getpid()};"):
            run(path, sim, run_dir)
    # through the CLI, from another process: exit 2, one clear line, nothing sent
    with StateStore.open(run_dir):
        proc = subprocess.run(
            run_cmd(path, run_dir, sim.base_url),
            env={**os.environ, "RUNCOMFY_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: run folder {run_dir} in use by pid {os.getpid()}; wait for that run to "
        "finish (or stop it) and try again"
    )
    assert sim.stats()["api_calls"] == 0


def test_bad_token_stops_the_run_with_exit_3(tmp_path, start_sim):
    sim = start_sim()
    options = RunOptions(
        sim.base_url,
        "wrong-token",
        run_dir=tmp_path / "run",
        quiet=True,
        handle_signals=False,
        echo=lambda t: None,
    )
    with pytest.raises(AuthError) as info:
        run_batch(build_plan(manifest(tmp_path, jobs=5)), options)
    assert info.value.exit_code == 3
    assert sim.stats()["calls"]["submit"] == 1  # submits go one at a time until one is accepted
    assert [r["status"] for r in report(tmp_path / "run")] == ["pending"] * 5


def test_cancel_command_while_a_run_is_active(tmp_path, start_sim):
    sim = start_sim(workers=1, run_time=30)
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=3, run={"poll_interval": "100ms", "job_timeout": "3s"})
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=run(path, sim, run_dir)))
    thread.start()

    def queued() -> bool:
        try:
            with StateStore.open(run_dir, create=False, lock=False) as s:
                return sorted(r.status for r in s.rows()) == ["queued", "queued", "running"]
        except StateError:  # the run is still creating state.db
            return False

    until(queued, what="2 queued jobs, 1 running")
    cli_result = CliRunner().invoke(
        cli, ["cancel", str(run_dir)], env={"RUNCOMFY_TOKEN": TOKEN}, standalone_mode=False
    )
    assert cli_result.return_value == 0, cli_result.output
    assert "cancelled 2 queued request(s)" in cli_result.output
    thread.join(30)  # the running job is given up at job_timeout
    assert not thread.is_alive()
    code, _ = result["out"]
    assert code == 1
    rows = report(run_dir)
    assert sorted(r["status"] for r in rows) == ["cancelled", "cancelled", "timed_out"]
    assert sim.stats()["jobs"].get("cancelled") == 2


def test_ctrl_c_saves_state_prints_resume_command_and_resume_finishes(tmp_path, start_sim):
    sim = start_sim(workers=2, run_time=0.3)
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=12, run={"max_in_flight": 4, "rate_limit": "20/s"})
    cmd = run_cmd(path, run_dir, sim.base_url)
    proc = subprocess.Popen(
        cmd,
        env=clean_env(TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    until(lambda: sim.stats()["submits"] >= 4, what="4 submits")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    resume = f"batchrun run {path} --run-dir {run_dir} --api-base {sim.base_url}"
    assert f"still on the server; resume with: {resume}" in err
    assert (run_dir / "report.csv").exists()
    before = sim.stats()["submits"]
    assert before < 12
    proc2 = subprocess.run(cmd, env=clean_env(TOKEN), capture_output=True, text=True, timeout=60)
    assert proc2.returncode == 0, proc2.stderr
    stats = sim.stats()
    assert stats["duplicate_submits"] == 0 and stats["submits"] == 12
    assert [r["status"] for r in report(run_dir)] == ["succeeded"] * 12
    assert_token_absent(run_dir, out, err, proc2.stdout, proc2.stderr)


def test_second_ctrl_c_exits_at_once_and_state_stays_consistent(tmp_path, start_sim):
    sim = start_sim(slow=3.0)  # every API call takes 3 s: the first Ctrl-C has to wait
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=4, run={"max_in_flight": 2})
    cmd = run_cmd(path, run_dir, sim.base_url)
    proc = subprocess.Popen(cmd, env=clean_env(TOKEN), stderr=subprocess.PIPE, text=True)
    until(lambda: sim.stats()["api_calls"] >= 2, what="2 submits sent")
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    first = ""
    while "interrupting" not in first:  # the first handler has run
        first = proc.stderr.readline()
        assert first, "no 'interrupting' message"
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.monotonic() - started < 2.0  # did not wait for the 3 s calls
    assert "interrupted again: exiting now" in err
    with StateStore.open(run_dir, create=False) as s:  # opens: the lock died with the process
        statuses = sorted(r.status for r in s.rows())
    # the first submit was accepted alone; the second, in the air, stays marked
    assert statuses == ["pending", "pending", "queued", "submitting"]


def test_cancel_on_interrupt_cancels_queued_requests(tmp_path, start_sim):
    sim = start_sim(workers=1, run_time=30)
    run_dir = tmp_path / "run"
    path = manifest(tmp_path, jobs=3, run={"poll_interval": "100ms"})
    cmd = run_cmd(path, run_dir, sim.base_url, "--cancel-on-interrupt")
    proc = subprocess.Popen(cmd, env=clean_env(TOKEN), stderr=subprocess.PIPE, text=True)
    until(lambda: sim.stats()["jobs"].get("in_queue") == 2, what="2 queued on the server")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "1 request still on the server" in err
    statuses = sorted(r["status"] for r in report(run_dir))
    assert statuses[:2] == ["cancelled", "cancelled"] and statuses[2] in ("queued", "running")
    assert sim.stats()["jobs"].get("cancelled") == 2


def test_manifest_change_adds_new_jobs_and_hides_removed(tmp_path, start_sim):
    sim = start_sim()
    run_dir = tmp_path / "run"
    assert run(manifest(tmp_path, jobs=3), sim, run_dir)[0] == 0
    models = [
        {
            "id": FLUX,
            "inputs": {"prompt": "a cat", "image_url": IMAGE},
            "matrix": {"seed": [2, 3, 4, 5]},
        }
    ]
    code, messages = run(manifest(tmp_path, models=models), sim, run_dir)
    assert code == 0
    assert any("2 new job(s) added" in m and "1 job(s) no longer" in m for m in messages)
    rows = report(run_dir)
    assert len(rows) == 4
    assert sim.stats()["submits"] == 5  # 3 + 2 new, none again


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_loses_and_duplicates_nothing(tmp_path):
    """A real `batchrun run` is SIGKILLed repeatedly on a 200-job run and restarted each time."""
    with start_simulator("--workers", "8", "--run-time", "0.15", token=TOKEN) as sim_proc:
        base = sim_proc.base_url
        run_dir = tmp_path / "run"
        path = manifest(tmp_path, jobs=200, run={"rate_limit": "200/s", "max_in_flight": 40})
        cmd = run_cmd(path, run_dir, base, "--quiet")

        def submits() -> int:
            return int(sim_proc.stats()["submits"])

        for target in (20, 60, 110, 160):
            proc = subprocess.Popen(cmd, env=clean_env(TOKEN), stderr=subprocess.DEVNULL)
            until(lambda t=target, p=proc: submits() >= t or p.poll() is not None, 30, "submits")
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        final = subprocess.run(
            cmd, env=clean_env(TOKEN), capture_output=True, text=True, timeout=120
        )
        with StateStore.open(run_dir, create=False, lock=False) as s:
            unknown = [r for r in s.rows() if r.status == "unknown"]
        if unknown:  # killed between a committed SUBMITTING and the recorded request id
            final = subprocess.run(
                cmd + ["--resubmit-unknown"],
                env=clean_env(TOKEN),
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert final.returncode == 0, final.stderr
        stats = sim_proc.stats()
        assert stats["duplicate_submits"] <= len(unknown)  # only inside the marked window
        rows = report(run_dir)
        assert len(rows) == 200 and {r["status"] for r in rows} == {"succeeded"}
        served = sim_proc.files()
        for row in rows:
            for name, digest, url in zip(
                row["output_files"].split(";"),
                row["output_sha256"].split(";"),
                row["output_urls"].split(";"),
                strict=True,
            ):
                assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == digest
                assert served[url] == digest

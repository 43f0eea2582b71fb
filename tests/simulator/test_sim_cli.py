"""`batchrun simulate` as a real process: prints its URL, answers like the doc's curl, stops."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from testing.cli import batchrun_cmd, run_cli


def _start(config: Path, **popen: Any) -> subprocess.Popen[str]:
    cmd = batchrun_cmd(
        *("simulate", "--port", "0", "--token", "t0k", "--config", str(config), "--workers", "2"),
        python_flags=("-X", "faulthandler"),
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _stop(proc: subprocess.Popen[str], sig: int) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # -X faulthandler: every thread's stack to stderr
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"still serving 10 s after signal {sig}:\n{out}\n{err}") from None


def test_simulate_serves_until_sigint(tmp_path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("run_time: 0.05\n")
    proc = _start(config)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("batchrun simulator on http://127.0.0.1:")
        assert first.rstrip().endswith("token: t0k")
        base = first.split(" on ", 1)[1].split()[0]
        assert f"curl -s -X POST {base}/v1/models/" in proc.stdout.readline()
        # The doc's curl example, pointed at the simulator.
        r = requests.post(
            f"{base}/v1/models/blackforestlabs/flux-1-kontext/pro/edit",
            headers={"Authorization": "Bearer t0k", "Content-Type": "application/json"},
            data=(
                '{"prompt": "She is now holding an orange umbrella and smiling",'
                ' "image_url": "https://playgrounds-storage-public.runcomfy.net/x.webp",'
                ' "seed": 81030369, "aspect_ratio": "16:9"}'
            ),
            timeout=5,
        )
        assert r.status_code == 200 and r.json()["status_url"].startswith(base)
    finally:
        out, err = _stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "preexec"),
    [(signal.SIGINT, _ignore_sigint), (signal.SIGTERM, None)],
    ids=["sigint-started-in-the-background", "sigterm"],
)
def test_simulate_stops_cleanly_when_a_script_stops_it(tmp_path, sig, preexec) -> None:
    """A script's background job inherits SIGINT ignored; `kill -INT` or `kill` still stop it."""
    config = tmp_path / "sim.yaml"
    config.write_text("run_time: 0.05\n")
    proc = _start(config, preexec_fn=preexec)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("batchrun simulator on http://127.0.0.1:")
    out, err = _stop(proc, sig)
    assert proc.returncode == 0, err
    assert "simulator stopped" in out and "Traceback" not in err


def test_simulate_bad_setting_is_a_usage_error() -> None:
    proc = run_cli("simulate", "--port", "0", "--fail-rate", "2", timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: simulator setting fail_rate='2': expected a fraction")


def test_simulate_on_a_busy_port_says_how_to_fix_it(sim) -> None:
    proc = run_cli("simulate", "--port", str(sim.port), timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: cannot listen on 127.0.0.1:{sim.port} (")
    assert "pick another --port, or 0" in proc.stderr
    assert "Traceback" not in proc.stderr

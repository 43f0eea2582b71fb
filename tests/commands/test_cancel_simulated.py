"""`batchrun cancel` on a simulated run folder: its simulator is gone with the run, so it says
so instead of trying to reach it."""

from __future__ import annotations

import json
from pathlib import Path

from batchrun.cli import main
from batchrun.store import state as st
from batchrun.store.state import StateStore
from testing.folders import queued_run_folder


def test_cancel_on_a_simulated_folder_says_there_is_nothing_to_cancel(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    data = {
        "version": 1,
        "name": "sim",
        "run": {"poll_interval": "50ms"},
        "models": [
            {"id": "google/nano-banana-2-lite/text-to-image", "matrix": {"prompt": ["a", "b"]}}
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--simulate", "--run-dir", str(run_dir), "-q"]) == 0
    with StateStore.open(run_dir) as store:  # as if the run had been killed with it queued
        job_id = store.rows()[0].job_id
        store.record_status(job_id, st.QUEUED)
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-x")
    capsys.readouterr()
    assert main(["cancel", str(run_dir)]) == 0
    assert capsys.readouterr().err == (
        f"{run_dir} is a simulated run (run --simulate) and no run is active in it: its "
        "simulator is not running, so there is nothing to cancel\n"
    )


def test_cancel_against_a_dead_api_says_so_once(tmp_path: Path, monkeypatch, capsys) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    queued_run_folder(run_dir, base, jobs=3)
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-x")
    assert main(["cancel", str(run_dir)]) == 3
    assert capsys.readouterr().err == f"error: cannot reach the API at {base}: connection refused\n"

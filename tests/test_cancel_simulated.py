"""`batchrun cancel` on a simulated run folder: its simulator is gone with the run, so it says
so instead of trying to reach it."""

from __future__ import annotations

import json
from pathlib import Path

from batchrun import state as st
from batchrun.cli import main
from batchrun.state import StateStore


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

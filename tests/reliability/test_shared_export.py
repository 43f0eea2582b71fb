"""A shared sweep read from any machine (`status --state`), written into an ordinary run
folder (`export`), and its one halt and canary decision across workers; against a real
PostgreSQL server and simulator processes, judged on the simulator's books."""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

from testing.cli import batchrun_cmd

from .conftest import (
    SimFactory,
    clean_env,
    read_report,
    run_cli,
    sha256_file,
    split_cell,
    sweep,
    wait_until,
    write_manifest,
)
from .test_shared_sweep import _finish, _workers


def _password(url: str) -> str:
    return url.split(":")[2].split("@")[0]


def _status(*args: str) -> dict[str, Any]:
    done = run_cli("status", *args, "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_status_reads_a_running_sweep_with_its_workers_from_the_database(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--run-time", "1.5-2", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 4, "poll_interval": "0.2s", "lease": "5s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(16, run=run, name="watched"))
    procs = _workers(manifest, sim, pg_url, tmp_path, 2)
    # The first worker's first submits leave together: it may have sent 4 before the second
    # has joined, so the status is read once both are in (within the same minute).
    assert wait_until(
        lambda: sim.stats()["submits"] >= 4 and len(_status("--state", pg_url)["workers"]) == 2,
        timeout=60,
    )
    live = _status("--state", pg_url)
    assert live["sweep"] == "watched" and live["total"] == 16
    assert len(live["workers"]) == 2  # both alive, whoever holds what
    assert all(w["lease_left_s"] > 0 for w in live["workers"])
    assert sum(w["jobs_held"] for w in live["workers"]) >= 4
    assert {w["run_dir"] for w in live["workers"]} == {
        str((tmp_path / f"w{i}").resolve()) for i in range(2)
    }
    assert live["account"]["in_flight"] >= 1
    ended = _finish(procs)
    assert [code for code, _ in ended] == [0, 0], ended
    done = _status("--state", pg_url, "--sweep", "watched")
    assert done["counts"] == {"succeeded": 16}
    assert done["workers"] == [] and done["account"]["in_flight"] == 0
    billed = Decimal(repr(sim.stats()["billed_usd"]))
    assert Decimal(repr(done["spent_usd"])) == billed  # the ledger's money, the server's books
    assert Decimal(repr(done["account"]["spent_usd"])) == billed
    # The text, through BATCHRUN_STATE_URL, without the password.
    text = subprocess.run(
        batchrun_cmd("status"),
        capture_output=True,
        text=True,
        env=clean_env(BATCHRUN_STATE_URL=pg_url),
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert "16 jobs: succeeded 16" in text.stdout and "workers: none" in text.stdout
    assert "***" in text.stdout and _password(pg_url) not in text.stdout + text.stderr


def test_export_writes_a_run_folder_that_status_report_compare_and_merge_accept(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--rate-limit", "20/s", "--run-time", "0.2-0.5", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 6, "poll_interval": "0.2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(12, run=run, name="exported"))
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 3))
    assert [code for code, _ in ended] == [0, 0, 0], ended
    out = tmp_path / "exported"
    done = run_cli("export", "--state", pg_url, "--into", str(out))
    assert done.returncode == 0, done.stderr
    assert "12 jobs" in done.stderr and "12 files sha256-verified" in done.stderr
    assert _password(pg_url) not in done.stdout + done.stderr
    # Every job's files, byte for byte the ones a worker downloaded.
    rows = read_report(out)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"succeeded"}
    for row in rows:
        (name,) = split_cell(row["output_files"])
        worker = next(p for p in (tmp_path / f"w{i}" / name for i in range(3)) if p.exists())
        assert sha256_file(out / name) == sha256_file(worker)
    status = _status(str(out))
    assert status["counts"] == {"succeeded": 12}
    assert Decimal(repr(status["spent_usd"])) == Decimal(repr(sim.stats()["billed_usd"]))
    assert status["origin"] == sim.base_url
    assert run_cli("report", str(out)).returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exported_from"].endswith("***@" + pg_url.split("@")[1])
    # compare against a second export of the same sweep: the same results.
    again = tmp_path / "again"
    assert run_cli("export", "--state", pg_url, "--into", str(again)).returncode == 0
    compared = run_cli("compare", str(out), str(again))
    assert compared.returncode == 0, compared.stdout + compared.stderr
    merged = run_cli("merge", str(out), str(again), "--into", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    # The origin is recorded: a simulated folder is not merged with it.
    simulated = tmp_path / "simulated"
    other = write_manifest(tmp_path / "other.yaml", sweep(2, name="other"))
    sim_run = run_cli("run", str(other), "--simulate", "--run-dir", str(simulated), "--quiet")
    assert sim_run.returncode == 0, sim_run.stderr
    refused = run_cli("merge", str(out), str(simulated), "--into", str(tmp_path / "mixed"))
    assert refused.returncode == 2 and "different origins" in refused.stderr
    written = [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    assert not any(_password(pg_url) in text for text in written)


def test_export_lists_the_files_it_cannot_reach_and_exits_1(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--run-time", "0.2-0.4", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 4, "poll_interval": "0.2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(10, run=run, name="scattered"))
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 2))
    assert [code for code, _ in ended] == [0, 0], ended
    gone = tmp_path / "w1" / "files"
    lost = len(list(gone.iterdir())) if gone.exists() else 0
    shutil.rmtree(tmp_path / "w1", ignore_errors=True)  # that machine is out of reach
    out = tmp_path / "exported"
    done = run_cli("export", "--state", pg_url, "--into", str(out))
    if lost == 0:  # the other worker did every job: nothing is missing
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1, done.stderr
    assert f"{lost} file(s) could not be gathered" in done.stderr
    assert str((tmp_path / "w1").resolve()) in done.stderr
    gathered = out / "files"  # none when the lost worker had done every job
    assert len(list(gathered.iterdir()) if gathered.is_dir() else []) == 10 - lost
    assert _status(str(out))["counts"] == {"succeeded": 10}


def test_status_and_export_name_the_sweeps_when_the_database_holds_several(
    pg_url: str, tmp_path: Path
) -> None:
    for name in ("alpha", "beta"):
        manifest = write_manifest(tmp_path / f"{name}.yaml", sweep(2, name=name))
        done = run_cli(
            *("run", str(manifest), "--simulate", "--state", pg_url),
            *("--run-dir", str(tmp_path / name), "--quiet"),
        )
        assert done.returncode == 0, done.stderr
    which = run_cli("status", "--state", pg_url)
    assert which.returncode == 2 and "alpha, beta" in which.stderr and "--sweep" in which.stderr
    assert "Traceback" not in which.stderr and _password(pg_url) not in which.stderr
    assert _status("--state", pg_url, "--sweep", "beta")["name"] == "beta"
    unknown = run_cli("export", "--state", pg_url, "--sweep", "gamma", "--into", "x")
    assert unknown.returncode == 2 and "no sweep named 'gamma'" in unknown.stderr
    both = run_cli("status", str(tmp_path / "alpha"), "--state", pg_url)
    assert both.returncode == 2


def test_a_halt_stops_every_worker_of_the_sweep(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--fail-rate", "0.9", "--run-time", "0.2-0.4", "--workers", "8")
    run = {
        "rate_limit": "10/s", "max_in_flight": 3, "poll_interval": "0.2s", "retries": 0,
        "halt": {"failure_rate": 0.5, "min_finished": 6},
    }  # fmt: skip
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(90, run=run, name="halting"))
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 3))
    assert [code for code, _ in ended] == [1, 1, 1], ended
    assert all("halted:" in text and "of the sweep failed" in text for _, text in ended)
    submits = sim.stats()["submits"]
    # Halted after about 6 finished: what was in flight then (3 slots), and a few submits a
    # worker sent before its next look; never a third of the sweep.
    assert 6 <= submits <= 20, submits
    status = _status("--state", pg_url)
    assert "of the sweep failed" in status["halted"]
    assert status["counts"].get("pending", 0) == 90 - submits
    # A rerun starts the halt afresh (and halts again on this server).
    again = _finish(_workers(manifest, sim, pg_url, tmp_path, 1))
    assert again[0][0] == 1 and sim.stats()["submits"] > submits


def test_canaries_are_one_decision_for_the_sweep(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    run = {
        "rate_limit": "20/s",
        "max_in_flight": 6,
        "poll_interval": "0.2s",
        "canary": 2,
        "retries": 0,
    }
    # The canaries outlast the workers' start, so both workers join one run of the sweep.
    failing = simulator("--fail-rate", "1", "--run-time", "2-2.5")
    manifest = write_manifest(tmp_path / "bad.yaml", sweep(20, run=run, name="canary-bad"))
    ended = _finish(_workers(manifest, failing, pg_url, tmp_path / "bad", 2))
    assert [code for code, _ in ended] == [1, 1], ended
    assert any("canary failed for" in text for _, text in ended)
    assert failing.stats()["submits"] == 2  # the canaries only, across both workers
    passing = simulator("--run-time", "0.5-0.8")
    manifest = write_manifest(tmp_path / "good.yaml", sweep(20, run=run, name="canary-good"))
    ended = _finish(_workers(manifest, passing, pg_url, tmp_path / "good", 2))
    assert [code for code, _ in ended] == [0, 0], ended
    assert passing.stats()["submits"] == 20
    held = [len(list((tmp_path / "good" / f"w{i}" / "files").glob("*"))) for i in range(2)]
    assert sum(held) == 20 and min(held) > 0, held  # the released jobs went to both workers

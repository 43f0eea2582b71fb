"""One sweep, several workers, through a real PostgreSQL server: `batchrun run --state URL`
processes against one simulator process, judged on the simulator's books."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from testing.cli import batchrun_cmd
from testing.postgres import PgServer

from .conftest import (
    MODEL,
    SimFactory,
    SimProcess,
    clean_env,
    read_report,
    run_cli,
    sweep,
    wait_until,
    write_manifest,
)

PRICE = Decimal("0.04")  # what the simulator bills for one MODEL job


def _workers(
    manifest: Path, sim: SimProcess, url: str, tmp_path: Path, n: int, *extra: str
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            batchrun_cmd(
                *("run", str(manifest), "--api-base", sim.base_url, "--state", url),
                *("--run-dir", str(tmp_path / f"w{i}"), "--quiet", *extra),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for i in range(n)
    ]


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append((p.returncode, stdout + stderr))
    return out


def _live_workers(url: str) -> int:
    """Workers that have joined the sweep (both must be running before the database stops:
    a worker that cannot reach it at its start exits 2 at once, as it should)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM workers").fetchone()
    return int(row[0]) if row else 0


def _files(tmp_path: Path, n: int) -> dict[str, int]:
    """Job id -> how many workers' folders hold its files."""
    held: dict[str, int] = {}
    for i in range(n):
        folder = tmp_path / f"w{i}" / "files"
        for job in folder.iterdir() if folder.exists() else []:
            held[job.name] = held.get(job.name, 0) + 1
    return held


def test_three_workers_finish_a_sweep_each_job_billed_once(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--rate-limit", "20/s", "--run-time", "0.2-0.6", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 8, "poll_interval": "0.2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(30, run=run, name="three"))
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 3))
    assert [code for code, _ in ended] == [0, 0, 0], ended
    stats = sim.stats()
    assert stats["submits"] == 30
    assert max(stats["submits_per_identity"].values()) == 1
    assert stats["throttled"] == 0  # one account's limit, shared: never above it
    held = _files(tmp_path, 3)
    assert len(held) == 30 and set(held.values()) == {1}  # each job's files in one folder
    assert sum(1 for i in range(3) if (tmp_path / f"w{i}" / "files").exists()) >= 2
    rows = read_report(tmp_path / "w0")
    assert len(rows) == 30 and {r["status"] for r in rows} == {"succeeded"}


def test_a_worker_killed_mid_sweep_loses_nothing_and_pays_nothing_twice(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--rate-limit", "20/s", "--run-time", "0.5-1.5", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 6, "poll_interval": "0.2s", "lease": "2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(24, run=run, name="killed"))
    procs = _workers(manifest, sim, pg_url, tmp_path, 3)
    assert wait_until(lambda: sim.stats()["submits"] >= 8, timeout=60)
    os.kill(procs[0].pid, signal.SIGKILL)  # at once, wherever it was
    started = time.monotonic()
    ended = _finish(procs)
    assert ended[0][0] == -signal.SIGKILL
    assert [code for code, _ in ended[1:]] == [0, 0] or all(
        "may have reached the server" in text for _, text in ended[1:]
    ), ended
    assert time.monotonic() - started < 60
    stats = sim.stats()
    assert max(stats["submits_per_identity"].values()) == 1  # nothing sent twice
    rows = read_report(tmp_path / "w1")
    assert len(rows) == 24
    # Every job ended; only a submit cut off by the kill may be unknown (never resent).
    unknown = [r for r in rows if r["status"] != "succeeded"]
    assert len(unknown) <= 6 and all("--resubmit-unknown" in r["error"] for r in unknown)
    # Each succeeded job was sent once; an unknown one at most once (the kill may have come
    # before its submit left).
    assert 24 - len(unknown) <= stats["submits"] <= 24


def test_the_sweep_cap_holds_across_workers(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--bill-on", "accept", "--run-time", "0.2-0.5", "--workers", "8")
    run = {"rate_limit": "50/s", "max_in_flight": 6, "poll_interval": "0.2s"}
    manifest = write_manifest(
        tmp_path / "sweep.yaml",
        sweep(20, run=run, name="capped", outputs={"download": False}),
    )
    pulled = run_cli(
        *("models", "pull", MODEL, "--dir", str(tmp_path / "schemas" / "models")),
        *("--api-base", sim.base_url),
    )
    assert pulled.returncode == 0, pulled.stderr
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 3, "--max-cost", "0.30"))
    assert all(code == 4 for code, _ in ended), ended  # stopped at the cap, each worker
    deadline = time.monotonic() + 30
    while sim.stats()["jobs"].get("in_queue") or sim.stats()["jobs"].get("in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    billed = Decimal(repr(sim.stats()["billed_usd"]))
    assert billed <= Decimal("0.30")  # 3 workers, one cap: 7 jobs at most
    assert billed >= Decimal("0.24")  # and the room was used


def test_the_database_password_is_never_written(
    simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    password = pg_url.split(":")[2].split("@")[0]
    sim = simulator()
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(3, name="secret"))
    ended = _finish(_workers(manifest, sim, pg_url, tmp_path, 1))
    assert ended[0][0] == 0, ended
    wrong = pg_url.replace(password, "Wrong-" + password)
    refused = run_cli("run", str(manifest), "--api-base", sim.base_url, "--state", wrong)
    assert refused.returncode != 0
    assert "***" in refused.stderr and "Traceback" not in refused.stderr
    texts = [ended[0][1], refused.stdout + refused.stderr]
    texts += [p.read_text(errors="replace") for p in (tmp_path / "w0").rglob("*") if p.is_file()]
    assert not any(password in text for text in texts)


def test_the_database_restarted_mid_sweep_loses_nothing(
    simulator: SimFactory, pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    sim = simulator("--rate-limit", "20/s", "--run-time", "0.3-0.8", "--workers", "8")
    run = {"rate_limit": "20/s", "max_in_flight": 6, "poll_interval": "0.2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(24, run=run, name="restart"))
    procs = _workers(manifest, sim, pg_url, tmp_path, 2)
    assert wait_until(lambda: sim.stats()["submits"] >= 6 and _live_workers(pg_url) == 2, 60)
    pg_server.stop("immediate")  # connections cut, uncommitted work rolled back
    time.sleep(2)
    pg_server.start()
    ended = _finish(procs)
    assert [code for code, _ in ended] == [0, 0], ended
    assert any("unreachable" in text for _, text in ended)  # the workers said they waited
    stats = sim.stats()
    assert stats["submits"] == 24 and max(stats["submits_per_identity"].values()) == 1
    rows = read_report(tmp_path / "w0")
    assert len(rows) == 24 and {r["status"] for r in rows} == {"succeeded"}


@pytest.mark.parametrize("seed", [1, 2])
def test_workers_killed_at_random_moments_lose_nothing_and_pay_nothing_twice(
    seed: int, simulator: SimFactory, pg_url: str, tmp_path: Path
) -> None:
    """Two of three workers SIGKILLed at random moments (answers come late, so some kills land
    mid-submit); the third finishes the sweep; a fresh worker afterwards sends nothing."""
    rng = random.Random(seed)
    sim = simulator("--rate-limit", "40/s", "--run-time", "0.3-1.0", "--slow", "0.05")
    run = {"rate_limit": "40/s", "max_in_flight": 8, "poll_interval": "0.2s", "lease": "2s"}
    manifest = write_manifest(tmp_path / "sweep.yaml", sweep(30, run=run, name=f"rnd{seed}"))
    procs = _workers(manifest, sim, pg_url, tmp_path, 3)
    for victim in procs[:2]:
        time.sleep(rng.uniform(0.5, 3.0))
        victim.kill()
    ended = _finish(procs)
    assert ended[2][0] in (0, 1), ended[2]
    rows = read_report(tmp_path / "w2")
    assert len(rows) == 30
    unknown = [r for r in rows if r["status"] != "succeeded"]
    assert all("--resubmit-unknown" in r["error"] for r in unknown), unknown
    stats = sim.stats()
    assert max(stats["submits_per_identity"].values()) == 1  # nothing sent twice
    assert 30 - len(unknown) <= stats["submits"] <= 30
    again = _finish(_workers(manifest, sim, pg_url, tmp_path / "again", 1))
    assert again[0][0] in (0, 1), again
    assert sim.stats()["submits"] == stats["submits"]  # a rerun pays for nothing again

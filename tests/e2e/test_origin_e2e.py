"""Origins through the command line: a simulated run's cache never serves a run against an API
base (here a second simulator in its own process, reached by its URL as a real API is), and a
simulated baseline committed with `compare --update-baseline` never passes a real run silently.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from testing.cli import run_cli
from testing.simproc import start_simulator

TOKEN = "tok-origin-5c1e"
T2I = "google/nano-banana-2-lite/text-to-image"
JOBS = 4
SIM = ("--simulate", "--sim", "run_time=0.02", "--sim", "workers=0")


def manifest(tmp_path: Path) -> Path:
    models = [{"id": T2I, "matrix": {"prompt": [f"a lighthouse {i}" for i in range(JOBS)]}}]
    run = {"rate_limit": "100/s", "poll_interval": "20ms"}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps({"version": 1, "name": "origins", "run": run, "models": models}))
    return path


def report(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_simulated_cache_never_serves_a_run_against_an_api_base(tmp_path: Path) -> None:
    path, cache = manifest(tmp_path), tmp_path / "cache"
    simulated = run_cli("run", str(path), *SIM, "--run-dir", str(tmp_path / "sim"), "--cache",
                        str(cache))  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    assert {r["cached"] for r in report(tmp_path / "sim")} == {"false"}

    with start_simulator("--run-time", "0.02", "--workers", "0", token=TOKEN) as server:
        real = tmp_path / "real"
        done = run_cli("run", str(path), "--api-base", server.base_url, "--run-dir", str(real),
                       "--cache", str(cache), token=TOKEN)  # fmt: skip
        assert done.returncode == 0, done.stderr
        # Every job was sent to that server and billed on its books: none came from the cache.
        stats = server.stats()
        assert stats["calls"].get("submit", 0) == JOBS
        assert len(stats["billed"]) == JOBS and stats["billed_usd"] > 0
        rows = report(real)
        assert [r["cached"] for r in rows] == ["false"] * JOBS
        assert {r["request_id"] for r in rows} == set(stats["billed"])
        summary = json.loads((real / "summary.json").read_text())
        assert summary["cache"]["taken_this_run"] == 0
        assert summary["origin"] == server.base_url
        status = run_cli("status", str(real))
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[1] == f"results from {server.base_url}"

        # The same base written as RunComfy's CLI documents it (with /v1) is the same origin:
        # the real run's own entries serve it, and nothing is sent.
        again = tmp_path / "again"
        done = run_cli("run", str(path), "--api-base", f"{server.base_url}/v1/", "--run-dir",
                       str(again), "--cache", str(cache), token=TOKEN)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert server.stats()["calls"].get("submit", 0) == JOBS
        assert [r["cached"] for r in report(again)] == ["true"] * JOBS


def test_a_simulated_baseline_never_passes_a_real_run_silently(tmp_path: Path) -> None:
    # The README's CI recipe: a baseline made from a simulated run with --update-baseline and
    # committed (report.csv and files/), then the gate against a run on a real API base.
    path, baseline = manifest(tmp_path), tmp_path / "baselines" / "origins"
    sim = tmp_path / "sim"
    assert run_cli("run", str(path), *SIM, "--run-dir", str(sim)).returncode == 0
    made = run_cli("compare", str(baseline), str(sim), "--update-baseline", str(baseline))
    assert made.returncode == 0, made.stderr
    with start_simulator("--run-time", "0.02", "--workers", "0", token=TOKEN) as server:
        real = tmp_path / "real"
        done = run_cli("run", str(path), "--api-base", server.base_url, "--run-dir", str(real),
                       token=TOKEN)  # fmt: skip
        assert done.returncode == 0, done.stderr
    gate = run_cli("compare", str(baseline), str(real))
    assert gate.returncode == 2
    assert gate.stderr == (
        f"error: the baseline {baseline} holds results from the simulator, the current run "
        f"{real} from {server.base_url}; a simulated result must not pass for a real one (or "
        "the other way round): compare runs of one origin, or give --allow-mixed-origins to "
        "compare them all the same\n"
    )
    # Same bytes on both servers: allowed, the gate passes and says what it compared.
    md = tmp_path / "c.md"
    allowed = run_cli("compare", str(baseline), str(real), "--allow-mixed-origins",
                      "--markdown", str(md))  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    warning = (
        f"mixed origins (--allow-mixed-origins): the baseline {baseline} holds results from "
        f"the simulator, the current run {real} from {server.base_url}"
    )
    assert f"warning: {warning}" in allowed.stdout.splitlines()
    assert f"> **Warning:** {warning}" in md.read_text().splitlines()

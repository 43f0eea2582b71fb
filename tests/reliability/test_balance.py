"""`batchrun balance`, and the balance `run` reads before its first submit: below one job's
estimate nothing is sent (exit 3); below the plan's estimate, a warning; summary.json keeps the
account-wide balance before and after."""

from __future__ import annotations

import json
from pathlib import Path

from testing.cli import clean_env, run_cli as run_any

from .conftest import MODEL, TOKEN, SimFactory, run_cli, sweep, write_manifest


def _priced(tmp_path: Path, base: str, jobs: int) -> Path:
    manifest = write_manifest(tmp_path / "m.yaml", sweep(jobs, outputs={"download": False}))
    pulled = run_cli("models", "pull", MODEL, "--dir", str(tmp_path / "schemas" / "models"),
                     "--api-base", base)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    return manifest


def test_balance_prints_what_the_account_has(simulator: SimFactory) -> None:
    sim = simulator("--balance", "2.5")
    env = clean_env(TOKEN, RUNCOMFY_SERVERLESS_API_BASE=sim.base_url)
    got = run_any("balance", env=env)
    assert (got.returncode, got.stdout) == (
        0,
        f"balance: $2.50 (account-wide, from {sim.base_url})\n",
    )
    assert TOKEN not in got.stdout + got.stderr
    as_json = json.loads(run_any("balance", "--json", env=env).stdout)
    assert as_json == {"balance_usd": 2.5, "scope": "account", "base": sim.base_url}
    refused = run_any(
        "balance", env=clean_env("wrong-token", RUNCOMFY_SERVERLESS_API_BASE=sim.base_url)
    )
    assert refused.returncode == 3 and "the token was refused" in refused.stderr


def test_a_balance_below_one_job_sends_nothing(tmp_path: Path, simulator: SimFactory) -> None:
    sim = simulator("--balance", "0.01", "--run-time", "0.05")
    manifest = _priced(tmp_path, sim.base_url, 4)
    env = clean_env(TOKEN, RUNCOMFY_SERVERLESS_API_BASE=sim.base_url)
    got = run_any("run", str(manifest), "--api-base", sim.base_url, "--run-dir",
                  str(tmp_path / "run"), "--quiet", env=env)  # fmt: skip
    assert got.returncode == 3, got.stderr
    assert "the account balance is $0.01, less than one job's estimate ($0.04)" in got.stderr
    assert sim.stats()["calls"].get("submit", 0) == 0


def test_a_balance_below_the_plan_warns_and_summary_keeps_it(tmp_path, simulator) -> None:
    sim = simulator("--balance", "0.10", "--run-time", "0.05", "--workers", "0")
    manifest = _priced(tmp_path, sim.base_url, 10)
    env = clean_env(TOKEN, RUNCOMFY_SERVERLESS_API_BASE=sim.base_url)
    got = run_any("run", str(manifest), "--api-base", sim.base_url, "--run-dir",
                  str(tmp_path / "run"), "--quiet", env=env)  # fmt: skip
    assert "below the estimate of the jobs to run ($0.40); it covers about 2 of 10" in got.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["balance"]["scope"] == "account"
    assert summary["balance"]["before_usd"] == 0.1
    assert summary["balance"]["after_usd"] < 0.1

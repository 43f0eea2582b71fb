"""The budget inside a run on the simulator: an unpriced model learnt one job at a time, an empty
balance (exit 3, then a resume after the top-up), and the cost in `status`."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from batchrun.commands.status import render_status, status_data
from batchrun.errors import BudgetReached
from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.simulator import SimSettings, Simulator
from batchrun.store.state import StateStore

FLUX3 = "blackforestlabs/flux-3/text-to-video"  # packaged schema: no price, duration "auto"
KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"


def _manifest(tmp_path: Path, model: dict, jobs: int, **run: object) -> Path:
    data = {
        "version": 1,
        "name": "budget",
        "run": {"rate_limit": "200/s", "poll_interval": "20ms", "max_in_flight": 4, **run},
        "outputs": {"download": False},
        "models": [model],
    }
    if "repeat" not in model:
        data["matrix"] = {"seed": list(range(1, jobs + 1))}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def test_an_unpriced_model_runs_one_job_at_a_time_until_its_cost_is_known(tmp_path):
    path = _manifest(
        tmp_path, {"id": FLUX3, "inputs": {"prompt": "rain"}, "repeat": 8}, 8, max_cost_usd=1
    )
    plan = build_plan(path)
    messages: list[str] = []
    with Simulator(SimSettings(run_time=0.05, concurrency=0)) as sim:
        options = RunOptions(
            api_base=sim.base_url,
            token=sim.token,
            run_dir=tmp_path / "run",
            quiet=True,
            handle_signals=False,
            echo=messages.append,
        )
        with pytest.raises(BudgetReached) as info:
            run_batch(plan, options)
        billed = Decimal(repr(sim.app.snapshot()["billed_usd"]))
    assert str(info.value).startswith(
        "stopped at the cost budget: spent $1.00 of the $1.00 cap; 4 jobs not run."
    )
    assert billed == Decimal("1.00")  # 5 s x $0.05 for "auto", four times
    with StateStore.open(tmp_path / "run", create=False, lock=False) as store:
        sent = sorted((r for r in store.rows() if r.request_id), key=lambda r: r.submitted_at or 0)
    assert len(sent) == 4
    first, rest = sent[0], sent[1:]
    assert first.finished_at is not None
    assert all((r.submitted_at or 0) >= first.finished_at for r in rest)  # the first ran alone
    assert {r.cost_usd for r in sent} == {0.25}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_insufficient_balance_exits_3_says_so_and_resumes_after_a_top_up(tmp_path):
    model = {"id": KONTEXT, "inputs": {"prompt": "a cat", "image_url": IMAGE}}
    _manifest(tmp_path, model, 10)
    run = ["run", "m.yaml", "--simulate", "--quiet", "--sim", "run_time=0.05"]
    first = _cli(*run, "--sim", "balance=0.20", cwd=tmp_path)  # five jobs at $0.04
    assert first.returncode == 3, first.stderr
    last = first.stderr.splitlines()[-1]
    assert last.startswith("error: POST /v1/models/blackforestlabs/flux-1-kontext/pro/edit ")
    assert "HTTP 402 error_code 400002: insufficient balance" in last
    assert "the account cannot pay for more jobs; stopped submitting, 5 jobs not run. " in last
    assert last.endswith(
        "Top up the RunComfy balance, then rerun: batchrun run m.yaml --run-dir outputs/budget "
        "--simulate --sim=run_time=0.05 --sim=balance=0.20"
    )
    data = status_data(tmp_path / "outputs" / "budget")
    assert data["counts"] == {"succeeded": 5, "pending": 5} and data["cost_usd"] == 0.2

    again = _cli(*run, "--sim", "balance=1", cwd=tmp_path)  # topped up
    assert again.returncode == 0, again.stderr
    data = status_data(tmp_path / "outputs" / "budget")
    assert data["counts"] == {"succeeded": 10} and data["cost_usd"] == 0.4
    journal = (tmp_path / "outputs" / "budget" / ".simulator" / "journal.jsonl").read_text()
    submits = [json.loads(x) for x in journal.splitlines() if '"submit"' in x]
    seeds = sorted(r["inputs"]["seed"] for r in submits)
    assert seeds == list(range(1, 11))  # each job submitted (and paid) once


def test_status_shows_the_cost_spent_the_estimate_and_the_cap(tmp_path):
    model = {"id": KONTEXT, "inputs": {"prompt": "a cat", "image_url": IMAGE}}
    path = _manifest(tmp_path, model, 3, max_cost_usd=0.5)
    with Simulator(SimSettings(run_time=0.02, concurrency=0)) as sim:
        options = RunOptions(
            api_base=sim.base_url, token=sim.token, run_dir=tmp_path / "run", quiet=True
        )
        options.handle_signals = False
        assert run_batch(build_plan(path), options) == 0
    data = status_data(tmp_path / "run")
    # nothing priced: no estimate (null), never a bare 0.0 beside jobs that cost money
    assert (data["cost_usd"], data["est_cost_usd"], data["max_cost_usd"]) == (0.12, None, 0.5)
    assert data["spent_usd"] == 0.12
    assert data["unpriced_jobs"] == 3  # the packaged Kontext schema has no price
    assert "cost: $0.12 spent (no estimate: 3 jobs unpriced, cap $0.50)" in (
        render_status(data).splitlines()
    )

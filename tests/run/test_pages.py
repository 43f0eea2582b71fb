"""A run reads its pending jobs from state.db a page at a time (run/pages.py) and lets finished
ones go: with pages far smaller than the sweep, plan order, the budget and the canaries hold,
and the job table never holds more than a page or two and what is in flight."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from batchrun.errors import BudgetReached
from batchrun.run import pages
from batchrun.run.scheduler import Scheduler
from batchrun.simulator import SimSettings, Simulator
from batchrun.store.state import StateStore
from testing.inprocess import run_here

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"  # priced: $0.04 a job
T2I = "google/nano-banana-2-lite/text-to-image"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
PAGE = 7


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pages of PAGE jobs; what the job table held after each step of the loop."""
    monkeypatch.setattr(pages, "PAGE", PAGE)
    held: list[int] = []
    let_go = Scheduler._let_go

    def watched(self: Scheduler) -> None:
        let_go(self)
        held.append(len(self.jobs.rows))

    monkeypatch.setattr(Scheduler, "_let_go", watched)
    return held


def manifest(tmp_path: Path, models: list[dict], **run: object) -> Path:
    data = {
        "version": 1,
        "name": "pages",
        "run": {"rate_limit": "500/s", "poll_interval": "20ms", "max_in_flight": 3, **run},
        "outputs": {"download": False},
        "models": models,
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def sent_order(run_dir: Path) -> list[str]:
    """The jobs in the order their submits left (the ledger's order)."""
    with StateStore.open(run_dir, create=False, lock=False) as store:
        return [a.job_id for a in store.attempts()]


def plan_order(run_dir: Path) -> list[str]:
    with StateStore.open(run_dir, create=False, lock=False) as store:
        return [r.job_id for r in store.rows(in_manifest_only=True)]


def test_pages_keep_plan_order_and_hold_only_what_is_in_flight(tmp_path, small_pages):
    path = manifest(
        tmp_path, [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(60)]}}], retries=0
    )
    with Simulator(SimSettings(run_time=0.02, concurrency=0)) as sim:
        code, _ = run_here(path, sim, tmp_path / "run")
        submits = sim.stats()["calls"]["submit"]
    assert code == 0 and submits == 60
    assert sent_order(tmp_path / "run") == plan_order(tmp_path / "run")
    # a page and a half pending, 3 in flight and those finishing: never the sweep
    assert max(small_pages) <= PAGE + PAGE // 2 + 3 + 3, max(small_pages)


def test_the_budget_holds_across_pages(tmp_path, small_pages):
    model = {"id": KONTEXT, "inputs": {"image_url": IMAGE},
             "matrix": {"prompt": [f"p{i}" for i in range(40)]}}  # fmt: skip
    path = manifest(tmp_path, [model], max_cost_usd=0.41)
    with Simulator(SimSettings(run_time=0.02, concurrency=0)) as sim:
        with pytest.raises(BudgetReached) as stopped:
            run_here(path, sim, tmp_path / "run")
        billed = Decimal(repr(sim.app.snapshot()["billed_usd"]))
    assert billed == Decimal("0.40")  # ten jobs of $0.04 fit under $0.41, on the server's books
    assert "30 jobs not run" in str(stopped.value)
    assert sent_order(tmp_path / "run") == plan_order(tmp_path / "run")[:10]


def test_canaries_go_first_and_their_models_are_read_again_once_they_pass(tmp_path, small_pages):
    models = [
        {"id": T2I, "matrix": {"prompt": [f"a{i}" for i in range(20)]}},
        {"id": KONTEXT, "matrix": {"prompt": [f"b{i}" for i in range(20)]},
         "inputs": {"image_url": IMAGE}},
    ]  # fmt: skip
    path = manifest(tmp_path, models, canary=2, retries=0)
    with Simulator(SimSettings(run_time=0.02, concurrency=0)) as sim:
        code, _ = run_here(path, sim, tmp_path / "run")
    assert code == 0
    sent, planned = sent_order(tmp_path / "run"), plan_order(tmp_path / "run")
    assert sorted(sent) == sorted(planned) and len(sent) == 40
    canaries = {*planned[:2], *planned[20:22]}
    assert set(sent[:4]) == canaries  # every model's canaries before any other job
    for model_jobs in (planned[:20], planned[20:]):  # each model's jobs in plan order
        assert [j for j in sent if j in model_jobs] == model_jobs


def test_failed_canaries_stop_their_model_whatever_the_pages(tmp_path, small_pages):
    models = [
        {"id": T2I, "matrix": {"prompt": [f"a{i}" for i in range(20)]}},
        {"id": KONTEXT, "matrix": {"prompt": [f"b{i}" for i in range(20)]},
         "inputs": {"image_url": IMAGE}},
    ]  # fmt: skip
    path = manifest(tmp_path, models, canary=2, retries=0)
    with Simulator(SimSettings(run_time=0.02, concurrency=0, fail_rate=1.0)) as sim:
        code, said = run_here(path, sim, tmp_path / "run")
        submits = sim.stats()["calls"]["submit"]
    sent, planned = sent_order(tmp_path / "run"), plan_order(tmp_path / "run")
    # Only canaries were sent (a model's second one is not, once its first failed)
    assert code == 1 and submits == len(sent) and 2 <= len(sent) <= 4
    assert set(sent) <= {*planned[:2], *planned[20:22]}
    assert sum("canary failed for" in line for line in said) == 2
    with StateStore.open(tmp_path / "run", create=False, lock=False) as store:
        assert store.counts() == {"failed": len(sent), "pending": 40 - len(sent)}

"""`expect:` end to end against the simulator over real HTTP: a job whose downloaded files
fail an expectation is failed (its cost kept), counts for the halt, is not cached, is listed
by `status`, makes the run exit 1, and is sent again only by --retry-failed."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchrun.cli import cli
from batchrun.simulator import Simulator
from batchrun.store.state import StateStore
from testing.inprocess import run_here as run
from testing.simulators import simulators

TOKEN = "tok-expect-SECRET-3c9d"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
VIDEO = "bytedance/seedance-2.5/text-to-video/1080p"
IMAGE_URL = "https://example.com/in.png"


@pytest.fixture
def sim():
    with simulators(token=TOKEN, run_time=0.05, workers=0) as start:
        yield start()


def manifest(
    tmp_path: Path, models: list[dict[str, Any]], expect: dict[str, Any], **extra: Any
) -> Path:
    run = {"rate_limit": "100/s", "poll_interval": "20ms", "max_in_flight": 10}
    run.update(extra.pop("run", {}))
    data = {"version": 1, "name": "expect", "run": run, "expect": expect, "models": models}
    data.update(extra)
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def flux(ratios: list[str], **more: Any) -> dict[str, Any]:
    return {
        "id": FLUX,
        "inputs": {"prompt": "a cat", "image_url": IMAGE_URL},
        "matrix": {"aspect_ratio": ratios},
        **more,
    }


def report(run_dir: Path) -> dict[str, dict[str, str]]:
    """report.csv's rows by their aspect_ratio (or duration) input."""
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {r.get("input.aspect_ratio", "") + "/" + r.get("input.duration", ""): r for r in rows}


def submits(sim: Simulator) -> int:
    return int(sim.stats()["submits"])


def test_images_met_and_unmet(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(
        tmp_path, [flux(["1:1", "16:9"])], {"files": 1, "type": "image", "width": 128,
                                            "height": 128, "max_bytes": "1MB"},
    )  # fmt: skip
    run_dir = tmp_path / "run"
    code, messages = run(path, sim, run_dir)
    rows = report(run_dir)
    assert code == 1
    assert rows["1:1/"]["status"] == "succeeded" and rows["1:1/"]["error"] == ""
    bad = rows["16:9/"]
    assert bad["status"] == "failed"
    assert bad["error"] == "expect: height 72 != 128 (image_0.png)"
    # Its file stays, for a look at what came back; its cost is kept.
    assert bad["output_files"] == f"files/{bad['job_id']}/image_0.png"
    assert (run_dir / bad["output_files"]).is_file()
    assert bad["cost_usd"] == rows["1:1/"]["cost_usd"] != ""
    assert "rerun with --retry-failed to submit failed and timed-out jobs again" in messages


def test_a_video_its_size_and_duration(sim: Simulator, tmp_path: Path) -> None:
    model = {
        "id": VIDEO,
        "inputs": {"prompt": "waves"},
        "cases": [
            {"aspect_ratio": "16:9", "duration": 5},
            {"aspect_ratio": "16:9", "duration": 8},
            {"aspect_ratio": "9:16", "duration": 5},
        ],
    }
    expect = {"type": "video", "width": 1920, "height": [1000, 1100], "duration_s": [4.5, 5.5]}
    path = manifest(tmp_path, [model], expect)
    run_dir = tmp_path / "run"
    code, _ = run(path, sim, run_dir)
    rows = report(run_dir)
    assert code == 1
    assert rows["16:9/5"]["status"] == "succeeded"
    assert rows["16:9/8"]["error"] == "expect: duration_s 8 not in [4.5, 5.5] (video_0.mp4)"
    assert rows["9:16/5"]["error"] == (
        "expect: width 1080 != 1920 (video_0.mp4); height 1920 not in [1000, 1100] (video_0.mp4)"
    )
    assert {r["status"] for k, r in rows.items() if k != "16:9/5"} == {"failed"}


def test_a_failed_expectation_keeps_its_cost_on_the_servers_books(
    sim: Simulator, tmp_path: Path
) -> None:
    path = manifest(tmp_path, [flux(["1:1", "16:9", "4:3"])], {"height": 128})
    run_dir = tmp_path / "run"
    code, _ = run(path, sim, run_dir)
    assert code == 1
    billed = Decimal(repr(sim.stats()["billed_usd"]))
    assert billed > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert Decimal(repr(summary["spent_usd"])) == billed
    status = json.loads(CliRunner().invoke(cli, ["status", str(run_dir), "--json"]).output)
    assert Decimal(repr(status["spent_usd"])) == billed
    assert status["counts"] == {"succeeded": 1, "failed": 2}
    errors = sorted(p["error"] for p in status["problems"])
    assert errors == [
        "expect: height 72 != 128 (image_0.png)",
        "expect: height 96 != 128 (image_0.png)",
    ]


def test_status_lists_the_job_with_its_error(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(tmp_path, [flux(["16:9"])], {"width": [200, 400]})
    run_dir = tmp_path / "run"
    run(path, sim, run_dir)
    out = CliRunner().invoke(cli, ["status", str(run_dir)]).output
    with StateStore.open(run_dir, create=False, lock=False) as store:
        (row,) = store.rows()
    line = f"  {row.job_id}  failed     {FLUX}: expect: width 128 not in [200, 400] (image_0.png)"
    assert line in out.splitlines()


def test_not_resubmitted_by_retries_but_by_retry_failed(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(tmp_path, [flux(["1:1", "16:9"])], {"height": 128}, run={"retries": 3})
    run_dir = tmp_path / "run"
    code, _ = run(path, sim, run_dir)
    assert code == 1
    assert submits(sim) == 2  # `retries` resubmits failed attempts, not results judged wrong
    code, _ = run(path, sim, run_dir)
    assert (code, submits(sim)) == (1, 2)  # a plain rerun leaves it failed
    code, _ = run(path, sim, run_dir, retry_failed=True)
    assert code == 1  # the same inputs give the same picture: failed again
    stats = sim.stats()
    assert stats["submits"] == 3
    assert sorted(stats["submits_per_identity"].values()) == [1, 2]
    assert report(run_dir)["16:9/"]["error"] == "expect: height 72 != 128 (image_0.png)"


def test_a_failed_expectation_is_not_cached(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(tmp_path, [flux(["1:1", "16:9"])], {"height": 128})
    cache = tmp_path / "cache"
    code, _ = run(path, sim, tmp_path / "one", cache=cache)
    assert code == 1
    entries = list((cache / "entries").glob("*/*/entry.json"))
    assert len(entries) == 1
    assert json.loads(entries[0].read_text())["inputs"]["aspect_ratio"] == "1:1"
    code, _ = run(path, sim, tmp_path / "two", cache=cache)
    assert code == 1
    assert submits(sim) == 3  # the 1:1 job from the cache; the 16:9 one sent again
    rows = report(tmp_path / "two")
    assert rows["1:1/"]["cached"] == "true" and rows["16:9/"]["status"] == "failed"


def test_expectation_failures_count_for_the_halt(sim: Simulator, tmp_path: Path) -> None:
    run_settings = {"max_in_flight": 1, "halt": {"failure_rate": 0.5, "min_finished": 2}}
    ratios = ["16:9", "4:3", "3:2", "21:9", "2:1", "9:16", "3:4", "5:4"]
    path = manifest(tmp_path, [flux(ratios)], {"height": 128}, run=run_settings)
    run_dir = tmp_path / "run"
    code, messages = run(path, sim, run_dir)
    assert code == 1
    sent = submits(sim)
    assert 2 <= sent < len(ratios)
    halted = [m for m in messages if m.startswith("halted: ")]
    assert halted and f"{len(ratios) - sent} jobs not submitted" in halted[0]


def test_a_canary_proves_its_model_only_once_its_files_pass(sim: Simulator, tmp_path: Path) -> None:
    ratios = ["16:9", "1:1", "4:3", "3:2"]
    path = manifest(tmp_path, [flux(ratios)], {"height": 128}, run={"canary": 1})
    code, messages = run(path, sim, tmp_path / "run")
    assert code == 1
    assert submits(sim) == 1  # the first job, 16:9, is the canary and its picture is wrong
    assert any(m.startswith(f"canary failed for {FLUX}: ") and "expect: height 72" in m
               for m in messages)  # fmt: skip

"""Shards run on the simulator, merged, compared with a whole run; conflicts refused; subsets
in an existing run folder leave its other jobs as they are."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, _Run
from batchrun.store import state as st
from batchrun.store.state import StateStore

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = (
    "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp"
)


def manifest(tmp_path: Path, jobs: int = 10) -> Path:
    data = {
        "version": 1,
        "name": "shards",
        "run": {"rate_limit": "100/s", "poll_interval": "50ms", "max_in_flight": 20},
        "vars": {"color": ["red", "blue"]},
        "models": [
            {
                "id": FLUX,
                "inputs": {"prompt": "a {color} cat", "image_url": IMAGE},
                "matrix": {"seed": list(range(1, jobs // 2 + 1))},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def batchrun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchrun", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def simulate(path: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    sim = ["--simulate", "--sim", "run_time=0.05", "--sim", "workers=0"]
    return batchrun("run", path, "--run-dir", run_dir, *sim, *extra)


def report(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """A manifest, a whole run of it, and its two shards run into their own folders."""
    root = tmp_path_factory.mktemp("shards")
    path = manifest(root)
    whole, one, two = root / "whole", root / "one", root / "two"
    for folder, extra in ((whole, ()), (one, ("--shard", "1/2")), (two, ("--shard", "2/2"))):
        done = simulate(path, folder, *extra)
        assert done.returncode == 0, done.stderr
    return path, whole, one, two


def test_shards_merged_compare_unchanged_with_a_whole_run(shards, tmp_path: Path) -> None:
    _, whole, one, two = shards
    sizes = [len(report(one)), len(report(two))]
    assert sum(sizes) == 10 and min(sizes) > 0
    into = tmp_path / "merged"
    done = batchrun("merge", one, two, "--into", into)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"merged 10 jobs from 2 folders into {into}; 10 files ")
    for name in ("state.db", "report.csv", "summary.json", "report.html"):
        assert (into / name).is_file(), name
    compared = batchrun("compare", whole, into, "--json", tmp_path / "c.json")
    assert compared.returncode == 0, compared.stdout + compared.stderr
    totals = json.loads((tmp_path / "c.json").read_text())["totals"]
    assert totals["unchanged"] == 10
    rows = report(into)
    assert [r["job_id"] for r in rows] == [r["job_id"] for r in report(whole)]  # same order
    for row in rows:
        names, shas = row["output_files"].split(";"), row["output_sha256"].split(";")
        assert names and names[0]
        for name, sha in zip(names, shas, strict=True):
            data = (into / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha
    summary = json.loads((into / "summary.json").read_text())
    assert summary["statuses"]["succeeded"] == 10
    assert summary["merged_from"] == [str(one), str(two)]


def test_merged_state_matches_the_shards_job_for_job(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    into = tmp_path / "merged"
    assert batchrun("merge", one, two, "--into", into).returncode == 0
    with StateStore.open(into, create=False, lock=False) as store:
        merged = {r.job_id: r for r in store.rows()}
    for folder in (one, two):
        with StateStore.open(folder, create=False, lock=False) as store:
            for row in store.rows():
                assert merged[row.job_id] == row


def test_identical_duplicates_merge(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    copy = tmp_path / "one-again"
    shutil.copytree(one, copy)
    done = batchrun("merge", one, copy, two, "--into", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    assert "found twice with the same result" in done.stderr
    assert len(report(tmp_path / "m")) == 10


def test_a_job_with_two_results_is_refused(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    copy = tmp_path / "one-failed"
    shutil.copytree(one, copy)
    with StateStore.open(copy) as store:
        job = store.rows()[0]
        store.record_result(job.job_id, st.FAILED, finished_at=1.0, error="boom")
    into = tmp_path / "m"
    done = batchrun("merge", one, two, copy, "--into", into)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == (
        "error: 1 job(s) have different results in two folders; refusing to merge (leave one "
        "of the two folders out, or run that job again in one):"
    )
    assert lines[1].startswith(f"  job {job.job_id}: {one}: succeeded, request {job.request_id}")
    assert f" | {copy}: failed, request {job.request_id}, sha256 " in lines[1]
    assert not into.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == []


def test_a_damaged_file_is_refused(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    copy = tmp_path / "one-damaged"
    shutil.copytree(one, copy)
    name = report(copy)[0]["output_files"]
    (copy / name).write_bytes(b"not the output")
    done = batchrun("merge", copy, two, "--into", tmp_path / "m")
    assert done.returncode == 2
    assert done.stderr == (
        f"error: {copy}: {name}: its sha256 is not the one state.db recorded (damaged or "
        "changed); run that shard again in its folder\n"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "no-state",
            "error: {src}: no state.db here, so not a run folder; give the folders the "
            "shards ran in (their --run-dir), e.g. the downloaded artifacts",
        ),
        ("into-full", "error: {into}: already exists and is not empty; choose a new folder"),
        ("into-source", "error: {into}: is one of the folders to merge; choose a new folder"),
    ],
)
def test_bad_merge_input(shards, tmp_path: Path, setup: str, message: str) -> None:
    _, _, one, _ = shards
    src, into = one, tmp_path / "into"
    if setup == "no-state":
        src = tmp_path / "empty"
        src.mkdir()
    elif setup == "into-full":
        into.mkdir()
        (into / "x").write_text("x")
    else:
        into = one
    done = batchrun("merge", src, "--into", into)
    assert done.returncode == 2
    assert done.stderr == message.format(src=src, into=into) + "\n"


def test_subsets_in_one_folder_leave_the_other_jobs_alone(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    folder = tmp_path / "run"
    first = simulate(path, folder, "--only", "var.color=red", "--first", "2")
    assert first.returncode == 0, first.stderr
    assert "2 jobs (8 left out by the filter): succeeded 2." in first.stderr
    assert len(report(folder)) == 2
    with StateStore.open(folder, create=False, lock=False) as store:
        before = {r.job_id: r for r in store.rows()}
    shard = simulate(path, folder, "--shard", "1/2")
    assert shard.returncode == 0, shard.stderr
    assert "no longer in the manifest" not in shard.stderr
    with StateStore.open(folder, create=False, lock=False) as store:
        after = {r.job_id: r for r in store.rows()}
    assert all(r.in_manifest for r in after.values())
    for job_id, row in before.items():
        assert after[job_id] == row  # a job of both subsets is not run again
    whole = simulate(path, folder)
    assert whole.returncode == 0, whole.stderr
    rows = report(folder)
    assert len(rows) == 10 and {r["status"] for r in rows} == {"succeeded"}


def test_a_subset_retries_only_its_own_failed_jobs(tmp_path: Path) -> None:
    path = manifest(tmp_path, jobs=4)
    folder = tmp_path / "run"
    assert simulate(path, folder, "--sim", "fail_rate=1").returncode == 1
    target = report(folder)[1]["job_id"]
    again = simulate(path, folder, "--only", f"job={target}", "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert "1 jobs (3 left out by the filter): succeeded 1." in again.stderr
    statuses = {r["job_id"]: r["status"] for r in report(folder)}
    assert statuses.pop(target) == "succeeded"
    assert set(statuses.values()) == {"failed"}


def test_a_shard_takes_its_share_of_rate_and_flights(tmp_path: Path) -> None:
    plan = build_plan(manifest(tmp_path))

    def settings(share: int):
        options = RunOptions(api_base="http://127.0.0.1:9", token="t", share=share)
        return _Run(plan, options, tmp_path, None)._run_settings()  # type: ignore[arg-type]

    assert (settings(1).rate_limit, settings(1).max_in_flight) == (100.0, 20)
    assert (settings(4).rate_limit, settings(4).max_in_flight) == (25.0, 5)
    assert (settings(40).rate_limit, settings(40).max_in_flight) == (2.5, 1)


# ---- provenance and links ---------------------------------------------------------------------


def _as_real(folder: Path, dest: Path, base: str = "https://model-api.example") -> Path:
    """A copy of a simulated shard folder that says its results came from a real API."""
    shutil.copytree(folder, dest)
    shutil.rmtree(dest / ".simulator", ignore_errors=True)
    with StateStore.open(dest) as store:
        store.set_meta(origin=base, api_base=base)
    return dest


def test_merge_refuses_a_simulated_shard_and_a_real_one(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    real = _as_real(two, tmp_path / "real")
    merged = batchrun("merge", one, real, "--into", tmp_path / "all")
    assert merged.returncode == 2
    assert merged.stderr == (
        "error: the folders hold results from different origins; refusing to merge them (a "
        "simulated result must never pass for a real one):\n"
        f"  {one}: results from the simulator\n"
        f"  {real}: results from https://model-api.example\n"
    )
    assert not (tmp_path / "all").exists()


def test_merge_refuses_a_folder_that_records_no_origin(shards, tmp_path: Path) -> None:
    # A folder that says nothing of its origin matches none: its results could be simulated.
    _, _, one, two = shards
    unknown = _as_real(two, tmp_path / "unknown", base="")
    merged = batchrun("merge", one, unknown, "--into", tmp_path / "all")
    assert merged.returncode == 2
    assert merged.stderr.splitlines()[1:] == [
        f"  {one}: results from the simulator",
        f"  {unknown}: results from an unknown origin",
    ]
    assert not (tmp_path / "all").exists()


def test_merge_keeps_the_origin_the_prices_and_the_simulator_mark(shards, tmp_path) -> None:
    _, _, one, two = shards
    assert batchrun("merge", one, two, "--into", tmp_path / "all").returncode == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["origin"] == "simulator"
    assert "est_cost_usd" in summary and "unpriced_jobs" in summary
    assert (tmp_path / "all" / ".simulator").is_dir()
    status = json.loads(batchrun("status", tmp_path / "all", "--json").stdout)
    assert status["origin"] == "simulator"


def test_merge_keeps_the_cap_and_the_estimates_summed(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    folders = [tmp_path / "s1", tmp_path / "s2"]
    for k, folder in enumerate(folders, 1):
        done = simulate(path, folder, "--shard", f"{k}/2", "--max-cost", "1")
        assert done.returncode == 0, done.stderr
    shards = [json.loads((f / "summary.json").read_text()) for f in folders]
    assert [s["max_cost_usd"] for s in shards] == [0.5, 0.5]  # each shard its share
    assert batchrun("merge", *folders, "--into", tmp_path / "all").returncode == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["origin"] == "simulator"
    assert summary["max_cost_usd"] == 1.0
    assert summary["est_cost_usd"] == sum(s["est_cost_usd"] for s in shards)
    assert summary["unpriced_jobs"] == sum(s["unpriced_jobs"] for s in shards) == 10
    status = json.loads(batchrun("status", tmp_path / "all", "--json").stdout)
    assert (status["origin"], status["max_cost_usd"], status["unpriced_jobs"]) == (
        "simulator",
        1.0,
        10,
    )


def test_merge_refuses_a_symbolic_link_in_a_shards_files(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    planted = tmp_path / "two"
    shutil.copytree(two, planted)
    image = next(p for p in (planted / "files").rglob("*") if p.is_file())
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(image.read_bytes())  # the same bytes: a sha256 check would pass
    image.unlink()
    image.symlink_to(elsewhere)
    merged = batchrun("merge", one, planted, "--into", tmp_path / "all")
    assert merged.returncode == 2
    rel = image.relative_to(planted).as_posix()
    assert merged.stderr == (
        f"error: {planted}: {rel} is a symbolic link; merge takes only the regular files a run "
        "wrote and never follows a link: put the file itself there, or run that shard again in "
        "its folder\n"
    )
    assert not (tmp_path / "all").exists()


def test_merge_refuses_a_job_folder_that_is_a_symbolic_link(shards, tmp_path: Path) -> None:
    # files/<job_id> pointing elsewhere: its files are regular, the way to them is not.
    _, _, one, two = shards
    planted = tmp_path / "two"
    shutil.copytree(two, planted)
    job = next(p for p in sorted((planted / "files").iterdir()) if p.is_dir())
    elsewhere = tmp_path / "elsewhere"
    job.rename(elsewhere)
    job.symlink_to(elsewhere, target_is_directory=True)
    merged = batchrun("merge", one, planted, "--into", tmp_path / "all")
    assert merged.returncode == 2
    assert merged.stderr.startswith(
        f"error: {planted}: files/{job.name} is a symbolic link; merge takes only the regular "
        "files a run wrote and never follows a link"
    )
    assert not (tmp_path / "all").exists()


def test_merged_files_are_never_links(shards, tmp_path: Path) -> None:
    _, _, one, two = shards
    assert batchrun("merge", one, two, "--into", tmp_path / "all").returncode == 0
    files = list((tmp_path / "all" / "files").rglob("*"))
    assert any(p.is_file() for p in files) and not any(p.is_symlink() for p in files)


def test_compare_of_a_simulated_baseline_and_a_real_run_exits_2(shards, tmp_path) -> None:
    _, whole, _, _ = shards
    real = _as_real(whole, tmp_path / "real")
    assert batchrun("report", real).returncode == 0  # its summary.json says where from
    refused = batchrun("compare", whole, real)
    assert refused.returncode == 2
    assert "holds results from the simulator" in refused.stderr
    assert "--allow-mixed-origins" in refused.stderr
    allowed = batchrun(
        "compare", whole, real, "--allow-mixed-origins",
        "--json", tmp_path / "c.json", "--markdown", tmp_path / "c.md",
        "--junit", tmp_path / "c.xml",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: mixed origins (--allow-mixed-origins)" in allowed.stdout
    assert json.loads((tmp_path / "c.json").read_text())["warnings"]
    assert "mixed origins" in (tmp_path / "c.md").read_text()
    assert "mixed origins" in (tmp_path / "c.xml").read_text()

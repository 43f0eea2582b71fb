"""The cap holds where features meet, judged by what the simulator billed: a server that bills
every submit it accepts (`--bill-on accept`), results with and without a cost, kills
mid-submit, retries, the cache, shards and merge, a stale price, a manifest edit. The promise:
billed <= cap, plus at most one job of an unpriced model whose price nothing told us; and
`status`, summary.json and report.csv say what the ledger says."""

from __future__ import annotations

import json
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from testing.cli import batchrun_cmd

from .conftest import (
    MODEL,
    SimFactory,
    SimProcess,
    ambiguous_jobs,
    canonical_identity,
    clean_env,
    plan_jobs,
    read_report,
    run_cli,
    state_rows,
    sweep,
    write_manifest,
)

PRICE = Decimal("0.04")  # what the simulator bills for one MODEL job


def _manifest(
    tmp_path: Path,
    jobs: int,
    *,
    priced: bool,
    sim: SimProcess,
    download: bool = False,
    **run: object,
) -> Path:
    """A sweep of MODEL; `priced`: its catalog entry (price included) pulled beside it, else
    the packaged schema, which has no price. `download`: files fetched (what the cache keeps)."""
    manifest = write_manifest(
        tmp_path / "sweep.yaml", sweep(jobs, run=dict(run), outputs={"download": download})
    )
    if priced:
        pulled = run_cli(
            *("models", "pull", MODEL, "--dir", str(tmp_path / "schemas" / "models")),
            *("--api-base", sim.base_url),
        )
        assert pulled.returncode == 0, pulled.stderr
    return manifest


def _run(manifest: Path, sim: SimProcess, run_dir: Path, *extra: str):
    return run_cli(
        *("run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir)),
        *("--quiet", *extra),
    )


def _books(sim: SimProcess) -> dict:
    """The simulator's stats once every job it accepted has finished."""
    deadline = time.monotonic() + 30
    while True:
        stats = sim.stats()
        if not (stats["jobs"].get("in_queue") or stats["jobs"].get("in_progress")):
            return stats
        assert time.monotonic() < deadline, f"simulator jobs still running: {stats['jobs']}"
        time.sleep(0.05)


def _billed(sim: SimProcess) -> Decimal:
    """What the simulator billed once every job it accepted has finished."""
    return Decimal(repr(_books(sim)["billed_usd"]))


def _status(run_dir: Path) -> dict:
    result = run_cli("status", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _agree(run_dir: Path) -> dict:
    """status --json and summary.json give the same money; report.csv's costs add up to it."""
    status = _status(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("spent_usd", "spent_known_usd", "spent_estimated_usd", "cost_usd"):
        assert status[key] == summary[key], key
    column = sum((Decimal(r["cost_usd"] or "0") for r in read_report(run_dir)), Decimal(0))
    assert column == Decimal(repr(summary["cost_usd"]))
    return status


def _kill_mid_submit(
    manifest: Path,
    sim: SimProcess,
    run_dir: Path,
    submits: int,
    options: tuple[str, ...] = ("--max-cost", "0.10"),
) -> None:
    """Start a run, SIGKILL it while its `submits`-th submit is in the air (the simulator
    answers every call late: `--slow`), then wait until the simulator has taken that submit."""
    cmd = batchrun_cmd(
        *("run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir)),
        *options,
        "--quiet",
    )
    before = sim.stats()
    sent, accepted = before["calls"].get("submit", 0), before["submits"]
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while sim.stats()["calls"].get("submit", 0) < sent + submits:  # counted as it arrives
        assert time.monotonic() < deadline and proc.poll() is None, "no submit sent"
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    while sim.stats()["submits"] < accepted + submits:  # accepted (and billed) after the delay
        assert time.monotonic() < deadline, "the submit was never accepted"
        time.sleep(0.02)


def test_kills_mid_submit_of_an_unpriced_model_never_pay_past_the_cap(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 1: each lost submit may have been billed; with no price known it holds all the room.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept", "--slow", "1.5")
    manifest = _manifest(tmp_path, 10, priced=False, sim=sim)
    run_dir = tmp_path / "run"
    _kill_mid_submit(manifest, sim, run_dir, submits=1)
    reruns = [_run(manifest, sim, run_dir, "--max-cost", "0.10") for _ in range(4)]
    assert sim.stats()["submits"] == 1  # each rerun with the same cap sends nothing more
    assert _billed(sim) <= Decimal("0.10") + PRICE
    for again in reruns:
        assert again.returncode == 4, again.stderr
        assert "1 attempt of unknown cost" in again.stderr
        assert "give the model a price (batchrun models pull MODEL_ID)" in again.stderr
    status = _agree(run_dir)
    assert status["unknown_cost_attempts"] == 1


def test_results_without_a_cost_do_not_let_each_rerun_pay_one_more_job(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 1, second half: nothing tells what an unpriced job cost, so it keeps the room.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept",
                    "--no-result-costs")  # fmt: skip
    manifest = _manifest(tmp_path, 10, priced=False, sim=sim)
    run_dir = tmp_path / "run"
    codes = [_run(manifest, sim, run_dir, "--max-cost", "0.10").returncode for _ in range(5)]
    assert codes == [4] * 5
    assert sim.stats()["submits"] == 1
    assert _billed(sim) <= Decimal("0.10") + PRICE


def test_cache_hits_do_not_teach_an_unpriced_model_to_cost_nothing(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 2: three jobs come from the cache (cost 0); the others must not reserve $0.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept")
    cache = tmp_path / "cache"
    few = write_manifest(tmp_path / "few" / "sweep.yaml", sweep(3, outputs={"download": True}))
    assert _run(few, sim, tmp_path / "filled", "--cache", str(cache)).returncode == 0
    before = _billed(sim)
    many = write_manifest(tmp_path / "many" / "sweep.yaml", sweep(15, outputs={"download": True}))
    run_dir = tmp_path / "run"
    taken = _run(many, sim, run_dir, "--cache", str(cache), "--first", "3")  # all 3 from the cache
    assert taken.returncode == 0, taken.stderr
    assert _billed(sim) == before
    result = _run(many, sim, run_dir, "--cache", str(cache), "--max-cost", "0.20")
    assert _billed(sim) - before <= Decimal("0.20") + PRICE
    assert result.returncode == 4, result.stderr
    assert _status(run_dir)["spent_usd"] <= 0.20 + 0.04


def test_retried_failures_keep_counting_over_reruns(tmp_path: Path, simulator: SimFactory) -> None:
    # Item 4: a failed attempt the server billed is not forgotten when the job is sent again.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept",
                    "--fail-rate", "0.5", "--seed", "11")  # fmt: skip
    manifest = _manifest(tmp_path, 20, priced=True, sim=sim, retries=1)
    run_dir = tmp_path / "run"
    for extra in ((), ("--retry-failed",), ("--retry-failed",)):
        result = _run(manifest, sim, run_dir, "--max-cost", "0.20", *extra)
        assert result.returncode in (1, 4), result.stderr
        assert _billed(sim) <= Decimal("0.20")
    status = _agree(run_dir)
    assert Decimal(repr(status["spent_usd"])) == _billed(sim)
    assert status["billable_attempts"] == sim.stats()["submits"]


def _kill_with_attempts_in_flight(
    manifest: Path, sim: SimProcess, run_dir: Path, accepted: int | None
) -> tuple[int, int]:
    """Start a run, SIGKILL it as soon as the simulator has accepted `accepted` more of its
    submits (None: as soon as a job is back in the queue after a failed attempt, its resubmit
    not yet sent), or it ended by itself. Returns how many of its jobs the kill left at the
    server, and how many pending after a failed attempt."""
    cmd = batchrun_cmd(
        *("run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir)),
        "--quiet",
    )

    def counts() -> tuple[int, int]:
        rows = state_rows(run_dir)
        at_server = sum(1 for r in rows if r["status"] in ("queued", "running"))
        return at_server, sum(1 for r in rows if r["status"] == "pending" and r["attempts"])

    target = sim.stats()["submits"] + (accepted or 0)
    proc = subprocess.Popen(cmd, env=clean_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        if accepted is None and counts()[1] or accepted and sim.stats()["submits"] >= target:
            break
        assert time.monotonic() < deadline, "the run neither ended nor got that far"
        time.sleep(0.005)
    proc.kill()
    proc.wait(10)
    return counts()


def test_kills_with_failing_attempts_in_flight_never_buy_a_job_more_than_its_retries(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Every attempt fails, and the simulator bills every one it accepts. The run is killed
    # with attempts at the server, and again once retries are under way (the kill then also
    # finds jobs back in the queue after a failed attempt, their resubmit not yet sent).
    # `retries: 1` is two attempts a job, whatever the kills: the count is state.db's.
    retries = 1
    sim = simulator("--run-time", "0.4", "--workers", "0", "--bill-on", "accept",
                    "--fail-rate", "1.0", "--seed", "5")  # fmt: skip
    manifest = _manifest(tmp_path, 6, priced=True, sim=sim, retries=retries, rate_limit="10/s")
    identity = {j["job_id"]: canonical_identity(j["model_id"], j["inputs"])
                for j in plan_jobs(manifest)}  # fmt: skip
    run_dir = tmp_path / "run"
    # Killed with the 6 first attempts in flight, at the first job back in the queue after
    # a failed attempt (the rate holds its resubmit back a little), then at the first submit
    # of a rerun, twice.
    left = [_kill_with_attempts_in_flight(manifest, sim, run_dir, n) for n in (6, None, 1, 1)]
    assert left[0][0] and left[1][1], f"the kills found no attempt in flight: {left}"
    final = _run(manifest, sim, run_dir)
    assert final.returncode == 1, final.stderr
    books = _books(sim)
    per_job = {j: books["submits_per_identity"].get(i, 0) for j, i in identity.items()}
    billed = {
        j: Decimal(repr(books["billed_per_identity"].get(i, 0.0))) for j, i in identity.items()
    }
    assert {j: n for j, n in per_job.items() if n > 1 + retries} == {}, per_job
    assert {j: b for j, b in billed.items() if b > (1 + retries) * PRICE} == {}, billed
    rows = {r["job_id"]: r for r in read_report(run_dir)}
    failed = sorted(j for j, r in rows.items() if r["status"] == "failed")
    assert failed and all(per_job[j] == 1 + retries for j in failed), per_job  # each got its retry
    assert all(int(rows[j]["attempts"]) == per_job[j] for j in failed)
    print(f"\nretries over kills: {len(identity)} jobs always failing, retries {retries}, "
          f"kills {len(left)} (jobs left at the server {left}), attempts billed per job "
          f"{sorted(per_job.values())}, most allowed {1 + retries}")  # fmt: skip

    # --retry-failed, the allowance spent: each failed job is sent again with a fresh one.
    again = _run(manifest, sim, run_dir, "--retry-failed")
    assert again.returncode == 1, again.stderr
    assert (
        f"--retry-failed: {len(failed)} failed or timed-out job(s) to send again, each with a "
        f"fresh allowance of retries (run.retries: {retries}): at most {1 + retries} more "
        "attempt(s) each"
    ) in again.stderr
    books = _books(sim)
    more = {j: books["submits_per_identity"].get(identity[j], 0) - per_job[j] for j in identity}
    assert more == {j: (1 + retries) * (j in failed) for j in identity}
    assert {r["job_id"]: r["status"] for r in read_report(run_dir)} == {
        j: rows[j]["status"] for j in identity
    }


def test_four_shards_share_one_cap_and_the_merged_folder_shows_it(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 5: a shard of N gets cap / N, as it gets rate / N.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept")
    manifest = _manifest(tmp_path, 40, priced=True, sim=sim)
    shards = [tmp_path / f"shard-{k}" for k in range(1, 5)]
    for k, folder in enumerate(shards, 1):
        result = _run(manifest, sim, folder, "--shard", f"{k}/4", "--max-cost", "0.20")
        assert result.returncode in (0, 4), result.stderr
        assert "this shard's 1/4" in result.stderr or result.returncode == 0
    billed = _billed(sim)
    assert billed <= Decimal("0.20")
    merged = run_cli("merge", *map(str, shards), "--into", str(tmp_path / "all"))
    assert merged.returncode == 0, merged.stderr
    status = _agree(tmp_path / "all")
    assert status["max_cost_usd"] == 0.2
    assert Decimal(repr(status["spent_usd"])) == billed


def test_a_kill_retries_shards_and_the_cache_in_one_sweep_pay_no_more_than_the_caps(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Every feature at once, judged on one simulator's books: a run fills the cache with the
    # first jobs; shard 1/2 is SIGKILLed with a submit in the air and run again with
    # --resubmit-unknown; shard 2/2 runs; attempts fail and are retried (billed all the same);
    # the shards take the cache's jobs; the shards are merged.
    retries = 1
    # Seed 3 fails one job's attempts often enough that a retry past `retries` would show.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept",
                    "--fail-rate", "0.5", "--seed", "3", "--slow", "0.3")  # fmt: skip
    manifest = _manifest(tmp_path, 20, priced=True, sim=sim, download=True, retries=retries,
                         max_cost_usd=0.40, max_in_flight=4)  # fmt: skip
    identity = {j["job_id"]: canonical_identity(j["model_id"], j["inputs"])
                for j in plan_jobs(manifest)}  # fmt: skip
    cache = str(tmp_path / "cache")
    fill, shards = tmp_path / "fill", [tmp_path / "shard-1", tmp_path / "shard-2"]
    cap = Decimal("0.20") + Decimal("0.40")  # the filling run's, the two shards' halves

    filled = _run(manifest, sim, fill, "--cache", cache, "--first", "4", "--max-cost", "0.20")
    assert filled.returncode in (0, 1, 4), filled.stderr
    books = _books(sim)
    before, billed_before = books["billed_per_identity"], Decimal(repr(books["billed_usd"]))

    one = ("--shard", "1/2", "--cache", cache)
    _kill_mid_submit(manifest, sim, shards[0], submits=3, options=one)
    resubmitted = ambiguous_jobs(shards[0])
    assert resubmitted, "the kill left no job submitting"
    again = _run(manifest, sim, shards[0], *one, "--resubmit-unknown")
    two = _run(manifest, sim, shards[1], "--shard", "2/2", "--cache", cache)
    for result in (again, two):
        assert result.returncode in (0, 1, 4), result.stderr
        assert "Traceback" not in result.stderr
    books = _books(sim)
    billed, per_job = Decimal(repr(books["billed_usd"])), books["billed_per_identity"]

    filled_jobs = {r["job_id"] for r in read_report(fill)}
    rows = [r for folder in shards for r in read_report(folder)]
    hits = {r["job_id"] for r in rows if r["cached"] == "true"}
    retried = {r["job_id"] for r in rows + read_report(fill) if int(r["attempts"]) > 1}
    over = {}
    for job_id, ident in identity.items():
        tries = (1 + retries) * (job_id in filled_jobs)
        if job_id not in hits:
            tries += 1 + retries + (job_id in resubmitted)
        if Decimal(repr(per_job.get(ident, 0.0))) > tries * PRICE:
            over[job_id] = (per_job[ident], tries)
    assert over == {}, f"billed more than its attempts allow: {over}"
    # A job taken from the cache was billed nothing by the shards.
    assert {j: per_job.get(identity[j]) for j in hits} == {j: before.get(identity[j]) for j in hits}
    assert billed <= cap, f"billed ${billed} past the caps' ${cap}"
    filling = _status(fill)
    assert filling["max_cost_usd"] == 0.2  # --max-cost over the manifest's cap
    assert Decimal(repr(filling["spent_usd"])) >= billed_before

    merged = run_cli("merge", *map(str, shards), "--into", str(tmp_path / "all"))
    assert merged.returncode == 0, merged.stderr
    status = _agree(tmp_path / "all")
    assert status["max_cost_usd"] == 0.4
    assert Decimal(repr(status["spent_usd"])) >= billed - billed_before  # never under-reported
    assert status["spent_usd"] <= 0.40
    print(f"\nledger money, all features: billed ${billed:.2f}, cap ${cap:.2f}, "
          f"billed/cap {billed / cap:.3f}, jobs {len(identity)}, attempts {books['submits']}, "
          f"retried jobs {len(retried - resubmitted)}, cache hits {len(hits)}, kills 1 "
          f"(jobs left submitting {len(resubmitted)}), failed attempts "
          f"{books['faults'].get('fail', 0)}")  # fmt: skip
    assert hits and retried - resubmitted, "the scenario lost its cache hits or its retries"


def test_a_stale_low_price_is_not_reserved_once_results_say_more(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 7: the catalog says $0.01, the results $0.04: waves after the first reserve $0.04.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept")
    manifest = _manifest(tmp_path, 20, priced=True, sim=sim, max_in_flight=2)
    schema = next((tmp_path / "schemas" / "models").glob("*.json"))
    entry = json.loads(schema.read_text())
    entry["base_price_usd"] = 0.01
    schema.write_text(json.dumps(entry))
    result = _run(manifest, sim, tmp_path / "run", "--max-cost", "0.20")
    assert result.returncode == 4, result.stderr
    assert _billed(sim) <= Decimal("0.20")


def test_status_counts_lost_attempts_and_jobs_no_longer_in_the_manifest(
    tmp_path: Path, simulator: SimFactory
) -> None:
    # Item 8: spent = what the server may have billed, whatever the jobs' states are now.
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept", "--slow", "1.5")
    manifest = _manifest(tmp_path, 4, priced=True, sim=sim)
    run_dir = tmp_path / "run"
    _kill_mid_submit(manifest, sim, run_dir, submits=1)  # one unknown job, billed
    status = _status(run_dir)
    assert status["counts"]["unknown"] == 1
    assert Decimal(repr(status["spent_usd"])) == _billed(sim) == PRICE
    assert status["spent_estimated_usd"] == 0.04
    smaller = write_manifest(manifest, sweep(2, outputs={"download": False}))  # drops 2 jobs
    result = _run(smaller, sim, run_dir, "--max-cost", "0.10")
    assert result.returncode in (1, 4), result.stderr
    status = _agree(run_dir)
    assert Decimal(repr(status["spent_usd"])) == _billed(sim)
    assert status["spent_usd"] <= 0.10


@pytest.mark.parametrize("spent", ["status", "summary"])
def test_text_status_says_what_part_of_spent_is_estimated(
    tmp_path: Path, simulator: SimFactory, spent: str
) -> None:
    sim = simulator("--run-time", "0.05", "--workers", "0", "--bill-on", "accept", "--slow", "1.5")
    manifest = _manifest(tmp_path, 2, priced=True, sim=sim)
    run_dir = tmp_path / "run"
    _kill_mid_submit(manifest, sim, run_dir, submits=1)
    if spent == "summary":
        assert run_cli("report", str(run_dir)).returncode == 0
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["spent_usd"], summary["spent_estimated_usd"]) == (0.04, 0.04)
        return
    text = run_cli("status", str(run_dir)).stdout
    assert "cost: $0.04 spent ($0.04 of it estimated: attempts that may have been billed" in text

"""Local files as inputs, end to end on the simulator over real HTTP on 127.0.0.1: the
example manifest runs out of the box (inline, no bucket, no boto3), a moved folder resumes
without a new submit, and a bucket (a real S3 server, moto's, on 127.0.0.1) serves presigned
URLs the simulator fetches, while no signature reaches a file or a line of the run."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from testing.cli import clean_env, run_cli
from testing.inprocess import report_rows as report, run_here as run
from testing.media import FLUX, write_image
from testing.s3server import S3Bucket
from testing.simulators import simulators

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tok-local-inputs-7c1d"
SIGNED = ("X-Amz-Signature", "X-Amz-Credential", "Signature=", "AWSAccessKeyId")


@pytest.fixture
def start_sim() -> Iterator:
    with simulators(token=TOKEN, run_time=0.1, workers=0) as start:
        yield start


def sweep(folder: Path, uploads: str = "") -> Path:
    for name, color in (("a.png", (200, 10, 10)), ("b.png", (10, 200, 10))):
        write_image(folder / "photos" / name, color)
    path = folder / "m.yaml"
    path.write_text(
        f"""\
version: 1
name: local
run: {{rate_limit: 100/s, poll_interval: 50ms}}
matrix:
  image_url: {{glob: "photos/*.png"}}
models:
  - id: {FLUX}
    inputs: {{prompt: make it blue}}
{uploads}""",
        encoding="utf-8",
    )
    return path


def test_the_example_runs_with_simulate_with_no_bucket_and_no_boto3(tmp_path: Path) -> None:
    """`batchrun run manifests/local-edit.yaml --simulate` in a fresh copy, boto3 unimportable."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    blocked = tmp_path / "no-boto3" / "boto3"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('boto3 is not installed')\n")
    env = clean_env(PYTHONPATH=str(tmp_path / "no-boto3"))
    done = run_cli("run", "manifests/local-edit.yaml", "--simulate", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    rows = report(tmp_path / "outputs" / "local-edit")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"succeeded"}
    assert {r["input.image_url"] for r in rows} == {
        "photos/lamp.jpg",
        "photos/mug.png",
        "photos/plant.webp",
    }
    for path in (tmp_path / "outputs").rglob("*"):
        if path.is_file():
            assert b";base64," not in path.read_bytes(), path


def test_inline_files_reach_the_server_and_only_their_reference_is_kept(
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    path = sweep(tmp_path / "work")
    code, messages = run(path, sim, tmp_path / "run")
    assert code == 0, messages
    # The server got the files' bytes (it counts a data: URI by its content's sha256).
    seen = set(sim.app.snapshot()["submits_per_identity"])
    for name in ("a.png", "b.png"):
        digest = hashlib.sha256((tmp_path / "work/photos" / name).read_bytes()).hexdigest()
        assert any(f"data:image/png;sha256,{digest}" in identity for identity in seen)
    with sqlite3.connect(tmp_path / "run" / "state.db") as db:
        stored = [json.loads(r[0])["image_url"] for r in db.execute("SELECT inputs FROM jobs")]
    assert sorted(s["local"] for s in stored) == ["photos/a.png", "photos/b.png"]
    assert all(set(s) == {"local", "sha256", "bytes", "mime"} for s in stored)
    assert b"base64" not in (tmp_path / "run" / "state.db").read_bytes()


def test_a_moved_folder_resumes_with_the_same_jobs_and_no_new_submit(
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    path = sweep(tmp_path / "first")
    assert run(path, sim, tmp_path / "run")[0] == 0
    submits = sim.app.snapshot()["submits"]
    ids = sorted(r["job_id"] for r in report(tmp_path / "run"))
    shutil.move(str(tmp_path / "first"), str(tmp_path / "moved"))
    code, messages = run(tmp_path / "moved" / "m.yaml", sim, tmp_path / "run")
    assert code == 0, messages
    assert sim.app.snapshot()["submits"] == submits == 2
    assert sorted(r["job_id"] for r in report(tmp_path / "run")) == ids
    assert not any("new job" in m for m in messages)


def test_a_file_changed_after_planning_fails_its_job_without_a_submit(
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    path = sweep(tmp_path / "work")
    plan = build_plan(path)
    write_image(tmp_path / "work/photos/a.png", (0, 0, 255))  # other bytes, after the plan
    options = RunOptions(
        api_base=sim.base_url, token=sim.token, run_dir=tmp_path / "run", quiet=True,
        handle_signals=False, echo=lambda _: None,
    )  # fmt: skip
    assert run_batch(plan, options) == 1
    rows = {r["input.image_url"]: r for r in report(tmp_path / "run")}
    assert rows["photos/b.png"]["status"] == "succeeded"
    assert rows["photos/a.png"]["status"] == "failed"
    assert "changed since the run was planned" in rows["photos/a.png"]["error"]
    assert sim.app.snapshot()["submits"] == 1


# ---- a bucket: a real S3 server on 127.0.0.1 (tests/conftest.py's `s3`: moto's server mode,
# with S3's expiry of presigned URLs and the requests counted, server-side) ----------------


def test_through_a_bucket_the_signed_url_is_fetched_and_never_recorded(
    tmp_path: Path, start_sim, s3: S3Bucket
) -> None:
    sim = start_sim()
    path = sweep(tmp_path / "work", f"uploads: {{to: {s3.url('in')}, inline: never}}\n")
    code, messages = run(path, sim, tmp_path / "run")
    assert code == 0, messages
    rows = report(tmp_path / "run")
    assert {r["status"] for r in rows} == {"succeeded"}
    # Uploaded once each, content-addressed.
    digests = sorted(
        hashlib.sha256((tmp_path / "work/photos" / n).read_bytes()).hexdigest()
        for n in ("a.png", "b.png")
    )
    assert s3.keys("in/") == [f"in/{d}.png" for d in digests]
    # The simulator fetched them from the bucket (it counts a URL without its query).
    seen = " ".join(sim.app.snapshot()["submits_per_identity"])
    assert all(f"{s3.endpoint}/{s3.name}/in/{d}.png" in seen for d in digests)
    assert sim.app.snapshot()["faults"].get("input_fetch", 0) == 0
    assert s3.server.count("GET", f"/{s3.name}/in/") == 2  # one fetch a job, no credentials
    # No signature anywhere the run writes or says.
    for file in (tmp_path / "run").rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            for mark in SIGNED:
                assert mark.encode() not in data, (file, mark)
    for line in messages:
        assert not any(mark in line for mark in SIGNED), line


def test_an_expired_presigned_url_fails_the_job_cleanly(
    tmp_path: Path, start_sim, s3: S3Bucket
) -> None:
    """URLs valid 1 s, fetched when the job runs, 2 s later: S3 answers 403, the job fails
    saying so (no signature in it), and the run exits 1; the warning said it would."""
    sim = start_sim(run_time=2.0)
    uploads = f"uploads: {{to: {s3.url('in')}, inline: never, expires: 1s}}\n"
    path = sweep(tmp_path / "work", uploads)
    assert any("expires" in w and "job_timeout" in w for w in build_plan(path).warnings)
    code, messages = run(path, sim, tmp_path / "run")
    assert code == 1, messages
    rows = report(tmp_path / "run")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for row in rows:
        assert "input image_url could not be fetched: HTTP 403" in row["error"], row
        assert not any(mark in row["error"] for mark in SIGNED)


def test_a_second_folder_uploads_nothing_new(tmp_path: Path, start_sim, s3: S3Bucket) -> None:
    sim = start_sim()
    uploads = f"uploads: {{to: {s3.url('in')}, inline: never}}\n"
    first = sweep(tmp_path / "one", uploads)
    assert run(first, sim, tmp_path / "run-one")[0] == 0
    assert s3.server.count("PUT", f"/{s3.name}/in/") == 2
    second = tmp_path / "two"
    shutil.copytree(tmp_path / "one", second)  # the same files, another folder and run
    assert run(second / "m.yaml", sim, tmp_path / "run-two")[0] == 0
    assert s3.server.count("PUT", f"/{s3.name}/in/") == 2  # nothing sent again
    assert s3.server.count("HEAD", f"/{s3.name}/in/") >= 4  # each asked about first


def test_a_pending_job_whose_file_was_renamed_reads_it_where_it_is_now(tmp_path: Path) -> None:
    """The folder keeps a job's reference as first planned; the plan (streamed by the CLI)
    says where the same bytes are now, and the submit reads them there."""
    path = sweep(tmp_path / "work")
    dead = run_cli("run", str(path), "--api-base", "http://127.0.0.1:9", cwd=tmp_path,
                   env=clean_env(token=TOKEN))  # fmt: skip
    assert dead.returncode != 0 and "cannot reach the API" in dead.stderr
    (tmp_path / "work/photos/a.png").rename(tmp_path / "work/photos/c.png")
    done = run_cli("run", str(path), "--simulate", cwd=tmp_path, env=clean_env(token=TOKEN))
    assert done.returncode == 0, done.stderr
    rows = report(tmp_path / "outputs" / "local")
    assert {r["status"] for r in rows} == {"succeeded"} and len(rows) == 2

"""outputs.mirror end to end: the simulator over HTTP, a real S3 server (moto's server mode on
127.0.0.1), money and submits read on the simulator's books, uploads counted by the S3
server."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchrun.errors import StateError
from batchrun.simulator import Simulator
from batchrun.store.state import StateStore
from testing.cli import batchrun_cmd, clean_env, invoke
from testing.inprocess import report_rows as report, run_here as run
from testing.s3server import S3Bucket
from testing.simulators import simulators

TOKEN = "tok-mirror-SECRET-0c41"
T2I = "google/nano-banana-2-lite/text-to-image"
REPORTS = ["report.csv", "report.html", "summary.json"]


@pytest.fixture
def sim():
    with simulators(token=TOKEN, run_time=0.05, workers=0) as start:
        yield start()


def manifest(tmp_path: Path, mirror: str, *, jobs: int = 3, **outputs) -> Path:
    data = {
        "version": 1,
        "name": "shoot",
        "run": {"rate_limit": "100/s", "poll_interval": "50ms"},
        "outputs": {"mirror": mirror, **outputs},
        "models": [{"id": T2I, "matrix": {"prompt": [f"a cat, take {i}" for i in range(jobs)]}}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def local_files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.glob("files/*/*")}


def test_files_and_reports_are_mirrored_once(s3: S3Bucket, sim: Simulator, tmp_path: Path):
    run_dir = tmp_path / "out"
    code, said = run(manifest(tmp_path, s3.url("runs")), sim, run_dir)
    assert code == 0, said
    files = local_files(run_dir)
    assert len(files) == 3
    assert s3.keys("runs/") == sorted([f"runs/shoot/{n}" for n in files] + [
        f"runs/shoot/{n}" for n in REPORTS])  # fmt: skip
    for name, data in files.items():
        body, meta = s3.get(f"runs/shoot/{name}")
        assert body == data and meta == {"sha256": hashlib.sha256(data).hexdigest()}
    for name in REPORTS:
        assert s3.get(f"runs/shoot/{name}")[0] == (run_dir / name).read_bytes()
    rows = report(run_dir)
    for row in rows:
        assert row["mirror_urls"] == ";".join(
            f"s3://{s3.name}/runs/shoot/{n}" for n in row["output_files"].split(";")
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mirror"] == {
        "to": f"s3://{s3.name}/runs/shoot", "files": 3, "files_sent_this_run": 3,
        "not_mirrored": 0,
    }  # fmt: skip
    assert s3.puts("runs/") == 6
    with StateStore.open(run_dir, create=False, lock=False) as store:
        assert len(store.mirrored()) == 6

    # Again in the same folder: nothing to submit, no file sent again, no HEAD either (state.db
    # knows them); the reports are rewritten, so sent again.
    heads = s3.server.count("HEAD")
    submits = sim.stats()["submits"]
    code, said = run(manifest(tmp_path, s3.url("runs")), sim, run_dir)
    assert code == 0, said
    assert sim.stats()["submits"] == submits == 3
    assert s3.server.count("PUT", f"/{s3.name}/runs/shoot/files/") == 3
    assert s3.server.count("HEAD", f"/{s3.name}/runs/shoot/files/") == heads - 3 + 0
    assert json.loads((run_dir / "summary.json").read_text())["mirror"]["files_sent_this_run"] == 0


def test_a_failed_mirror_is_listed_and_a_rerun_finishes_it_without_the_api(
    s3: S3Bucket, sim: Simulator, tmp_path: Path
):
    run_dir = tmp_path / "out"
    path = manifest(tmp_path, "s3://later-bucket/runs")
    code, said = run(path, sim, run_dir)
    assert code == 1
    assert said[0] == (
        "mirror: 6 files not copied to s3://later-bucket/runs/shoot; rerun the same command to "
        "finish (finished jobs are not sent to the API again):"
    )
    listed = said[1:7]
    assert [line.split(":")[0].strip() for line in listed] == sorted(
        [*local_files(run_dir), *REPORTS]
    )
    assert all(
        "NoSuchBucket" in line and "create the bucket later-bucket" in line for line in listed
    )
    assert all("Signature" not in line and TOKEN not in line for line in said)
    rows = report(run_dir)
    assert [r["status"] for r in rows] == ["succeeded"] * 3 and {
        r["mirror_urls"] for r in rows
    } == {""}
    assert json.loads((run_dir / "summary.json").read_text())["mirror"]["not_mirrored"] == 3

    s3.client().create_bucket(Bucket="later-bucket")
    stats = sim.stats()
    refused = s3.server.count("PUT", "/later-bucket/runs/shoot/")
    code, said = run(path, sim, run_dir)
    assert code == 0, said
    after = sim.stats()
    assert after["submits"] == stats["submits"] == 3  # the rerun called no submit
    assert s3.server.count("PUT", "/later-bucket/runs/shoot/") - refused == 6
    assert all(r["mirror_urls"].startswith("s3://later-bucket/") for r in report(run_dir))


def test_a_busy_store_is_retried_and_the_run_succeeds(s3: S3Bucket, sim: Simulator, tmp_path):
    s3.server.fail("PUT", 2)  # two 503 SlowDown
    code, said = run(manifest(tmp_path, s3.url("busy"), jobs=2), sim, tmp_path / "out")
    assert code == 0, said
    assert len(s3.keys("busy/")) == 5 and s3.puts("busy/") == 5 + 2


def test_another_folder_with_the_same_files_sends_none_of_them(
    s3: S3Bucket, sim: Simulator, tmp_path: Path
):
    first = tmp_path / "first"
    assert run(manifest(tmp_path, s3.url("runs")), sim, first)[0] == 0
    copy = tmp_path / "copy"  # the folder moved elsewhere: state.db knows nothing of the bucket
    copy.mkdir()
    for path in first.glob("files/*/*"):
        dest = copy / path.relative_to(first)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    before = s3.puts("runs/shoot/files/")
    from batchrun.fetch.bucket import Bucket
    from batchrun.run.mirror import Mirror

    with StateStore.open(first, create=False, lock=False) as old:
        rows = old.rows()
    with StateStore.open(copy) as store:
        mirror = Mirror(Bucket.from_url(s3.url("runs")), store, copy, "shoot")
        mirror.copy_files(rows)
    assert mirror.failed == [] and mirror.files_sent == 0
    assert s3.puts("runs/shoot/files/") == before == 3
    assert mirror.facts()["files"] == 3


def test_a_file_changed_after_download_is_not_copied(s3: S3Bucket, sim: Simulator, tmp_path):
    run_dir = tmp_path / "out"
    path = manifest(tmp_path, s3.url("runs"), jobs=1)
    assert run(path, sim, run_dir)[0] == 0
    (name,) = local_files(run_dir)
    (run_dir / name).write_bytes(b"edited by hand")
    with StateStore.open(run_dir) as store:
        from batchrun.fetch.bucket import Bucket
        from batchrun.run.mirror import Mirror

        for record in store.mirrored():  # as if never copied
            store.record_mirrored(record.__class__(record.url, record.job_id, record.name, "", 0))
        mirror = Mirror(Bucket.from_url(s3.url("runs")), store, run_dir, "shoot")
        mirror.copy_files(store.rows())
    assert [f.name for f in mirror.failed] == [name]
    assert "changed since it was downloaded" in mirror.failed[0].why
    assert s3.get(f"runs/shoot/{name}")[0] != b"edited by hand"


def test_mirror_without_boto3_exits_2_before_anything_is_sent(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "boto3", None)
    path = manifest(tmp_path, "s3://some-bucket/runs")
    got = invoke("validate", str(path))
    assert got.code == 2
    assert got.stderr == (
        f"{path}: $.outputs.mirror: an s3:// bucket needs boto3: "
        "pip install 'runcomfy-batchrun[s3]'\n"
    )
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", sim.base_url)
    got = invoke("run", str(path), "--run-dir", str(tmp_path / "out"), token=TOKEN)
    assert got.code == 2, got.stderr
    assert "error: an s3:// bucket needs boto3: pip install 'runcomfy-batchrun[s3]'" in got.stderr
    assert sim.stats()["submits"] == 0 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("mirror", "said"),
    [
        ("https://bucket.example/runs", "is not an s3:// location (it must start with s3://)"),
        ("s3://Bad_Bucket/runs", "'Bad_Bucket' is not a bucket name"),
    ],
)
def test_a_bad_mirror_location_is_a_manifest_error(tmp_path: Path, mirror: str, said: str):
    path = manifest(tmp_path, mirror)
    got = invoke("validate", str(path))
    assert got.code == 2
    assert "$.outputs.mirror: " in got.stderr and said in got.stderr, got.stderr


def test_mirror_needs_downloads(tmp_path: Path):
    got = invoke("validate", str(manifest(tmp_path, "s3://b-bucket/r", download=False)))
    assert got.code == 2
    assert "$.outputs.mirror: mirrors the downloaded files, so it needs download: true" in (
        got.stderr
    )


def test_a_run_killed_while_mirroring_sends_nothing_twice(s3: S3Bucket, tmp_path: Path):
    """kill -9 with two files in the bucket and the others held at the store: the rerun sends
    only those not recorded, and submits nothing."""
    run_dir = tmp_path / "out"
    path = manifest(tmp_path, s3.url("runs"), jobs=4)
    s3.server.hold("PUT", after=2)
    child = subprocess.Popen(
        batchrun_cmd("run", str(path), "--simulate", "--run-dir", str(run_dir), "--quiet"),
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        recorded: list[str] = []
        while len(recorded) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            if (run_dir / "state.db").exists():
                try:
                    with StateStore.open(run_dir, create=False, lock=False) as store:
                        recorded = [m.name for m in store.mirrored()]
                except StateError:  # made, its tables not yet
                    continue
        assert len(recorded) == 2, recorded
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        s3.server.release()
    sent_before = s3.puts("runs/shoot/files/")  # the two, and the held ones cut off
    got = subprocess.run(
        batchrun_cmd("run", str(path), "--simulate", "--run-dir", str(run_dir)),
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    # Every job had finished before the kill: the rerun made no API call at all.
    assert json.loads((run_dir / "summary.json").read_text())["api_calls_this_run"] == {"total": 0}
    with StateStore.open(run_dir, create=False, lock=False) as store:
        names = sorted(m.name for m in store.mirrored() if m.job_id)
    assert len(names) == 4 and set(recorded) <= set(names)
    for name in recorded:  # each recorded file was PUT once, by the killed run only
        assert s3.server.count("PUT", f"/{s3.name}/runs/shoot/{name}") == 1
    assert s3.puts("runs/shoot/files/") - sent_before == 4 - len(recorded)
    assert sorted(k for k in s3.keys("runs/shoot/files/")) == [f"runs/shoot/{n}" for n in names]

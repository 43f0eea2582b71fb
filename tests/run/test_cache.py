"""cache: a second run folder with the same --cache sends nothing; damaged entries are ignored;
a run killed while writing entries leaves none half-written; a cache path that is a file."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchrun.cli import main
from batchrun.plan.build import build_plan
from batchrun.plan.grid import Job
from batchrun.run.cache import ENTRY, Cache
from batchrun.run.engine import RunOptions, run_batch
from batchrun.simulator import SimSettings, Simulator
from batchrun.store.state import SCHEMA_VERSION, StateStore
from testing.folders import as_version_5

TOKEN = "tok-cache-81d2"
T2I = "google/nano-banana-2-lite/text-to-image"


@pytest.fixture
def server():
    sim = Simulator(
        SimSettings.from_mapping({"token": TOKEN, "run_time": 0.02, "workers": 0})
    ).start()
    yield sim
    sim.stop()


def manifest(tmp_path: Path, jobs: int = 12, run: dict | None = None) -> Path:
    settings = {"rate_limit": "200/s", "poll_interval": "20ms", **(run or {})}
    models = [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(jobs)]}}]
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps({"version": 1, "name": "c", "run": settings, "models": models}))
    return path


def run(path: Path, sim: Simulator, run_dir: Path, cache: Path | None) -> tuple[int, list[str]]:
    messages: list[str] = []
    options = RunOptions(
        api_base=sim.base_url,
        token=TOKEN,
        run_dir=run_dir,
        handle_signals=False,
        echo=messages.append,
        cache=cache,
    )
    return run_batch(build_plan(path), options), messages


def report(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "report.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_files_verified(run_dir: Path, rows: list[dict[str, str]]) -> None:
    for row in rows:
        assert row["status"] == "succeeded"
        names, digests = row["output_files"].split(";"), row["output_sha256"].split(";")
        assert names and len(names) == len(digests)
        for name, digest in zip(names, digests, strict=True):
            assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == digest


def submits(sim: Simulator) -> int:
    return sim.stats()["calls"].get("submit", 0)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "entries").glob("*/*") if p.is_dir())


def test_a_second_run_folder_takes_every_job_from_the_cache(tmp_path, server) -> None:
    path, cache = manifest(tmp_path), tmp_path / "cache"
    code, _ = run(path, server, tmp_path / "one", cache)
    assert code == 0 and submits(server) == 12
    first = report(tmp_path / "one")
    paid = sum(float(r["cost_usd"]) for r in first)
    assert paid > 0 and len(entries(cache)) == 12

    calls = sum(server.stats()["calls"].values())
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0
    assert sum(server.stats()["calls"].values()) == calls  # no API call at all
    second = report(tmp_path / "two")
    assert_files_verified(tmp_path / "two", second)
    assert [r["output_sha256"] for r in second] == [r["output_sha256"] for r in first]
    assert {r["cached"] for r in second} == {"true"} and {r["cost_usd"] for r in second} == {"0"}
    assert sum(float(r["saved_usd"]) for r in second) == pytest.approx(paid)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["cached"], summary["cost_usd"]) == (12, 0)
    assert summary["saved_usd"] == pytest.approx(paid)
    assert summary["api_calls"]["total"] == 0
    said = re.fullmatch(r"(.*)( Elapsed \d+s\.)( Report: .*)", messages[-1])
    assert said is not None
    head, elapsed, tail = said.groups()
    assert head + tail == (
        f"12 jobs: succeeded 12 (12 from the cache, saved ${paid:.2f}). Cost $0.00 (est. $0.00). "
        f"Report: {tmp_path / 'two' / 'report.csv'}"
    )
    # The first folder's report has no cached job
    assert {r["cached"] for r in first} == {"false"}


def _local_schema(tmp_path: Path) -> tuple[Path, dict]:
    """The packaged schema file of T2I, copied beside the manifest (searched first)."""
    folder = tmp_path / "schemas" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    packaged = Path(__file__).resolve().parents[2] / "schemas" / "models"
    name = T2I.replace("/", "__") + ".json"
    return folder / name, json.loads((packaged / name).read_text())


def test_a_re_pulled_entry_with_the_same_input_schema_keeps_every_key(tmp_path, server) -> None:
    # Only fetched_at and the price differ, as after `batchrun models pull` to refresh prices:
    # nothing is paid again.
    path, cache = manifest(tmp_path, jobs=2), tmp_path / "cache"
    file, schema = _local_schema(tmp_path)
    entry = {"model_id": T2I, "base_price_usd": 0.04, "price_unit": "image",
             "fetched_at": "2026-01-01T00:00:00Z", "input_schema": schema}  # fmt: skip
    file.write_text(json.dumps(entry, indent=2))
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    entry.update(fetched_at="2030-01-01T00:00:00Z", base_price_usd=0.5)
    file.write_text(json.dumps(entry, indent=4) + "\n")
    assert run(path, server, tmp_path / "two", cache)[0] == 0
    assert submits(server) == 2
    assert {r["cached"] for r in report(tmp_path / "two")} == {"true"}


def test_a_changed_input_schema_misses(tmp_path, server) -> None:
    path, cache = manifest(tmp_path, jobs=2), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    file, entry = _local_schema(tmp_path)
    schema = entry.get("input_schema", entry)
    schema["properties"]["note"] = {"type": "string"}
    file.write_text(json.dumps(entry))
    assert run(path, server, tmp_path / "two", cache)[0] == 0
    assert submits(server) == 4
    assert {r["cached"] for r in report(tmp_path / "two")} == {"false"}


@pytest.mark.parametrize("damage", ["missing file", "changed file", "bad json", "no entry.json"])
def test_a_damaged_entry_is_reported_and_not_used(tmp_path, server, damage) -> None:
    path, cache = manifest(tmp_path, jobs=3), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    bad = entries(cache)[0]
    image = next(p for p in bad.iterdir() if p.name != ENTRY)
    if damage == "missing file":
        image.unlink()
    elif damage == "changed file":
        image.write_bytes(image.read_bytes() + b"x")
    elif damage == "bad json":
        (bad / ENTRY).write_text('{"format": 1, "key": ')
    else:
        (bad / ENTRY).unlink()
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0
    assert submits(server) == 3 + 1  # the damaged one ran again; the others came from the cache
    damaged = [m for m in messages if m.startswith("cache: damaged entry ignored (job ")]
    assert len(damaged) == 1 and damaged[0].endswith("; the job runs")
    rows = report(tmp_path / "two")
    assert sorted(r["cached"] for r in rows) == ["false", "true", "true"]
    assert_files_verified(tmp_path / "two", rows)
    # The run replaced the damaged entry with a good one: a third folder sends nothing.
    assert run(path, server, tmp_path / "three", cache)[0] == 0
    assert submits(server) == 4
    assert {r["cached"] for r in report(tmp_path / "three")} == {"true"}


def test_a_cache_path_that_is_a_file_exits_2_before_sending(tmp_path, capsys) -> None:
    path = manifest(tmp_path, jobs=2)
    (tmp_path / "cachefile").write_text("x")
    code = main(
        ["run", str(path), "--simulate", "--run-dir", str(tmp_path / "r"), "--cache",
         str(tmp_path / "cachefile")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --cache {tmp_path / 'cachefile'}: {tmp_path / 'cachefile'} is a file, not a "
        "folder; give a folder path (made if missing), e.g. --cache .batchrun-cache\n"
    )
    assert not (tmp_path / "r").exists()


def test_run_cache_in_the_manifest(tmp_path, server) -> None:
    path = manifest(tmp_path, jobs=2, run={"cache": str(tmp_path / "c")})
    assert run(path, server, tmp_path / "one", None)[0] == 0
    assert len(entries(tmp_path / "c")) == 2
    assert run(path, server, tmp_path / "two", None)[0] == 0
    assert submits(server) == 2


def test_a_version_1_state_db_is_read_as_is_and_migrated_by_a_run(tmp_path) -> None:
    folder = tmp_path / "old"
    with StateStore.open(folder) as store:
        store.add_jobs([Job("j1", T2I, {"prompt": "x"}, {}, 0, 0)])
    conn = sqlite3.connect(folder / "state.db")
    as_version_5(conn)
    with conn:  # what batchrun made before the cache: no cached / saved_usd columns
        conn.execute("ALTER TABLE jobs DROP COLUMN cached")
        conn.execute("ALTER TABLE jobs DROP COLUMN saved_usd")
        conn.execute("ALTER TABLE jobs DROP COLUMN retries_from")
        conn.execute("DROP TABLE attempts")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with StateStore.open(folder, create=False, lock=False) as store:  # status, report
        assert [(r.job_id, r.cached, r.saved_usd) for r in store.rows()] == [("j1", False, None)]
        assert store.meta()["schema_version"] == "1"  # read, not changed
    with StateStore.open(folder) as store:  # a run
        assert store.meta()["schema_version"] == str(SCHEMA_VERSION) == "7"
        assert store.get("j1").cached is False and store.attempts() == []


# ---- a run killed while it writes entries ----------------------------------------------

_KILLER = """
import os, signal, sys
from batchrun.run import cache
from batchrun.cli import main

WHEN, N = sys.argv[1], int(sys.argv[2])
calls = 0

def counted(real):
    def wrapper(*args, **kw):
        global calls
        calls += 1
        if calls == N:
            if WHEN == "mid_file":  # half the bytes written, then gone
                src, dst = args
                with open(dst, "wb") as fh:
                    data = open(src, "rb").read()
                    fh.write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kw)
    return wrapper

if WHEN == "mid_file":
    cache._copy_hashed = counted(cache._copy_hashed)
else:
    cache.Cache._replace = counted(cache.Cache._replace)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("when", ["mid_file", "before_rename"])
def test_a_kill_while_writing_entries_leaves_no_half_entry(tmp_path, server, when) -> None:
    path, cache = manifest(tmp_path, jobs=10), tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_")}
    args = ["run", str(path), "--run-dir", str(tmp_path / "one"), "--cache", str(cache)]
    args += ["--api-base", server.base_url, "-q"]
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLER), when, "6", *args],
        env={**env, "RUNCOMFY_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert submits(server) == 10
    whole = entries(cache)
    assert len(whole) == 5  # the five written before the kill; the sixth never appeared
    assert list((cache / ".batchrun-tmp").iterdir())  # its leftovers, never looked at
    reader = Cache(cache, {})
    for folder in whole:
        data = json.loads((folder / ENTRY).read_text())
        for f in data["files"]:
            assert hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert reader.folder(json.loads((whole[0] / ENTRY).read_text())["key"]) == whole[0]

    # Another folder with the same cache: five from it, five run; nothing damaged.
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0 and submits(server) == 15
    assert not [m for m in messages if "damaged" in m]
    rows = report(tmp_path / "two")
    assert sorted(r["cached"] for r in rows) == ["false"] * 5 + ["true"] * 5
    assert_files_verified(tmp_path / "two", rows)
    # The killed run resumes: nothing to submit, its report written, the cache filled up.
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    assert submits(server) == 15 and len(entries(cache)) == 10
    assert_files_verified(tmp_path / "one", report(tmp_path / "one"))


# ---- origin, links, the cache's own temporaries -----------------------------------------------


def test_a_simulated_result_never_serves_a_real_run(tmp_path, server) -> None:
    path, cache = manifest(tmp_path, jobs=3), tmp_path / "cache"
    simulated = RunOptions(api_base=server.base_url, token=TOKEN, run_dir=tmp_path / "sim",
                           handle_signals=False, echo=lambda _: None, cache=cache,
                           origin="simulator")  # fmt: skip
    assert run_batch(build_plan(path), simulated) == 0
    assert len(entries(cache)) == 3
    # The same manifest against a real base (this server, by its URL): every job is sent.
    code, _ = run(path, server, tmp_path / "real", cache)
    assert code == 0
    assert submits(server) == 6
    assert {r["cached"] for r in report(tmp_path / "real")} == {"false"}
    assert len(entries(cache)) == 6  # each origin has its own entries


def test_a_symbolic_link_in_an_entry_is_refused_and_never_followed(tmp_path, server) -> None:
    path, cache = manifest(tmp_path, jobs=1), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    (entry,) = entries(cache)
    image = next(p for p in entry.iterdir() if p.name != ENTRY)
    secret = tmp_path / "elsewhere.png"
    secret.write_bytes(image.read_bytes())  # the same bytes: the sha256 check would pass
    image.unlink()
    image.symlink_to(secret)
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0 and submits(server) == 2  # a miss: the job ran
    (row,) = report(tmp_path / "two")
    assert (
        f"cache: damaged entry ignored (job {row['job_id']}: {image} is a symbolic link; not "
        "followed); the job runs"
    ) in messages
    files = list((tmp_path / "two" / "files").rglob("*"))
    assert files and not any(p.is_symlink() for p in files)


def test_an_entry_json_that_is_a_symbolic_link_is_never_read(tmp_path, server) -> None:
    # entry.json pointing at a good copy of itself: read through, it would serve the job.
    path, cache = manifest(tmp_path, jobs=1), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    (entry,) = entries(cache)
    copy = tmp_path / "entry-copy.json"
    copy.write_bytes((entry / ENTRY).read_bytes())
    (entry / ENTRY).unlink()
    (entry / ENTRY).symlink_to(copy)
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0 and submits(server) == 2
    (row,) = report(tmp_path / "two")
    assert row["cached"] == "false"
    assert (
        f"cache: damaged entry ignored (job {row['job_id']}: {entry / ENTRY} is a symbolic "
        "link; not followed); the job runs"
    ) in messages


def test_a_fifo_in_an_entry_is_refused_without_waiting(tmp_path, server) -> None:
    path, cache = manifest(tmp_path, jobs=1), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    (entry,) = entries(cache)
    image = next(p for p in entry.iterdir() if p.name != ENTRY)
    image.unlink()
    os.mkfifo(image)  # opened for reading without O_NONBLOCK, this would wait for a writer
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0 and submits(server) == 2
    assert any(f"{image} is not a regular file; not read" in m for m in messages)


def test_a_run_folders_file_that_is_a_link_is_not_cached(tmp_path, server) -> None:
    path, cache = manifest(tmp_path, jobs=1), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", None)[0] == 0  # no cache yet
    image = next(p for p in (tmp_path / "one" / "files").rglob("*") if p.is_file())
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(elsewhere)
    code, messages = run(path, server, tmp_path / "one", cache)  # the rerun fills the cache
    assert code == 0 and submits(server) == 1
    assert "cache: 1 job(s) not cached: their files did not verify" in messages
    assert entries(cache) == []


def test_a_cache_in_a_users_folder_removes_nothing_it_did_not_make(tmp_path, server) -> None:
    path = manifest(tmp_path, jobs=1)
    notes = tmp_path / "tmp" / "notes"
    notes.mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    old = os.path.getmtime(notes) - 3 * 24 * 3600
    os.utime(notes, (old, old))  # older than any temporary batchrun would sweep
    os.utime(tmp_path / "tmp", (old, old))
    assert run(path, server, tmp_path / "run", tmp_path)[0] == 0  # --cache .
    assert run(path, server, tmp_path / "again", tmp_path)[0] == 0
    assert (notes / "todo.txt").read_text() == "mine"


def test_cache_dot_keeps_the_users_tmp_notes(tmp_path: Path) -> None:
    # As reported: `batchrun run m.yaml --cache .` in a folder holding the user's tmp/notes/.
    work = tmp_path / "work"
    work.mkdir()
    path = manifest(work, jobs=2)
    old = os.path.getmtime(path) - 3 * 24 * 3600  # older than any temporary batchrun sweeps
    notes = work / "tmp" / "notes"
    notes.mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    own = work / ".batchrun-tmp"
    stale = own / f"{'a' * 64}.4242.0123abcd"  # a temporary a killed run left
    kept = own / "readme.txt"  # not a name batchrun gives: never removed, even there
    stale.mkdir(parents=True)
    kept.write_text("also mine")
    for made in (notes, notes.parent, stale, kept):
        os.utime(made, (old, old))
    sim = ["--simulate", "--sim", "run_time=0.02", "--sim", "workers=0"]
    for folder in ("run", "again"):
        done = subprocess.run(
            [sys.executable, "-m", "batchrun", "run", "m.yaml", *sim, "--cache", ".",
             "--run-dir", folder],
            cwd=work, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert (notes / "todo.txt").read_text() == "mine"
    assert kept.read_text() == "also mine" and not stale.exists()
    assert {r["cached"] for r in report(work / "again")} == {"true"}
    assert sorted(p.name for p in work.iterdir()) == [
        ".batchrun-tmp",
        "again",
        "entries",
        "m.yaml",
        "run",
        "tmp",
    ]


@pytest.mark.parametrize("cost", ["Infinity", "NaN", "-1", "1e400"])
def test_an_entry_with_a_cost_that_is_not_an_amount_is_damaged(tmp_path, server, cost) -> None:
    path, cache = manifest(tmp_path, jobs=1), tmp_path / "cache"
    assert run(path, server, tmp_path / "one", cache)[0] == 0
    (entry,) = entries(cache)
    text = (entry / ENTRY).read_text()
    (entry / ENTRY).write_text(re.sub(r'"cost_usd": [^,\n]+', f'"cost_usd": {cost}', text))
    code, messages = run(path, server, tmp_path / "two", cache)
    assert code == 0 and submits(server) == 2
    assert any("bad cost_usd" in m for m in messages)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["saved_usd"] == 0

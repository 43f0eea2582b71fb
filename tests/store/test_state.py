"""The SQLite state store: transitions, the run lock, reopening, resume semantics, speed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batchrun.errors import RunFolderInUse, StateError
from batchrun.store import state as st
from batchrun.store.records import OutputFile
from batchrun.store.state import StateStore


@dataclass(frozen=True)
class J:
    job_id: str
    model_id: str = "m/x"
    inputs: dict = field(default_factory=dict)
    vars: dict = field(default_factory=dict)
    repeat: int = 0
    position: int = 0


def jobs(n: int, prefix: str = "j") -> list[J]:
    return [J(f"{prefix}{i}", inputs={"prompt": f"p{i}", "seed": i}, position=i) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore.open(tmp_path / "run")
    yield s
    s.close()


def test_new_store_has_versioned_meta_and_wal(store, tmp_path):
    meta = store.meta()
    assert meta["schema_version"] == str(st.SCHEMA_VERSION)
    assert meta["batchrun_version"]
    assert float(meta["created"]) > 0
    store.set_meta(name="sweep", manifest_sha256="abc", api_base="http://127.0.0.1:1")
    assert store.meta()["name"] == "sweep"
    conn = sqlite3.connect(tmp_path / "run" / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_add_jobs_keeps_order_and_inputs(store):
    added, removed = store.add_jobs(
        [J("b", inputs={"z": 1, "a": [1, 2]}, vars={"c": "x"}, position=1), J("a", position=0)]
    )
    assert (added, removed) == (2, 0)
    rows = store.rows()
    assert [r.job_id for r in rows] == ["a", "b"]
    assert rows[1].inputs == {"z": 1, "a": [1, 2]}
    assert list(rows[1].inputs) == ["z", "a"]  # key order kept for report columns
    assert rows[1].vars == {"c": "x"}
    assert rows[1].status == st.PENDING and rows[1].attempts == 0


def test_full_lifecycle(store):
    store.add_jobs(jobs(1))
    store.mark_submitting("j0")
    assert store.get("j0").status == st.SUBMITTING
    store.record_request_id("j0", "req-1", 100.0)
    row = store.get("j0")
    assert (row.status, row.request_id, row.attempts, row.submitted_at) == (
        st.QUEUED,
        "req-1",
        1,
        100.0,
    )
    store.record_status("j0", st.RUNNING, started_at=101.0)
    store.record_status("j0", st.RUNNING, started_at=105.0)  # first sighting wins
    store.record_result(
        "j0", st.SUCCEEDED, finished_at=103.0, output={"image": "http://h/a.png"}, cost_usd=0.05
    )
    store.record_files("j0", [OutputFile("http://h/a.png", "files/j0/a.png", "ab" * 32, 10)])
    row = store.get("j0")
    assert row.status == st.SUCCEEDED
    assert row.started_at == 101.0
    assert row.output == {"image": "http://h/a.png"}
    assert row.cost_usd == 0.05
    assert row.files == [OutputFile("http://h/a.png", "files/j0/a.png", "ab" * 32, 10)]
    assert (row.queue_s, row.run_s) == (1.0, 2.0)


def test_unknown_and_resubmit(store):
    store.add_jobs(jobs(2))
    store.mark_submitting("j0")
    store.mark_unknown("j0", "submit may have reached the server")
    row = store.get("j0")
    assert (row.status, row.attempts) == (st.UNKNOWN, 1)
    assert store.requeue([st.UNKNOWN]) == 1
    assert store.get("j0").status == st.PENDING
    assert store.get("j0").attempts == 1  # attempts count submits, kept across requeues


def test_submitting_becomes_unknown_on_resume(tmp_path):
    with StateStore.open(tmp_path) as s:
        s.add_jobs(jobs(3))
        s.mark_submitting("j1")
    with StateStore.open(tmp_path) as s:  # a crashed run: the row still says SUBMITTING
        assert s.submitting_to_unknown("killed while submitting") == 1
        row = s.get("j1")
        assert (row.status, row.error, row.attempts) == (
            st.UNKNOWN,
            "killed while submitting",
            1,
        )


def test_requeue_failed_and_timed_out_only_in_manifest(store):
    store.add_jobs(jobs(4))
    for jid, status in [("j0", st.FAILED), ("j1", st.TIMED_OUT), ("j2", st.CANCELLED)]:
        store.record_request_id(jid, f"r-{jid}", 1.0)
        store.record_result(jid, status, finished_at=2.0, error="boom")
    assert store.requeue([st.FAILED, st.TIMED_OUT]) == 2
    statuses = {r.job_id: r.status for r in store.rows()}
    assert statuses == {"j0": "pending", "j1": "pending", "j2": "cancelled", "j3": "pending"}
    assert store.get("j0").request_id is None and store.get("j0").error == ""


def test_requeue_starts_a_fresh_allowance_of_retries_where_the_attempts_are(store):
    # --retry-failed and --resubmit-unknown: the attempts stay (money), the allowance restarts.
    store.add_jobs(jobs(3))
    for _ in range(2):
        store.record_request_id("j0", "r-j0", 1.0)
    store.record_result("j0", st.FAILED, finished_at=2.0, error="boom")
    store.record_request_id("j1", "r-j1", 1.0)
    store.mark_unknown("j2", "submit may have reached the server")
    assert [store.get(j).retries_used for j in ("j0", "j1", "j2")] == [2, 1, 1]
    assert store.requeue([st.FAILED]) == 1
    assert store.requeue([st.UNKNOWN], only=["j2"]) == 1  # a subset's requeue: the same change
    got = {r.job_id: (r.status, r.attempts, r.retries_from, r.retries_used) for r in store.rows()}
    assert got == {
        "j0": (st.PENDING, 2, 2, 0),
        "j1": (st.QUEUED, 1, 0, 1),  # not sent again: its attempts keep counting
        "j2": (st.PENDING, 1, 1, 0),
    }
    store.record_request_id("j0", "r-j0b", 3.0)
    assert (store.get("j0").attempts, store.get("j0").retries_used) == (3, 1)


def test_a_subset_requeues_its_own_jobs_and_never_an_unread_request(store):
    # --only with --retry-failed: the jobs chosen, and as without --only, a request the server
    # stopped knowing before its result was read (it may have been billed) only when unknown
    # jobs are asked for (--resubmit-unknown).
    store.add_jobs(jobs(4))
    for jid in ("j0", "j1", "j2"):
        store.record_request_id(jid, f"r-{jid}", 1.0)
        store.record_result(jid, st.FAILED, finished_at=2.0, error="boom")
    store.record_request_id("j3", "r-j3", 1.0)
    store.record_result("j3", st.FAILED, finished_at=2.0, error=st.not_found_error("3 reads"))
    chosen = ["j0", "j1", "j3"]
    assert store.requeue([st.FAILED, st.TIMED_OUT], only=chosen) == 2
    statuses = {r.job_id: r.status for r in store.rows()}
    assert statuses == {"j0": "pending", "j1": "pending", "j2": "failed", "j3": "failed"}
    assert store.requeue([st.UNKNOWN], only=chosen) == 1
    assert store.get("j3").status == st.PENDING


def test_manifest_change_adds_new_keeps_finished_hides_removed(store):
    store.add_jobs(jobs(3))
    store.record_request_id("j0", "r0", 1.0)
    store.record_result("j0", st.SUCCEEDED, finished_at=2.0, output="http://h/a.png")
    changed = [J("j0", position=1), J("j2", position=2), J("new", position=0)]
    added, removed = store.add_jobs(changed)
    assert (added, removed) == (1, 1)
    rows = {r.job_id: r for r in store.rows()}
    assert rows["j0"].status == st.SUCCEEDED and rows["j0"].position == 1
    assert rows["new"].status == st.PENDING and rows["new"].in_manifest
    assert not rows["j1"].in_manifest
    assert [r.job_id for r in store.rows(in_manifest_only=True)] == ["new", "j0", "j2"]
    assert store.counts() == {"succeeded": 1, "pending": 2}


def test_unknown_job_is_a_state_error(store):
    with pytest.raises(StateError):
        store.mark_submitting("nope")


def test_second_open_is_refused_with_pid(tmp_path):
    with StateStore.open(tmp_path):
        with pytest.raises(RunFolderInUse) as info:
            StateStore.open(tmp_path)
    assert str(info.value) == (
        f"run folder {tmp_path} in use by pid {os.getpid()}; wait for that run to finish "
        "(or stop it) and try again"
    )
    StateStore.open(tmp_path).close()  # released on close


def test_lock_held_by_another_process(tmp_path):
    code = (
        "import sys, time; from batchrun.store.state import StateStore;"
        f"s = StateStore.open({str(tmp_path)!r}); print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(RunFolderInUse, match=f"in use by pid {proc.pid};"):
            StateStore.open(tmp_path)
    finally:
        proc.stdin.close()
        proc.wait(10)
    StateStore.open(tmp_path).close()


def test_reader_without_lock_sees_committed_state(tmp_path):
    with StateStore.open(tmp_path) as writer:
        writer.add_jobs(jobs(2))
        writer.record_request_id("j0", "r0", 1.0)
        with StateStore.open(tmp_path, create=False, lock=False) as reader:
            assert reader.get("j0").request_id == "r0"


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(StateError, match="no state.db here"):
        StateStore.open(tmp_path / "nothing", create=False, lock=False)


def test_newer_schema_is_refused(tmp_path):
    with StateStore.open(tmp_path) as s:
        s.set_meta(schema_version="99")
    with pytest.raises(StateError, match="schema version 99"):
        StateStore.open(tmp_path)


def committed(run_dir: Path) -> dict[str, str]:
    """Job statuses as another process sees them: only what is committed."""
    conn = sqlite3.connect(run_dir / "state.db")
    try:
        return dict(conn.execute("SELECT job_id, status FROM jobs").fetchall())
    finally:
        conn.close()


def test_a_batch_commits_its_transitions_together(store, tmp_path):
    store.add_jobs(jobs(3))
    with store.batch(durable=True):
        store.mark_submitting("j0")
        store.record_request_id("j1", "req-1", 5.0)
        assert committed(tmp_path / "run") == {"j0": "pending", "j1": "pending", "j2": "pending"}
        assert store.get("j0").status == st.SUBMITTING  # the store itself sees its own writes
    assert committed(tmp_path / "run") == {"j0": "submitting", "j1": "queued", "j2": "pending"}


def test_a_batch_keeps_what_completed_when_a_transition_fails(store, tmp_path):
    store.add_jobs(jobs(2))
    with pytest.raises(StateError, match="no job nope"):
        with store.batch():
            store.mark_pending("j0", "first")
            store.mark_pending("nope", "second")
    assert committed(tmp_path / "run") == {"j0": "pending", "j1": "pending"}
    assert store.get("j0").error == "first"
    store.mark_unknown("j1", "after")  # the store is usable again: no transaction left open
    assert committed(tmp_path / "run")["j1"] == "unknown"


def test_a_durable_transition_needs_a_durable_batch(store, tmp_path):
    store.add_jobs(jobs(1))
    with pytest.raises(StateError, match="durable"):
        with store.batch(durable=False):
            store.mark_submitting("j0")
    assert committed(tmp_path / "run") == {"j0": "pending"}


def test_batches_do_not_nest(store, tmp_path):
    store.add_jobs(jobs(2))
    with pytest.raises(StateError, match="do not nest"):
        with store.batch(durable=True):
            store.mark_submitting("j0")
            with store.batch(durable=True):
                store.mark_submitting("j1")
    assert committed(tmp_path / "run") == {"j0": "submitting", "j1": "pending"}


def test_kill_after_commit_keeps_the_transition(tmp_path):
    """A SIGKILL right after a commit loses nothing (WAL, synchronous=NORMAL)."""
    code = (
        "import os, signal; from batchrun.store.state import StateStore;"
        "from tests.store.test_state import jobs;"
        f"s = StateStore.open({str(tmp_path)!r}); s.add_jobs(jobs(5));"
        "s.mark_submitting('j3'); s.record_request_id('j3', 'req-9', 5.0);"
        "s.record_result('j3', 'succeeded', finished_at=6.0, output='http://h/x');"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=30)
    assert proc.returncode == -9
    with StateStore.open(tmp_path) as s:
        row = s.get("j3")
        assert (row.status, row.request_id, row.output) == ("succeeded", "req-9", "http://h/x")


def test_100k_jobs_add_and_transition_speed(tmp_path, capsys):
    many = jobs(100_000)
    with StateStore.open(tmp_path) as s:
        t0 = time.perf_counter()
        added, _ = s.add_jobs(many)
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(200):
            s.record_status(f"j{i * 499}", st.RUNNING, started_at=1.0)
        t_tx = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        rows = s.rows()
        t_rows = time.perf_counter() - t0
    assert added == 100_000 and len(rows) == 100_000
    with capsys.disabled():
        print(
            f"\n100k jobs: add_jobs {t_add:.2f} s, one transition {t_tx * 1000:.2f} ms, "
            f"rows() {t_rows:.2f} s"
        )
    assert t_add < 10 and t_tx < 0.05  # O(1) per transition, whatever the table size


def test_add_jobs_again_unchanged_writes_nothing(store):
    store.add_jobs(jobs(3))
    store.add_jobs([J("j0", position=0), J("j1", position=1)])  # j2 leaves the manifest
    mark = store.change_mark()
    assert store.add_jobs([J("j0", position=0), J("j1", position=1)]) == (0, 1)
    assert store.change_mark() == mark
    # the same ids at other places is a change: positions follow the manifest
    assert store.add_jobs([J("j1", position=0), J("j0", position=1)]) == (0, 1)
    assert [r.job_id for r in store.rows(in_manifest_only=True)] == ["j1", "j0"]
    assert store.change_mark() != mark
    # a job back in the manifest is one too
    assert store.add_jobs(jobs(3)) == (0, 0)
    assert store.rows()[2].in_manifest


def test_rows_round_trip_json_fields(store):
    store.add_jobs([J("a", inputs={"z": [1, {"b": None}], "p": "é"}, vars={"c": 2})])
    store.record_request_id("a", "r", 1.0)
    store.record_result("a", st.SUCCEEDED, finished_at=2.0, output={"images": ["http://h/x"]})
    store.record_files("a", [OutputFile(url="http://h/x", name="files/a/x", size=3)])
    store.add_jobs([J("b", position=1)])  # "a" leaves the manifest
    a, b = store.rows()
    assert (a.inputs, a.vars, a.output) == (
        {"z": [1, {"b": None}], "p": "é"},
        {"c": 2},
        {"images": ["http://h/x"]},
    )
    assert a.files == [OutputFile(url="http://h/x", name="files/a/x", size=3)]
    assert (a.in_manifest, b.in_manifest, b.output, b.files) == (False, True, None, [])
    assert store.get("a") == a


def test_change_mark_sees_writes_of_this_and_other_connections(store, tmp_path):
    store.add_jobs(jobs(2))
    mark = store.change_mark()
    assert store.change_mark() == mark
    store.record_error("j0", "note")
    assert store.change_mark() != mark
    mark = store.change_mark()
    other = sqlite3.connect(tmp_path / "run" / "state.db")
    with other:
        other.execute("UPDATE jobs SET error = 'x' WHERE job_id = 'j1'")
    other.close()
    assert store.change_mark() != mark

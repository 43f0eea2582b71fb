"""halt: run.halt stops submitting when too many jobs fail; run.canary holds a model's jobs
until its first ones succeeded. The gate's decisions directly, then runs on the simulator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from batchrun.errors import ManifestError
from batchrun.plan.build import build_plan
from batchrun.plan.manifest import load_manifest
from batchrun.plan.settings import HaltRule
from batchrun.run.engine import RunOptions, run_batch
from batchrun.run.halt import SweepGate
from batchrun.run.policy import Closed
from batchrun.simulator import SimSettings, Simulator
from batchrun.store import state as st
from batchrun.store.records import JobRow

TOKEN = "tok-halt-3c9e"
T2I = "google/nano-banana-2-lite/text-to-image"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
REPO = Path(__file__).resolve().parents[2]


class Table:
    """The part of jobtable.JobTable the gate reads."""

    def __init__(self, rows: list[JobRow]) -> None:
        self.rows = {r.job_id: r for r in rows}
        self.counts: Counter[str] = Counter(r.status for r in rows)

    def set(self, job_id: str, status: str, *, cached: bool = False) -> None:
        row = self.rows[job_id]
        self.counts[row.status] -= 1
        self.counts[status] += 1
        row.status, row.cached = status, cached


def rows(model: str, n: int, start: int = 0, status: str = st.PENDING) -> list[JobRow]:
    tag = model[0]
    return [JobRow(f"{tag}{i:03d}", start + i, model, {}, status=status) for i in range(n)]


# ---- the halt rule ----------------------------------------------------------------------


def finish(table: Table, ids: list[str], failed: int) -> None:
    for i, job_id in enumerate(ids):
        table.set(job_id, st.FAILED if i < failed else st.SUCCEEDED)


@pytest.mark.parametrize(
    ("finished", "failed", "halts"),
    [
        (9, 9, False),  # fewer than min_finished: never
        (10, 2, False),  # 20% is not above 20%
        (10, 3, True),
        (20, 5, True),
        (20, 4, False),
    ],
)
def test_halt_once_min_finished_and_share_above_rate(finished, failed, halts) -> None:
    table = Table(rows("a", 40))
    gate = SweepGate(halt=HaltRule(0.2, 10), canary=0, rows=table.rows.values())
    finish(table, list(table.rows)[:finished], failed)
    assert gate.admit("a039", table) is not halts
    assert bool(gate.halted) is halts


def test_halt_counts_timed_out_and_stays_halted() -> None:
    table = Table(rows("a", 30))
    gate = SweepGate(halt=HaltRule(0.5, 4), canary=0, rows=table.rows.values())
    for job_id in ("a000", "a001", "a002"):
        table.set(job_id, st.TIMED_OUT)
    table.set("a003", st.SUCCEEDED)
    assert not gate.admit("a029", table)
    assert gate.halted == "3 of 4 finished jobs failed (75% > 50%)"
    for job_id in ("a004", "a005", "a006", "a007", "a008"):
        table.set(job_id, st.SUCCEEDED)  # the share falls again; the halt holds for the run
    assert not gate.admit("a029", table)
    assert gate.problems(26) == [
        "halted: 3 of 4 finished jobs failed (75% > 50%); 26 jobs not submitted; "
        "fix the cause and rerun to continue"
    ]


def test_halt_counts_only_the_jobs_this_run_finished() -> None:
    """A rerun after a halt starts afresh: the earlier run's failures do not halt it at once."""
    earlier = rows("a", 10, status=st.FAILED)
    table = Table(earlier + rows("b", 20, start=10))
    gate = SweepGate(halt=HaltRule(0.2, 5), canary=0, rows=table.rows.values())
    assert gate.admit("b000", table)
    finish(table, ["b000", "b001", "b002", "b003", "b004"], failed=1)
    assert gate.admit("b005", table)
    assert gate.problems(0) == []


# ---- canaries ---------------------------------------------------------------------------


def test_canaries_go_first_and_release_their_model() -> None:
    table = Table(rows("a", 5) + rows("b", 5, start=5))
    gate = SweepGate(halt=None, canary=2, rows=table.rows.values())
    admitted = [j for j in table.rows if gate.admit(j, table)]
    assert admitted == ["a000", "a001", "b000", "b001"]
    assert gate.closed() == Closed(frozenset({"a", "b"}))  # the others are not read meanwhile
    assert gate.watching("a000") and not gate.watching("a002")
    gate.released(table)
    table.set("a000", st.SUCCEEDED)
    gate.released(table)
    assert gate.closed().models == {"a", "b"}  # one canary of two
    table.set("a001", st.SUCCEEDED)
    assert gate.released(table) == []  # the jobs set aside are read again, not given
    assert gate.closed().models == {"b"} and gate.admit("a002", table)
    assert not gate.watching("a000")
    table.set("b000", st.SUCCEEDED)
    table.set("b001", st.FAILED)
    table.rows["b001"].error = "422: inputs do not match"
    gate.released(table)
    assert gate.closed().models == {"b"}  # blocked: closed for good
    assert not gate.admit("b004", table)  # a blocked model's jobs never go
    assert gate.problems(3) == [
        f"canary failed for {'b'}: job b001 failed: 422: inputs do not match; its other jobs "
        "were not submitted; fix the cause and rerun with --retry-failed (the canaries go "
        "first again)"
    ]


def test_a_canary_retried_is_still_waited_for() -> None:
    table = Table(rows("a", 3))
    gate = SweepGate(halt=None, canary=1, rows=table.rows.values())
    assert [j for j in table.rows if gate.admit(j, table)] == ["a000"]
    table.set("a000", st.RUNNING)
    table.set("a000", st.PENDING)  # failed once, back in the queue for its retry
    gate.released(table)
    assert gate.closed().models == {"a"} and gate.admit("a000", table)
    table.set("a000", st.SUCCEEDED)
    gate.released(table)
    assert gate.closed() == Closed() and gate.admit("a001", table)


def test_canaries_on_resume() -> None:
    """Successes of an earlier run count; cached ones do not; jobs in flight can be canaries."""
    proven = rows("a", 2, status=st.SUCCEEDED) + rows("a", 3, start=2)
    for i, row in enumerate(proven):
        row.job_id = f"a{i:03d}"
    half = rows("b", 1, start=5, status=st.SUCCEEDED) + rows("b", 3, start=6)
    for i, row in enumerate(half):
        row.job_id = f"b{i:03d}"
    half[1].status = st.RUNNING  # submitted by the earlier run, still on the server
    cached = rows("c", 2, start=10, status=st.SUCCEEDED) + rows("c", 2, start=12)
    for i, row in enumerate(cached):
        row.job_id, row.cached = f"c{i:03d}", i < 2
    table = Table(proven + half + cached)
    gate = SweepGate(halt=None, canary=2, rows=table.rows.values())
    assert gate.canaries == {"b": ["b001"], "c": ["c002", "c003"]}
    assert [j for j in ("a002", "a003", "b002", "b003", "c002") if gate.admit(j, table)] == [
        "a002",
        "a003",
        "c002",
    ]


# ---- the manifest -----------------------------------------------------------------------


def write_manifest(tmp_path: Path, run: dict, models: list[dict] | None = None) -> Path:
    settings = {"rate_limit": "200/s", "poll_interval": "20ms", "max_in_flight": 10}
    models = models or [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(200)]}}]
    data = {"version": 1, "name": "halt", "run": {**settings, **run}, "models": models}
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def test_manifest_reads_halt_and_canary(tmp_path: Path) -> None:
    run = load_manifest(write_manifest(tmp_path, {"halt": {"failure_rate": 0.25}, "canary": 3})).run
    assert (run.halt, run.canary) == (HaltRule(0.25, 10), 3)
    assert load_manifest(write_manifest(tmp_path, {})).run.halt is None


def test_manifest_refuses_bad_halt_and_canary(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path, {"halt": {"failure_rate": 1.5, "min_finished": 0, "after": 1}, "canary": 0}
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.problems == [
        f"{path}: $.run.canary: 0 is less than the minimum of 1 (line 1)",
        f"{path}: $.run.halt.after: unknown key 'after'; known keys: failure_rate, "
        "min_finished (line 1)",
        f"{path}: $.run.halt.failure_rate: 1.5 is greater than the maximum of 1 (line 1)",
        f"{path}: $.run.halt.min_finished: 0 is less than the minimum of 1 (line 1)",
    ]


# ---- on the simulator -------------------------------------------------------------------


@pytest.fixture
def sim():
    started: list[Simulator] = []

    def start(**settings) -> Simulator:
        settings = {"token": TOKEN, "run_time": 0.05, "workers": 0, **settings}
        server = Simulator(SimSettings.from_mapping(settings)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def run(path: Path, server: Simulator, run_dir: Path, schema_dirs=()) -> tuple[int, list[str]]:
    messages: list[str] = []
    options = RunOptions(
        api_base=server.base_url,
        token=TOKEN,
        run_dir=run_dir,
        quiet=True,
        handle_signals=False,
        echo=messages.append,
    )
    plan = build_plan(path, schema_dirs=schema_dirs)
    return run_batch(plan, options), messages


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_halt_stops_a_failing_sweep_early_and_a_rerun_continues(tmp_path, sim) -> None:
    server = sim(fail_rate=0.6, seed=7)
    path = write_manifest(
        tmp_path, {"retries": 0, "halt": {"failure_rate": 0.2, "min_finished": 10}}
    )
    code, messages = run(path, server, tmp_path / "run")
    submits = server.stats()["calls"]["submit"]
    assert code == 1
    assert submits < 40
    totals = summary(tmp_path / "run")["statuses"]
    assert totals["pending"] == 200 - submits  # the rest were never sent, still to do
    assert totals["succeeded"] + totals["failed"] == submits  # in-flight jobs finished
    last = messages[-1]
    assert last.startswith("halted: ") and last.endswith(
        f"; {200 - submits} jobs not submitted; fix the cause and rerun to continue"
    )
    # A rerun continues with the jobs not submitted (and halts again: nothing was fixed).
    code, messages = run(path, server, tmp_path / "run")
    assert code == 1 and messages[-1].startswith("halted: ")
    again = server.stats()["calls"]["submit"] - submits
    assert 10 <= again < 40
    assert summary(tmp_path / "run")["statuses"]["pending"] == 200 - submits - again


def test_without_halt_the_same_sweep_runs_to_the_end(tmp_path, sim) -> None:
    server = sim(fail_rate=0.6, seed=7)
    path = write_manifest(tmp_path, {"retries": 0, "max_in_flight": 50})
    code, messages = run(path, server, tmp_path / "run")
    assert code == 1 and not any(m.startswith("halted") for m in messages)
    assert server.stats()["calls"]["submit"] == 200


def loose_schema(tmp_path: Path) -> Path:
    """T2I's schema with a `style` field the simulator (the packaged schema) refuses."""
    folder = tmp_path / "schemas"
    folder.mkdir()
    name = "google__nano-banana-2-lite__text-to-image.json"
    schema = json.loads((REPO / "schemas" / "models" / name).read_text())
    schema["properties"]["style"] = {"type": "string"}
    (folder / name).write_text(json.dumps(schema))
    return folder


def test_a_model_whose_canary_fails_costs_only_the_canaries(tmp_path, sim) -> None:
    server = sim()
    models = [
        {"id": T2I, "inputs": {"style": "noir"}, "matrix": {"prompt": [f"p{i}" for i in range(8)]}},
        {"id": FLUX, "inputs": {"image_url": IMAGE}, "matrix": {"prompt": ["a", "b", "c", "d"]}},
    ]
    path = write_manifest(tmp_path, {"canary": 2}, models)
    code, messages = run(path, server, tmp_path / "run", schema_dirs=[loose_schema(tmp_path)])
    assert code == 1
    # Submits go one at a time until one is accepted: the first canary's refusal blocks the
    # model before its second canary is sent, so the broken model cost one job.
    assert server.stats()["calls"]["submit"] == 1 + 4
    totals = summary(tmp_path / "run")["statuses"]
    assert (totals["failed"], totals["pending"], totals["succeeded"]) == (1, 7, 4)
    assert messages[-1].startswith(f"canary failed for {T2I}: job ")
    assert "inputs do not match the model's schema" in messages[-1]
    assert messages[-1].endswith(
        "; its other jobs were not submitted; fix the cause and rerun with --retry-failed "
        "(the canaries go first again)"
    )


def test_canaries_that_succeed_let_the_whole_sweep_run(tmp_path, sim) -> None:
    server = sim()
    models = [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(12)]}}]
    path = write_manifest(tmp_path, {"canary": 3}, models)
    code, messages = run(path, server, tmp_path / "run")
    assert code == 0, messages
    assert summary(tmp_path / "run")["statuses"]["succeeded"] == 12
    # Resumed with more jobs: the earlier successes are the canaries; everything goes.
    more = [{"id": T2I, "matrix": {"prompt": [f"p{i}" for i in range(20)]}}]
    code, messages = run(write_manifest(tmp_path, {"canary": 3}, more), server, tmp_path / "run")
    assert code == 0, messages
    assert server.stats()["calls"]["submit"] == 20

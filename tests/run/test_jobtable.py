"""The scheduler's job table in memory and state.db stay equal: after every transition of a
random sequence, each row's fields in memory are the ones store.rows() reads back."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as s

from batchrun.plan.grid import Job
from batchrun.run.jobtable import JobTable
from batchrun.store import records as rec
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore

JOB_IDS = [f"j{i}" for i in range(4)]

times = s.floats(min_value=0.0, max_value=2e9)
errors = s.one_of(
    s.text(max_size=12),
    s.integers(rec.MAX_ERROR_CHARS - 2, rec.MAX_ERROR_CHARS + 3000).map(lambda n: "e" * n),
)
costs = s.one_of(s.none(), s.floats(), s.floats(min_value=0.0, max_value=10.0))
json_values = s.recursive(
    s.none() | s.booleans() | s.integers() | s.floats(allow_nan=False) | s.text(max_size=8),
    lambda inner: (
        s.lists(inner, max_size=3) | s.dictionaries(s.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
output_files = s.lists(
    s.builds(OutputFile, s.text(max_size=8), s.text(max_size=8), s.text(max_size=8),
             s.integers(0, 2**40), s.text(max_size=8)),
    max_size=3,
)  # fmt: skip
job_ids = s.sampled_from(JOB_IDS)

# One transition of JobTable: (method, positional args from the job's id on, keyword args).
Step = tuple[str, tuple, dict]
steps = s.one_of(
    s.tuples(s.just("mark_submitting"), s.tuples(job_ids), s.just({})),
    s.tuples(s.just("record_request_id"), s.tuples(job_ids, s.text(max_size=8), times),
             s.just({})),
    s.tuples(s.just("mark_pending"), s.tuples(job_ids, errors), s.just({})),
    s.tuples(s.just("mark_unknown"), s.tuples(job_ids, errors), s.just({})),
    s.tuples(s.just("record_status"), s.tuples(job_ids, s.sampled_from([rec.QUEUED, rec.RUNNING])),
             s.fixed_dictionaries({"started_at": s.none() | times})),
    s.tuples(s.just("record_result"), s.tuples(job_ids, s.sampled_from(sorted(rec.TERMINAL))),
             s.fixed_dictionaries({"finished_at": times, "output": json_values, "error": errors,
                                   "cost_usd": costs})),
    s.tuples(s.just("record_error"), s.tuples(job_ids, errors), s.just({})),
    s.tuples(s.just("record_files"), s.tuples(job_ids, output_files), s.just({})),
)  # fmt: skip

# What the cache may have made of a job before the run's table is built.
cache_hits = s.dictionaries(
    job_ids,
    s.fixed_dictionaries({"finished_at": times, "output": json_values,
                          "saved_usd": s.none() | s.floats(0.0, 10.0), "files": output_files}),
    max_size=2,
)  # fmt: skip


def assert_same(table: JobTable, store: StateStore, after: str) -> None:
    stored = {r.job_id: r for r in store.rows(in_manifest_only=True)}
    assert set(table.rows) == set(stored)
    for job_id, row in table.rows.items():
        for f in fields(JobRow):
            mine, theirs = getattr(row, f.name), getattr(stored[job_id], f.name)
            assert mine == theirs, f"after {after}: {f.name} {mine!r:.60} != {theirs!r:.60}"
    assert +table.counts == Counter(r.status for r in stored.values()), f"after {after}: counts"


_examples = itertools.count()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    with StateStore.open(tmp_path_factory.mktemp("jobtable") / "run") as store:
        yield store


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(hits=cache_hits, sequence=s.lists(steps, min_size=1, max_size=25))
def test_the_table_in_memory_is_what_state_db_holds(
    shared_store: StateStore, hits: dict[str, dict[str, Any]], sequence: list[Step]
) -> None:
    """One state.db for every example (opening one costs 50 ms), each example's jobs the
    manifest's (the others are out of it, as a manifest edit leaves them)."""
    store, n = shared_store, next(_examples)
    ids = {j: f"x{n}-{j}" for j in JOB_IDS}
    store.add_jobs([Job(ids[j], "m/x", {"prompt": j}, {}, 0, i) for i, j in enumerate(JOB_IDS)])
    for job_id, hit in hits.items():
        store.record_cached(ids[job_id], **hit)
    table = JobTable(store, store.rows(in_manifest_only=True))
    assert_same(table, store, "opening")
    for name, (job_id, *args), kwargs in sequence:
        getattr(table, name)(ids[job_id], *args, **kwargs)
        assert_same(table, store, f"{name}{(job_id, *args)!r:.80} {kwargs!r:.80}")


def test_a_new_submit_of_a_cached_job_is_no_longer_cached(tmp_path: Path) -> None:
    """The case that drifted: a request id clears what the cache had put in the row."""
    with StateStore.open(tmp_path / "run") as store:
        store.add_jobs([Job("j0", "m/x", {}, {}, 0, 0)])
        store.record_cached("j0", finished_at=1.0, output="u", saved_usd=0.3, files=[])
        table = JobTable(store, store.rows())
        table.mark_submitting("j0")
        table.record_request_id("j0", "r1", 2.0)
        assert (table.rows["j0"].cached, table.rows["j0"].saved_usd) == (False, None)
        assert_same(table, store, "record_request_id")

"""A merge's memory does not grow with the number of jobs: the peak RSS of `batchrun merge`
of two shards at two sizes."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from testing.cli import batchrun_cmd
from testing.folders import succeeded_shard

from .conftest import own_peak_rss_mb


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB, as Linux counts it")
def test_a_merges_peak_memory_does_not_grow_with_the_jobs(tmp_path: Path) -> None:
    peaks = {}
    for jobs in (2_000, 20_000):
        one, two, into = (tmp_path / f"{name}{jobs}" for name in ("one", "two", "merged"))
        succeeded_shard(one, range(0, jobs))
        succeeded_shard(two, range(jobs, 2 * jobs))
        cmd = batchrun_cmd("merge", str(one), str(two), "--into", str(into))
        code, peaks[jobs] = own_peak_rss_mb(cmd, timeout=240)
        assert code == 0
        with sqlite3.connect(into / "state.db") as db:
            merged = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'").fetchone()
            attempts = db.execute("SELECT COUNT(*) FROM attempts").fetchone()
        assert merged[0] == attempts[0] == 2 * jobs
    grown = peaks[20_000] - peaks[2_000]
    print(f"\npeak RSS of a merge of two shards: 2 x 2,000 jobs {peaks[2_000]:.1f} MB, "
          f"2 x 20,000 jobs {peaks[20_000]:.1f} MB (+{grown:.1f} MB for 10x the jobs)")  # fmt: skip
    # 36,000 more jobs held (a row and its attempt are about 2 KB in Python) would take some
    # 70 MB; in pages the merge holds a few thousand.
    assert grown < 12, peaks

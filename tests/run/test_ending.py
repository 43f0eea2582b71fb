"""The closing lines' counts (run/ending.py EndCounts): one pass over the jobs, kept in the
folder with its revision and read back only when they are what was kept."""

from __future__ import annotations

from batchrun.run.ending import EndCounts
from batchrun.store import state as st
from batchrun.store.records import JobRow, OutputFile


def _rows() -> list[JobRow]:
    bad_file = OutputFile("http://h/x.png", "", "", 0, "HTTP 500")
    return [
        JobRow("a", 0, "m/one", {}, status=st.SUCCEEDED, output="http://h/a.png"),
        JobRow("b", 1, "m/one", {}, status=st.SUCCEEDED, output={"nothing": 1}),
        JobRow("c", 2, "m/two", {}, status=st.FAILED, error="boom", files=[bad_file]),
        JobRow("d", 3, "m/two", {}, status=st.PENDING),
        JobRow("e", 4, "m/one", {}, status=st.SUCCEEDED, cached=True, saved_usd=0.25,
               output="http://h/e.png"),
    ]  # fmt: skip


def test_the_counts_of_one_pass_say_what_the_closing_lines_need() -> None:
    ended = EndCounts.of(_rows())
    assert ended.jobs == 5 and ended.counts == {"succeeded": 3, "failed": 1, "pending": 1}
    assert (ended.file_errors, ended.without_output, ended.cached) == (1, 1, 1)
    assert ended.failed_by_model == {"m/two": 1} and ended.not_sent == {"m/two": 1}
    assert ended.text() == "succeeded 3 (1 without output), failed 1, pending 1"
    assert ended.cached_note() == " (1 from the cache, saved $0.25)"


def test_kept_counts_read_back_the_same_and_anything_else_reads_as_none() -> None:
    ended = EndCounts.of(_rows())
    assert EndCounts.loads(ended.dumps()) == ended
    for kept in ("", "{", "[]", '{"counts": {}}', '{"counts": 1, "not": 2}'):
        assert EndCounts.loads(kept) is None, kept

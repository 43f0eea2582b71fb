"""A merge read and written a page at a time keeps every rule of a merge of the folders held
whole: each job once, an untouched job yields to a result, a duplicate counted once, a
conflict refused with the same message, the ledger without a duplicate's attempts from the
folders it was not taken from, and the jobs in plan order. The folders here span many pages
(3 jobs a page); the expected merge is worked out from the folders read whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batchrun.errors import StateError
from batchrun.plan.grid import Job
from batchrun.results.merge import merge_runs
from batchrun.store import ledger, state as st
from batchrun.store.ledger import Attempt
from batchrun.store.records import JobRow, OutputFile
from batchrun.store.state import StateStore

PAGE = 3


def job(position: int) -> Job:
    return Job(f"j{position}", "m", {"p": position}, {"v": position % 4}, 0, position)


def succeed(store: StateStore, position: int, request: str, content: bytes | None) -> None:
    """The job succeeded (request `request`), with one file of `content` when given."""
    job_id = f"j{position}"
    store.mark_submitting(job_id)
    store.record_request_id(job_id, request, 1.0)
    url = f"http://127.0.0.1/{job_id}.png"
    store.record_result(job_id, st.SUCCEEDED, finished_at=2.0, output={"image": url},
                        cost_usd=0.01)  # fmt: skip
    if content is not None:
        name = f"files/{job_id}/out.png"
        path = store.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        sha = hashlib.sha256(content).hexdigest()
        store.record_files(job_id, [OutputFile(url, name, sha, len(content))])


def fail(store: StateStore, position: int, request: str) -> None:
    job_id = f"j{position}"
    store.mark_submitting(job_id)
    store.record_request_id(job_id, request, 1.0)
    store.record_result(job_id, st.FAILED, finished_at=2.0, error="boom")


def refused(store: StateStore, position: int) -> None:
    """An untouched job (pending, no request, no attempt counted) whose one submit was
    refused: an attempt in the ledger all the same."""
    job_id = f"j{position}"
    store.mark_submitting(job_id)
    store.close_attempt(job_id, answer=ledger.REFUSED)
    store.mark_pending(job_id, "refused")


def make(folder: Path, positions: list[int], done: dict[int, str], *, gone: int | None = None):
    """A simulated run folder of the jobs at `positions`: those in `done` succeeded with that
    request id (and a file whose bytes are the request id), `gone` left the manifest after
    succeeding; the others as the caller makes them."""
    store = StateStore.open(folder)
    store.set_meta(origin="simulator", api_base="http://127.0.0.1:1", name="pages")
    if gone is not None:
        store.add_jobs([job(gone)])
        succeed(store, gone, f"{folder.name}-gone", None)
    store.add_jobs([job(p) for p in sorted(positions)])
    for position, request in done.items():
        succeed(store, position, request, request.encode())
    return store


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Folder a: the even positions 0-22; b: the odd ones 1-23, and a's last three again with
    the same results (duplicates, on b's later pages), j4 (untouched in a) with a result, j6
    (a result in a) untouched. Each has a job that left its manifest."""
    a, b = tmp_path / "a", tmp_path / "b"
    evens = list(range(0, 24, 2))
    with make(a, evens, {p: f"req-{p}" for p in evens if p != 4}, gone=100) as store:
        refused(store, 4)
    odds = list(range(1, 24, 2))
    same = {p: f"req-{p}" for p in (18, 20, 22)}
    with make(b, [*odds, 4, 6, *same], {**{p: f"req-{p}" for p in odds}, 4: "req-b4", **same},
              gone=101) as store:  # fmt: skip
        refused(store, 6)
    return a, b


def read(folder: Path) -> tuple[list[JobRow], list[Attempt]]:
    with StateStore.open(folder, create=False, lock=False) as store:
        return store.rows(in_manifest_only=True), store.attempts()


def untouched(row: JobRow) -> bool:
    return row.status == st.PENDING and not row.request_id and not row.attempts


def result(row: JobRow) -> tuple[str, str | None, tuple[str, ...]]:
    return row.status, row.request_id, tuple(f.sha256 for f in row.files if not f.error)


Conflict = tuple[str, Path, Path]  # a job, the folder its row was taken from, the other


def expected(folders: list[Path]) -> tuple[list[JobRow], list[Attempt], int, list[Conflict]]:
    """The merge of the folders read whole, by the rules: (rows in plan order, ledger,
    duplicates, conflicts in the order found)."""
    read_ = [read(f) for f in folders]
    chosen: dict[str, tuple[JobRow, int]] = {}
    duplicates, conflicts = 0, []
    for number, (rows, _) in enumerate(read_):
        for row in rows:
            seen = chosen.get(row.job_id)
            if seen is None or (untouched(seen[0]) and not untouched(row)):
                chosen[row.job_id] = (row, number)
            elif untouched(row):
                continue
            elif result(seen[0]) == result(row):
                duplicates += 1
            else:
                conflicts.append((row.job_id, folders[seen[1]], folders[number]))
    rows = sorted((row for row, _ in chosen.values()), key=lambda r: r.position)
    kept = [
        a
        for number, (_, attempts) in enumerate(read_)
        for a in attempts
        if chosen.get(a.job_id, (None, number))[1] == number
    ]
    return rows, kept, duplicates, conflicts


@pytest.mark.parametrize("page", [PAGE, 1, 1000])
def test_a_merge_in_pages_keeps_every_rule(folders, tmp_path: Path, page: int) -> None:
    a, b = folders
    into = tmp_path / "merged"
    made = merge_runs([a, b], into, page=page)
    rows, attempts, duplicates, conflicts = expected([a, b])
    assert conflicts == []
    assert (made.jobs, made.duplicates) == (len(rows), duplicates) == (24, 3)
    assert made.linked + made.copied == 24  # each job's file, once
    merged_rows, merged_attempts = read(into)
    assert merged_rows == rows
    assert [r.position for r in merged_rows] == list(range(24))
    assert merged_attempts == attempts
    by_id = {r.job_id: r for r in merged_rows}
    # the untouched job took the other folder's result; the result stayed against an untouched
    assert (by_id["j4"].request_id, by_id["j6"].request_id) == ("req-b4", "req-6")
    # j4's refused attempt in a and j6's in b left with the row they came with; the
    # duplicates' attempts are a's only; the jobs that left a manifest keep theirs
    answers = [(x.job_id, x.answer) for x in merged_attempts]
    held = [(x.job_id, x.answer) for f in (a, b) for x in read(f)[1]]
    assert ("j4", ledger.REFUSED) in held and ("j6", ledger.REFUSED) in held
    assert held.count(("j20", ledger.ACCEPTED)) == 2
    assert ("j4", ledger.REFUSED) not in answers and ("j6", ledger.REFUSED) not in answers
    assert answers.count(("j20", ledger.ACCEPTED)) == 1
    assert {"j100", "j101"} <= {x.job_id for x in merged_attempts}
    for row in merged_rows:
        for out in row.files:
            assert hashlib.sha256((into / out.name).read_bytes()).hexdigest() == out.sha256
    assert (into / "files" / "j4" / "out.png").read_bytes() == b"req-b4"


def test_plan_order_across_folders_and_pages(folders, tmp_path: Path) -> None:
    a, b = folders
    into = tmp_path / "merged"
    merge_runs([b, a], into, page=PAGE)  # b first: its pages interleave a's positions
    with StateStore.open(into, create=False, lock=False) as store:
        order = [r.position for r in store.iter_rows(in_manifest_only=True)]
        brief = [x.job_id for x in store.brief()]
    assert order == sorted(order) and len(order) == 24
    assert brief == [f"j{p}" for p in range(24)]
    report = (into / "report.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in report] == brief


def test_a_conflict_on_a_later_page_is_refused_as_before(folders, tmp_path: Path) -> None:
    a, b = folders
    c = tmp_path / "c"
    # the same jobs as a, most with another result: twelve conflicts, the first ones on c's
    # first page, the last one (j22) on its last page; j0 the same (a duplicate)
    with make(c, list(range(0, 24, 2)), {0: "req-0", 2: "req-c2"}) as store:
        for p in range(4, 24, 2):
            fail(store, p, f"req-{p}")
    into = tmp_path / "merged"
    with pytest.raises(StateError) as err:
        merge_runs([a, b, c], into, page=PAGE)
    _, _, _, conflicts = expected([a, b, c])
    assert len(conflicts) == 11
    lines = str(err.value).splitlines()
    assert lines[0] == (
        "11 job(s) have different results in two folders; refusing to merge (leave one of the "
        "two folders out, or run that job again in one):"
    )
    assert len(lines) == 12 and lines[-1] == "... and 1 more"
    # the conflicts in the order the folders' jobs come, as before: a's (or b's) result
    # against c's
    for line, (job_id, first, second) in zip(lines[1:11], conflicts[:10], strict=True):
        assert line.startswith(f"  job {job_id}: {first}: ")
        assert f" | {second}: " in line
    assert [x[0] for x in conflicts] == [f"j{p}" for p in range(2, 24, 2)]
    assert lines[1].startswith(f"  job j2: {a}: succeeded, request req-2, sha256 ")
    assert f" | {c}: succeeded, request req-c2, sha256 " in lines[1]
    assert lines[2].startswith(f"  job j4: {b}: succeeded, request req-b4, sha256 ")
    assert f" | {c}: failed, request req-4, sha256 -" in lines[2]
    assert not into.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merged.")] == []

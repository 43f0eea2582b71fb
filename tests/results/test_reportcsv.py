"""The report.csv format both ways: guard and unguard, multi-value cells, write then read."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from batchrun.errors import CompareError
from batchrun.results import reportcsv

HOSTILE = [
    "=cmd|' /C calc'!A0",
    "+1+2",
    "-2+3",
    "@SUM(1,2)",
    "\tleading tab",
    "\rleading CR",
    '=HYPERLINK("http://x.invalid","go")',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_guard_defuses_a_formula_and_unguard_undoes_it(text: str) -> None:
    cell = reportcsv.guard(text)
    assert cell == "'" + text
    assert reportcsv.unguard(cell) == text


@pytest.mark.parametrize("text", ["", "plain", "a=b", "x-1", "'quoted", "'", "files/a.png"])
def test_guard_and_unguard_leave_harmless_text_alone(text: str) -> None:
    assert reportcsv.guard(text) == text
    assert reportcsv.unguard(text) == text


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("red", "red"),
        (7, "7"),
        (-3, "-3"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        ({"a": [1, 2]}, '{"a":[1,2]}'),
        ("é", "é"),
    ],
)
def test_value_cell(value: object, cell: str) -> None:
    assert reportcsv.value_cell(value) == cell


@pytest.mark.parametrize(
    ("values", "cell"),
    [([], ""), (["a"], "a"), (["files/a/1.png", "files/a/2.png"], "files/a/1.png;files/a/2.png")],
)
def test_multi_value_cells_round_trip(values: list[str], cell: str) -> None:
    assert reportcsv.join_cell(values) == cell
    assert reportcsv.split_cell(cell) == values


def test_split_cell_drops_empty_parts() -> None:
    assert reportcsv.split_cell(None) == []
    assert reportcsv.split_cell(";a;;b;") == ["a", "b"]


def test_header_puts_inputs_then_vars_after_the_fixed_columns() -> None:
    cols = reportcsv.header(["prompt", "seed"], ["color"])
    assert cols[: len(reportcsv.COLUMNS)] == reportcsv.COLUMNS
    assert cols[len(reportcsv.COLUMNS) :] == ["input.prompt", "input.seed", "var.color"]
    assert cols[0] == "job_id"


def test_reading_gives_back_what_writing_wrote(tmp_path: Path) -> None:
    cols = reportcsv.header(["prompt", "seed"], ["color"])
    blank = dict.fromkeys(cols, "")
    first = blank | {
        "job_id": "j1",
        "model_id": "acme/painter",
        "status": "failed",
        "error": reportcsv.guard('-boom, "quoted"\nsecond line'),
        "output_files": reportcsv.join_cell(["files/j1/a.png", "files/j1/b.png"]),
        "input.prompt": reportcsv.value_cell(HOSTILE[0]),
        "input.seed": reportcsv.value_cell(1),
        "var.color": reportcsv.value_cell("@red"),
    }
    second = blank | {"job_id": "j2", "status": "succeeded", "input.seed": "2"}
    path = reportcsv.write(
        tmp_path / "report.csv", cols, ([first[c] for c in cols], [second[c] for c in cols])
    )
    assert not (tmp_path / "report.csv.part").exists()

    header, rows = reportcsv.read(path)
    assert header == cols
    assert rows == [first, second]
    assert reportcsv.read_rows(path) == rows
    got = rows[0]
    assert reportcsv.unguard(got["error"]) == '-boom, "quoted"\nsecond line'
    assert reportcsv.split_cell(got["output_files"]) == ["files/j1/a.png", "files/j1/b.png"]
    assert reportcsv.prefixed(got, reportcsv.INPUT_PREFIX) == {"prompt": HOSTILE[0], "seed": "1"}
    assert reportcsv.prefixed(got, reportcsv.VAR_PREFIX) == {"color": "@red"}
    # An empty cell: the job has no such field.
    assert reportcsv.prefixed(rows[1], reportcsv.VAR_PREFIX) == {}
    assert list(reportcsv.read_jobs(path)) == ["j1", "j2"]


def test_no_written_cell_starts_a_formula(tmp_path: Path) -> None:
    cols = reportcsv.header([f"f{i}" for i in range(len(HOSTILE))], [])
    line = [""] * len(reportcsv.COLUMNS) + [reportcsv.value_cell(v) for v in HOSTILE]
    line[0] = "j"
    text = reportcsv.render(cols, [line])
    _, rows = reportcsv.read(reportcsv.write(tmp_path / "r.csv", cols, [line]))
    assert text.splitlines()[0].startswith("job_id,model_id,status")
    cells = [v for v in rows[0].values() if v]
    assert all(cell[0] not in reportcsv.FORMULA_START for cell in cells)
    assert [reportcsv.unguard(rows[0][f"input.f{i}"]) for i in range(len(HOSTILE))] == HOSTILE


def test_a_short_row_reads_as_empty_cells(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("job_id,status,error\nj1,failed\n", encoding="utf-8")
    assert reportcsv.read_rows(tmp_path / "r.csv") == [
        {"job_id": "j1", "status": "failed", "error": ""}
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty file, not a batchrun report.csv"),
        ("status\nsucceeded\n", "not a batchrun report: no job_id column in the header"),
        ("job_id,status\n,succeeded\n", "row 2: empty job_id"),
        ("job_id,status\nx,succeeded\nx,failed\n", "row 3: job_id x appears twice"),
    ],
)
def test_read_jobs_refuses_what_is_not_a_report(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "report.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CompareError) as info:
        reportcsv.read_jobs(path)
    assert str(info.value) == f"{path}: {problem}"


_CELL = st.text(alphabet=st.sampled_from(list('ab,"\r\n \t;=\x00é')), max_size=6)


@given(
    st.lists(st.lists(_CELL, min_size=1, max_size=4), max_size=6),
    st.sampled_from(["\r\n", "\n", "\r"]),
)
@settings(max_examples=300, deadline=None)
def test_read_parses_as_csv_reader_does(rows: list[list[str]], ending: str) -> None:
    """read() splits quote-free lines itself: every file reads as csv.reader reads it (or
    fails as it does), whatever the cells hold and however lines end."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator=ending).writerows(rows)
    text = buffer.getvalue() + 'x,"y"\n\n,\n \n'  # unquoted, quoted, blank lines after
    try:
        expected: list[list[str]] | type[Exception] = list(
            csv.reader(io.StringIO(text, newline=""))
        )
    except csv.Error:
        expected = csv.Error
    try:
        got: list[list[str]] | type[Exception] = list(
            reportcsv._records(iter(io.StringIO(text, newline="")))
        )
    except csv.Error:
        got = csv.Error
    assert got == expected


@given(st.lists(st.lists(_CELL, min_size=1, max_size=4), max_size=8))
@settings(max_examples=300, deadline=None)
def test_the_writer_writes_what_csv_writer_writes(rows: list[list[str]]) -> None:
    """writer() joins plain rows itself: the file holds what csv.writer would write."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([["h1", "h2"], *rows])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.csv"
        with reportcsv.writer(path, ["h1", "h2"]) as write_rows:
            write_rows(rows[:3])
            write_rows(rows[3:])
        assert path.read_bytes() == buffer.getvalue().encode("utf-8")


def _read_with_csv_reader(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """read() as it was, all of it through csv.reader."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        columns = next(reader, [])
        width = len(columns)
        rows = []
        for cells in reader:
            if len(cells) != width:
                if not cells:
                    continue
                cells = (cells + [""] * width)[:width]
            rows.append(dict(zip(columns, cells, strict=True)))
        return columns, rows


@given(
    st.lists(st.lists(_CELL, min_size=0, max_size=4), max_size=6),
    st.sampled_from(["\r\n", "\n", "\r"]),
    st.sampled_from(["", "\r\n", "\n"]),
)
@settings(max_examples=300, deadline=None)
def test_read_reads_any_file_as_csv_reader_does(
    rows: list[list[str]], ending: str, tail: str
) -> None:
    """Quote-free CRLF files are split directly, the rest go through csv.reader: the header
    and rows are the same either way (blank lines, short and long rows, any line ends)."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator=ending).writerows(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.csv"
        path.write_bytes((buffer.getvalue() + tail).encode("utf-8"))
        try:
            expected: object = _read_with_csv_reader(path)
        except csv.Error:
            expected = csv.Error
        try:
            got: object = reportcsv.read(path)
        except csv.Error:
            got = csv.Error
        assert got == expected


_NAME = st.sampled_from(["job_id", "status", "input.x", "var.x", "gone"])


@given(
    st.lists(_NAME, min_size=1, max_size=5).filter(lambda header: "job_id" in header),
    st.lists(st.lists(_CELL, min_size=0, max_size=6), max_size=6),
    st.lists(_NAME, max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_read_cells_holds_what_the_rows_hold(
    header: list[str], rows: list[list[str]], names: list[str]
) -> None:
    """read_cells gives each job its id, then the cells of `names` in that order: what the
    job's row (read_jobs) holds in those columns, empty where the header has none; and it
    refuses the files read_jobs refuses, with the same words."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([header, *rows])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "report.csv"
        path.write_bytes(buffer.getvalue().encode("utf-8"))
        try:
            jobs: object = {
                job_id: (job_id, *(row.get(name, "") for name in names))
                for job_id, row in reportcsv.read_jobs(path).items()
            }
        except CompareError as exc:
            jobs = str(exc)
        try:
            columns, cells = reportcsv.read_cells(path, lambda seen: names)
            got: object = {job_id: tuple(job) for job_id, job in cells.items()}
            assert columns == header
        except CompareError as exc:
            got = str(exc)
        assert got == jobs

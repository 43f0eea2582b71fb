"""report.csv and summary.json: columns, order, cell formats, formula guard, summary figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from batchrun.results.report import summarise, write_report
from batchrun.results.reportcsv import COLUMNS as REPORT_COLUMNS, read_rows as read_report
from batchrun.store import state
from batchrun.store.records import JobRow, OutputFile
from testing.ledgers import attempts_for

T0 = 1795935716.0  # 2026-11-29T07:01:56Z


def job(n: int, **kw: object) -> JobRow:
    fields: dict = {
        "job_id": f"{n:08x}",
        "position": n,
        "model_id": "acme/model",
        "inputs": {"prompt": f"p{n}"},
    }
    fields.update(kw)
    return JobRow(**fields)


def done(n: int, queue: float, run: float, **kw: object) -> JobRow:
    return job(
        n,
        status=state.SUCCEEDED,
        request_id=f"req-{n}",
        attempts=1,
        submitted_at=T0 + n,
        started_at=T0 + n + queue,
        finished_at=T0 + n + queue + run,
        cost_usd=0.04,
        **kw,
    )


def test_columns_order_and_cells(tmp_path: Path) -> None:
    files = [
        OutputFile(url="https://a.runcomfy.net/1.png", name="files/x/1.png", sha256="aa", size=1),
        OutputFile(url="https://evil.example.com/2.png", error="refused: host evil.example.com"),
        OutputFile(url="https://a.runcomfy.net/3.png", name="files/x/3.png", sha256="cc", size=1),
    ]
    rows = [
        job(2, inputs={"prompt": "late", "seed": 7}, vars={"color": "blue"}),
        done(0, 1.5, 2.25, inputs={"prompt": "a", "image_size": {"w": 1, "h": 2}}, files=files),
        job(1, status=state.QUEUED, request_id="req-1", inputs={"seed": 3, "flag": True}),
        job(3, in_manifest=False),
    ]
    write_report(tmp_path, rows, attempts_for(rows))
    with open(tmp_path / "report.csv", encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == REPORT_COLUMNS + [
        "input.prompt",
        "input.image_size",
        "input.seed",
        "input.flag",
        "var.color",
    ]
    report = read_report(tmp_path / "report.csv")
    assert [r["job_id"] for r in report] == ["00000000", "00000001", "00000002"]
    first, second, third = report
    assert first == {
        "job_id": "00000000",
        "model_id": "acme/model",
        "status": "succeeded",
        "request_id": "req-0",
        "error": "output 2: refused: host evil.example.com",
        "attempts": "1",
        "submitted_at": "2026-11-29T07:01:56Z",
        "finished_at": "2026-11-29T07:01:59Z",  # 3.75 s later, truncated
        "queue_s": "1.500",
        "run_s": "2.250",
        "cost_usd": "0.04",
        "output_files": "files/x/1.png;files/x/3.png",
        "output_urls": "https://a.runcomfy.net/1.png;https://evil.example.com/2.png"
        ";https://a.runcomfy.net/3.png",
        "output_sha256": "aa;cc",
        "cached": "false",  # not from the cross-run cache
        "saved_usd": "",
        "input.prompt": "a",
        "input.image_size": '{"w":1,"h":2}',
        "input.seed": "",
        "input.flag": "",
        "var.color": "",
    }
    assert (second["status"], second["input.seed"], second["input.flag"]) == (
        "queued",
        "3",
        "true",
    )
    assert (second["submitted_at"], second["queue_s"], second["cost_usd"]) == ("", "", "")
    assert (third["status"], third["var.color"], third["input.seed"]) == ("pending", "blue", "7")


@pytest.mark.parametrize(
    ("internal", "reported"),
    [
        (state.PENDING, "pending"),
        (state.SUBMITTING, "unknown"),
        (state.UNKNOWN, "unknown"),
        (state.QUEUED, "queued"),
        (state.RUNNING, "running"),
        (state.SUCCEEDED, "succeeded"),
        (state.FAILED, "failed"),
        (state.TIMED_OUT, "timed_out"),
        (state.CANCELLED, "cancelled"),
    ],
)
def test_status_column(tmp_path: Path, internal: str, reported: str) -> None:
    write_report(tmp_path, [job(0, status=internal)], attempts_for([job(0, status=internal)]))
    assert read_report(tmp_path / "report.csv")[0]["status"] == reported


def test_awkward_cells_round_trip(tmp_path: Path) -> None:
    prompt = 'a "quoted", comma\nnew line; semicolon — ünïcode'
    rows = [job(0, status=state.FAILED, inputs={"prompt": prompt}, error='bad "x",\nline 2')]
    write_report(tmp_path, rows, attempts_for(rows))
    [row] = read_report(tmp_path / "report.csv")
    assert row["input.prompt"] == prompt
    assert row["error"] == 'bad "x",\nline 2'


@pytest.mark.parametrize("text", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_formula_injection_is_defused(tmp_path: Path, text: str) -> None:
    rows = [
        job(
            0,
            status=state.FAILED,
            model_id=text,
            inputs={"prompt": text, "seed": -1},
            vars={"v": text},
            error=text,
        )
    ]
    write_report(tmp_path, rows, attempts_for(rows))
    [row] = read_report(tmp_path / "report.csv")
    for column in ("model_id", "input.prompt", "var.v", "error"):
        assert row[column] == "'" + text
    assert row["input.seed"] == "-1"  # a number stays a number


def test_urls_from_output_when_nothing_downloaded(tmp_path: Path) -> None:
    output = {"images": ["https://a.runcomfy.net/1.png", "https://a.runcomfy.net/x;y.png"]}
    write_report(
        tmp_path, [done(0, 1, 1, output=output)], attempts_for([done(0, 1, 1, output=output)])
    )
    [row] = read_report(tmp_path / "report.csv")
    assert row["output_urls"] == "https://a.runcomfy.net/1.png;https://a.runcomfy.net/x%3By.png"
    assert row["output_files"] == ""


def test_summary_figures(tmp_path: Path) -> None:
    queues = [float(q) for q in range(1, 21)]  # 1..20 s
    rows = [done(i, q, 10.0 + i) for i, q in enumerate(queues)]
    rows[0].files = [
        OutputFile(url="u1", name="files/a/1.png", sha256="s", size=1),
        OutputFile(url="u2", error="refused: scheme 'file' not allowed"),
        OutputFile(url="u3", error="expired (HTTP 404)"),
    ]
    rows[1].attempts = 3
    rows.append(job(20, status=state.FAILED, attempts=2, error="boom"))
    rows.append(job(21, status=state.QUEUED, submitted_at=T0 + 100))
    rows.append(job(22, status=state.FAILED, in_manifest=False, attempts=9, cost_usd=5.0))
    write_report(tmp_path, rows, attempts_for(rows), facts={"api_calls": {"submit": 22}})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == summarise(rows, attempts_for(rows)) | {"api_calls": {"submit": 22}}
    assert summary["jobs"] == 22
    assert summary["statuses"] == {
        "succeeded": 20,
        "failed": 1,
        "timed_out": 0,
        "cancelled": 0,
        "unknown": 0,
        "queued": 1,
        "running": 0,
        "pending": 0,
    }
    # Last finish: job 19 submitted at T0+19, queued 20 s, ran 29 s -> T0+68.
    assert summary["durations"]["makespan_s"] == 68.0
    assert summary["durations"]["queue_s"] == {"mean": 10.5, "median": 10.5, "p95": 19.0}
    assert summary["durations"]["run_s"] == {"mean": 19.5, "median": 19.5, "p95": 28.0}
    assert summary["cost_usd"] == 0.8
    assert summary["attempts"] == 20 - 1 + 3 + 2
    assert summary["files"] == {"downloaded": 1, "refused": 1, "failed": 1}


def test_summary_of_nothing(tmp_path: Path) -> None:
    write_report(tmp_path, [], attempts_for([]))
    assert read_report(tmp_path / "report.csv") == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["jobs"] == 0 and summary["durations"]["makespan_s"] is None
    assert summary["durations"]["queue_s"] == {"mean": None, "median": None, "p95": None}


def test_rewrite_is_atomic_and_leaves_no_part(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_report(run_dir, [job(0)], attempts_for([job(0)]))
    write_report(run_dir, [job(0), job(1)], attempts_for([job(0), job(1)]))
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "report.csv",
        "report.html",
        "summary.json",
    ]
    assert len(read_report(run_dir / "report.csv")) == 2

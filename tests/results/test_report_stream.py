"""The reports made in one pass over a cursor on state.db (and from rows in memory) say exactly
what the former way said, which read every row into a list and made each file from it
(kept here): report.csv, summary.json, and report.html of a sweep that fits one page."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, strategies

from batchrun.plan.grid import Job
from batchrun.results import html_pages, report, report_lines, reportcsv
from batchrun.results.html_pages import more_pages
from batchrun.results.html_report import (
    SAMPLE as MAX_CARDS,
    Layout,
    Live,
    _axes,
    _has,
    _sections,
    _swept_in,
    dimension_value,
    dimension_values,
    esc,
    field_keys,
    href,
    job_card,
    layout,
    media,
    page,
    show,
)
from batchrun.results.report import (
    ReportJobs,
    _reported,
    files_mark,
    job_costs,
    write_from_state,
    write_report,
)
from batchrun.results.report_lines import (
    NO_OUTPUT,
    cost_text as _cost,
    timestamp as _timestamp,
)
from batchrun.results.reportcsv import guard, join_cell, value_cell
from batchrun.store import ledger, state as st
from batchrun.store.ledger import Attempt
from batchrun.store.output_urls import collect_urls
from batchrun.store.records import REPORT_STATUSES, SUCCEEDED, JobRow, OutputFile, report_status
from batchrun.store.state import StateStore
from batchrun.util.safetext import printable
from testing.cli import invoke


def _seconds(value: float | None) -> str:
    """A duration as report.csv writes it (to the millisecond); '' for none."""
    return "" if value is None else f"{value:.3f}"


MODELS = ("acme/painter", "acme/mover")

# ---- the former way (results/report.py and results/html_report.py before streaming) ----


def without_output(row: JobRow) -> bool:
    return row.status == SUCCEEDED and not row.files and not collect_urls(row.output)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p95": None}
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest-rank
    return {
        "mean": round(statistics.fmean(ordered), 3),
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
    }


def _fields(rows: list[JobRow]) -> tuple[list[str], list[str]]:
    inputs: dict[str, None] = {}
    var_names: dict[str, None] = {}
    for row in rows:
        inputs.update(dict.fromkeys(row.inputs))
        var_names.update(dict.fromkeys(row.vars))
    return list(inputs), list(var_names)


def _error_cell(row: JobRow) -> str:
    parts = [row.error] if row.error else []
    if without_output(row):
        parts.insert(0, NO_OUTPUT)
    parts += [f"output {i}: {f.error}" for i, f in enumerate(row.files, start=1) if f.error]
    return guard(printable("; ".join(parts), lines=True))


def _urls(row: JobRow) -> list[str]:
    urls = [f.url for f in row.files] if row.files else collect_urls(row.output)
    # SEPARATOR joins a cell's values; keep it out of the URLs themselves.
    return [printable(u).replace(reportcsv.SEPARATOR, "%3B") for u in urls]


def _line(
    row: JobRow,
    inputs: list[str],
    var_names: list[str],
    cost: Decimal | None,
    mirrored: list[str] | None = None,
) -> list[str]:
    """The row's cells in columns() order (empty where the job has no such field); `cost`
    is what the job's attempts cost, from the ledger; `mirrored`, in a run with a mirror,
    the s3:// URLs of its files there."""
    files = row.files
    done = [f for f in files if f.name and not f.error] if files else []
    queue_s, run_s = row.queue_s, row.run_s
    cells = [
        row.job_id,
        guard(row.model_id),
        report_status(row.status),
        guard(printable(row.request_id or "")),
        _error_cell(row) if row.error or files or row.status == SUCCEEDED else "",
        str(row.attempts),
        _timestamp(row.submitted_at),
        _timestamp(row.finished_at),
        _seconds(queue_s),
        _seconds(run_s),
        _cost(None if cost is None else float(cost)),
        guard(join_cell(printable(f.name) for f in done)),
        guard(join_cell(_urls(row))),
        join_cell(f.sha256 for f in done),
        "true" if row.cached else "false",
        _cost(row.saved_usd),
    ]
    if mirrored is not None:
        cells.append(guard(join_cell(u.replace(reportcsv.SEPARATOR, "%3B") for u in mirrored)))
    given, var_values = row.inputs, row.vars
    cells += [value_cell(given[k]) if k in given else "" for k in inputs]
    cells += [value_cell(var_values[k]) if k in var_values else "" for k in var_names]
    return cells


def summarise(rows: Iterable[JobRow], attempts: Iterable[Attempt] = ()) -> dict[str, Any]:
    """Totals of the reported jobs: per status, durations, attempts, files; money from the
    ledger's `attempts` (store/ledger.py)."""
    jobs = _reported(rows)
    attempts = list(attempts)
    totals = dict.fromkeys(REPORT_STATUSES, 0)
    for row in jobs:
        totals[report_status(row.status)] += 1
    submits = [r.submitted_at for r in jobs if r.submitted_at is not None]
    finishes = [r.finished_at for r in jobs if r.finished_at is not None]
    makespan = max(finishes) - min(submits) if submits and finishes else None
    files = [f for r in jobs for f in r.files]
    costs = job_costs(jobs, attempts)
    reported = {r.job_id for r in jobs}
    cached = [r for r in jobs if r.cached]
    return {
        "jobs": len(jobs),
        "statuses": totals,
        "succeeded_without_output": sum(1 for r in jobs if without_output(r)),
        "durations": {
            "makespan_s": None if makespan is None else round(max(0.0, makespan), 3),
            "queue_s": _stats([q for q in (r.queue_s for r in jobs) if q is not None]),
            "run_s": _stats([t for t in (r.run_s for r in jobs) if t is not None]),
        },
        # what the reported jobs' results said they cost: the sum of report.csv's cost_usd
        "cost_usd": float(round(sum((costs[j] for j in reported if j in costs), Decimal(0)), 6)),
        **ledger.summary(attempts, reported),
        "cached": len(cached),
        "saved_usd": round(sum(r.saved_usd or 0.0 for r in cached), 6),
        "attempts": sum(r.attempts for r in jobs),
        "files": {
            "downloaded": sum(1 for f in files if f.name and not f.error),
            "refused": sum(1 for f in files if f.error.startswith("refused")),
            "failed": sum(1 for f in files if f.error and not f.error.startswith("refused")),
        },
    }


def former_render(
    title: str,
    jobs: list[JobRow],
    *,
    rows_key: str | None = None,
    cols_key: str | None = None,
    live: Live | None = None,
) -> str:
    """The contact sheet as an HTML string (links relative to the run folder); while the run
    goes (`live`), with its line atop and reloading itself."""
    body = _sheet(title, jobs, rows_key, cols_key)
    if live is None:
        return page(title, body)
    banner = f'<p class="live"><strong>live</strong> {esc(live.text)}</p>\n'
    return page(title, banner + body, refresh_s=live.refresh_s)


def _sheet(title: str, jobs: list[JobRow], rows_key: str | None, cols_key: str | None) -> str:
    rk, ck, extra = layout(jobs, rows_key, cols_key)
    shown = jobs[:MAX_CARDS]

    def href(name: str) -> str:
        return quote(name.replace(os.sep, "/"))

    counts: dict[str, int] = {}
    for job in jobs:
        status = report_status(job.status)
        counts[status] = counts.get(status, 0) + 1
    out = [
        f"<h1>{esc(title)}</h1>",
        '<p class="counts">'
        + "".join(
            f'<span><span class="badge s-{esc(s)}">{esc(s)}</span> {n}</span>'
            for s, n in counts.items()
        )
        + f"<span>{len(jobs)} jobs</span></p>",
    ]
    if len(shown) < len(jobs):
        out.append(
            f'<p class="cap">showing {len(shown):,} of {len(jobs):,} jobs; see report.csv</p>'
        )
    models = list(dict.fromkeys(job.model_id for job in shown))
    if len(models) > 1 and "model" not in (rk, ck):
        # Models not side by side: a section per model, each laid out by its own fields (a
        # field of one model is no axis for another). `--cols model` puts them side by side.
        out.append("<p>a section per model (<b>--cols model</b> puts them side by side)</p>")
        for model in models:
            members = [job for job in shown if job.model_id == model]
            mrk, mck, mextra = layout(
                members, _swept_in(rows_key, members), _swept_in(cols_key, members)
            )
            out.append(f"<h2>{esc(model)}</h2>")
            out.append(_axes(mrk, mck, mextra))
            out += _sections(members, mrk, mck, mextra, href, heading="h3")
        return "\n".join(out)
    if len(models) > 1:
        # Models side by side: a field some model lacks would split them into sections of
        # their own; it stays inside the cells instead.
        extra = [k for k in extra if all(_has(shown, model, k) for model in models)]
    out.append(_axes(rk, ck, extra))
    out += _sections(shown, rk, ck, extra, href, heading="h2")
    return "\n".join(out)


def former_files(run_dir: Path, mirror_urls: dict[str, list[str]] | None = None) -> dict[str, str]:
    """report.csv, summary.json and report.html as the former way made them."""
    with StateStore.open(run_dir, create=False, lock=False) as store:
        rows, attempts = store.rows(), store.attempts()
    jobs = _reported(rows)
    costs = job_costs(jobs, attempts)
    inputs, var_names = _fields(jobs)
    lines = [
        _line(row, inputs, var_names, costs.get(row.job_id),
              None if mirror_urls is None else mirror_urls.get(row.job_id, []))
        for row in jobs
    ]  # fmt: skip
    header = reportcsv.header(inputs, var_names, mirror=mirror_urls is not None)
    summary = summarise(jobs, attempts) | {"name": "mixed"}
    return {
        "report.csv": reportcsv.render(header, lines),
        "summary.json": json.dumps(summary, indent=2) + "\n",
        "report.html": former_render(f"batchrun: {run_dir.name}", jobs),
    }


# ---- the folder and the tests ----


def _mixed_folder(run_dir: Path) -> None:
    """Jobs of two models with fields of their own, in every state; files downloaded,
    refused and failed; cached jobs; awkward text; jobs no longer in the manifest."""
    jobs = []
    for i in range(60):
        model = MODELS[i % 2]
        inputs: dict[str, object] = {"prompt": f"=take {i}\x1b[31m", "seed": i // 4}
        if model == MODELS[1]:
            inputs = {"duration": [5, 10][i % 3 == 0], **inputs, "loop": i % 5 == 0}
        variables = {"color": ["red", "blue", "green"][i % 3]} if i % 7 else {}
        jobs.append(Job(f"{i:012x}", model, inputs, variables, 0, 60 - i))
    with StateStore.open(run_dir) as s:
        s.add_jobs(jobs)
        for i, job in enumerate(jobs):
            jid, kind = job.job_id, i % 12
            if kind == 0:
                continue  # pending
            if kind == 11:
                s.record_cached(
                    jid, finished_at=2000.0 + i, output={"images": [f"http://h/{i}.png"]},
                    saved_usd=0.03,
                    files=[OutputFile(f"http://h/{i}.png", f"files/{jid}/c.png", "cd", 4)],
                )  # fmt: skip
                continue
            s.mark_submitting(jid, Decimal("0.04"))
            if kind == 1:
                continue
            if kind == 2:
                s.mark_unknown(jid, "read timeout")
                continue
            s.record_request_id(jid, f"req-{i};x" + "\x1b" * (i % 5 == 0), 1000.0 + i)
            if kind == 3:
                s.record_status(jid, st.QUEUED)
            elif kind == 4:
                s.record_status(jid, st.RUNNING, started_at=1001.5 + i)
            elif kind == 5:
                s.record_result(jid, st.FAILED, finished_at=1010.0 + i, error="-boom\nline 2")
            elif kind == 6:
                s.record_result(jid, st.SUCCEEDED, finished_at=1010.0 + i, output={"x": 1})
            elif kind in (7, 8):
                s.record_status(jid, st.RUNNING, started_at=1002.0 + i)
                s.record_result(
                    jid, st.SUCCEEDED, finished_at=1010.25 + i * 1.7,
                    output=[f"http://h/a{i}.png", f"http://h/b{i}.mp4"], cost_usd=0.04,
                )  # fmt: skip
                files = [
                    OutputFile(f"http://h/a{i}.png", f"files/{jid}/a;1.png", "ab", 3),
                    OutputFile(f"http://h/b{i}.mp4", "", "", 0, "refused: too large"),
                ]
                if kind == 8:
                    files.append(OutputFile("http://h/c.txt", "", "", 0, "HTTP 500"))
                s.record_files(jid, files)
            elif kind == 9:
                url = f"http://h/z;{i}" + "\x9b" * (i % 24 == 9)  # escaped, its ; too
                s.record_result(jid, st.SUCCEEDED, finished_at=1010.0 + i, output=url)
            else:
                s.record_result(jid, st.CANCELLED, finished_at=1010.0 + i, error="cancelled")
                s.close_attempt(jid, answer="cancelled")
            if kind in (5, 7, 8, 9):
                s.close_attempt(jid, actual=Decimal(f"0.0{kind - 4}1"))
        s.add_jobs(jobs[:50])  # ten jobs leave the manifest: their money shows apart


def _files(run_dir: Path) -> dict[str, str]:
    names = ("report.csv", "summary.json", "report.html")
    return {n: (run_dir / n).read_bytes().decode() for n in names}


def test_one_pass_over_a_cursor_says_what_the_list_said(tmp_path: Path) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    former = former_files(run_dir)
    write_from_state(run_dir, {"name": "mixed"}, None, None)
    assert _files(run_dir) == former
    # from rows in memory (shared sweeps, merge), the same
    with StateStore.open(run_dir, create=False, lock=False) as store:
        rows, attempts = store.rows(), store.attempts()
    write_report(run_dir, rows, attempts, facts={"name": "mixed"})
    assert _files(run_dir) == former
    # The folder is mixed: the files show every kind of cell.
    csv = former["report.csv"]
    assert "input.duration" in csv and "var.color" in csv and "succeeded without output" in csv
    assert "refused: too large" in csv and "HTTP 500" in csv and "'=take" in csv
    assert '"not_in_manifest": {\n    "jobs": 10' in former["summary.json"]


@given(strategies.lists(strategies.floats(min_value=0, max_value=1e6), min_size=1, max_size=40))
def test_durations_are_summed_up_as_statistics_does(values: list[float]) -> None:
    assert report._stats(values) == _stats(values)


def test_a_job_alone_has_the_line_the_former_way_made(tmp_path: Path) -> None:
    """A chunk's request ids and URLs are searched at once for what to escape: a job alone (a
    chunk with some, or none) has the line the former way made."""
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    with StateStore.open(run_dir, create=False, lock=False) as store:
        jobs, attempts = _reported(store.rows()), store.attempts()
    costs, (inputs, var_names) = job_costs(jobs, attempts), _fields(jobs)
    for row in jobs:
        cells, _, _ = report_lines.lines([row], [costs.get(row.job_id)], inputs, var_names)
        assert list(cells[0]) == _line(row, inputs, var_names, costs.get(row.job_id))


def test_the_mirror_column_too(tmp_path: Path) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    with StateStore.open(run_dir, create=False, lock=False) as store:
        ids = [r.job_id for r in store.rows()][::3]
        urls = {j: [f"s3://b/p/{j}/a;1.png"] for j in ids}
        write_report(
            run_dir, ReportJobs.read(store), store.attempts(), facts={"name": "mixed"},
            mirror_urls=urls,
        )  # fmt: skip
    assert _files(run_dir)["report.csv"] == former_files(run_dir, urls)["report.csv"]


def test_columns_by_sql_are_in_first_seen_order(tmp_path: Path) -> None:
    jobs = [
        Job("a", MODELS[0], {"z": 1, "a": 2}, {"v2": 1}, 0, 3),
        Job("b", MODELS[1], {"m": 1, "z": 1}, {"v1": 1, "v2": 2}, 0, 1),
        Job("c", MODELS[1], {"q": 1}, {"v0": 1}, 0, 2),
        Job("d", MODELS[1], {"gone": 1}, {"gone": 1}, 0, 0),
    ]
    with StateStore.open(tmp_path) as store:
        store.add_jobs(jobs)
        store.add_jobs(jobs[:3])  # d leaves the manifest
        fields = store.report_fields()
        assert fields == (["m", "z", "q", "a"], ["v1", "v2", "v0"])
        listed = ReportJobs.of(store.rows())
        assert fields == (listed.inputs, listed.var_names)


def test_the_files_mark_sees_any_file_written_replaced_or_removed(tmp_path: Path) -> None:
    names = ["report.csv", "summary.json", "report.html", "report-2.html", "report-3.html"]
    for name in names:
        (tmp_path / name).write_text(name)
    mark = files_mark(tmp_path)
    data, sheet = mark.split(":")
    assert data and sheet and files_mark(tmp_path) == mark
    (tmp_path / "report-3.html").unlink()  # a page gone: report.html's part alone changes
    assert files_mark(tmp_path).split(":") not in ([data, ""], [data, sheet])
    assert files_mark(tmp_path).split(":")[0] == data
    (tmp_path / "report-3.html").write_text("report-3.html")  # back, the same bytes: new file
    assert files_mark(tmp_path) != mark
    mark = files_mark(tmp_path)
    summary = tmp_path / "summary.json"
    with summary.open("r+") as f:  # edited in place, same size, a second later
        f.write("S")
    later = summary.stat().st_mtime_ns + 10**9
    os.utime(summary, ns=(later, later))
    assert files_mark(tmp_path).split(":")[1] == mark.split(":")[1]
    assert files_mark(tmp_path).split(":")[0] not in ("", mark.split(":")[0])
    (tmp_path / "report.csv").unlink()  # one of report.csv and summary.json gone: no mark
    assert files_mark(tmp_path).split(":")[0] == ""
    (tmp_path / "report.html").unlink()
    assert files_mark(tmp_path) == ":"


# ---- cards and grids the former way (html_report.py before cards were made from forms) ----


def former_card(job: JobRow, anchor: bool = True) -> str:
    model = esc(job.model_id)
    details, lines = [f"<dt>model</dt><dd>{model}</dd>"], [f"model: {model}"]
    for k, v in job.inputs.items():
        k, v = esc(k), esc(show(v))
        details.append(f"<dt>{k}</dt><dd>{v}</dd>")
        lines.append(f"{k}: {v}")
    for k, v in job.vars.items():
        name, v = esc(f"{{{k}}}"), esc(show(v))
        details.append(f"<dt>{name}</dt><dd>{v}</dd>")
        lines.append(f"{name}: {v}")
    error = f'<div class="err">{esc(job.error)}</div>' if job.error else ""
    job_id = esc(job.job_id)
    id_attr = f' id="{job_id}"' if anchor else ""
    status = esc(report_status(job.status))
    badge = f'<span class="badge s-{status}">{status}</span> '
    files = media(job.files, href) if job.files else ""
    return (
        f'<div class="job"{id_attr} title="{chr(10).join(lines)}">{badge}{files}{error}'
        f"<details><summary>{job_id}</summary><dl>{''.join(details)}</dl></details></div>"
    )


def former_sections(jobs: list[JobRow], rk: str | None, ck: str | None, extra: list[str]) -> str:
    """A grid per combination of the extra keys, each job's values read one at a time."""
    sections: dict[tuple[str, ...], list[JobRow]] = {}
    for job in jobs:
        sections.setdefault(tuple(dimension_value(job, k) for k in extra), []).append(job)
    out = []
    for values, members in sections.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(extra, values, strict=True) if v != "")
        if label:
            out.append(f"<h2>{esc(label)}</h2>")
        out.append(_former_grid(members, rk, ck))
    return "\n".join(out)


def _former_grid(jobs: list[JobRow], rk: str | None, ck: str | None) -> str:
    rows: dict[str, dict[str, list[JobRow]]] = {}
    col_vals: dict[str, None] = {}
    for job in jobs:
        c = dimension_value(job, ck) if ck else ""
        col_vals[c] = None
        rows.setdefault(dimension_value(job, rk) if rk else "", {}).setdefault(c, []).append(job)
    corner = " \\ ".join(k for k in (rk, ck) if k)
    head = "".join(f"<th>{esc(c or ('(not set)' if ck else ''))}</th>" for c in col_vals)
    body = []
    for r, cells in rows.items():
        tds, empty = [], 0
        for c in col_vals:
            members = cells.get(c)
            if members is None:
                empty += 1
                continue
            if empty:
                tds.append("<td></td>" if empty == 1 else f'<td colspan="{empty}"></td>')
                empty = 0
            tds.append("<td>" + "".join(former_card(j) for j in members) + "</td>")
        if empty:
            tds.append("<td></td>" if empty == 1 else f'<td colspan="{empty}"></td>')
        body.append(f"<tr><th>{esc(r or ('(not set)' if rk else ''))}</th>{''.join(tds)}</tr>")
    return (
        f'<table class="grid"><thead><tr><th>{esc(corner)}</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _awkward_jobs() -> list[JobRow]:
    """Jobs whose field names and values need escaping (braces and % too: a card is a
    format)."""
    values: list[object] = [
        "a<b>&c", "{0}", "}{", "%s %d%%", 7, -3, True, None, 1.5, [1, "x"], {"k": "{v}"},
    ]  # fmt: skip
    return [
        JobRow(
            f"aw{i}",
            i,
            "acme/{odd}<model>%s",
            {"in{put}": v, "p": f"'{i}'\x1b", "%(x)s": "%"},
            {"v}": values[-1 - i], "{w": i % 3},
            status=["succeeded", "submitting"][i % 2],
            error="" if i % 3 else "bad & <worse>",
        )  # fmt: skip
        for i, v in enumerate(values)
    ]


def test_cards_and_grids_say_what_the_former_way_said(tmp_path: Path) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    with StateStore.open(run_dir, create=False, lock=False) as store:
        jobs = _reported(store.rows()) + _awkward_jobs()
    for job in jobs:
        assert job_card(job, href) == former_card(job)
        assert job_card(job, href, anchor=False) == former_card(job, anchor=False)
    keys = field_keys(jobs)
    for key in keys:
        assert dimension_values(jobs, key) == [dimension_value(job, key) for job in jobs]
    for rk, ck, extra in [
        ("input.seed", "var.color", []), ("model", None, ["input.duration"]),
        (None, "input.in{put}", ["var.v}", "var.{w"]), (None, None, []),
    ]:  # fmt: skip
        made = _sections(jobs, rk, ck, extra, href, heading="h2")
        assert "\n".join(made) == former_sections(jobs, rk, ck, extra)


def _edit_ledger(run_dir: Path) -> None:
    """Amounts edited by hand (exact text kept, damaged, negative, a blob) and jobs with more
    than one attempt whose cost is known."""
    conn = sqlite3.connect(run_dir / "state.db")
    with conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM attempts WHERE answer = 'accepted'")]
        edits: list[object] = [
            "0.0300", "abc", "-1", b"0.02", " 0.05", "1E+2", "0.1234567", "NaN", None,
        ]  # fmt: skip
        for seq, text in zip(seqs[::3], edits, strict=False):
            conn.execute("UPDATE attempts SET actual_usd = ? WHERE seq = ?", (text, seq))
        conn.execute(  # a second accepted attempt of the jobs that have a known cost
            "INSERT INTO attempts (job_id, attempt, model_id, origin, sent_at, answer, "
            "request_id, estimate_usd, actual_usd, saved_usd, finished_at) SELECT job_id, "
            "attempt + 1, model_id, origin, sent_at, 'accepted', 'again', estimate_usd, "
            "'0.005', NULL, finished_at FROM attempts WHERE actual_usd IS NOT NULL"
        )
        conn.execute(  # an answer edited into something no answer is: may have been billed
            "UPDATE attempts SET answer = 'odd', actual_usd = '0.07' WHERE seq = ?", (seqs[1],)
        )
    conn.close()


def test_edited_ledger_amounts_cost_what_the_ledger_says(tmp_path: Path) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    _edit_ledger(run_dir)
    former = former_files(run_dir)
    write_from_state(run_dir, {"name": "mixed"}, None, None)
    assert _files(run_dir) == former
    with StateStore.open(run_dir, create=False, lock=False) as store:
        rows, attempts = store.rows(), store.attempts()
    costs = job_costs(_reported(rows), attempts)
    assert {c for c in costs.values()} >= {Decimal("0.0350"), Decimal("100.005")}  # summed


def test_the_pages_of_a_large_sweep_say_what_the_former_way_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(html_pages, "PAGE_CARDS", 7)
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    _edit_ledger(run_dir)
    former = former_files(run_dir)
    write_from_state(run_dir, {"name": "mixed"}, "seed", "color")
    made = _files(run_dir)
    assert made["report.csv"] == former["report.csv"]
    assert made["summary.json"] == former["summary.json"]
    with StateStore.open(run_dir, create=False, lock=False) as store:
        jobs = _reported(store.rows())
    chosen = Layout.choose(jobs[:MAX_CARDS], field_keys(jobs), "seed", "color")
    assert chosen.by_model is not None  # two models, not side by side: a section per model
    pages = [run_dir / "report.html", *(run_dir / n for n in more_pages(run_dir))]
    assert len(pages) == math.ceil(len(jobs) / 7) == 8
    for number, path in enumerate(pages):
        text = path.read_text()
        for model in dict.fromkeys(j.model_id for j in jobs[number * 7 : number * 7 + 7]):
            members = [j for j in jobs[number * 7 : number * 7 + 7] if j.model_id == model]
            rk, ck, extra = chosen.model_axes(model, members)
            grid = former_sections(members, rk, ck, extra).replace("<h2>", "<h3>")
            assert grid.replace("</h2>", "</h3>") in text


@pytest.mark.parametrize(
    "header",
    [
        "input.duration,input.prompt,input.seed,input.loop,var.color",  # the jobs' own
        "input.prompt,input.seed,input.duration,input.loop,var.color",  # not first-seen order
        "input.seed,input.prompt,input.duration,var.color",  # one field short
        "input.seed,input.prompt,input.duration,input.loop,input.gone,var.color",  # one more
        "input.seed,input.prompt,input.duration,input.loop",  # no var
        "",  # no field
    ],
)
def test_columns_kept_from_the_report_replaced_are_checked_on_every_job(
    tmp_path: Path, header: str
) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    former = former_files(run_dir)
    fixed = ",".join(reportcsv.COLUMNS)
    (run_dir / "report.csv").write_text(f"{fixed},{header}\r\nx\r\n" if header else f"{fixed}\r\n")
    write_from_state(run_dir, {"name": "mixed"}, None, None)
    assert _files(run_dir) == former
    # the columns right: kept, and the files the same
    assert reportcsv.fields(run_dir / "report.csv") == (
        ["duration", "prompt", "seed", "loop"], ["color"]
    )  # fmt: skip
    write_from_state(run_dir, {"name": "mixed"}, None, None)
    assert _files(run_dir) == former


def test_a_grid_of_a_field_the_report_replaced_lacked_is_laid_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The grid is laid out from the first jobs (here 5), before a later one shows the field.
    monkeypatch.setattr(html_pages, "SAMPLE", 5)
    monkeypatch.setattr(report, "_CHUNK", 5)
    jobs = [
        Job(f"j{i}", MODELS[0], {"seed": i % 3, **({"extra": i % 2} if i >= 5 else {})}, {}, 0, i)
        for i in range(12)
    ]
    run_dir = tmp_path / "run"
    with StateStore.open(run_dir) as store:
        store.add_jobs(jobs)
    fixed = ",".join(reportcsv.COLUMNS)
    (run_dir / "report.csv").write_text(f"{fixed},input.seed\r\n")
    write_from_state(run_dir, {}, "extra", "seed")
    made = _files(run_dir)
    assert "rows: <b>input.extra</b>, columns: <b>input.seed</b>" in made["report.html"]
    assert made["report.csv"].startswith(f"{fixed},input.seed,input.extra\r\n")


def test_attempts_of_jobs_gone_from_state_db_are_counted_apart(tmp_path: Path) -> None:
    run_dir = tmp_path / "mixed"
    _mixed_folder(run_dir)
    conn = sqlite3.connect(run_dir / "state.db")
    with conn:  # jobs removed by hand: their attempts stay in the ledger
        conn.execute(
            "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM attempts WHERE "
            "actual_usd IS NOT NULL AND job_id IN (SELECT job_id FROM jobs WHERE in_manifest = 1) "
            "LIMIT 2)"
        )
    conn.close()
    former = former_files(run_dir)
    write_from_state(run_dir, {"name": "mixed"}, None, None)
    assert _files(run_dir) == former
    summary = json.loads(former["summary.json"])
    assert summary["not_in_manifest"]["jobs"] == 12  # ten left the manifest, two left state.db


# ---- report.html's later pages drawn by a second process ----


def _folder_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.suffix != ".db"}


def _helped_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 7 jobs laid out from the first 5, a helper from 2 pages on: the mixed
    folder's 50 jobs are made by two processes, page 1 by the report's, pages 2 to 8 by the
    first of the two to come to each."""
    monkeypatch.setattr(html_pages, "PAGE_CARDS", 7)
    monkeypatch.setattr(html_pages, "SAMPLE", 5)
    monkeypatch.setattr(html_pages, "HELPED_PAGES", 2)


def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process taken to run one thread (Helper.gains), as `batchrun report` does: a
    server an earlier test left running for the whole session (S3's) is a thread of it, and
    the helper touches nothing of it."""
    monkeypatch.setattr(threading, "active_count", lambda: 1)


def _mixed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The mixed folder twice, in pages of 7 jobs (_helped_small): `alone` with its report
    made by one process (write_from_state asks no helper), `helped` with none yet."""
    _helped_small(monkeypatch)
    alone, helped = tmp_path / "alone" / "mixed", tmp_path / "helped" / "mixed"
    for run_dir in (alone, helped):
        _mixed_folder(run_dir)
    write_from_state(alone, {}, None, None)
    return alone, helped


def _report_helped(run_dir: Path) -> None:
    """The report of RUN_DIR as `batchrun report` makes it: with a helper, where it gains."""
    with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
        write_report(run_dir, ReportJobs.read(store, helped=True))


def _forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids os.fork returns in this process from now on (taken to run one thread)."""
    _alone(monkeypatch)
    made: list[int] = []
    fork = os.fork

    def counted() -> int:
        pid = fork()
        if pid:
            made.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counted)
    return made


@pytest.mark.parametrize("grid", [(None, None), ("seed", "color")])
@pytest.mark.parametrize("sample", [5, MAX_CARDS])  # the layout chosen early, or at the end
def test_a_helper_process_makes_the_files_one_process_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grid: tuple[str | None, str | None],
    sample: int,
) -> None:  # fmt: skip
    monkeypatch.setattr(html_pages, "PAGE_CARDS", 7)
    monkeypatch.setattr(html_pages, "SAMPLE", sample)
    monkeypatch.setattr(report, "_CHUNK", 4)
    made = {}
    for helped in (False, True):
        run_dir = tmp_path / str(helped) / "mixed"
        _mixed_folder(run_dir)
        _edit_ledger(run_dir)
        monkeypatch.setattr(html_pages, "HELPED_PAGES", 2 if helped else 10**9)
        forks = _forks(monkeypatch)
        with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
            mirrored = {j: [f"s3://b/p/{j}/a.png"] for j in [r.job_id for r in store.rows()][::3]}
            write_report(run_dir, ReportJobs.read(store, helped=True), rows_key=grid[0],
                         cols_key=grid[1], mirror_urls=mirrored)  # fmt: skip
            every = _folder_files(run_dir)
            # another grid, report.html alone
            report.write_sheet(store, *(grid[::-1] if grid[0] else ("color", "seed")), helped=True)
        # A helper is forked when pages are left once the first SAMPLE jobs (the layout's)
        # are read: of the 50 jobs' 8 pages, 7 are, or none.
        assert len(forks) == (2 if helped and sample <= 7 * 7 else 0)
        made[helped] = every, _folder_files(run_dir)
    assert made[True] == made[False]
    pages = made[True][0]
    assert len([n for n in pages if n.startswith("report")]) == 1 + 8  # report.csv, 8 pages
    assert made[True][1]["report-8.html"] != pages["report-8.html"]  # the other grid
    assert not [n for n in pages if n.endswith(".later")]
    assert b"s3://b/p/" in b"".join(pages["report.csv"].split(b"\r\n")[29:])  # a later job's
    # The folder is mixed: costs summed from an edited ledger, jobs left out of the manifest.
    assert '"not_in_manifest": {\n    "jobs": 10' in pages["summary.json"].decode()


def test_the_jobs_a_helper_did_not_make_are_made_by_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    read = StateStore.report_rows

    def fails_later(store: StateStore, *, backward: bool = False) -> st.ReportRows:
        if backward:  # the helper's read
            raise OSError("disk gone")
        return read(store)

    monkeypatch.setattr(StateStore, "report_rows", fails_later)
    forks = _forks(monkeypatch)
    _report_helped(helped)
    assert len(forks) == 1
    assert _folder_files(helped) == _folder_files(alone)


def test_a_link_where_the_helper_writes_its_lines_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (helped / f".report.csv.{os.getpid()}.later").symlink_to(victim)
    forks = _forks(monkeypatch)
    _report_helped(helped)
    assert len(forks) == 1  # the helper refused the link; the report made its jobs
    assert victim.read_text() == "keep me"
    assert _folder_files(helped) == _folder_files(alone)


def test_a_field_only_later_jobs_have_is_seen_through_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _helped_small(monkeypatch)
    jobs = [
        Job(f"j{i:03}", MODELS[0], {"seed": i, **({"extra": i} if i >= 40 else {})}, {}, 0, i)
        for i in range(50)
    ]
    run_dir = tmp_path / "run"
    with StateStore.open(run_dir) as store:
        store.add_jobs(jobs)
    write_from_state(run_dir, {}, None, None)  # one process: report.csv has input.extra
    assert reportcsv.fields(run_dir / "report.csv") == (["seed", "extra"], [])
    first = _folder_files(run_dir)
    forks = _forks(monkeypatch)
    with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
        write_report(run_dir, ReportJobs.read(store, helped=True))
    assert len(forks) == 1  # the fields taken were right: not made again with others
    assert _folder_files(run_dir) == first


def test_a_helper_that_reads_another_state_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run writes between the report's first read and the helper's: every file is of the
    # state the report read.
    _helped_small(monkeypatch)
    before, after = tmp_path / "before" / "mixed", tmp_path / "after" / "mixed"
    for run_dir in (before, after):
        _mixed_folder(run_dir)
    with StateStore.open(before, create=False, lock=False) as store, store.snapshot():
        write_report(before, ReportJobs.read(store))
    forks = _forks(monkeypatch)
    with StateStore.open(after, create=False, lock=False) as store, store.snapshot():
        jobs = ReportJobs.read(store, helped=True)  # the snapshot begins: the count
        with StateStore.open(after, create=False) as writer:  # the run
            last = _reported(writer.rows())[-1].job_id
            writer.record_result(last, st.FAILED, finished_at=5000.0, error="late")
        write_report(after, jobs)
    assert _folder_files(after) == _folder_files(before)
    with StateStore.open(after, create=False, lock=False) as store:
        assert store.get(last).error == "late"  # written, and not in the report
    assert len(forks) == 1


def test_the_report_command_makes_a_large_report_with_a_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 9,600 jobs: 20 pages, the fewest a helper draws at (HELPED_PAGES).
    jobs = [
        Job(f"{i:012x}", MODELS[i % 2], {"prompt": f"p{i // 96}", "seed": i % 96}, {}, 0, i)
        for i in range(9600)
    ]
    looked: list[int] = []  # for attempts of jobs gone: none, when every one is counted
    gone = StateStore.attempts_not_in_manifest

    def looks(store: StateStore) -> list[Attempt]:
        looked.append(1)
        return gone(store)

    monkeypatch.setattr(StateStore, "attempts_not_in_manifest", looks)
    made = {}
    for helped in (False, True):
        run_dir = tmp_path / str(helped) / "run"
        with StateStore.open(run_dir) as store:
            store.add_jobs(jobs)
            for job in jobs[::7]:
                store.mark_submitting(job.job_id, Decimal("0.01"))
                store.record_request_id(job.job_id, f"r-{job.job_id}", 1000.0)
                store.record_result(job.job_id, st.SUCCEEDED, finished_at=1001.0, output={"x": 1})
        monkeypatch.setattr(html_pages, "HELPED_PAGES", 20 if helped else 10**9)
        forks = _forks(monkeypatch)
        every = invoke("report", str(run_dir))
        assert looked == []
        files = _folder_files(run_dir)
        grid = invoke("report", str(run_dir), "--rows", "seed", "--cols", "prompt")
        assert every.code == grid.code == 0 and "up to date: " in grid.stderr, grid.stderr
        assert len(forks) == (2 if helped else 0)
        made[helped] = files, _folder_files(run_dir)
    assert made[True] == made[False]
    assert len([n for n in made[True][0] if n.endswith(".html")]) == 20


def _helper_pages(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The numbers of the pages the helper of each report from now on made and handed
    back, in order ([]: the report's process made every page)."""
    _alone(monkeypatch)
    made: list[list[int]] = []
    in_pages = report._in_pages

    def counted(*args: Any, **kwargs: Any) -> list[report._Piece]:
        pieces = in_pages(*args, **kwargs)
        made.append([piece.drawn.number for piece in pieces])
        return pieces

    monkeypatch.setattr(report, "_in_pages", counted)
    return made


def _slowed(monkeypatch: pytest.MonkeyPatch, *, helper: bool, seconds: float) -> None:
    """Each page drawn by the report's process (or by its helper) takes SECONDS more."""
    ours, flush = os.getpid(), html_pages.Sheet._flush

    def slow(self: html_pages.Sheet, jobs: list[JobRow], number: int | None = None) -> None:
        if (os.getpid() != ours) == helper:
            time.sleep(seconds)
        flush(self, jobs, number)

    monkeypatch.setattr(html_pages.Sheet, "_flush", slow)


@pytest.mark.parametrize("slow", ["report", "helper"])
def test_each_page_is_made_once_by_the_process_free_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    _slowed(monkeypatch, helper=slow == "helper", seconds=0.5)
    made, forks = _helper_pages(monkeypatch), _forks(monkeypatch)
    _report_helped(helped)
    assert len(forks) == 1
    assert _folder_files(helped) == _folder_files(alone)
    # Pages 2 to 8 go to whichever process is free: the helper from the last back.
    [theirs] = made
    assert theirs == list(range(9 - len(theirs), 9))
    assert len(theirs) >= 5 if slow == "report" else len(theirs) <= 2


def test_pages_a_helper_made_before_it_failed_are_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    _slowed(monkeypatch, helper=False, seconds=0.3)
    log, draw = tmp_path / "drawn", html_pages.Sheet.draw

    def fails(self: html_pages.Sheet, number: int, jobs: list[JobRow]) -> html_pages.DrawnPage:
        drawn = log.read_text().split() if log.exists() else []
        if len(drawn) == 3:  # the helper's fourth page (it took it): it fails there
            raise OSError("disk gone")
        log.write_text(" ".join([*drawn, str(number)]))
        return draw(self, number, jobs)

    monkeypatch.setattr(html_pages.Sheet, "draw", fails)
    made, forks = _helper_pages(monkeypatch), _forks(monkeypatch)
    _report_helped(helped)
    assert len(forks) == 1 and made == [[]]
    assert log.read_text() == "8 7 6"  # drawn by the helper, then by the report's process
    assert _folder_files(helped) == _folder_files(alone)


def test_pages_a_helper_took_and_did_not_hand_back_are_made_by_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    _slowed(monkeypatch, helper=False, seconds=0.3)
    last_pages = html_pages.Helper.last_pages

    def skips(self: html_pages.Helper) -> Iterator[int]:
        pages = last_pages(self)
        next(pages)  # page 8 taken, never made
        yield from pages

    monkeypatch.setattr(html_pages.Helper, "last_pages", skips)
    made = _helper_pages(monkeypatch)
    _report_helped(helped)
    assert made == [[]]  # pages 7 back to 2 handed back, without page 8: none taken in
    assert _folder_files(helped) == _folder_files(alone)


@pytest.mark.parametrize("late", [None, "report", "helper"])
def test_a_report_and_its_helper_take_every_page_once(
    monkeypatch: pytest.MonkeyPatch, late: str | None
) -> None:
    monkeypatch.setattr(html_pages, "PAGE_CARDS", 10)
    monkeypatch.setattr(html_pages, "SAMPLE", 25)  # pages 1 to 3 lay the report out
    helper = html_pages.Helper(995)
    assert (helper.pages, helper.size(1), helper.size(100)) == (100, 10, 5)

    def work() -> list[int]:
        if late == "helper":
            time.sleep(0.5)
        return list(helper.last_pages())

    helper.fork(work)
    ours = []
    for number in helper.first_pages():
        ours.append(number)
        if late == "report" and number == 3:
            time.sleep(0.5)
    theirs = helper.join()
    assert ours == list(range(1, len(ours) + 1)) and len(ours) >= 3
    assert theirs == list(range(100, len(ours), -1))
    # One that comes late finds every page taken (the report's process: but its own).
    assert len(ours) == {None: len(ours), "report": 3, "helper": 100}[late]


def test_fields_of_too_many_values_are_left_out_of_the_index_however_pages_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _helped_small(monkeypatch)
    monkeypatch.setattr(html_pages, "INDEX_VALUES", 6)
    # seed: 50 values, seven on page 1; step: 10, the seventh on page 5 (jobs 28-34), though
    # the helper, from the last page back, sees seven by page 3; kind: 2. The fields left
    # out are named in the layout's order, whichever was left out first.
    jobs = [
        Job(f"j{i:03}", MODELS[0], {"seed": i, "step": i // 5, "kind": i % 2}, {}, 0, i)
        for i in range(50)
    ]
    made = {}
    for helped in (False, True):
        run_dir = tmp_path / str(helped) / "run"
        with StateStore.open(run_dir) as store:
            store.add_jobs(jobs)
        monkeypatch.setattr(html_pages, "HELPED_PAGES", 2 if helped else 10**9)
        _slowed(monkeypatch, helper=False, seconds=1.0 if helped else 0)
        pages = _helper_pages(monkeypatch)
        with StateStore.open(run_dir, create=False, lock=False) as store, store.snapshot():
            write_report(
                run_dir, ReportJobs.read(store, helped=True), rows_key="step", cols_key="seed"
            )
        assert pages[-1] == ([2, 3, 4, 5, 6, 7, 8] if helped else [])
        made[helped] = _folder_files(run_dir)
    assert made[True] == made[False]
    first = made[True]["report.html"].decode()
    assert "not indexed (over 6 values): input.step, input.seed</p>" in first
    assert "by input.kind (2 values)" in first


def test_a_report_without_a_process_to_spare_makes_every_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, helped = _mixed_twice(tmp_path, monkeypatch)
    opened = len(os.listdir("/proc/self/fd"))

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    made = _helper_pages(monkeypatch)
    _report_helped(helped)
    assert made == [[]]
    assert _folder_files(helped) == _folder_files(alone)
    assert len(os.listdir("/proc/self/fd")) == opened  # the pipes closed


def test_pages_beyond_what_the_pipe_holds_are_the_reports_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 70,000 pages: more bytes than a pipe holds (64 KiB on Linux). The pages it cannot
    # hold a byte for go to the report's process, after its own; each page is made once.
    monkeypatch.setattr(html_pages, "PAGE_CARDS", 1)
    monkeypatch.setattr(html_pages, "SAMPLE", 3)
    helper = html_pages.Helper(70_000)
    helper.fork(lambda: list(helper.last_pages()))
    ours = list(helper.first_pages())
    theirs = helper.join()
    assert ours == list(range(1, len(ours) + 1))
    assert theirs == list(range(70_000, len(ours), -1))
    assert len(ours) > 70_000 - 65_536  # the pages the pipe held no byte for

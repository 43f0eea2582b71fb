"""A comparison as an HTML page: baseline and current side by side for changed or regressed jobs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from batchrun.results.compare import Comparison, JobDiff, Run
from batchrun.results.html_report import esc, job_card, job_from_row, page
from batchrun.store.atomic import write_output

SHOWN = ("changed", "regressed")


def _href_for(run: Run, html_dir: Path) -> Callable[[str], str | None]:
    """Links from the html file's folder to a run's files; None when a file is not at hand."""

    def href(name: str) -> str | None:
        path = run.file(name)
        if path is None:
            return None
        try:
            rel = os.path.relpath(path.resolve(), html_dir.resolve())
        except ValueError:  # another drive on Windows: no relative path exists
            return path.resolve().as_uri()
        return quote(rel.replace(os.sep, "/"))

    return href


def _side(label: str, run: Run, row: dict[str, str] | None, html_dir: Path) -> str:
    if row is None:
        return f"<div><h3>{esc(label)}</h3><p>absent</p></div>"
    card = job_card(job_from_row(row), _href_for(run, html_dir), anchor=False)
    return f"<div><h3>{esc(label)}</h3>{card}</div>"


def _job_section(comp: Comparison, job: JobDiff, html_dir: Path) -> str:
    varying = ", ".join(f"{k}={v}" for k, v in job.varying.items())
    return (
        f'<h2 id="{esc(job.job_id)}"><span class="badge s-{esc(job.outcome)}">'
        f"{esc(', '.join(job.classes))}</span> {esc(job.job_id)} "
        f"<small>{esc(job.model_id)} {esc(varying)}</small></h2>"
        f"<p>{esc(job.reason)}</p>"
        '<div class="pair">'
        + _side("baseline", comp.baseline, job.baseline, html_dir)
        + _side("current", comp.current, job.current, html_dir)
        + "</div>"
    )


def render(comp: Comparison, html_dir: Path) -> str:
    """The side-by-side page as a string, links relative to HTML_DIR."""
    shown = [job for job in comp.jobs if job.outcome in SHOWN or job.failing]
    totals = ", ".join(f"{cls} {n}" for cls, n in comp.totals.items() if n)
    verdict = "PASS" if comp.passed else "FAIL"
    body = [
        f"<h1>batchrun compare: {verdict}</h1>",
        f"<p>baseline <code>{esc(comp.baseline.label)}</code> vs current "
        f"<code>{esc(comp.current.label)}</code>: {esc(totals)}</p>",
    ]
    body += [f"<p><strong>Warning:</strong> {esc(w)}</p>" for w in comp.warnings]
    if not shown:
        body.append("<p>No changed or regressed jobs.</p>")
    body += [_job_section(comp, job, html_dir) for job in shown]
    return page(f"batchrun compare: {verdict}", "\n".join(body))


def write_compare_html(comp: Comparison, target: str | Path) -> str:
    """Write the side-by-side page to TARGET (`-` is stdout, links then relative to the
    current folder); returns where it went."""
    html_dir = Path.cwd() if str(target) == "-" else Path(target).parent
    if str(target) != "-":
        html_dir.mkdir(parents=True, exist_ok=True)
    return write_output(target, render(comp, html_dir))

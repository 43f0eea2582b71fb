"""A comparison as an HTML page: baseline and current side by side for changed or regressed jobs."""

from __future__ import annotations

import os
import shlex
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


def approvable(job: JobDiff) -> bool:
    """Whether the current run holds a result to approve for the job (it succeeded)."""
    return job.current is not None and job.current.get("status") == "succeeded"


def approve_head(comp: Comparison) -> str:
    """`batchrun approve CURRENT --into BASELINE`, the folders shell-quoted."""
    current, baseline = str(comp.current.root), str(comp.baseline.root)
    return shlex.join(["batchrun", "approve", current, "--into", baseline])


def approve_command(comp: Comparison, job_ids: list[str]) -> str:
    """The command that approves JOB_IDS of the current run into the baseline."""
    return " ".join([approve_head(comp), *(f"--job {shlex.quote(j)}" for j in job_ids)])


# Rebuilds the command from the ticked boxes; without JavaScript the box keeps the command for
# every job that can be approved (all boxes start ticked).
_SCRIPT = """<script>
(function () {
  var box = document.getElementById("approve-cmd");
  if (!box) return;
  var head = box.getAttribute("data-head");
  function update() {
    var args = [];
    document.querySelectorAll("input.approve:checked").forEach(function (c) {
      args.push("--job " + c.getAttribute("data-arg"));
    });
    box.textContent = args.length ? head + " " + args.join(" ") : "(no job ticked)";
  }
  document.addEventListener("change", function (e) {
    if (e.target.classList && e.target.classList.contains("approve")) update();
  });
  var copy = document.getElementById("approve-copy");
  if (copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () { navigator.clipboard.writeText(box.textContent); });
  }
  update();
})();
</script>"""


def _approve_box(comp: Comparison, shown: list[JobDiff]) -> list[str]:
    ids = [job.job_id for job in shown if approvable(job)]
    if not ids:
        return []
    return [
        '<div class="approve-box"><p><strong>Approve</strong> the ticked jobs into the baseline '
        "(their results, rows and files copied, the baseline's other jobs kept):</p>"
        f'<pre id="approve-cmd" data-head="{esc(approve_head(comp))}">'
        f"{esc(approve_command(comp, ids))}</pre>"
        '<button type="button" id="approve-copy" hidden>copy</button>'
        "<noscript><p>Without JavaScript the command approves every job shown with a box; "
        "leave out the --job of those to keep.</p></noscript></div>",
        _SCRIPT,
    ]


def _tick(job: JobDiff) -> str:
    if not approvable(job):
        return " <small>(nothing to approve: the current run did not succeed)</small>"
    return (
        f' <label><input type="checkbox" class="approve" checked value="{esc(job.job_id)}" '
        f'data-arg="{esc(shlex.quote(job.job_id))}"> approve</label>'
    )


def _job_section(comp: Comparison, job: JobDiff, html_dir: Path) -> str:
    varying = ", ".join(f"{k}={v}" for k, v in job.varying.items())
    return (
        f'<h2 id="{esc(job.job_id)}"><span class="badge s-{esc(job.outcome)}">'
        f"{esc(', '.join(job.classes))}</span> {esc(job.job_id)} "
        f"<small>{esc(job.model_id)} {esc(varying)}</small>{_tick(job)}</h2>"
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
    body += _approve_box(comp, shown)
    body += [_job_section(comp, job, html_dir) for job in shown]
    return page(f"batchrun compare: {verdict}", "\n".join(body))


def write_compare_html(comp: Comparison, target: str | Path) -> str:
    """Write the side-by-side page to TARGET (`-` is stdout, links then relative to the
    current folder); returns where it went."""
    html_dir = Path.cwd() if str(target) == "-" else Path(target).parent
    if str(target) != "-":
        html_dir.mkdir(parents=True, exist_ok=True)
    return write_output(target, render(comp, html_dir))

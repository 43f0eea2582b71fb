"""Renderings of a Comparison: terminal table, markdown summary, JUnit XML and JSON.

The reports compared may hold any text (a server's errors, a hand-edited CSV): the table, the
markdown and the XML show control characters escaped (safetext), so nothing reaches a terminal
raw and the XML stays well-formed; the JSON is data and escapes them itself."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from batchrun.results.compare import Comparison, JobDiff
from batchrun.results.reportcsv import split_cell, unguard
from batchrun.util.safetext import printable


def _varying(job: JobDiff, sep: str = ", ") -> str:
    return printable(sep.join(f"{key}={value}" for key, value in job.varying.items()))


def _verdict(comp: Comparison) -> str:
    return "PASS" if comp.passed else "FAIL"


def terminal_table(comp: Comparison) -> str:
    """Totals per class, then the failing jobs, then the verdict."""
    lines = [f"{'class':<10} {'jobs':>5}"]
    for cls, count in comp.totals.items():
        mark = "  fails the gate" if cls in comp.fail_on and count else ""
        lines.append(f"{cls:<10} {count:>5}{mark}")
    failing = comp.failing
    if failing:
        lines += ["", f"failing jobs ({len(failing)}):"]
        for job in failing:
            varying = _varying(job, " ")
            lines.append(
                f"  {','.join(job.classes):<10} {printable(job.job_id)}  {printable(job.model_id)}"
                + (f"  {varying}" if varying else "")
            )
            lines.append(f"    {printable(job.reason)}")
    lines += [f"warning: {printable(w)}" for w in comp.warnings]
    lines += ["", _verdict_line(comp)]
    return "\n".join(lines) + "\n"


def terminal_quiet(comp: Comparison) -> str:
    """`--quiet`: the warnings (what was compared with what) and the verdict line."""
    lines = [f"warning: {printable(w)}" for w in comp.warnings]
    return "\n".join([*lines, _verdict_line(comp)])


def _verdict_line(comp: Comparison) -> str:
    return f"{_verdict(comp)}: {len(comp.failing)} failing job(s) of {len(comp.jobs)}"


def _side_md(label: str, row: dict[str, str] | None) -> str:
    if row is None:
        return f"- {label}: absent"
    parts = [_md_escape(row.get("status", ""))]
    if row.get("run_s"):
        parts.append(f"run {row['run_s']} s")
    files = split_cell(row.get("output_files"))
    if files:
        parts.append("files " + ", ".join(f"`{_md_escape(f)}`" for f in files))
    if row.get("error"):
        parts.append(f"error: {_md_escape(unguard(row['error']))}")
    return f"- {label}: " + "; ".join(parts)


def _md_escape(text: str) -> str:
    # Keep user text from opening tags or breaking table cells in the step summary.
    text = printable(text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


# GitHub caps a step summary at 1 MiB; past this many jobs the summary points elsewhere.
MARKDOWN_MAX_JOBS = 200


def markdown(comp: Comparison, *, max_jobs: int = MARKDOWN_MAX_JOBS) -> str:
    """A summary for $GITHUB_STEP_SUMMARY: totals first, then each failing job collapsed."""
    failing = comp.failing
    lines = [
        f"## batchrun compare: {_verdict(comp)}",
        "",
        f"Baseline `{comp.baseline.label}` ({len(comp.baseline.rows)} jobs) vs current "
        f"`{comp.current.label}` ({len(comp.current.rows)} jobs). "
        f"Gate fails on: {', '.join(comp.fail_on)}.",
        "",
        *(f"> **Warning:** {_md_escape(w)}\n" for w in comp.warnings),
        "| class | jobs |",
        "|---|---:|",
    ]
    for cls, count in comp.totals.items():
        flag = " :x:" if cls in comp.fail_on and count else ""
        lines.append(f"| {cls} | {count}{flag} |")
    lines.append("")
    if not failing:
        lines += ["No failing jobs.", ""]
        return "\n".join(lines)
    lines += [f"### Failing jobs ({len(failing)})", ""]
    for job in failing[:max_jobs]:
        varying = _md_escape(_varying(job))
        summary = f"<b>{', '.join(job.classes)}</b> <code>{_md_escape(job.job_id)}</code>"
        summary += f" {_md_escape(job.model_id)}" + (f" · {varying}" if varying else "")
        lines += [
            "<details>",
            f"<summary>{summary}</summary>",
            "",
            f"- reason: {_md_escape(job.reason)}",
            _side_md("baseline", job.baseline),
            _side_md("current", job.current),
            "",
            "</details>",
            "",
        ]
    if len(failing) > max_jobs:
        lines += [f"... and {len(failing) - max_jobs} more: see the --json or --junit output.", ""]
    return "\n".join(lines)


def _seconds(row: dict[str, str] | None) -> str:
    try:
        return f"{float((row or {}).get('run_s') or 0):.3f}"
    except ValueError:
        return "0.000"


def junit(comp: Comparison) -> str:
    """JUnit XML: one testcase per job (classname = model id), failures carry the reason."""
    failures = len(comp.failing)
    total_time = sum(float(_seconds(job.current)) for job in comp.jobs)
    counts = {
        "tests": str(len(comp.jobs)),
        "failures": str(failures),
        "errors": "0",
        "skipped": "0",
        "time": f"{total_time:.3f}",
    }
    x = printable  # XML 1.0 refuses most control characters, even written as &#...;
    suites = ET.Element("testsuites", {"name": "batchrun compare", **counts})
    suite = ET.SubElement(suites, "testsuite", {"name": "batchrun compare", **counts})
    if comp.warnings:
        props = ET.SubElement(suite, "properties")
        for w in comp.warnings:
            ET.SubElement(props, "property", {"name": "warning", "value": x(w)})
    for job in comp.jobs:
        varying = _varying(job)
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": x(job.model_id) or "unknown-model",
                "name": x(job.job_id) + (f" [{varying}]" if varying else ""),
                "time": _seconds(job.current),
            },
        )
        if job.failing:
            failure = ET.SubElement(
                case, "failure", {"message": x(job.reason), "type": ",".join(job.classes)}
            )
            failure.text = f"{x(job.job_id)}: {', '.join(job.classes)}: {x(job.reason)}"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def _side_json(row: dict[str, str] | None) -> dict[str, object] | None:
    if row is None:
        return None
    return {
        "status": row.get("status", ""),
        "run_s": row.get("run_s", ""),
        "error": unguard(row.get("error", "")),
        "output_files": split_cell(row.get("output_files")),
        "output_sha256": split_cell(row.get("output_sha256")),
    }


def to_json(comp: Comparison) -> str:
    """The full result as JSON (stable key order)."""
    doc = {
        "baseline": comp.baseline.label,
        "current": comp.current.label,
        "fail_on": list(comp.fail_on),
        "passed": comp.passed,
        "warnings": comp.warnings,
        "totals": comp.totals,
        "jobs": [
            {
                "job_id": job.job_id,
                "model_id": job.model_id,
                "class": job.outcome,
                "slower": job.slower,
                "failing": job.failing,
                "reason": job.reason,
                "varying": job.varying,
                "baseline": _side_json(job.baseline),
                "current": _side_json(job.current),
            }
            for job in comp.jobs
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

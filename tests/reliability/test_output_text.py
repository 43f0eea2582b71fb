"""A server that puts control characters (ANSI escapes, C0, C1, DEL) into what batchrun prints: an
error message, a failed result's error, a request id, an output URL, an auth error. None of
them reaches `run`'s lines, `status`, `report`, `compare`'s table or markdown raw, report.csv
carries none a terminal would execute, and `compare --junit` stays well-formed XML. state.db
keeps what the server sent."""

from __future__ import annotations

import csv
import re
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from batchrun.util.safetext import printable

from .conftest import run_cli
from .hostile_api import HostileApi, Reply, manifest_for, run_here

# A colour, a cleared screen, a window title (OSC ... BEL), a backspace, a carriage return that
# redraws the line, NUL, a vertical tab, DEL, the 8-bit CSI and NEL.
HOSTILE = "\x1b[31mred\x1b[2J\x1b]0;owned\x07 bs\x08 cr\rnul\x00 vt\x0b del\x7f csi\x9b31m nel\x85"
# What a terminal would act on, and what XML 1.0 refuses: every C0 but newline and tab, DEL, C1.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

WHERE = {
    # a submit the model refused, its message in `detail`
    "submit-422": lambda call: (
        Reply(422, {"error_code": 422001, "error_message": HOSTILE, "detail": HOSTILE})
        if call.kind == "submit"
        else None
    ),
    "failed-result-object": lambda call: (
        Reply(body={"status": "failed", "error": {"message": HOSTILE, "code": HOSTILE}})
        if call.kind == "result"
        else None
    ),
    "failed-result-string": lambda call: (
        Reply(body={"status": "failed", "error": HOSTILE}) if call.kind == "result" else None
    ),
    # the request id (then in every URL batchrun builds with it), and a failure to show it
    "request-id": lambda call: (
        Reply(body={"request_id": f"r{call.n}{HOSTILE}"})
        if call.kind == "submit"
        else Reply(body={"status": "failed", "error": "no"})
        if call.kind == "result"
        else None
    ),
    # an output URL on the server itself (downloaded; its file name comes from it)
    "output-url": lambda call: (
        Reply(
            body={
                "status": "succeeded",
                "output": {"image": f"http://{call.headers['Host']}/files/a{HOSTILE}.png"},
            }
        )
        if call.kind == "result"
        else None
    ),
    "auth-error": lambda call: (
        Reply(401, {"error_code": 401001, "error_message": HOSTILE})
        if call.kind == "submit"
        else None
    ),
}


def raw(text: str) -> list[str]:
    return sorted({repr(c) for c in RAW.findall(text)})


@pytest.mark.parametrize("where", sorted(WHERE))
def test_server_text_reaches_no_output_raw(tmp_path: Path, where: str) -> None:
    # The baseline for compare: the same jobs, run against an honest server.
    base = tmp_path / "base"
    manifest_for(base, 2, run={"retries": 0, "job_timeout": "5s"}, download=True)
    with HostileApi() as honest:
        assert run_here(base, honest)[0] == 0

    manifest = manifest_for(tmp_path, 2, run={"retries": 0, "job_timeout": "5s"}, download=True)
    run_dir = tmp_path / "run"
    with HostileApi(WHERE[where]) as api:
        res = run_cli("run", str(manifest), "--api-base", api.base_url, "--run-dir", str(run_dir))
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode in (0, 1, 3), out
    assert raw(out) == [], out
    if where == "auth-error":
        assert "error: " in res.stderr and "\\x1b[31mred" in res.stderr, out
        return
    # Shown, not dropped: the escapes are visible as text.
    status = run_cli("status", str(run_dir), token=None, timeout=60)
    assert status.returncode == 0 and raw(status.stdout + status.stderr) == [], status.stdout
    if where != "output-url":
        assert "\\x1b[31mred" in status.stdout or where == "request-id", status.stdout
    report = run_cli("report", str(run_dir), token=None, timeout=60)
    assert report.returncode == 0 and raw(report.stdout + report.stderr) == []
    text = (run_dir / "report.csv").read_text(encoding="utf-8")
    assert raw(text) == [], "report.csv carries characters a terminal would execute"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert raw(html) == [], "report.html carries characters a terminal would execute"

    md, junit = tmp_path / "compare.md", tmp_path / "compare.xml"
    comp = run_cli(
        "compare", str(base / "run"), str(run_dir), "--markdown", str(md), "--junit", str(junit),
        "--allow-mixed-origins",  # the baseline came from another (clean) server
        token=None, timeout=60,
    )  # fmt: skip
    assert comp.returncode in (0, 1), comp.stdout + comp.stderr
    assert raw(comp.stdout + comp.stderr) == [] and raw(md.read_text()) == []
    ET.fromstring(junit.read_bytes())  # well-formed, or it raises

    # The state keeps what the server sent.
    conn = sqlite3.connect(run_dir / "state.db")
    stored = " ".join(str(v) for row in conn.execute("SELECT * FROM jobs") for v in row)
    conn.close()
    assert "\x1b[31mred" in stored or "\\u001b[31mred" in stored  # raw, or in its JSON


def _hand_made_report(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "report.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_id", "model_id", "status", "error", "run_s", "output_sha256"])
        w.writerow(["j1", f"m{HOSTILE}", "succeeded", "", "1.0", "aa"])
        w.writerow(["j2", "m", "succeeded", "", "1.0", "bb"])
    return path / "report.csv"


@pytest.mark.parametrize("char", ["\x1b", "\x00", "\x0c", "\x7f", "\x9b", "\uffff"])
def test_compare_of_hand_made_reports_stays_clean_and_well_formed(
    tmp_path: Path, char: str
) -> None:
    """compare reads any report.csv: a job id, model or error with control characters is shown
    escaped, and the JUnit XML parses."""
    base = _hand_made_report(tmp_path / "a")
    current = tmp_path / "b" / "report.csv"
    current.parent.mkdir()
    with current.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["job_id", "model_id", "status", "error", "run_s", "output_sha256", "input.p"])
        w.writerow(["j1", f"m{char}", "failed", f"boom{char}{HOSTILE}", "1.0", "", f"p{char}"])
        w.writerow(["j2", "m", "succeeded", "", "1.0", "cc", "q"])
    md, junit = tmp_path / "c.md", tmp_path / "c.xml"
    comp = run_cli(
        "compare", str(base), str(current), "--markdown", str(md), "--junit", str(junit),
        token=None, timeout=60,
    )  # fmt: skip
    out = comp.stdout + comp.stderr
    assert comp.returncode == 1 and "Traceback" not in out, out
    assert raw(out) == [] and raw(md.read_text()) == [], out
    root = ET.fromstring(junit.read_bytes())
    failures = [f.get("message") or "" for f in root.iter("failure")]
    assert any("boom" in m for m in failures), failures


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x00\x07\x08\x7f", "\\x00\\x07\\x08\\x7f"),
        ("\x9b2J \x85", "\\x9b2J \\x85"),
        ("\ud800", "\\ud800"),
        ("plain é ✓ 漢", "plain é ✓ 漢"),
    ],
)
def test_printable_shows_every_control_character_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(text, lines=True) == shown.replace("\\n", "\n").replace("\\t", "\t")

"""A server that answers `succeeded` with no output to fetch: `output` missing, null, empty, or
holding no URL. The job stays succeeded (exit code unchanged), but it is no silent success: the
error column of report.csv says so, the run's final line counts it, and so does summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.store.records import JobRow
from testing.cli import run_cli

from .conftest import TOKEN, read_report
from .hostile_api import Answer, Call, HostileApi, Reply, manifest_for, state_of

MISSING = object()
EMPTY_OUTPUTS: dict[str, Any] = {
    "missing": MISSING,
    "null": None,
    "empty-object": {},
    "empty-list": [],
    "empty-string": "",
    "null-values": {"image": None, "images": []},
    "no-url": {"text": "a caption, not a file", "seed": 7},
    "nested-empty": [[], {"images": []}],
}
NOTE = "succeeded without output"


def _result(output: Any) -> Answer:
    def answer(call: Call) -> Reply | None:
        # Only the first job's result is empty; the second has its file.
        if call.kind == "result" and call.request_id == "r1":
            body: dict[str, Any] = {"request_id": "r1", "status": "succeeded", "cost": 0.04}
            if output is not MISSING:
                body["output"] = output
            return Reply(body=body)
        return None

    return answer


def run_loud(tmp_path: Path, api: HostileApi) -> tuple[int, list[str], list[JobRow]]:
    """run_here, but with the lines a user sees (the final line is not printed with quiet)."""
    messages: list[str] = []
    options = RunOptions(
        api.base_url, TOKEN, run_dir=tmp_path / "run", handle_signals=False, echo=messages.append
    )
    code = run_batch(build_plan(tmp_path / "m.yaml"), options)
    return code, messages, state_of(tmp_path)


@pytest.mark.parametrize("download", [True, False], ids=["download", "no-download"])
@pytest.mark.parametrize("variant", sorted(EMPTY_OUTPUTS))
def test_a_success_without_output_is_said(tmp_path: Path, variant: str, download: bool) -> None:
    manifest_for(tmp_path, 2, run={"max_in_flight": 1}, download=download)
    with HostileApi(_result(EMPTY_OUTPUTS[variant])) as api:
        code, messages, rows = run_loud(tmp_path, api)
    assert code == 0, messages  # every job succeeded: the exit code is unchanged
    assert [r.status for r in rows] == ["succeeded", "succeeded"]

    report = {r["request_id"]: r for r in read_report(tmp_path / "run")}
    assert report["r1"]["status"] == "succeeded"
    assert report["r1"]["error"].startswith(NOTE), report["r1"]
    assert report["r1"]["output_files"] == "" and report["r1"]["output_urls"] == ""
    assert report["r2"]["error"] == "" and report["r2"]["output_urls"]

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["succeeded_without_output"] == 1, summary
    assert summary["statuses"]["succeeded"] == 2

    final = [m for m in messages if m.startswith("2 jobs: ")]
    assert len(final) == 1 and "succeeded 2 (1 without output)" in final[0], messages

    status = run_cli("status", str(tmp_path / "run"), "--json", token=None)
    assert json.loads(status.stdout)["without_output"] == [rows[0].job_id]
    text = run_cli("status", str(tmp_path / "run"), token=None).stdout
    assert f"succeeded without output (no file to fetch): 1: {rows[0].job_id}" in text, text


def test_every_success_with_output_counts_none(tmp_path: Path) -> None:
    manifest_for(tmp_path, 2)
    with HostileApi() as api:
        code, messages, _ = run_loud(tmp_path, api)
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["succeeded_without_output"] == 0
    assert not any("without output" in m for m in messages), messages
    assert "without output" not in run_cli("status", str(tmp_path / "run"), token=None).stdout
    assert all(r["error"] == "" for r in read_report(tmp_path / "run"))

"""Whole user-facing lines of the main error families, pinned as a user reads them.

A manifest problem is `FILE: $.path: message (line N)`; an API error names the endpoint, the
HTTP status, the error_code and the message; exit 3 says what is wrong with the token."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchrun.plan.build import build_plan
from batchrun.run.engine import RunOptions, run_batch
from batchrun.store.state import StateStore
from testing.cli import invoke
from testing.simulators import StartSim, simulators

TOKEN = "tok-messages-7c1e"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/in.webp"
SUBMIT = f"POST /v1/models/{FLUX}"

TYPO = f"""\
version: 1
name: messages
run: {{rate_limit: 100/s, poll_interval: 50ms}}
models:
  - id: {FLUX}
    input: {{prompt: a cat, image_url: "{IMAGE}"}}
"""
GOOD = TYPO.replace("    input:", "    inputs:")


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    with simulators(token=TOKEN, run_time=0.05, run_time_jitter=0, workers=0) as start:
        yield start


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder as the current directory, so FILE is printed as the user typed it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_validate_prints_a_typo_as_file_path_message_and_line(work: Path) -> None:
    (work / "m.yaml").write_text(TYPO)
    got = invoke("validate", "m.yaml")
    assert (got.code, got.stdout) == (2, "")
    assert got.stderr == (
        "m.yaml: $.models[0].input: unknown key 'input'; did you mean 'inputs'? (line 6)\n"
        "m.yaml: jobs' input fields not checked yet: fix the problems above first\n"
    )


def test_validate_prints_an_expanded_job_failing_its_model_schema_by_job(work: Path) -> None:
    (work / "m.yaml").write_text(GOOD + "matrix:\n  seed: [1, x]\n")
    got = invoke("validate", "m.yaml")
    assert (got.code, got.stdout) == (2, "")
    assert got.stderr == (
        f"m.yaml: $.matrix.seed[1]: job {FLUX} (seed='x'): $.seed: 'x' is not of type 'integer'"
        " (line 8)\n"
    )


def test_run_refuses_a_typo_before_any_request(work: Path) -> None:
    (work / "m.yaml").write_text(TYPO)
    got = invoke("run", "m.yaml", "--api-base", "http://127.0.0.1:9", token=TOKEN)
    assert (got.code, got.stdout) == (2, "")
    assert got.stderr == (
        "error: m.yaml: $.models[0].input: unknown key 'input'; did you mean 'inputs'? (line 6)\n"
        "m.yaml: jobs' input fields not checked yet: fix the problems above first\n"
    )


def test_no_token_exits_3_saying_how_to_set_one(work: Path) -> None:
    (work / "m.yaml").write_text(GOOD)
    got = invoke("run", "m.yaml", "--api-base", "http://127.0.0.1:9")
    assert (got.code, got.stdout) == (3, "")
    assert got.stderr == (
        "error: RUNCOMFY_TOKEN is not set: export RUNCOMFY_TOKEN=<your token>, "
        "or try the local simulator with --simulate\n"
    )


def test_refused_token_exits_3_naming_endpoint_status_and_code(
    work: Path, start_sim: StartSim
) -> None:
    sim = start_sim()
    (work / "m.yaml").write_text(GOOD)
    wrong = "tok-wrong-55aa"
    got = invoke("run", "m.yaml", "--api-base", sim.base_url, "--quiet", token=wrong)
    assert (got.code, got.stdout) == (3, "")
    assert got.stderr == (
        f"error: {SUBMIT} HTTP 401 error_code 400004: missing, invalid or expired token\n"
    )
    assert wrong not in got.stderr


def test_a_422_is_printed_whole_in_the_report_and_by_status(
    work: Path, start_sim: StartSim
) -> None:
    sim = start_sim()
    (work / "m.yaml").write_text(GOOD)
    plan = build_plan("m.yaml")
    plan.jobs[0].inputs["seed"] = "not a number"  # the API knows better than the local schema
    opts = RunOptions(
        sim.base_url, TOKEN, run_dir=work / "run", quiet=True, handle_signals=False, echo=print
    )
    assert run_batch(plan, opts) == 1
    message = (
        f"{SUBMIT} HTTP 422 error_code 422: inputs do not match the model's schema: "
        "body.seed: 'not a number' is not of type 'integer'"
    )
    with open(work / "run" / "report.csv", newline="", encoding="utf-8") as f:
        (row,) = csv.DictReader(f)
    assert (row["status"], row["error"]) == ("failed", message)
    status = invoke("status", "run")
    assert status.code == 0
    assert f"  {plan.jobs[0].job_id}  failed     {FLUX}: {message}" in status.stdout.splitlines()


@pytest.mark.parametrize("command", [["models", "list"], ["models", "pull", "acme/m"], ["cancel"]])
def test_no_token_suggests_only_what_the_command_has(work: Path, command: list[str]) -> None:
    if command == ["cancel"]:
        (work / "m.yaml").write_text(GOOD)
        with StateStore.open(work / "run") as store:
            store.set_meta(api_base="https://model-api.example")
        command = ["cancel", "run"]
    got = invoke(*command, "--api-base", "https://model-api.example")
    assert got.code == 3
    assert got.stderr == (
        "error: RUNCOMFY_TOKEN is not set: export RUNCOMFY_TOKEN=<your token>, or ask a local "
        "simulator: batchrun simulate, then RUNCOMFY_TOKEN=sim-token and --api-base its URL\n"
    )
    assert "--simulate" not in got.stderr

"""What a user meets outside the simulator's paths: the install name, the run folder's origin,
the API base's /v1 form, `batchrun init` and `batchrun schema` from an empty folder."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import responses
import yaml

from batchrun.cli import cli, main
from batchrun.commands.common import api_base
from batchrun.plan.manifest import manifest_schema_path
from batchrun.simulator import SimSettings, Simulator

REPO = Path(__file__).resolve().parents[2]
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://x.runcomfy.net/in.png"
TOKEN = "tok-real-use-8c41d2"


def small_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(
        f"""\
version: 1
run: {{rate_limit: 100/s, poll_interval: 50ms}}
outputs: {{download: false}}
models:
  - id: {FLUX}
    inputs: {{prompt: a cat, image_url: "{IMAGE}"}}
    matrix: {{seed: [1, 2]}}
""",
        encoding="utf-8",
    )
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. the distribution is runcomfy-batchrun ------------------------------------------------


def test_distribution_name_is_runcomfy_batchrun() -> None:
    project = re.search(r"(?ms)^\[project\]\n(.*?)^\[", (REPO / "pyproject.toml").read_text())
    assert project is not None
    assert re.search(r'(?m)^name = "runcomfy-batchrun"$', project.group(1))
    # The wheel's file name follows the distribution name; CI installs that file.
    assert '"$work"/dist/runcomfy_batchrun-*.whl' in (REPO / ".ci" / "run").read_text()


def test_ci_example_installs_this_project_not_the_index_batchrun() -> None:
    workflow = yaml.safe_load((REPO / "examples" / "ci-workflow.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    installs = [
        shlex.split(line)
        for step in steps
        for line in str(step.get("run", "")).splitlines()
        if line.strip().startswith("pip install")
    ]
    assert installs, "the example installs batchrun somewhere"
    for words in installs:
        targets = [w for w in words[2:] if not w.startswith("-")]
        assert targets and all(
            t.startswith(".") or t.startswith("runcomfy-batchrun") for t in targets
        ), words


def test_pillow_hint_names_the_distribution() -> None:
    compare = cli.commands["compare"]
    (option,) = [p for p in compare.params if p.name == "image_tolerance"]
    assert "pip install 'runcomfy-batchrun[images]'" in str(getattr(option, "help", ""))


# ---- 3. the API base with or without /v1 ---------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "https://model-api.runcomfy.net/",
        "https://model-api.runcomfy.net/v1",
        "https://model-api.runcomfy.net/v1/",
    ],
)
def test_api_base_accepts_the_v1_form(given: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_base(given) == "https://model-api.runcomfy.net"
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", given)
    assert api_base(None) == "https://model-api.runcomfy.net"


def test_run_against_a_v1_base_reaches_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    sim = Simulator(SimSettings.from_mapping({"token": TOKEN, "run_time": 0.05})).start()
    try:
        monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
        monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", sim.base_url + "/v1")
        code, _, err = run(["run", str(small_manifest(tmp_path)), "--run-dir", "r1", "-q"], capsys)
        assert code == 0, err
        option = ["--api-base", sim.base_url + "/v1/", "-q"]
        code, _, err = run(
            ["run", str(small_manifest(tmp_path)), "--run-dir", "r2", *option], capsys
        )
        assert code == 0, err
    finally:
        sim.stop()


# ---- 2. a run folder's origin ----------------------------------------------------------------


def test_simulated_results_never_pass_for_real_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    path = str(small_manifest(tmp_path))
    code, _, err = run(["run", path, "--simulate", "--run-dir", "rd", "-q"], capsys)
    assert code == 0, err
    # The simulator listens on a new port each time: still the same origin, no refusal.
    code, _, err = run(["run", path, "--simulate", "--run-dir", "rd", "-q"], capsys)
    assert code == 0, err

    monkeypatch.setenv("RUNCOMFY_TOKEN", "real-token")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        argv = ["run", path, "--run-dir", "rd", "--api-base", "https://model-api.runcomfy.net/v1"]
        code, out, err = run(argv, capsys)
        assert len(mocked.calls) == 0  # nothing sent
    assert (code, out) == (2, "")
    assert err == (
        "error: rd holds results from the simulator; this run would ask "
        "https://model-api.runcomfy.net, and the two must not mix in one run folder; use "
        "another --run-dir for this run, or delete rd to start over\n"
    )

    code, out, _ = run(["status", "rd"], capsys)
    assert code == 0 and out.splitlines()[1] == "results from the simulator"
    code, out, _ = run(["status", "rd", "--json"], capsys)
    assert json.loads(out)["origin"] == "simulator"
    assert json.loads((tmp_path / "rd" / "summary.json").read_text())["origin"] == "simulator"
    run(["report", "rd"], capsys)
    assert json.loads((tmp_path / "rd" / "summary.json").read_text())["origin"] == "simulator"


def test_real_results_refuse_a_simulated_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = Simulator(SimSettings.from_mapping({"token": TOKEN, "run_time": 0.05})).start()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
        path = str(small_manifest(tmp_path))
        code, _, err = run(["run", path, "--run-dir", "rd", "--api-base", sim.base_url], capsys)
        assert code == 0, err
    finally:
        sim.stop()
    code, _, err = run(["run", path, "--run-dir", "rd", "--simulate", "-q"], capsys)
    assert code == 2
    assert err.startswith(f"error: rd holds results from {sim.base_url}; this run would ask the ")
    _, out, _ = run(["status", "rd", "--json"], capsys)
    assert json.loads(out)["origin"] == sim.base_url


# ---- 7. init and schema, from an empty folder outside the checkout ---------------------------


def batchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_starter_validates_and_runs_from_any_folder(tmp_path: Path) -> None:
    tmp_path = tmp_path / "empty"
    tmp_path.mkdir()
    done = batchrun(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "sweep.yaml"]
    first = (tmp_path / "sweep.yaml").read_text().splitlines()[0]
    schema = Path(first.removeprefix("# yaml-language-server: $schema="))
    # The installed batchrun's schema (a wheel's copy in CI, the checkout's in an editable
    # install): what `batchrun schema` of the same install prints.
    installed = batchrun(tmp_path, "schema")
    assert (installed.returncode, installed.stdout) == (0, f"{schema}\n")
    assert schema.is_absolute() and schema.name == manifest_schema_path().name
    assert schema.read_bytes() == manifest_schema_path().read_bytes()
    assert json.loads(schema.read_text())["title"]

    done = batchrun(tmp_path, "validate", "sweep.yaml")
    assert (done.returncode, done.stdout) == (0, "sweep.yaml: ok (6 jobs)\n"), done.stderr
    done = batchrun(tmp_path, "run", "sweep.yaml", "--simulate", "-q")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "outputs" / "starter" / "report.csv").read_text().splitlines()
    assert len(report) == 7


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prompts.txt").write_text("mine\n")
    code, out, err = run(["init", str(tmp_path)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {tmp_path / 'prompts.txt'} already exists; batchrun init never overwrites a "
        "file: move it away, or start in another folder: batchrun init DIR\n"
    )
    assert (tmp_path / "prompts.txt").read_text() == "mine\n"
    assert not (tmp_path / "sweep.yaml").exists()


def test_top_level_help_starts_from_init(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["--help"], capsys)
    assert "batchrun init" in out
    assert "manifests/" not in out  # the wheel ships no manifests/

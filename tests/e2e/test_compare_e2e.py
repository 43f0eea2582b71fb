"""End to end: the same manifest run twice on the simulator, then `batchrun compare`.

The second run uses `--sim drift=0.2`, which changes the output bytes of a deterministic
fraction of jobs; compare must name exactly those (derived from the two report.csv files).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from batchrun.cli import cli
from batchrun.results.reportcsv import read_jobs, split_cell
from testing.cli import run_cli

pytestmark = pytest.mark.skipif(
    "run" not in cli.commands, reason="the run engine (`batchrun run`) is not in this tree yet"
)

FAST = ["--sim", "run_time=0.05", "--sim", "run_time_jitter=0", "--sim", "workers=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs of a 20-job sweep: base, same (identical settings) and drift (drift=0.2)."""
    root = tmp_path_factory.mktemp("e2e")
    quick = Path(__file__).resolve().parents[2] / "manifests" / "quickstart.yaml"
    manifest = yaml.safe_load(quick.read_text())
    manifest["name"] = "compare-e2e"
    manifest["run"].update(poll_interval="50ms", max_in_flight=20, rate_limit="200/s")
    manifest["vars"] = {"color": ["orange", "indigo"]}
    manifest["matrix"] = {"seed": list(range(1, 11))}  # 2 x 10 = 20 jobs
    (root / "sweep.yaml").write_text(yaml.safe_dump(manifest))
    for name, extra in [("base", []), ("same", []), ("drift", ["--sim", "drift=0.2"])]:
        done = run_cli(
            "run", "sweep.yaml", "--simulate", "--run-dir", name, "--quiet", *FAST, *extra, cwd=root
        )
        assert done.returncode == 0, f"run {name}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return root


def _shas(run: Path) -> dict[str, list[str]]:
    return {
        job: split_cell(row["output_sha256"]) for job, row in read_jobs(run / "report.csv").items()
    }


def test_identical_runs_pass(runs: Path) -> None:
    assert _shas(runs / "base") == _shas(runs / "same")  # the simulator is deterministic
    done = run_cli("compare", "base", "same", "--json", "same.json", cwd=runs)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((runs / "same.json").read_text())
    assert doc["passed"] is True
    assert doc["totals"]["unchanged"] == 20


def test_drift_fails_naming_exactly_the_drifted_jobs(runs: Path) -> None:
    base, drift = _shas(runs / "base"), _shas(runs / "drift")
    assert base.keys() == drift.keys() and len(base) == 20
    drifted = {job for job in base if base[job] != drift[job]}
    assert 0 < len(drifted) < len(base)

    done = run_cli(
        "compare",
        "base",
        "drift",
        "--json",
        "d.json",
        "--junit",
        "d.xml",
        "--html",
        "d.html",
        cwd=runs,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads((runs / "d.json").read_text())
    assert {j["job_id"] for j in doc["jobs"] if j["failing"]} == drifted
    assert {j["job_id"] for j in doc["jobs"] if j["class"] == "changed"} == drifted
    for job_id in drifted:
        assert job_id in done.stdout
    # the side-by-side page links both runs' images of each drifted job
    page = (runs / "d.html").read_text()
    for job_id in drifted:
        assert f"base/files/{job_id}/" in page and f"drift/files/{job_id}/" in page


def test_drifted_images_are_visibly_different(runs: Path) -> None:
    # drift changes pixels, not just bytes: a small tolerance must not hide it
    done = run_cli("compare", "base", "drift", "--image-tolerance", "0.001", cwd=runs)
    assert done.returncode == 1, done.stdout + done.stderr


def test_report_html_of_a_simulated_run(runs: Path) -> None:
    from html.parser import HTMLParser

    from batchrun.results import html_pages, html_report

    path = html_pages.write_html(
        runs / "base", html_report.rows_from_report(runs / "base" / "report.csv")
    )
    srcs: list[str] = []

    class Imgs(HTMLParser):
        def handle_starttag(self, tag, attrs) -> None:
            if tag == "img":
                srcs.append(dict(attrs)["src"])

    Imgs().feed(path.read_text())
    assert len(srcs) == 20
    assert all((runs / "base" / src).is_file() for src in srcs)


def test_report_command_lays_out_report_html(runs: Path) -> None:
    done = run_cli("report", "same", "--rows", "color", "--cols", "input.seed", cwd=runs)
    assert done.returncode == 0, done.stderr
    page = (runs / "same" / "report.html").read_text()
    corner = "<th>var.color \\ input.seed</th>"
    assert corner in page
    headers = page.split(corner, 1)[1].split("</tr>", 1)[0]
    assert headers == "".join(f"<th>{seed}</th>" for seed in range(1, 11))

    done = run_cli("report", "same", "--rows", "size", cwd=runs)
    assert done.returncode == 2
    assert "error: --rows/--cols: no swept field 'size'; choose from " in done.stderr

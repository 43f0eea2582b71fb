"""The streamed plan: passes that keep no jobs, the same ids and lines as ever, nothing printed
before a problem is known, a long table cut to its first rows, memory flat in the sweep's size."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

import batchrun.plan.grid as grid
import batchrun.plan.rows as rows
from batchrun.cli import main
from batchrun.plan.build import build_plan, check_sweep
from batchrun.plan.grid import Job, Sweep, expand
from batchrun.plan.manifest import load_manifest
from testing.cli import batchrun_cmd, clean_env

REPO = Path(__file__).resolve().parents[2]
T2I = "google/nano-banana-2-lite/text-to-image"
KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
IMG = "https://x.runcomfy.net/in.png"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# Ids of the repository's manifests as they were before the plan streamed: a job id is a
# contract (resume, shards, baselines), so these never change.
REPO_IDS = {
    "quickstart": (6, ["b4e2ccaf026e", "ae98e14c0e80"], "e73ddfcb7b0f"),
    "compare-models": (11, ["6afa3bbc1aa2", "3417bcb7801f"], "4072c5721914"),
    "csv-sweep": (8, ["da18bc7981e2", "97b1b92efc78"], "6c5b2d501403"),
}


@pytest.mark.parametrize("name", sorted(REPO_IDS))
def test_repository_manifests_keep_their_job_ids(name: str) -> None:
    jobs = build_plan(REPO / "manifests" / f"{name}.yaml").jobs
    count, first_two, last = REPO_IDS[name]
    assert (len(jobs), [j.job_id for j in jobs[:2]], jobs[-1].job_id) == (count, first_two, last)
    for job in jobs:  # the id's definition, computed here independently
        canonical = json.dumps(job.inputs, sort_keys=True, separators=(",", ":"))
        assert job.inputs_json == canonical
        identity = f"{job.model_id}\n{canonical}" + (f"\n#{job.repeat}" if job.repeat else "")
        assert job.job_id == hashlib.sha256(identity.encode()).hexdigest()[:12]


TEMPLATED = f"""
version: 1
vars:
  color: [orange, "blé", "q\\"uo\\\\te", "日本", "x y"]
  n: [1, 2.5, -0.0, 1e20, 123456789012345678901234567890]
matrix: {{seed: [1, 2]}}
repeat: 2
models:
  - id: {KONTEXT}
    inputs: {{prompt: "an {{color}} umbrella {{n}} {{seed}} {{{{x}}}}", image_url: {IMG}}}
    cases: [{{aspect_ratio: "1:1"}}, {{aspect_ratio: "16:9", var.n: 7}}]
  - id: some/unknown/model
    inputs: {{value: "{{n}}", same: "{{seed}}", text: "{{color}}/{{n}}", fixed: [1, "é", null]}}
    exclude: [{{seed: 2, color: orange}}]
  - id: other/unknown/model
    inputs: {{prompt: "{{color}} {{n}}"}}
    matrix: {{nested: [[1, {{b: 2, a: "é"}}], {{z: 1, a: [true]}}]}}
"""


def test_compiled_rows_give_what_the_general_renderer_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row's templates compiled to str.format (and its canonical JSON written from the
    row's constants) give exactly the jobs of the general path, ids and all."""
    manifest = load_manifest(write(tmp_path, TEMPLATED))
    compiled = expand(manifest)
    taken: list[bool] = []
    real = rows.fast_maker
    monkeypatch.setattr(grid, "fast_maker", lambda *a: taken.append(real(*a) is not None))
    general = expand(manifest)
    # Every row but the last has a compiled form (an axis of lists takes the general path).
    assert taken == [True, True, True, False]
    assert len(compiled.jobs) == 2 * (5 * 5 * 2 + 5 * 2) + 2 * (5 * 5 * 2 - 5) + 2 * (5 * 5 * 2 * 2)
    assert compiled == general


def test_each_pass_is_the_same_and_keeps_no_jobs(tmp_path: Path) -> None:
    sweep = Sweep(load_manifest(write(tmp_path, TEMPLATED)))
    first = [Job(*row) for row in sweep.rows()]
    assert sweep.finish() == []
    assert list(sweep) == first
    assert [j.position for j in first] == list(range(len(first)))


def test_duplicate_warning_names_the_first_job_even_far_back(tmp_path: Path) -> None:
    # The last row repeats the 8th job's inputs: the warning must find job #8 again.
    path = write(
        tmp_path,
        f"""
        version: 1
        vars: {{n: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}
        models:
          - id: {T2I}
            inputs: {{prompt: "p {{n}}"}}
            cases: [{{aspect_ratio: "1:1"}}, {{aspect_ratio: "1:1", var.n: 7}}]
        """,
    )
    expansion = expand(load_manifest(path))
    assert len(expansion.jobs) == 10
    assert expansion.warnings == [
        f"{path}: $.models[0]: {T2I} n=7 gives the same inputs as job #8 "
        f"({expansion.jobs[7].job_id}); kept once"
    ]


def test_json_prints_nothing_when_a_late_job_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bad value is in the last 10,000 of 30,000 jobs: no line is printed before it."""
    path = write(
        tmp_path,
        f"""
        version: 1
        run: {{max_jobs: 100000}}
        vars: {{n: {{file: n.txt}}}}
        models:
          - id: {T2I}
            inputs: {{prompt: "p {{n}}"}}
            cases: [{{aspect_ratio: "1:1"}}, {{aspect_ratio: "16:9"}}, {{aspect_ratio: "nope"}}]
        """,
    )
    (tmp_path / "n.txt").write_text("".join(f"{i}\n" for i in range(10_000)))
    code, out, err = run(["plan", "--json", str(path)], capsys)
    assert (code, out) == (2, "")
    assert "$.models[0].cases[2].aspect_ratio" in err
    assert "'nope' is not one of" in err
    assert "(and 9999 more jobs)" in err


def test_json_prints_nothing_when_the_sweep_passes_max_jobs_late(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        f"""
        version: 1
        run: {{max_jobs: 2999}}
        vars: {{n: {{file: n.txt}}}}
        models:
          - id: {T2I}
            inputs: {{prompt: "p {{n}}"}}
        """,
    )
    (tmp_path / "n.txt").write_text("".join(f"{i}\n" for i in range(3000)))
    code, out, err = run(["plan", "--json", str(path)], capsys)
    assert (code, out) == (2, "")
    assert "$.run.max_jobs: the manifest expands to more than 2,999 jobs" in err


def test_streamed_check_raises_what_build_plan_raises(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        version: 1
        report: {{rows: seeed}}
        matrix: {{seed: [1, "x"], aspect_ratio: ["1:1", "nope"]}}
        models:
          - id: {KONTEXT}
            inputs: {{prompt: "p {{seed}}", image_url: "ftp://x"}}
          - id: blackforestlabs/flux-1-kontext/pro/edi
            inputs: {{prompt: p, image_url: {IMG}}}
        """,
    )
    with pytest.raises(Exception) as listed:
        build_plan(path)
    with pytest.raises(Exception) as streamed:
        check_sweep(path)
    assert str(streamed.value) == str(listed.value)
    assert "did you mean 'seed'" in str(streamed.value)


def table_manifest(tmp_path: Path, n: int) -> Path:
    return write(
        tmp_path,
        f"""
        version: 1
        name: long
        vars: {{n: {list(range(n))}}}
        models:
          - id: {T2I}
            inputs: {{prompt: "p {{n}}"}}
        """,
    )


def test_table_of_more_than_50_jobs_shows_the_first_20(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = table_manifest(tmp_path, 51)
    code, out, err = run(["plan", str(path)], capsys)
    jobs = build_plan(path).jobs
    assert code == 0
    lines = out.splitlines()
    assert lines[:4] == [
        "long: 51 jobs -> outputs/long",
        f"  {T2I}      51  unpriced",
        f"  {'total':<{len(T2I)}}      51  unpriced",
        "",
    ]
    assert lines[4:6] == [T2I, "  #   job_id        var.n  prompt"]
    assert lines[6:26] == [
        f"  {i + 1:<2}  {jobs[i].job_id}  {i:<5}  p {i}".rstrip() for i in range(20)
    ]
    assert lines[26:] == ["", "... 31 more jobs (plan --json lists them all)"]


def test_table_of_50_jobs_shows_them_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["plan", str(table_manifest(tmp_path, 50))], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4 + 2 + 50
    assert lines[-1].split()[:1] == ["50"]
    assert "more jobs" not in out


def test_selected_jobs_print_as_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--first and the others still pick from the whole plan; lines are the same as the whole
    plan's lines for those jobs."""
    path = table_manifest(tmp_path, 60)
    _, whole, _ = run(["plan", "--json", str(path)], capsys)
    code, part, err = run(["plan", "--json", "--first", "3", str(path)], capsys)
    assert code == 0
    assert part.splitlines() == whole.splitlines()[:3]
    assert "selected 3 of 60 jobs" in err


def peak_rss_mb(cmd: list[str]) -> float:
    """The child's own peak RSS (VmHWM, sampled while it runs; see test_many_outputs)."""
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.wait(0.02):
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate(timeout=300)
    done.set()
    sampler.join()
    assert proc.returncode == 0, err.decode()
    return peak[0] / 1024


def test_plan_json_memory_is_flat_in_the_number_of_jobs(tmp_path: Path) -> None:
    """20,000 and 200,000 jobs: the peak RSS grows by the ids kept to drop duplicates (about
    60 bytes a job), not by the jobs (it grew by 250 MB when the plan held them)."""
    peaks = []
    for jobs in (20_000, 200_000):
        doc = {
            "version": 1,
            "run": {"max_jobs": jobs},
            "vars": {"a": list(range(250)), "b": list(range(jobs // 250))},
            "models": [{"id": T2I, "inputs": {"prompt": "scale prompt {a}-{b}"}}],
        }
        path = tmp_path / f"m{jobs}.yaml"
        path.write_text(yaml.safe_dump(doc))
        peaks.append(peak_rss_mb(batchrun_cmd("plan", "--json", str(path))))
    assert peaks[0] > 20  # a real measurement: an interpreter with batchrun loaded
    assert peaks[1] - peaks[0] < 40, peaks

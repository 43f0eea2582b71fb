"""subset: --only filters, --first, --sample, --shard on `plan`; bad selections exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.cli import main
from batchrun.plan.grid import Job
from batchrun.plan.subset import Selection, SelectionError, parse_filter, parse_shard, select

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
IMAGE = "https://x.runcomfy.net/in.png"


def job(job_id: str, model: str = "m/a", pos: int = 0, vars=None, **inputs) -> Job:
    return Job(job_id, model, inputs, vars or {}, 0, pos)


JOBS = [
    job("aa01", "m/a", 0, {"color": "red"}, seed=3, prompt="cat"),
    job("aa02", "m/a", 1, {"color": "blue"}, seed="3", prompt="dog"),
    job("bb01", "m/a", 2, {"color": "red"}, seed=4, prompt="cat", flag=True),
    job("bb02", "m/b", 3, {"color": "blue"}, seed=3.5, prompt="cat"),
    job("cc01", "m/b", 4, {"color": "red"}, seed=1, prompt="x=y", flag=1),
]


def ids(selection: Selection, jobs: list[Job] = JOBS) -> list[str]:
    return [j.job_id for j in select(jobs, selection).jobs]


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        (["model=m/b"], ["bb02", "cc01"]),
        (["input.seed=3"], ["aa01", "aa02"]),  # the string and, as JSON, the integer
        (['input.seed="3"'], ["aa02"]),  # JSON string only
        (["input.seed=3.5"], ["bb02"]),
        (["input.flag=true"], ["bb01"]),  # JSON true is not the integer 1
        (["input.flag=1"], ["cc01"]),
        (["input.prompt=x=y"], ["cc01"]),  # only the first = splits
        (["var.color=red"], ["aa01", "bb01", "cc01"]),
        (["job=bb"], ["bb01", "bb02"]),
        (["var.color=red", "model=m/a"], ["aa01", "bb01"]),  # AND-ed
        (["input.prompt=cat", "var.color=blue"], ["bb02"]),
    ],
)
def test_only_expressions(exprs: list[str], expected: list[str]) -> None:
    chosen = select(JOBS, Selection(only=tuple(parse_filter(e) for e in exprs)))
    assert [j.job_id for j in chosen.jobs] == expected
    assert chosen.left_out == len(JOBS) - len(expected)


def test_first_is_per_model_in_expansion_order() -> None:
    assert ids(Selection(first=2)) == ["aa01", "aa02", "bb02", "cc01"]
    only_red = (parse_filter("var.color=red"),)
    assert ids(Selection(only=only_red, first=1)) == ["aa01", "cc01"]


def _sweep(n: int) -> list[Job]:
    return [job(f"{i:012x}", "m/a", i, seed=i) for i in range(n)]


def test_sample_is_stable_and_independent_of_order() -> None:
    jobs = _sweep(500)
    first = ids(Selection(sample=50, seed=7), jobs)
    assert len(first) == 50
    assert ids(Selection(sample=50, seed=7), list(reversed(jobs))) == list(reversed(first))
    assert ids(Selection(sample=50, seed=7), jobs) == first
    assert ids(Selection(sample=50, seed=8), jobs) != first
    # in expansion order
    assert first == sorted(first, key=lambda i: int(i, 16))


def test_shards_partition_and_divide_a_sample() -> None:
    jobs = _sweep(1000)
    sample = set(ids(Selection(sample=200, seed=1), jobs))
    parts = [set(ids(Selection(sample=200, seed=1, shard=(k, 3)), jobs)) for k in (1, 2, 3)]
    assert set().union(*parts) == sample
    assert sum(len(p) for p in parts) == 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/4", "K must be between 1 and 4, e.g. 1/4"),
        ("5/4", "K must be between 1 and 4, e.g. 1/4"),
        ("a/b", "expected K/N with whole numbers, e.g. 1/4"),
        ("1/0", "expected K/N with whole numbers, e.g. 1/4"),
        ("2", "expected K/N with whole numbers, e.g. 1/4"),
    ],
)
def test_bad_shard(text: str, message: str) -> None:
    with pytest.raises(SelectionError) as err:
        parse_shard(text)
    assert str(err.value) == message


def test_good_shard() -> None:
    assert parse_shard("3/4") == (3, 4)


# ---- through the command line ---------------------------------------------------------------


def big_manifest(tmp_path: Path, jobs: int) -> Path:
    data = {
        "version": 1,
        "name": "big",
        "run": {"max_jobs": jobs},
        "models": [
            {
                "id": FLUX,
                "inputs": {"prompt": "a cat", "image_url": IMAGE},
                "matrix": {"seed": list(range(jobs))},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(data))
    return path


def plan_ids(path: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", str(path), "--json", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line)["job_id"] for line in out.splitlines()]


def test_four_shards_of_10000_jobs(tmp_path: Path) -> None:
    path = big_manifest(tmp_path, 10_000)
    every = plan_ids(path)
    shards = [plan_ids(path, "--shard", f"{k}/4") for k in (1, 2, 3, 4)]
    assert len(every) == 10_000
    assert sorted(j for s in shards for j in s) == sorted(every)  # disjoint, every job once
    assert all(2300 <= len(s) <= 2700 for s in shards), [len(s) for s in shards]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`batchrun ARGS` in this process: the exit code and what went to stderr."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def quick(tmp_path: Path) -> Path:
    return big_manifest(tmp_path, 6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "0/4"], "error: --shard 0/4: K must be between 1 and 4, e.g. 1/4"),
        (["--shard", "5/4"], "error: --shard 5/4: K must be between 1 and 4, e.g. 1/4"),
        (["--shard", "a/b"], "error: --shard a/b: expected K/N with whole numbers, e.g. 1/4"),
        (
            ["--only", "size=3"],
            "error: --only size=3: unknown filter 'size'; expected model=ID, "
            "input.FIELD=VALUE, var.NAME=VALUE or job=ID_PREFIX",
        ),
        (
            ["--only", "input.sed=3"],
            "error: --only input.sed=3: no job has input field 'sed'; did you mean 'seed'?",
        ),
        (
            ["--only", "var.color=red"],
            "error: --only var.color=red: no job has var 'color'; known: (none)",
        ),
        (
            ["--only", "model=x/y"],
            f"error: --only model=x/y: no model 'x/y'; known: {FLUX}",
        ),
        (
            ["--only", "input.seed=99"],
            "error: --only input.seed=99: no job matches; `batchrun plan --json` shows every "
            "job's values",
        ),
        (
            ["--sample", "7"],
            "error: --sample 7: larger than the sweep (6 jobs); ask for at most 6",
        ),
        (
            ["--only", "input.seed=1", "--sample", "2"],
            "error: --sample 2: larger than the sweep (1 job after the filters); ask for at most 1",
        ),
        (["--seed", "3"], "error: --seed only applies with --sample N"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_selection_exits_2_before_anything_is_sent(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    args: list[str],
    message: str,
) -> None:
    path = quick(tmp_path)
    extra = []
    if command == "run":
        # A token and an API base nothing listens on: the run folder shows nothing started.
        monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-never-used")
        extra = ["--api-base", "http://127.0.0.1:9", "--run-dir", str(tmp_path / "r")]
    code, err = run_cli(capsys, command, str(path), *args, *extra)
    assert code == 2
    assert err.strip().splitlines()[-1] == message
    assert not (tmp_path / "r").exists()


def test_plan_says_how_many_were_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, "plan", str(quick(tmp_path)), "--only", "input.seed=2", "--json")
    assert code == 0
    assert err == "selected 1 of 6 jobs; 5 left out by the filter\n"


def test_shard_full_rate_needs_a_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(quick(tmp_path)), "--simulate", "--shard-full-rate")
    assert (code, err) == (2, "error: --shard-full-rate only applies with --shard K/N\n")

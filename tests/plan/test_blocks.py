"""Blocks: jobs counted a column at a time (plan/blocks.py) tell `plan` and `validate` exactly
what the one-by-one pass tells (counts, costs, names that vary, the first jobs, warnings and
problems word for word), whatever the manifest: cases, matrix, repeat, several models, values
from files, numbers coerced, duplicates, bad values, a sweep past run.max_jobs."""

from __future__ import annotations

import contextlib
import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

import batchrun.plan.grid as grid
from batchrun.commands.models import catalog_entry
from batchrun.errors import ManifestError
from batchrun.plan.blocks import Block
from batchrun.plan.build import StreamedPlan, check_sweep
from batchrun.plan.grid import JobRow, Sweep
from batchrun.plan.manifest import load_manifest

T2I = "google/nano-banana-2-lite/text-to-image"
VID = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "duration": {"type": "integer", "minimum": 1, "maximum": 20},
        "aspect_ratio": {"type": "string", "enum": ["1:1", "16:9"]},
        "seed": {"type": "integer"},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}
IMG = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "maxLength": 24},
        "num_images": {"type": "integer", "minimum": 1, "maximum": 4},
        "loud": {"type": "boolean"},
    },
    "required": ["prompt"],
    "additionalProperties": False,
}

MIXED = f"""
name: mixed
run: {{max_jobs: 100000}}
vars:
  a: {{file: a.txt}}
  b: [x, y, "q\\"uo%s", "日本", 7, 2.5]
repeat: 2
models:
  - id: acme/vid
    inputs: {{prompt: "clip {{a}} {{b}} 100%", aspect_ratio: "1:1"}}
    matrix: {{duration: [5, "10"], seed: [1, 2, 3]}}
    cases: [{{}}, {{aspect_ratio: "16:9", var.b: fixed}}, {{duration: "{{seed}}"}}]
  - id: acme/img
    inputs: {{prompt: "img {{b}} {{a}}", num_images: "{{n}}", loud: "{{lo}}"}}
    vars: {{n: {{file: n.txt}}, lo: ["true", "false"]}}
  - id: {T2I}
    inputs: {{prompt: "same {{c}}"}}
    vars: {{c: [k]}}
    repeat: 1
"""

CASES = {
    "mixed": MIXED,
    # A var no input uses: each combination of it repeats one before: duplicates.
    "duplicates": f"""
name: dup
vars: {{a: {{file: a.txt}}, unused: [1, 2, 3]}}
models: [{{id: {T2I}, inputs: {{prompt: "p {{a}}"}}}}]
""",
    # The same row twice: each block of the second is new within, but seen before.
    "a row twice": f"""
name: twice
vars: {{a: {{file: a.txt}}, b: [1, 2, 3]}}
models: [{{id: {T2I}, inputs: {{prompt: "p {{a}} {{b}}"}}, cases: [{{}}, {{}}]}}]
""",
    # One value of an axis is bad: one problem line, its first job and how many more.
    "bad values": """
name: bad
vars: {a: {file: a.txt}}
models:
  - id: acme/img
    inputs: {prompt: "img {a}"}
    matrix: {num_images: [1, 2, 9], loud: [true, "maybe"]}
""",
    # A list where the price counts a number: the same for every job, never hashed.
    "a list for a number": """
name: listnum
vars: {a: {file: a.txt}}
models: [{id: acme/img, inputs: {prompt: "img {a}", num_images: [2]}}]
""",
    # Rendered text that is too long for some jobs only (a field checked value by value);
    # no num_images: each job costs the price of one image.
    "long text": """
name: long
vars: {a: {file: a.txt}, pad: ["", "............................"]}
models: [{id: acme/img, inputs: {prompt: "img {a}{pad}"}}]
""",
    "one image each": """
name: one
vars: {a: {file: a.txt}, b: [1, 2, 3]}
models: [{id: acme/img, inputs: {prompt: "img {a} {b} 100%"}}]
""",
    # The second row's first combination gives the first row's job: the first jobs are still
    # all shown, one by one, before blocks begin.
    "a duplicate among the first jobs": """
name: dupfirst
matrix: {seed: {file: a.txt}}
models: [{id: acme/vid, inputs: {prompt: v}, cases: [{seed: 1}, {}]}]
""",
    "past max_jobs": f"""
name: many
run: {{max_jobs: 500}}
vars: {{a: {{file: a.txt}}, b: [1, 2, 3, 4, 5, 6, 7, 8, 9]}}
models: [{{id: {T2I}, inputs: {{prompt: "p {{a}} {{b}}"}}}}]
""",
    "exclude and an unknown model": """
name: ex
vars: {a: {file: a.txt}}
matrix: {seed: [1, 2, 3, 4]}
exclude: [{seed: 2}]
models:
  - {id: acme/vid, inputs: {prompt: "v {a}"}}
  - {id: some/unknown/model, inputs: {prompt: "u {a}"}}
""",
    "report grid typo": """
name: grid
report: {rows: var.a, cols: sed}
vars: {a: {file: a.txt}}
matrix: {seed: [1, 2]}
models: [{id: acme/vid, inputs: {prompt: "{a}"}}]
cases: [{}, {duration: 3}]
""",
}

REFUSED = {"a list for a number", "bad values", "long text", "past max_jobs", "report grid typo"}


def project(tmp_path: Path, body: str) -> Path:
    """The manifest, its value files and two priced models' schema files beside it."""
    folder = tmp_path / "schemas" / "models"
    folder.mkdir(parents=True)
    for model_id, price, unit, schema in (
        ("acme/vid", 0.07, "second", VID),
        ("acme/img", 0.03, "image", IMG),
    ):
        body_ = {"base_price_usd": price, "price_unit": unit, "input_schema": schema}
        entry = catalog_entry(body_, model_id, "2025-01-01T00:00:00Z")
        (folder / (model_id.replace("/", "__") + ".json")).write_text(json.dumps(entry))
    (tmp_path / "a.txt").write_text("".join(f"{i}\n" for i in range(1, 61)))
    (tmp_path / "n.txt").write_text("1\n2\n3\n4\n")
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\n" + textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


def outcome(path: Path, *, one_by_one: bool, head: int = 50) -> StreamedPlan | list[str]:
    """check_sweep as `plan` calls it for the table (`validate`: head 0); `each` makes it go
    job by job."""
    each = (lambda row, amount: None) if one_by_one else None
    try:
        return check_sweep(path, head=head, each=each)
    except ManifestError as exc:
        return exc.problems


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small blocks: many per row, rows that end mid-block, blocks next to jobs one by one.
    monkeypatch.setattr(grid, "_BLOCK", 97)
    monkeypatch.setattr(grid, "_MIN_BLOCK", 5)


@pytest.mark.parametrize("head", [50, 0], ids=["plan", "validate"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_blocks_tell_what_the_job_by_job_pass_tells(tmp_path: Path, name: str, head: int) -> None:
    path = project(tmp_path, CASES[name])
    blocked = outcome(path, one_by_one=False, head=head)
    reference = outcome(path, one_by_one=True, head=head)
    assert isinstance(reference, list) == (name in REFUSED)
    if isinstance(reference, list):
        assert blocked == reference
        return
    assert isinstance(blocked, StreamedPlan)
    assert blocked.summary == reference.summary
    assert blocked.warnings == reference.warnings


@pytest.mark.parametrize(
    "name",
    [
        "mixed",
        "bad values",
        "long text",
        "one image each",
        "a duplicate among the first jobs",
        "past max_jobs",
    ],
)
def test_the_sweeps_above_are_counted_in_blocks(tmp_path: Path, name: str) -> None:
    """(Else the comparison above would compare the one-by-one pass with itself.)"""
    sweep = Sweep(load_manifest(project(tmp_path, CASES[name])))
    items: list[object] = []
    with contextlib.suppress(ManifestError):  # past max_jobs: the blocks before it
        items.extend(sweep.counted(head=50))
    blocks = [item for item in items if isinstance(item, Block)]
    assert blocks
    if name != "past max_jobs":
        jobs = len(items) - len(blocks) + sum(b.size for b in blocks)
        assert jobs == sum(1 for _ in sweep.rows())


@pytest.mark.parametrize("name", ["mixed", "one image each", "long text"])
def test_a_blocks_jobs_and_ids_are_the_passs(tmp_path: Path, name: str) -> None:
    """Its jobs one by one, and the ids hashed a column at a time (as the pass knows them)."""
    sweep = Sweep(load_manifest(project(tmp_path, CASES[name])))
    counted: list[JobRow] = []
    for item in sweep.counted(head=50):
        if isinstance(item, Block):
            jobs = list(item.rows())
            assert item.id_keys() == {int(job[0], 16) for job in jobs}
            counted.extend(jobs)
        else:
            counted.append(item)
    assert counted == list(sweep.rows())


def test_mixed_sweep_estimates_every_model(tmp_path: Path) -> None:
    """The mixed sweep's costs, worked out here from the manifest: blocks sum them too."""
    plan = outcome(project(tmp_path, MIXED), one_by_one=False)
    assert isinstance(plan, StreamedPlan)
    costs = plan.summary.costs
    # acme/vid, 60 a x 6 b x 3 seeds x 2 repeats: durations 5 and 10; b fixed; duration = seed
    seconds = 60 * 6 * 3 * 2 * (5 + 10) + 60 * 3 * 2 * (5 + 10) + 60 * 6 * 2 * (1 + 2 + 3)
    assert costs["acme/vid"].usd == Decimal("0.07") * seconds
    # acme/img, 60 a x 6 b x 2 lo x 2 repeats: num_images 1 to 4
    assert costs["acme/img"].usd == Decimal("0.03") * 60 * 6 * 2 * 2 * (1 + 2 + 3 + 4)
    # every combination of the third model's is one job: kept once
    assert (costs[T2I].priced, costs[T2I].unpriced) == (0, 1)
    assert plan.summary.counts == {
        "acme/vid": 60 * 6 * 2 * 3 * 2 + 60 * 2 * 3 * 2 + 60 * 6 * 3 * 2,
        "acme/img": 60 * 6 * 4 * 2 * 2,
        T2I: 1,
    }

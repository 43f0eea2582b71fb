"""build_plan: job input validation (fast path == full schema validation), naming jobs."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

from batchrun.catalog import models
from batchrun.errors import ManifestError
from batchrun.plan.build import _Checker, build_plan, describe_job, varying_keys

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
IMG = "https://x.runcomfy.net/in.png"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


VALUES: dict[str, list[object]] = {
    "prompt": ["p", 3, None, ["a"]],
    "image_url": [IMG, "x.png", 1],
    "seed": [1, "1", 1.5, True, None],
    "aspect_ratio": ["16:9", 2],
    "extra": [1],
}


@pytest.mark.parametrize("model_id", models.known_models())
def test_fast_checker_agrees_with_full_validation(model_id: str) -> None:
    schema = models.input_schema(model_id) or {}
    fields = list(schema.get("properties", {}))[:4] + ["extra"]
    samples = {
        f: VALUES.get(f, ["text", 5, True, ["https://x.runcomfy.net/a.png"]]) for f in fields
    }
    checker = _Checker(model_id)
    for size in range(len(fields) + 1):
        for chosen in itertools.combinations(fields, size):
            for values in itertools.product(*(samples[f] for f in chosen)):
                inputs = dict(zip(chosen, values, strict=True))
                full = models.validate_inputs(model_id, inputs)
                assert checker.check(inputs) == full, inputs
                assert checker.check(inputs) == full, inputs  # cached answer too


def test_plan_of_valid_manifest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        version: 1
        matrix: {{seed: [1, 2]}}
        models:
          - id: {KONTEXT}
            inputs: {{prompt: p, image_url: {IMG}}}
        """,
    )
    plan = build_plan(path)
    assert [j.inputs["seed"] for j in plan.jobs] == [1, 2]
    assert plan.warnings == []
    assert plan.manifest.name == "m"


def test_errors_name_job_and_field_once_per_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        version: 1
        vars: {{color: [red, blue]}}
        matrix: {{seed: [1, x]}}
        models:
          - id: {KONTEXT}
            inputs: {{prompt: "{{color}}", image_url: nope.png}}
        """,
    )
    with pytest.raises(ManifestError) as info:
        build_plan(path)
    label = str(path)
    assert info.value.problems == [
        f"{label}: $.models[0].inputs.image_url: job {KONTEXT} (color='red', prompt='red', "
        "seed=1): $.image_url: 'nope.png' does not match '^(https?://|data:)' (and 3 more jobs) "
        "(line 7)",
        f"{label}: $.matrix.seed[1]: job {KONTEXT} (color='red', prompt='red', seed='x'): "
        "$.seed: 'x' is not of type 'integer' (and 1 more job) (line 4)",
    ]


def test_unknown_model_warning_and_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nmodels: [{id: acme/x, inputs: {a: 1}}]\n")
    plan = build_plan(path)
    assert len(plan.jobs) == 1
    assert plan.warnings == [
        f"{path}: $.models[0].id: no local input schema for 'acme/x'; "
        "inputs are not checked before sending (get its schema: batchrun models pull acme/x)"
    ]
    with pytest.raises(ManifestError, match=r"no local input schema .*\(--strict\)"):
        build_plan(path, strict=True)


def test_varying_keys_and_describe(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        version: 1
        repeat: 2
        vars: {{color: [red]}}
        matrix: {{seed: [1, 2]}}
        models:
          - id: {KONTEXT}
            inputs: {{prompt: "{{color}}", image_url: {IMG}}}
        """,
    )
    plan = build_plan(path)
    assert varying_keys(plan.jobs) == {KONTEXT: ("seed", "repeat")}
    assert describe_job(plan.jobs[1], ("seed", "repeat")) == f"{KONTEXT} (seed=1, repeat=1)"

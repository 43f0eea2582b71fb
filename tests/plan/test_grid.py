"""Grid expansion: every semantic of DESIGN.md's manifest v1, parametrized."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from batchrun.errors import ManifestError
from batchrun.plan.grid import expand, job_id
from batchrun.plan.manifest import load_manifest

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
T2I = "google/nano-banana-2-lite/text-to-image"
IMG = "https://x.runcomfy.net/in.png"


def write(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for name, content in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def expand_text(tmp_path: Path, text: str, files: dict[str, str] | None = None):
    return expand(load_manifest(write(tmp_path, text, files)))


def rows(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> list[tuple]:
    """(model, inputs minus fixed noise, vars, repeat) per job, in order."""
    out = []
    for job in expand_text(tmp_path, text, files).jobs:
        inputs = {k: v for k, v in job.inputs.items() if k != "image_url"}
        out.append((job.model_id.split("/")[0], inputs, job.vars, job.repeat))
    return out


HEAD = f"""
version: 1
models:
  - id: {KONTEXT}
    inputs: {{prompt: p, image_url: {IMG}}}
"""

CASES = [
    pytest.param(
        "matrix: {seed: [1, 2], aspect_ratio: ['1:1', '16:9']}\n" + HEAD,
        [
            {"prompt": "p", "seed": 1, "aspect_ratio": "1:1"},
            {"prompt": "p", "seed": 1, "aspect_ratio": "16:9"},
            {"prompt": "p", "seed": 2, "aspect_ratio": "1:1"},
            {"prompt": "p", "seed": 2, "aspect_ratio": "16:9"},
        ],
        id="cartesian-product-last-axis-fastest",
    ),
    pytest.param(
        "matrix: {seed: [1, 2]}\n" + HEAD + "    matrix: {seed: [7]}\n",
        [{"prompt": "p", "seed": 7}],
        id="model-matrix-key-wins",
    ),
    pytest.param(
        "matrix: {seed: [1]}\n" + HEAD + "    matrix: {aspect_ratio: ['1:1', '3:4']}\n",
        [
            {"prompt": "p", "seed": 1, "aspect_ratio": "1:1"},
            {"prompt": "p", "seed": 1, "aspect_ratio": "3:4"},
        ],
        id="model-matrix-crossed-with-top",
    ),
    pytest.param(
        HEAD + "    matrix: {prompt: [a, b]}\n",
        [{"prompt": "a"}, {"prompt": "b"}],
        id="matrix-overrides-fixed-input",
    ),
    pytest.param(
        "cases: [{seed: 1}, {seed: 5, aspect_ratio: '1:1'}]\n" + HEAD,
        [{"prompt": "p", "seed": 1}, {"prompt": "p", "seed": 5, "aspect_ratio": "1:1"}],
        id="cases-without-matrix-are-the-rows",
    ),
    pytest.param(
        "cases: [{prompt: x}, {prompt: y}]\nmatrix: {seed: [1, 2]}\n" + HEAD,
        [
            {"prompt": "x", "seed": 1},
            {"prompt": "x", "seed": 2},
            {"prompt": "y", "seed": 1},
            {"prompt": "y", "seed": 2},
        ],
        id="cases-crossed-with-product",
    ),
    pytest.param(
        "cases: [{seed: 9}, {prompt: z}]\nmatrix: {seed: [1, 2]}\n" + HEAD,
        [{"prompt": "p", "seed": 9}, {"prompt": "z", "seed": 1}, {"prompt": "z", "seed": 2}],
        id="case-key-is-not-swept-for-that-case",
    ),
    pytest.param(
        "cases: [{seed: 1}]\n" + HEAD + "    cases: [{seed: 2}, {seed: 3}]\n",
        [{"prompt": "p", "seed": 2}, {"prompt": "p", "seed": 3}],
        id="model-cases-replace-top-cases",
    ),
    pytest.param(
        "matrix: {seed: [1, 2, 3]}\nexclude: [{seed: 2}]\n" + HEAD,
        [{"prompt": "p", "seed": 1}, {"prompt": "p", "seed": 3}],
        id="exclude-partial-dict",
    ),
    pytest.param(
        "matrix: {seed: [1, 2], aspect_ratio: ['1:1', '3:4']}\n"
        + HEAD
        + "    exclude: [{seed: 1, aspect_ratio: '3:4'}]\n",
        [
            {"prompt": "p", "seed": 1, "aspect_ratio": "1:1"},
            {"prompt": "p", "seed": 2, "aspect_ratio": "1:1"},
            {"prompt": "p", "seed": 2, "aspect_ratio": "3:4"},
        ],
        id="exclude-needs-every-key",
    ),
    pytest.param(
        "repeat: 2\n" + HEAD,
        [{"prompt": "p"}, {"prompt": "p"}],
        id="repeat-top",
    ),
    pytest.param(
        "repeat: 3\n" + HEAD + "    repeat: 1\n",
        [{"prompt": "p"}],
        id="repeat-model-overrides-top",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_expansion_semantics(tmp_path: Path, text: str, expected: list[dict]) -> None:
    got = [inputs for _, inputs, _, _ in rows(tmp_path, text)]
    assert got == expected


def test_vars_are_swept_templated_and_never_sent(tmp_path: Path) -> None:
    text = f"""
    version: 1
    vars: {{color: [orange, blue]}}
    matrix: {{seed: [1, 2]}}
    models:
      - id: {KONTEXT}
        inputs: {{prompt: "an {{color}} umbrella", image_url: {IMG}}}
    """
    got = rows(tmp_path, text)
    assert [(i["prompt"], i["seed"], v) for _, i, v, _ in got] == [
        ("an orange umbrella", 1, {"color": "orange"}),
        ("an orange umbrella", 2, {"color": "orange"}),
        ("an blue umbrella", 1, {"color": "blue"}),
        ("an blue umbrella", 2, {"color": "blue"}),
    ]
    assert all("color" not in i for _, i, _, _ in got)


def test_exclude_matches_vars(tmp_path: Path) -> None:
    text = f"""
    version: 1
    vars: {{color: [red, blue]}}
    exclude: [{{color: red}}]
    models:
      - id: {KONTEXT}
        inputs: {{prompt: "{{color}}", image_url: {IMG}}}
    """
    assert [i["prompt"] for _, i, _, _ in rows(tmp_path, text)] == ["blue"]


def test_exclude_matching_nothing_warns(tmp_path: Path) -> None:
    text = "matrix: {seed: [1]}\nexclude: [{seed: 99}]\n" + HEAD
    exp = expand_text(tmp_path, textwrap.dedent(text))
    assert len(exp.jobs) == 1
    assert any("$.exclude[0]: matched no combination" in w for w in exp.warnings)


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("{seed}", "seed: [5]", 5),  # exact placeholder keeps the int
        ("{flag}", "flag: [true]", True),
        ("s{seed}", "seed: [5]", "s5"),
        ("{flag}!", "flag: [false]", "false!"),
        ("{{literal}} {seed}", "seed: [5]", "{literal} 5"),
        ("{{seed}}", "seed: [5]", "{seed}"),
        ("a }} b {{", "seed: [5]", "a } b {"),
        ("{ seed }", "seed: [5]", 5),
        ("{list}", "list: [[1, 2]]", [1, 2]),
        ("x {list}", "list: [[1, 2]]", "x [1, 2]"),
    ],
)
def test_template_rendering(tmp_path: Path, template: str, context: str, expected) -> None:
    text = f"""
    version: 1
    vars: {{{context}}}
    models:
      - id: some/unknown/model
        inputs: {{value: {template!r}}}
    """
    text = text.replace("'", '"') if "'" in template else text
    [job] = expand_text(tmp_path, text).jobs
    assert job.inputs["value"] == expected


def test_templates_may_reference_input_fields(tmp_path: Path) -> None:
    text = f"""
    version: 1
    vars: {{style: ["in {{subject}} style"]}}
    matrix: {{subject: [ink]}}
    models:
      - id: some/unknown/model
        inputs: {{prompt: "a cat, {{style}}", image_url: {IMG}}}
    """
    [job] = expand_text(tmp_path, text).jobs
    assert job.inputs["prompt"] == "a cat, in ink style"
    assert job.vars == {"style": "in ink style"}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{colr}", "$.models[0].inputs.prompt: unknown placeholder {colr}; known names:"),
        ("a { b", "lone '{'"),
        ("a } b", "lone '}'"),
        ("{a-b}", "bad placeholder '{a-b}'"),
        ("{prompt}", "loop: prompt -> prompt"),
    ],
)
def test_template_errors(tmp_path: Path, template: str, message: str) -> None:
    text = f"""
    version: 1
    vars: {{color: [red]}}
    models:
      - id: {KONTEXT}
        inputs: {{prompt: "{template}", image_url: {IMG}}}
    """
    with pytest.raises(ManifestError) as info:
        expand_text(tmp_path, text)
    assert str(tmp_path / "m.yaml") in str(info.value)
    assert message in str(info.value)


def test_values_from_text_file(tmp_path: Path) -> None:
    text = f"""
    version: 1
    matrix: {{prompt: {{file: data/prompts.txt}}, seed: {{file: data/seeds.txt}}}}
    models:
      - id: {KONTEXT}
        inputs: {{image_url: {IMG}}}
    """
    files = {"data/prompts.txt": "first\n\n  second  \n\n", "data/seeds.txt": "7\n"}
    got = [i for _, i, _, _ in rows(tmp_path, text, files)]
    # Blank lines skipped, whitespace trimmed, "7" becomes 7 because seed is an integer field.
    assert got == [{"prompt": "first", "seed": 7}, {"prompt": "second", "seed": 7}]


def test_values_from_csv_column_and_csv_cases(tmp_path: Path) -> None:
    text = f"""
    version: 1
    vars: {{mood: {{csv: c.csv, column: mood}}}}
    cases: {{csv: rows.csv}}
    models:
      - id: {KONTEXT}
        inputs: {{prompt: "{{subject}} {{mood}}", image_url: {IMG}, seed: 1}}
    """
    files = {
        "c.csv": "mood,other\nhappy,x\n,y\nsad,z\n",
        "rows.csv": "var.subject,seed\ncat,3\ndog,\n",
    }
    got = [(i["prompt"], i["seed"]) for _, i, _, _ in rows(tmp_path, text, files)]
    assert got == [("cat happy", 3), ("cat sad", 3), ("dog happy", 1), ("dog sad", 1)]


def test_job_ids_are_stable_across_reordering(tmp_path: Path) -> None:
    a = f"""
    version: 1
    vars: {{color: [red, blue]}}
    matrix: {{seed: [1, 2]}}
    models:
      - id: {KONTEXT}
        inputs: {{prompt: "{{color}}", image_url: {IMG}, aspect_ratio: "1:1"}}
      - id: {T2I}
        inputs: {{prompt: "{{color}}"}}
    """
    b = f"""
    models:
      - inputs: {{aspect_ratio: "1:1", image_url: {IMG}, prompt: "{{color}}"}}
        id: {KONTEXT}
      - id: {T2I}
        inputs: {{prompt: "{{color}}"}}
    matrix: {{seed: [2, 1]}}
    vars: {{color: [blue, red]}}
    version: 1
    """
    first = expand_text(tmp_path, a).jobs
    second = expand_text(tmp_path, b).jobs
    assert {j.job_id for j in first} == {j.job_id for j in second}
    assert len({j.job_id for j in first}) == 8
    assert [j.position for j in first] == list(range(8))
    for job in first:
        canonical = json.dumps(job.inputs, sort_keys=True, separators=(",", ":"))
        assert job.inputs_json == canonical
        assert (
            job.job_id == hashlib.sha256(f"{job.model_id}\n{canonical}".encode()).hexdigest()[:12]
        )


def test_job_id_definition_and_repeat_index() -> None:
    inputs = {"prompt": "p", "seed": 1}
    assert job_id(KONTEXT, inputs) == job_id(KONTEXT, {"seed": 1, "prompt": "p"})
    assert len(job_id(KONTEXT, inputs)) == 12
    assert job_id(KONTEXT, inputs, 1) != job_id(KONTEXT, inputs, 0)
    assert job_id(T2I, inputs) != job_id(KONTEXT, inputs)


def test_raising_repeat_keeps_existing_ids(tmp_path: Path) -> None:
    once = expand_text(tmp_path, HEAD).jobs
    thrice = expand_text(tmp_path, "repeat: 3\n" + HEAD).jobs
    assert thrice[0].job_id == once[0].job_id
    assert [j.repeat for j in thrice] == [0, 1, 2]
    assert len({j.job_id for j in thrice}) == 3


def test_duplicates_are_one_job_with_a_warning(tmp_path: Path) -> None:
    # `unused` is swept but never used in a template: both values give the same inputs.
    text = "vars: {unused: [a, b]}\n" + HEAD
    exp = expand_text(tmp_path, text)
    assert len(exp.jobs) == 1
    assert any("same inputs as job #1" in w for w in exp.warnings)


def test_max_jobs_guard(tmp_path: Path) -> None:
    text = "run: {max_jobs: 5}\nmatrix: {seed: [1, 2, 3], aspect_ratio: [a, b]}\n" + HEAD
    with pytest.raises(ManifestError) as info:
        expand_text(tmp_path, text)
    message = str(info.value)
    assert "$.run.max_jobs: the manifest expands to more than 5 jobs" in message
    assert "the full grid is 6" in message
    assert "raise run.max_jobs" in message


def test_max_jobs_default_is_ten_thousand(tmp_path: Path) -> None:
    seeds = "\n".join(str(i) for i in range(10001))
    text = "matrix: {seed: {file: s.txt}}\n" + HEAD
    with pytest.raises(ManifestError, match="more than 10,000 jobs"):
        expand_text(tmp_path, text, {"s.txt": seeds})


def test_var_and_field_with_one_name_is_an_error(tmp_path: Path) -> None:
    text = "vars: {seed: [1]}\nmatrix: {seed: [2]}\n" + HEAD
    with pytest.raises(ManifestError, match=r"\$\.matrix\.seed: 'seed' is both a var"):
        expand_text(tmp_path, text)


DESIGN_EXAMPLE = """\
# yaml-language-server: $schema=../schemas/manifest.schema.json
version: 1
name: umbrella-sweep            # run name; default: the file's stem
run:
  rate_limit: 10/s              # API calls (submit+status+result+cancel), "N/s" or "N/min"
  max_in_flight: 20             # submitted and not yet finished
  poll_interval: 2s             # first poll delay; adaptive after that
  job_timeout: 30m              # then: cancel if queued, give up if running; state timed_out
  retries: 1                    # resubmissions of a job whose result is "failed"
outputs:
  dir: outputs/{name}           # the run folder
  download: true
vars:                           # template-only variables, swept like matrix, never sent
  color: [orange, blue]
matrix:                         # input fields swept for every model (cartesian product)
  seed: [1, 2, 3]
models:
  - id: blackforestlabs/flux-1-kontext/pro/edit
    inputs:                     # fixed inputs; strings may use {var} / {field} templates
      prompt: "She is now holding an {color} umbrella and smiling"
      image_url: https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp
      aspect_ratio: "16:9"
    matrix:                     # per-model fields, crossed with the top-level matrix
      aspect_ratio: ["16:9", "1:1"]
"""


def test_design_example(tmp_path: Path) -> None:
    manifest = load_manifest(write(tmp_path, DESIGN_EXAMPLE))
    assert manifest.name == "umbrella-sweep"
    assert manifest.outputs.dir == "outputs/umbrella-sweep"
    jobs = expand(manifest).jobs
    assert len(jobs) == 12
    assert {j.inputs["aspect_ratio"] for j in jobs} == {"16:9", "1:1"}
    assert jobs[0].inputs["prompt"] == "She is now holding an orange umbrella and smiling"

"""`batchrun validate` / `batchrun plan` through the CLI: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from batchrun.cli import main
from testing.cli import run_cli

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
MODEL = f"""
models:
  - id: {KONTEXT}
    inputs: {{prompt: p, image_url: "https://x.runcomfy.net/a.png"}}
"""
GOOD = "version: 1\n" + MODEL

# "billion laughs": 10**7 values once the aliases are expanded
BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)

# (id, manifest text, extra files, text the error must contain)
BAD: list[tuple[str, str, dict[str, str], str]] = [
    ("empty", "", {}, "$: the manifest must be a mapping"),
    ("top-level-list", "- 1\n- 2\n", {}, "$: the manifest must be a mapping"),
    ("yaml-syntax", "version: 1\nmodels: [\n", {}, "invalid YAML"),
    ("python-tag", GOOD + "name: !!python/object:os.system x\n", {}, "invalid YAML"),
    ("duplicate-key", GOOD + "version: 1\n", {}, "$.version: duplicate key"),
    ("no-version", MODEL, {}, "$: 'version' is a required property"),
    ("version-2", "version: 2\n" + MODEL, {}, "$.version: 2: only version 1 is known"),
    ("no-models", "version: 1\n", {}, "$: 'models' is a required property"),
    ("models-empty", "version: 1\nmodels: []\n", {}, "$.models: [] should be non-empty"),
    ("model-no-id", "version: 1\nmodels: [{inputs: {}}]\n", {}, "$.models[0]: 'id' is a"),
    ("model-id-shape", "version: 1\nmodels: [{id: kontext}]\n", {}, "$.models[0].id: 'kontext'"),
    ("unknown-top-key", GOOD + "modles: []\n", {}, "$.modles: unknown key 'modles'; did you"),
    (
        "unknown-model-key",
        GOOD + "    input: {}\n",
        {},
        "$.models[0].input: unknown key 'input'; did you mean 'inputs'?",
    ),
    ("unknown-run-key", GOOD + "run: {rate: 5}\n", {}, "$.run.rate: unknown key 'rate'"),
    ("bad-rate", GOOD + "run: {rate_limit: 10 per second}\n", {}, "$.run.rate_limit: '10 per"),
    ("bad-duration", GOOD + "run: {poll_interval: fast}\n", {}, "$.run.poll_interval: 'fast'"),
    ("zero-timeout", GOOD + "run: {job_timeout: 0s}\n", {}, "$.run.job_timeout: '0s': a dur"),
    ("max-jobs-zero", GOOD + "run: {max_jobs: 0}\n", {}, "$.run.max_jobs: 0 is less than"),
    ("bad-name", GOOD + "name: my run!\n", {}, "$.name: 'my run!': use letters"),
    (
        "dir-placeholder",
        GOOD + "outputs: {dir: 'out/{nam}'}\n",
        {},
        "$.outputs.dir: unknown placeholder '{nam}'",
    ),
    ("bad-size", GOOD + "outputs: {max_file_size: lots}\n", {}, "$.outputs.max_file_size: 'lots'"),
    ("matrix-scalar", GOOD + "matrix: {seed: 5}\n", {}, "$.matrix.seed: 5 must be a non-empty"),
    ("matrix-empty", GOOD + "matrix: {seed: []}\n", {}, "$.matrix.seed: [] must be a non-empty"),
    ("matrix-key-name", GOOD + "matrix: {my-field: [1]}\n", {}, "$.matrix: 'my-field' does not"),
    (
        "file-missing",
        GOOD + "matrix: {prompt: {file: nope.txt}}\n",
        {},
        "$.matrix.prompt.file: file not found",
    ),
    ("file-empty", GOOD + "matrix: {prompt: {file: e.txt}}\n", {"e.txt": "\n\n"}, "has no values"),
    (
        "csv-column-missing",
        GOOD + "matrix: {prompt: {csv: c.csv, column: promt}}\n",
        {"c.csv": "prompt\na\n"},
        "$.matrix.prompt.column: no column 'promt' in c.csv; columns: prompt",
    ),
    ("cases-csv-missing", GOOD + "cases: {csv: nope.csv}\n", {}, "$.cases.csv: file not found"),
    (
        "cases-csv-bad-header",
        GOOD + "cases: {csv: c.csv}\n",
        {"c.csv": "my field\nx\n"},
        "$.cases.csv: c.csv: column names must be",
    ),
    ("cases-scalar", GOOD + "cases: 3\n", {}, "$.cases: 3 must be a non-empty list"),
    ("exclude-dict", GOOD + "exclude: {seed: 1}\n", {}, "$.exclude: {'seed': 1} is not of type"),
    ("repeat-zero", GOOD + "repeat: 0\n", {}, "$.repeat: 0 is less than the minimum of 1"),
    (
        "unknown-placeholder",
        "version: 1\nvars: {color: [red]}\n" + MODEL.replace("prompt: p", "prompt: '{colr}'"),
        {},
        "$.models[0].inputs.prompt: unknown placeholder {colr}; known names: color,",
    ),
    (
        "lone-brace",
        GOOD.replace("prompt: p", "prompt: 'a { b'"),
        {},
        "$.models[0].inputs.prompt: lone '{'",
    ),
    (
        "var-field-clash",
        GOOD + "vars: {prompt: [x]}\n",
        {},
        "$.vars.prompt: 'prompt' is both a var and an input field",
    ),
    (
        "input-wrong-type",
        GOOD + "matrix: {seed: [1, x]}\n",
        {},
        f"job {KONTEXT} (seed='x'): $.seed: 'x' is not of type 'integer'",
    ),
    (
        "input-missing-required",
        f"version: 1\nmodels: [{{id: {KONTEXT}, inputs: {{prompt: p}}}}]\n",
        {},
        f"job {KONTEXT}: $: 'image_url' is a required property",
    ),
    (
        "input-unknown-field",
        GOOD.replace("prompt: p", "promt: p, prompt: p"),
        {},
        "$.models[0].inputs.promt: job blackforestlabs/flux-1-kontext/pro/edit: $.promt: "
        "unknown field 'promt'; did you mean 'prompt'? (line 5)",
    ),
    (
        "input-not-url",
        GOOD.replace("https://x.runcomfy.net/a.png", "a.png"),
        {},
        "$.image_url: 'a.png' does not match",
    ),
    (
        "alias-bomb",
        GOOD + BOMB,
        {},
        "$: more than 1,000,000 values once YAML aliases are expanded",
    ),
    ("deep-nesting", "version: 1\nmodels: " + "[" * 1500 + "]" * 1500, {}, "nested too deeply"),
    (
        "too-many-jobs",
        GOOD + "run: {max_jobs: 2}\nmatrix: {seed: [1, 2, 3]}\n",
        {},
        "$.run.max_jobs: the manifest expands to more than 2 jobs (the full grid is 3)",
    ),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("text", "files", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_malformed_manifest_exits_2_naming_file_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, files: dict, expected: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run(["validate", str(path)], capsys)
    assert code == 2
    assert out == ""
    assert f"{path}: " in err
    assert expected in err
    assert "Traceback" not in out + err


def test_enough_malformed_cases() -> None:
    assert len(BAD) >= 25


def test_unreadable_and_non_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"version: 1\nname: \xff\xfe\n")
    code, _, err = run(["validate", str(tmp_path / "missing.yaml"), str(binary)], capsys)
    assert code == 2
    assert f"{tmp_path / 'missing.yaml'}: cannot read the manifest" in err
    assert f"{binary}: not UTF-8 text" in err


def _manifests(repo: Path) -> list[Path]:
    """The manifests a user is shown: manifests/ (core install) and examples/ (with extras)."""
    return [*(repo / "manifests").glob("*.yaml"), repo / "examples" / "ci-video.yaml"]


def test_validate_examples(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = sorted(str(p) for p in _manifests(repo))
    assert len(paths) >= 3
    code, out, err = run(["validate", *paths], capsys)
    assert code == 0, err
    assert f"{repo / 'manifests' / 'quickstart.yaml'}: ok (6 jobs)\n" in out


def test_examples_start_with_schema_comment(repo: Path) -> None:
    for path in _manifests(repo):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/manifest.schema.json"


def test_validate_reports_each_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 3\n" + MODEL, encoding="utf-8")
    code, out, err = run(["validate", str(bad), str(good)], capsys)
    assert code == 2
    assert out == f"{good}: ok (1 job)\n"
    assert err == f"{bad}: $.version: 3: only version 1 is known (line 1)\n"


def test_unknown_model_warns_or_fails_with_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodels: [{id: acme/new-model, inputs: {x: 1}}]\n")
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (0, f"{path}: ok (1 job)\n")
    assert "warning: " in err and "$.models[0].id: no local input schema for" in err
    code, out, err = run(["validate", "--strict", str(path)], capsys)
    assert code == 2 and out == ""
    assert "no local input schema for 'acme/new-model'" in err


def test_plan_table(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", str(repo / "manifests" / "quickstart.yaml")], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "quickstart: 6 jobs -> outputs/quickstart"
    assert lines[1].split() == [KONTEXT, "6", "unpriced"]
    assert lines[2].split() == ["total", "6", "unpriced"]
    assert lines[5].split() == ["#", "job_id", "var.color", "prompt", "seed"]
    assert lines[6].split()[2] == "orange"
    assert len(lines) == 5 + 1 + 6


def test_plan_json(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["plan", "--json", str(repo / "manifests" / "quickstart.yaml")], capsys)
    assert code == 0
    jobs = [json.loads(line) for line in out.splitlines()]
    assert len(jobs) == 6
    assert set(jobs[0]) == {"job_id", "model_id", "inputs", "vars", "repeat", "est_cost_usd"}
    assert jobs[0]["est_cost_usd"] is None  # the packaged Kontext schema has no price
    assert jobs[0]["inputs"]["prompt"] == "She is now holding an orange umbrella and smiling"
    assert jobs[0]["vars"] == {"color": "orange"}
    assert len({j["job_id"] for j in jobs}) == 6


def test_plan_bad_manifest_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(GOOD + "matrix: {seed: [x]}\n")
    code, out, err = run(["plan", str(path)], capsys)
    assert code == 2 and out == ""
    assert "$.seed: 'x' is not of type 'integer'" in err and "Traceback" not in err


def test_python_m_batchrun_validate(repo: Path) -> None:
    proc = run_cli("validate", "manifests/quickstart.yaml", cwd=repo, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "manifests/quickstart.yaml: ok (6 jobs)\n")


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate", "--help"], capsys)
    assert code == 0 and "batchrun validate manifests/*.yaml" in out
    textwrap.dedent(out)


@pytest.mark.slow
def test_plan_json_100k_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "seeds.txt").write_text("\n".join(str(i) for i in range(1000)))
    path = tmp_path / "big.yaml"
    path.write_text(
        GOOD.replace("prompt: p", "prompt: '{color} {seed}'")
        + "run: {max_jobs: 100000}\nvars: {color: [a, b, c, d, e, f, g, h, i, j]}\n"
        + "matrix: {seed: {file: seeds.txt}, aspect_ratio: [a, b, c, d, e, f, g, h, i, j]}\n"
    )
    code, out, err = run(["plan", "--json", str(path)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 100_000
    assert len({json.loads(line)["job_id"] for line in lines[:1000]}) == 1000


def test_typo_in_an_input_field_names_its_line_and_the_field_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "s")]) == 0
    path = tmp_path / "s" / "sweep.yaml"
    text = path.read_text()
    path.write_text(text.replace("  aspect_ratio: [", "  aspect_ration: ["), encoding="utf-8")
    line = text.splitlines().index('  aspect_ratio: ["1:1", "16:9"]') + 1
    capsys.readouterr()
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"{path}: $.matrix.aspect_ration: job google/nano-banana-2-lite/text-to-image "
        "(prompt='a lighthouse on a cliff at dawn, watercolor', aspect_ration='1:1'): "
        "$.aspect_ration: unknown field 'aspect_ration'; did you mean 'aspect_ratio'? "
        f"(and 5 more jobs) (line {line})\n"
    )


def test_manifest_key_and_input_field_problems_come_in_one_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            run: {{rate_limt: 5/s}}
            matirx: {{seed: [1]}}
            models:
              - id: {KONTEXT}
                inputs:
                  prompt: p
                  image_url: "https://x.runcomfy.net/a.png"
                  aspect_ration: "1:1"
                matrix: {{seed: [1, x]}}
            """
        ),
        encoding="utf-8",
    )
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{path}: $.matirx: unknown key 'matirx'; did you mean 'matrix'? (line 3)",
        f"{path}: $.run.rate_limt: unknown key 'rate_limt'; did you mean 'rate_limit'? (line 2)",
        f"{path}: $.models[0].inputs.aspect_ration: job {KONTEXT} (seed=1): $.aspect_ration: "
        "unknown field 'aspect_ration'; did you mean 'aspect_ratio'? (and 1 more job) (line 9)",
        f"{path}: $.models[0].matrix.seed[1]: job {KONTEXT} (seed='x'): $.seed: 'x' is not of "
        "type 'integer' (line 10)",
    ]


def test_too_broken_to_expand_says_inputs_were_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodels: [{inputs: {promt: p}}]\n", encoding="utf-8")
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"{path}: $.models[0]: 'id' is a required property (line 2)\n"
        f"{path}: jobs' input fields not checked yet: fix the problems above first\n"
    )


def test_unknown_model_says_how_to_get_its_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\nmodels: [{id: acme/new-model, inputs: {x: 1}}]\n")
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (0, f"{path}: ok (1 job)\n")
    assert err == (
        f"warning: {path}: $.models[0].id: no local input schema for 'acme/new-model'; inputs "
        "are not checked before sending (get its schema: batchrun models pull acme/new-model)\n"
    )


def test_a_near_miss_of_a_known_model_is_an_error_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    typo = KONTEXT.replace("kontext", "kontxt")
    path.write_text(f"version: 1\nmodels:\n  - id: {typo}\n    inputs: {{prompt: a}}\n")
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"{path}: $.models[0].id (line 3): no model '{typo}' here; did you mean "
        f"'{KONTEXT}'? (fix the id; if '{typo}' is right, get its schema: batchrun models pull "
        f"{typo})\n"
    )


@pytest.mark.parametrize(
    "model_id",
    [
        "acme/model/../../requests/RID/cancel",
        "acme//model",
        "acme/./model",
        "acme/model?x=1",
        "acme/model#frag",
        "acme/mo%2e%2edel",
        "acme\\model",
        "acme/mo del",
    ],
)
def test_a_model_id_that_could_reach_another_endpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_id: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmodels:\n  - id: " + json.dumps(model_id) + "\n    inputs: {x: 1}\n"
    )
    code, out, err = run(["validate", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"{path}: $.models[0].id")  # the manifest's pattern, else the id rule
    assert "Traceback" not in err


def test_an_emptied_sweep_is_an_error_saying_what_emptied_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nmatrix: {seed: [1, 2]}\nexclude: [{seed: 1}, {seed: 2}]\n"
        f"models:\n  - id: {KONTEXT}\n    inputs: {{prompt: a, image_url: 'https://x.runcomfy.net/a.png'}}\n"
    )
    for command in ("validate", "plan", "run"):
        code, out, err = run(
            [command, str(path), *(["--simulate"] if command == "run" else [])], capsys
        )
        assert code == 2, (command, err)
        assert (
            f"{path}: the sweep has 0 jobs: exclude removed all 2 combinations "
            "($.exclude[0], $.exclude[1]); change the manifest so it has one"
        ) in err


def test_report_rows_and_cols_are_checked_at_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "version: 1\nreport: {rows: promt}\nmatrix: {seed: [1, 2]}\n"
        f"models:\n  - id: {KONTEXT}\n    inputs: {{prompt: a, image_url: 'https://x.runcomfy.net/a.png'}}\n"
    )
    code, out, err = run(["validate", str(path)], capsys)
    assert code == 2
    assert (
        f"{path}: $.report.rows (line 2): 'promt' is no field or var of the sweep; "
        "did you mean 'prompt'?"
    ) in err


def test_validate_keeps_no_job_list(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate checks the jobs in one pass that keeps none (check_sweep), never the list
    build_plan makes: a sweep of a million jobs validates in the memory of a few."""
    from batchrun.plan import build

    def no_list(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate built the whole job list")

    monkeypatch.setattr(build, "build_plan", no_list)
    code, out, err = run(["validate", str(repo / "manifests" / "quickstart.yaml")], capsys)
    assert code == 0, err
    assert out.endswith("quickstart.yaml: ok (6 jobs)\n")

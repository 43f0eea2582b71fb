"""Manifest loading: settings parsing, defaults, line numbers, every problem at once."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from batchrun.errors import ManifestError
from batchrun.plan import manifest
from batchrun.plan.manifest import check_manifest, load_manifest, manifest_schema
from batchrun.plan.settings import (
    GIB,
    OutputSettings,
    RunSettings,
    parse_duration,
    parse_rate,
    parse_size,
)

MINIMAL = """\
version: 1
models:
  - id: blackforestlabs/flux-1-kontext/pro/edit
    inputs: {prompt: p, image_url: "https://x.runcomfy.net/a.png"}
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("30m", 1800.0), ("1h", 3600.0), ("2min", 120.0)]
    + [(3, 3.0), (0.25, 0.25), ("1.5", 1.5), (" 10 s ", 10.0)],
)
def test_parse_duration(value, seconds) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "2x", "-1s", "0", 0, True, "s", "1 hour"])
def test_parse_duration_rejects(value) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "per_second"),
    [("10/s", 10.0), ("600/min", 10.0), ("1/minute", 1 / 60), (5, 5.0), ("0.5/s", 0.5)],
)
def test_parse_rate(value, per_second) -> None:
    assert parse_rate(value) == pytest.approx(per_second)


@pytest.mark.parametrize("value", ["10", "10/h", "/s", "0/s", -1, False, "ten/s"])
def test_parse_rate_rejects(value) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [(1000, 1000), ("500MB", 500_000_000), ("2GiB", 2 * GIB), ("1.5KiB", 1536), ("7", 7)],
)
def test_parse_size(value, size) -> None:
    assert parse_size(value) == size


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "my sweep.yaml")
    m = load_manifest(path)
    assert m.name == "my-sweep"
    assert m.run == RunSettings(10.0, None, 2.0, 1800.0, 1, 10000)  # max_in_flight: derived
    assert m.outputs == OutputSettings("outputs/my-sweep", True, (), 2 * GIB)
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.data["version"] == 1


def test_settings_are_parsed(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        name: umbrella
        run: {rate_limit: 600/min, max_in_flight: 3, poll_interval: 500ms,
              job_timeout: null, retries: 0, max_jobs: 50}
        outputs: {dir: "runs/{name}-{{x}}", download: false, allow_hosts: ["*.example.com"],
                  max_file_size: 500MB}
        """
    )
    m = load_manifest(write(tmp_path, text))
    assert m.run == RunSettings(10.0, 3, 0.5, None, 0, 50)
    assert m.outputs == OutputSettings("runs/umbrella-{x}", False, ("*.example.com",), 500 * 10**6)


def test_rate_limit_unlimited(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, MINIMAL + "run: {rate_limit: unlimited}\n"))
    assert m.run.rate_limit is None


def test_every_problem_at_once_with_lines(tmp_path: Path) -> None:
    text = """\
    version: 1
    run:
      retries: many
      max_in_flight: 0
    models:
      - id: blackforestlabs/flux-1-kontext/pro/edit
        matrix:
          seed: 5
    """
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, text))
    label = str(tmp_path / "m.yaml")
    assert info.value.problems == [
        f"{label}: $.models[0].matrix.seed: 5 must be a non-empty list of values, "
        "{file: PATH}, {csv: PATH, column: NAME} or {glob: PATTERN} (line 8)",
        f"{label}: $.run.max_in_flight: 0 is less than the minimum of 1 (line 4)",
        f"{label}: $.run.retries: 'many' is not of type 'integer' (line 3)",
    ]


@pytest.mark.parametrize(
    ("key", "hint"),
    [("modles", "did you mean 'models'?"), ("matirx", "did you mean 'matrix'?")]
    + [("zzz", "known keys: version, name, run")],
)
def test_unknown_top_level_key_did_you_mean(tmp_path: Path, key: str, hint: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, MINIMAL + f"{key}: 1\n"))
    assert f"$.{key}: unknown key {key!r}; {hint}" in str(info.value)
    assert "(line 5)" in str(info.value)


def test_python_tags_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = MINIMAL + f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ManifestError, match=r"invalid YAML: .*no !!python tags.*\(line 5\)"):
        load_manifest(write(tmp_path, text))
    assert not marker.exists()


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"\$.version: duplicate key 'version' \(line 5\)"):
        load_manifest(write(tmp_path, MINIMAL + "version: 1\n"))


def test_schema_is_a_valid_2020_12_schema_with_descriptions() -> None:
    schema = manifest_schema()
    Draft202012Validator.check_schema(schema)
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if "description" not in prop:
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(schema, "$")
    assert missing == []
    json.dumps(schema)  # serialisable for editors


_YAML_CASES = [
    MINIMAL + "name: [a, b\n",  # unclosed
    MINIMAL + "run:\n\tpoll_interval: 1s\n",  # a tab
    MINIMAL + "name: !!python/name:os.system\n",
    MINIMAL + "version: 1\n",  # duplicate key
    MINIMAL + "name: " + "[" * 2000 + "]" * 2000 + "\n",  # nested too deeply
    MINIMAL + "run: {poll_interval: fast, rate_limit: 3}\nreport: {rows: 1}\n",  # problems
    "- a list\n",
    "",
]


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", _YAML_CASES)
def test_libyaml_reads_a_manifest_as_pyyaml_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Manifests are parsed by libyaml where PyYAML has it; what users see (a manifest, its
    problems and their lines, or an error's words) is what PyYAML's own parser makes of it."""
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")

    def outcome() -> object:
        try:
            found, problems = check_manifest(path)
        except ManifestError as exc:
            return str(exc)
        return problems, None if found is None else found.data

    fast = outcome()
    monkeypatch.setattr(manifest, "_LOADER", yaml.SafeLoader)
    assert fast == outcome()

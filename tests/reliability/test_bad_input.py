"""Bad-input corpus: every malformed manifest or option makes `batchrun run` exit 2 before a
single request is sent, with a message naming the file and the place, and no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import IMAGE_URL, MODEL, SimProcess, run_cli, start_simulator, total_calls

NAME = "corpus_manifest.yaml"
GOOD_MODEL = f"""
models:
  - id: {MODEL}
    inputs:
      prompt: "a {{color}} umbrella"
      image_url: {IMAGE_URL}
"""
GOOD_VARS = "vars:\n  color: [red, blue]\n"


def good(head: str = "", tail: str = "") -> str:
    """A valid manifest with `head` lines after `version: 1` and `tail` lines at the end."""
    return f"version: 1\n{head}{GOOD_VARS}{GOOD_MODEL}{tail}"


def with_inputs(extra: str, model: str = MODEL) -> str:
    """A manifest whose only model has `extra` (indented input lines) added to its inputs."""
    return (
        f"version: 1\nmodels:\n  - id: {model}\n    inputs:\n      prompt: hi\n"
        f"      image_url: {IMAGE_URL}\n{extra}"
    )


@dataclass
class Case:
    id: str
    manifest: str | None  # None: the test gives its own manifest argument
    expect: tuple[str, ...]  # substrings of the message that locate the problem
    args: tuple[str, ...] = ()  # extra CLI args; "{tmp}" is replaced by the test's tmp dir
    files: dict[str, str] = field(default_factory=dict)  # extra files beside the manifest
    manifest_arg: str | None = None  # overrides the manifest path argument
    names_file: bool = True  # the message must name the manifest file


BANANA = "google/nano-banana-2-lite/text-to-image"

CASES = [
    # --- YAML syntax
    Case("yaml-unclosed-flow", "version: 1\nmodels: [\n  {id: x\n", ("line",)),
    Case("yaml-bad-indent", "version: 1\nrun:\n  retries: 1\n   max_in_flight: 2\n", ("line",)),
    Case("yaml-tab-indent", "version: 1\nrun:\n\tretries: 1\n", ("line",)),
    Case("yaml-unclosed-quote", 'version: 1\nname: "oops\n', ("line",)),
    Case("yaml-duplicate-key", good("run:\n  retries: 1\n  retries: 2\n"), ("$.run.retries",)),
    Case("yaml-empty-file", "", ("$",)),
    Case("yaml-top-level-list", "- version: 1\n", ("$",)),
    Case("yaml-top-level-scalar", "just a string\n", ("$",)),
    Case("yaml-not-utf8", "version: 1\nname: caf\udce9\n", ("UTF-8",)),
    # --- YAML tags that would run code under an unsafe loader
    Case(
        "python-apply-os-system",
        'version: 1\nname: !!python/object/apply:os.system ["touch {tmp}/PWNED"]\n' + GOOD_MODEL,
        ("line",),
    ),
    Case(
        "python-object-new",
        "version: 1\nrun: !!python/object/new:os.system [touch {tmp}/PWNED]\n" + GOOD_MODEL,
        ("line",),
    ),
    Case("python-name", "version: 1\nname: !!python/name:os.system\n" + GOOD_MODEL, ("line",)),
    # --- wrong types and values
    Case("version-string", good().replace("version: 1", "version: one"), ("$.version",)),
    Case("version-2", good().replace("version: 1", "version: 2"), ("$.version",)),
    Case("models-missing", "version: 1\nname: x\n", ("models",)),
    Case("models-string", "version: 1\nmodels: flux\n", ("$.models",)),
    Case("models-empty", "version: 1\nmodels: []\n", ("$.models",)),
    Case("model-no-id", "version: 1\nmodels:\n  - inputs: {prompt: hi}\n", ("$.models[0]",)),
    Case("model-id-number", "version: 1\nmodels:\n  - id: 123\n", ("$.models[0].id",)),
    Case("inputs-list", f"version: 1\nmodels:\n  - id: {MODEL}\n    inputs: [1]\n", ("inputs",)),
    Case("matrix-list", good("matrix: [1, 2]\n"), ("$.matrix",)),
    Case("run-string", good("run: fast\n"), ("$.run",)),
    Case("retries-string", good("run:\n  retries: two\n"), ("$.run.retries",)),
    Case("download-string", good("outputs:\n  download: maybe\n"), ("$.outputs.download",)),
    # --- unknown keys
    Case("unknown-top-key", good().replace("models:", "modles:"), ("modles",)),
    Case("unknown-run-key", good("run:\n  rate_limt: 5/s\n"), ("rate_limt",)),
    Case("unknown-model-key", good(tail="    input: {seed: 1}\n"), ("$.models[0]", "input")),
    Case("unknown-outputs-key", good("outputs:\n  dri: out\n"), ("dri",)),
    # --- templates
    Case("unknown-placeholder", good().replace("{color}", "{colour}"), ("colour",)),
    Case("unknown-placeholder-dir", good("outputs:\n  dir: out/{nam}\n"), ("$.outputs.dir",)),
    # --- empty sweeps
    Case("empty-matrix-list", good("matrix:\n  seed: []\n"), ("seed",)),
    Case("empty-vars-list", good().replace("[red, blue]", "[]"), ("color",)),
    Case("empty-model-matrix", good(tail="    matrix:\n      seed: []\n"), ("seed",)),
    # --- grids that are too big
    Case(
        "over-max-jobs",
        good("run:\n  max_jobs: 10\nmatrix:\n  seed: [" + ", ".join(map(str, range(6))) + "]\n"),
        ("max_jobs",),
    ),
    Case(
        "over-default-max-jobs",
        good(
            "matrix:\n  seed: ["
            + ", ".join(map(str, range(101)))
            + "]\n  aspect_ratio: ["
            + ", ".join(f'"{i}:1"' for i in range(1, 51))
            + "]\n"
        ),
        ("max_jobs",),
    ),
    # --- values read from files
    Case("missing-file-source", good("matrix:\n  prompt: {file: nope.txt}\n"), ("nope.txt",)),
    Case(
        "missing-csv-source",
        good("matrix:\n  prompt: {csv: nope.csv, column: prompt}\n"),
        ("nope.csv",),
    ),
    Case(
        "csv-missing-column",
        good("matrix:\n  prompt: {csv: cases.csv, column: prompt}\n"),
        ("prompt",),
        files={"cases.csv": "text,seed\nhello,1\n"},
    ),
    Case("missing-cases-csv", good("cases: {csv: rows.csv}\n"), ("rows.csv",)),
    # --- rates, durations, limits
    Case("rate-word", good("run:\n  rate_limit: fast\n"), ("$.run.rate_limit",)),
    Case("rate-per-hour", good("run:\n  rate_limit: 10/h\n"), ("$.run.rate_limit",)),
    Case("rate-zero", good("run:\n  rate_limit: 0/s\n"), ("$.run.rate_limit",)),
    Case("rate-negative", good("run:\n  rate_limit: -5/s\n"), ("$.run.rate_limit",)),
    Case("max-in-flight-zero", good("run:\n  max_in_flight: 0\n"), ("$.run.max_in_flight",)),
    Case("max-in-flight-neg", good("run:\n  max_in_flight: -1\n"), ("$.run.max_in_flight",)),
    Case("retries-negative", good("run:\n  retries: -1\n"), ("$.run.retries",)),
    Case("max-jobs-zero", good("run:\n  max_jobs: 0\n"), ("$.run.max_jobs",)),
    Case("poll-interval-neg", good("run:\n  poll_interval: -2s\n"), ("$.run.poll_interval",)),
    Case("poll-interval-word", good("run:\n  poll_interval: soon\n"), ("$.run.poll_interval",)),
    Case("job-timeout-zero", good("run:\n  job_timeout: 0s\n"), ("$.run.job_timeout",)),
    Case("max-file-size-zero", good("outputs:\n  max_file_size: 0\n"), ("max_file_size",)),
    Case("max-file-size-word", good("outputs:\n  max_file_size: big\n"), ("max_file_size",)),
    Case("repeat-zero", good("repeat: 0\n"), ("repeat",)),
    Case("repeat-negative", good("repeat: -2\n"), ("repeat",)),
    # --- per-model input schema violations
    Case("schema-seed-string", with_inputs("      seed: abc\n"), ("$.seed",)),
    Case("schema-matrix-item", good("matrix:\n  seed: [1, 2, x]\n"), ("$.seed",)),
    Case(
        "schema-missing-required",
        f"version: 1\nmodels:\n  - id: {MODEL}\n    inputs:\n      prompt: hi\n",
        ("image_url",),
    ),
    Case("schema-unknown-field", with_inputs("      steps: 30\n"), ("steps",)),
    Case(
        "schema-enum",
        f"version: 1\nmodels:\n  - id: {BANANA}\n    inputs:\n      prompt: hi\n"
        '      aspect_ratio: "7:3"\n',
        ("$.aspect_ratio",),
    ),
    Case(
        "schema-not-a-url",
        f"version: 1\nmodels:\n  - id: {MODEL}\n    inputs:\n      prompt: hi\n"
        "      image_url: not a url\n",
        ("$.image_url",),
    ),
    # --- command-line options
    Case(
        "run-dir-is-file", good(), ("afile",), args=("--run-dir", "{tmp}/afile"), names_file=False
    ),
    Case(
        "run-dir-under-file",
        good(),
        ("afile",),
        args=("--run-dir", "{tmp}/afile/sub"),
        names_file=False,
    ),
    Case("unknown-option", good(), ("--frobnicate",), args=("--frobnicate",), names_file=False),
    Case(
        "sim-without-simulate",
        good(),
        ("--sim",),
        args=("--sim", "fail_rate=0.1"),
        names_file=False,
    ),
    Case(
        "sim-not-key-value",
        good(),
        ("--sim",),
        args=("--simulate", "--sim", "fail_rate"),
        names_file=False,
    ),
    Case(
        "sim-unknown-setting",
        good(),
        ("fial_rate",),
        args=("--simulate", "--sim", "fial_rate=0.1"),
        names_file=False,
    ),
    Case(
        "strict-unknown-model",
        "version: 1\nmodels:\n  - id: acme/no-such-model\n    inputs: {prompt: hi}\n",
        ("acme/no-such-model",),
        args=("--strict",),
    ),
    Case(
        "run-dir-garbage-state",
        good(),
        ("state.db",),
        args=("--run-dir", "{tmp}/oldrun"),
        files={"oldrun/state.db": "this is not an SQLite database\n" * 100},
        names_file=False,
    ),
    Case(
        "manifest-missing",
        None,
        ("nothere.yaml",),
        manifest_arg="{tmp}/nothere.yaml",
        names_file=False,
    ),
    Case("manifest-is-dir", None, ("adir",), manifest_arg="{tmp}/adir", names_file=False),
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    server = start_simulator()
    yield server
    server.stop()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# ~0.6 s a case (one Python process each): slow as a whole.
@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_exits_2_before_any_request(case: Case, sim: SimProcess, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("I am a file, not a folder\n")
    (work / "adir").mkdir()
    manifest = work / NAME
    if case.manifest is not None:
        text = case.manifest.replace("{tmp}", str(work))
        # Invalid UTF-8 is written as raw bytes (the surrogate stands for byte 0xE9).
        manifest.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    for name, content in case.files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content)
    arg = (case.manifest_arg or str(manifest)).replace("{tmp}", str(work))
    args = [a.replace("{tmp}", str(work)) for a in case.args]
    if "--run-dir" not in args:
        args += ["--run-dir", str(work / "run")]

    before = total_calls(sim.stats())
    res = run_cli("run", arg, "--api-base", sim.base_url, "--quiet", *args, cwd=work, timeout=60)
    after = total_calls(sim.stats())
    out = res.stdout + res.stderr

    print(f"[{case.id}] exit {res.returncode}: {res.stderr.strip()[:300]}")
    assert res.returncode == 2, out
    assert "Traceback" not in out, out
    if case.names_file:
        assert NAME in out, out
    for want in case.expect:
        assert want in out, f"expected {want!r} in the message:\n{out}"
    assert after == before, f"the simulator saw {after - before} calls"
    assert not (work / "PWNED").exists(), "a YAML tag executed code"

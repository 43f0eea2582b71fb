"""Cost before anything runs: schema lookup order, plan's estimates, the budget's input checks."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import responses

from batchrun.cli import main
from batchrun.commands.models import catalog_entry
from batchrun.commands.run import parse_max_cost
from batchrun.errors import UsageError
from batchrun.plan.build import build_plan

BASE = "https://api.test"
T2I = "google/nano-banana-2-lite/text-to-image"
T2I_FILE = "google__nano-banana-2-lite__text-to-image.json"
PROMPT_ONLY = {"type": "object", "properties": {"prompt": {"type": "string"}}}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write_entry(folder: Path, model_id: str, price: float | None, unit: str, schema: dict) -> Path:
    body = {"base_price_usd": price, "price_unit": unit, "input_schema": schema}
    path = folder / (model_id.replace("/", "__") + ".json")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(catalog_entry(body, model_id, "2025-01-01T00:00:00Z")))
    return path


def manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.yaml"
    path.write_text("version: 1\nname: cost\n" + text)
    return path


def plan_json(argv: list[str], capsys) -> list[dict]:
    code, out, err = run(["plan", "--json", *argv], capsys)
    assert code == 0, err
    return [json.loads(line, parse_float=Decimal) for line in out.splitlines()]


T2I_MANIFEST = f"models: [{{id: {T2I}, inputs: {{prompt: p}}}}]\n"


def test_schema_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """--schemas DIR, else $BATCHRUN_SCHEMA_DIR, then schemas/models beside the manifest,
    then the packaged schema (which has no price)."""
    path = manifest(tmp_path / "proj", T2I_MANIFEST)
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    assert plan_json([str(path)], capsys)[0]["est_cost_usd"] is None  # packaged: unpriced
    write_entry(tmp_path / "proj" / "schemas" / "models", T2I, 0.01, "image", schema)
    assert plan_json([str(path)], capsys)[0]["est_cost_usd"] == Decimal("0.01")
    write_entry(tmp_path / "env", T2I, 0.02, "image", schema)
    monkeypatch.setenv("BATCHRUN_SCHEMA_DIR", str(tmp_path / "env"))
    assert plan_json([str(path)], capsys)[0]["est_cost_usd"] == Decimal("0.02")
    write_entry(tmp_path / "opt", T2I, 0.03, "image", schema)
    got = plan_json([str(path), "--schemas", str(tmp_path / "opt")], capsys)
    assert got[0]["est_cost_usd"] == Decimal("0.03")


def test_pulled_schema_replaces_the_packaged_one_for_validation(tmp_path: Path, capsys) -> None:
    path = manifest(
        tmp_path, f"models: [{{id: {T2I}, inputs: {{prompt: p, aspect_ratio: '1:1'}}}}]\n"
    )
    assert run(["validate", str(path)], capsys)[0] == 0  # packaged schema knows aspect_ratio
    write_entry(tmp_path / "schemas" / "models", T2I, 0.01, "image", PROMPT_ONLY)
    code, _, err = run(["validate", str(path)], capsys)
    assert code == 2
    assert "$.aspect_ratio: unknown field 'aspect_ratio'; known fields: prompt" in err


def test_a_model_only_in_a_pulled_schema_is_checked(tmp_path: Path, capsys) -> None:
    path = manifest(tmp_path, "models: [{id: acme/new, inputs: {prompt: p}}]\n")
    assert run(["validate", "--strict", str(path)], capsys)[0] == 2
    write_entry(tmp_path / "schemas" / "models", "acme/new", 0.5, "run", PROMPT_ONLY)
    code, out, err = run(["validate", "--strict", str(path)], capsys)
    assert (code, out, err) == (0, f"{path}: ok (1 job)\n", "")


def test_numbers_from_files_are_coerced_by_the_pulled_schema(tmp_path: Path, capsys) -> None:
    (tmp_path / "d.txt").write_text("4\n6\n")
    schema = {
        "type": "object",
        "properties": {"prompt": {"type": "string"}, "duration": {"type": "integer"}},
    }
    write_entry(tmp_path / "schemas" / "models", "acme/vid", 0.1, "second", schema)
    path = manifest(
        tmp_path,
        "models: [{id: acme/vid, inputs: {prompt: p}, matrix: {duration: {file: d.txt}}}]\n",
    )
    jobs = plan_json([str(path)], capsys)
    assert [(j["inputs"]["duration"], j["est_cost_usd"]) for j in jobs] == [
        (4, Decimal("0.4")),
        (6, Decimal("0.6")),
    ]


BROKEN = [
    (
        "not-json",
        '{"input_schema": {',
        "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 19)",
    ),
    ("not-object", "[1, 2]", "a model schema must be a JSON object"),
    ("schema-not-object", '{"input_schema": 5}', "$.input_schema must be a JSON object"),
    (
        "bad-price",
        '{"input_schema": {}, "base_price_usd": "lots"}',
        "$.base_price_usd: 'lots' is not an amount in USD (a finite number from 0 to 10000)",
    ),
]


@pytest.mark.parametrize(("text", "what"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_broken_schema_file_is_exit_2_with_the_fix_and_nothing_is_sent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    command: str,
    text: str,
    what: str,
) -> None:
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok")
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", BASE)
    folder = tmp_path / "schemas" / "models"
    folder.mkdir(parents=True)
    (folder / T2I_FILE).write_text(text)
    path = manifest(tmp_path, T2I_MANIFEST)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        code, out, err = run([command, str(path)], capsys)
        assert len(rsps.calls) == 0
    assert (code, out) == (2, "")
    prefix = "" if command == "validate" else "error: "
    assert err == (
        f"{prefix}{folder / T2I_FILE}: {what}; pull it again: "
        f"batchrun models pull {T2I} --dir {folder}\n"
    )


def test_schemas_option_must_name_a_folder(tmp_path: Path, capsys) -> None:
    path = manifest(tmp_path, T2I_MANIFEST)
    code, out, err = run(["plan", str(path), "--schemas", str(tmp_path / "nope")], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"error: --schemas {tmp_path / 'nope'}: no such folder; pull schemas into it first: "
        f"batchrun models pull MODEL_ID --dir {tmp_path / 'nope'}\n"
    )


# A price list, as the catalog answers GET /v1/models/{id}.
PRICE_LIST = {
    "acme/img": (
        0.044,
        "output",
        {
            "prompt": {"type": "string"},
            "seed": {"type": "integer"},
            "num_outputs": {"type": "integer", "default": 1},
        },
    ),
    "acme/vid": (
        0.07,
        "per second",
        {"prompt": {"type": "string"}, "duration": {"type": "integer", "default": 5}},
    ),
    "acme/vid-default": (
        0.03,
        "second",
        {"prompt": {"type": "string"}, "duration": {"type": "integer", "default": 6}},
    ),
    "acme/edit": (0.1, "request", {"prompt": {"type": "string"}}),
}
SWEEP = """
models:
  - id: acme/img
    inputs: {prompt: p}
    matrix: {num_outputs: [1, 2, 3], seed: [1, 2]}
  - id: acme/vid
    matrix: {duration: [3, 5, 7, 10], prompt: [a, b]}
  - id: acme/vid-default
    inputs: {prompt: p}
  - id: acme/edit
    matrix: {prompt: [x, y, z]}
"""
# The price list's total for SWEEP, by hand:
#   img   0.044 x (1 + 2 + 3) outputs x 2 seeds   = 0.528
#   vid   0.07 x (3 + 5 + 7 + 10) s x 2 prompts    = 3.50
#   vid-default  0.03 x 6 s (the schema default)   = 0.18
#   edit  0.1 x 3 requests                          = 0.30
SWEEP_TOTAL = Decimal("4.508")


def test_plan_estimates_sum_exactly_to_the_price_lists_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok")
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", BASE)
    monkeypatch.chdir(tmp_path)
    with responses.RequestsMock() as rsps:
        for model_id, (price, unit, props) in PRICE_LIST.items():
            rsps.get(
                f"{BASE}/v1/models/{model_id}",
                json={
                    "model_id": model_id,
                    "base_price_usd": price,
                    "price_unit": unit,
                    "input_schema": {"type": "object", "properties": props},
                },
            )
        code, _, err = run(["models", "pull", *PRICE_LIST], capsys)
        assert code == 0, err
    path = manifest(tmp_path, SWEEP)
    jobs = plan_json([str(path)], capsys)
    assert len(jobs) == 6 + 8 + 1 + 3
    assert sum(j["est_cost_usd"] for j in jobs) == SWEEP_TOTAL
    by_duration = {
        j["inputs"]["duration"]: j["est_cost_usd"] for j in jobs if j["model_id"] == "acme/vid"
    }
    assert by_duration == {
        3: Decimal("0.21"),
        5: Decimal("0.35"),
        7: Decimal("0.49"),
        10: Decimal("0.7"),
    }

    code, out, err = run(["plan", str(path)], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[:6] == [
        "cost: 18 jobs -> outputs/cost",
        "  acme/img               6  $0.53  ($0.044/output)",
        "  acme/vid               8  $3.50  ($0.07/second)",
        "  acme/vid-default       1  $0.18  ($0.03/second)",
        "  acme/edit              3  $0.30  ($0.1/request)",
        "  total                 18  $4.51",
    ]


def test_plan_table_counts_unpriced_jobs(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "schemas" / "models"
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}, "duration": {}}}
    write_entry(folder, "acme/vid", 0.1, "second", schema)
    write_entry(folder, "acme/tokens", 0.5, "1k tokens", PROMPT_ONLY)
    path = manifest(
        tmp_path,
        "run: {max_cost_usd: 20}\n"
        "models:\n"
        "  - {id: acme/vid, inputs: {prompt: p}, matrix: {duration: [5, auto]}}\n"
        "  - {id: acme/tokens, inputs: {prompt: p}}\n",
    )
    code, out, err = run(["plan", str(path)], capsys)
    assert code == 0
    assert out.splitlines()[:4] == [
        "cost: 3 jobs -> outputs/cost",
        "  acme/vid          2  $0.50 + 1 unpriced  ($0.1/second)",
        "  acme/tokens       1  unpriced",
        "  total             3  $0.50 + 2 unpriced  (budget $20.00)",
    ]
    assert err == (
        "note: 2 jobs unpriced: no price in the model's schema file, or a price unit or "
        "duration batchrun cannot count; `batchrun models pull MODEL_ID` fetches prices\n"
    )
    costs = [j["est_cost_usd"] for j in plan_json([str(path)], capsys)]
    assert costs == [Decimal("0.5"), None, None]


# ---- the budget's input ---------------------------------------------------------------------


def test_manifest_max_cost_lives_in_the_plans_run_settings(tmp_path: Path) -> None:
    path = manifest(tmp_path, "run: {max_cost_usd: 0.1}\n" + T2I_MANIFEST)
    plan = build_plan(path)
    assert plan.manifest.run.max_cost_usd == Decimal("0.1")  # exact, not the float's binary
    assert plan.with_max_cost(Decimal("2.5")).manifest.run.max_cost_usd == Decimal("2.5")
    assert plan.with_max_cost(None).manifest.run.max_cost_usd == Decimal("0.1")
    assert build_plan(manifest(tmp_path / "b", T2I_MANIFEST)).manifest.run.max_cost_usd is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "$.run.max_cost_usd: -1 is less than the minimum of 0 (line 4)"),
        ("cheap", "$.run.max_cost_usd: 'cheap' is not of type 'number' (line 4)"),
        ("true", "$.run.max_cost_usd: True is not of type 'number' (line 4)"),
    ],
)
def test_manifest_max_cost_must_be_a_number_at_least_0(
    tmp_path: Path, capsys, value: str, message: str
) -> None:
    path = manifest(tmp_path, f"run:\n  max_cost_usd: {value}\n" + T2I_MANIFEST)
    code, _, err = run(["validate", str(path)], capsys)
    assert (code, err) == (2, f"{path}: {message}\n")


@pytest.mark.parametrize(
    ("text", "amount"),
    [("25", Decimal("25")), ("2.50", Decimal("2.50")), ("$0.1", Decimal("0.1")), ("0", Decimal(0))],
)
def test_parse_max_cost(text: str, amount: Decimal) -> None:
    assert parse_max_cost(text) == amount


@pytest.mark.parametrize("text", ["-1", "abc", "nan", "inf", "-inf", "", "1,5.0.0"])
def test_bad_max_cost_is_exit_2_and_nothing_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, text: str
) -> None:
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok")
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", BASE)
    path = manifest(tmp_path, T2I_MANIFEST)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        code, out, err = run(["run", str(path), "--max-cost", text], capsys)
        assert len(rsps.calls) == 0
    assert (code, out) == (2, "")
    assert err == (
        f"error: --max-cost {text!r}: expected an amount in USD, a number >= 0, "
        "e.g. --max-cost 25 or --max-cost 2.50\n"
    )
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(UsageError):
        parse_max_cost(text)

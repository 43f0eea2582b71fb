"""`batchrun models pull` / `models list` against `responses`: files written, prices shown."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import responses
from responses import matchers

from batchrun.api.client import Client
from batchrun.catalog.models import read_entry
from batchrun.cli import main
from batchrun.commands import models as models_cmd

BASE = "https://api.test"
TOKEN = "sk-secret-token-123"
T2I = "google/nano-banana-2-lite/text-to-image"
T2I_ENTRY = {
    "model_id": T2I,
    "display_name": "Nano Banana 2 Lite Text to Image",
    "categories": ["text-to-image"],
    "base_price_usd": 0.044,
    "price_unit": "output",
    "pricing_note": "$0.044 per output",
    "output_type": "IMAGE",
    "input_schema": {
        "type": "object",
        "properties": {
            "prompt": {"default": "", "type": "string"},
            "guidance": {"type": "float"},
            "image_url": {"type": "string", "format": "image_uri"},
        },
        "required": ["prompt"],
    },
}


@pytest.fixture
def mocked_responses():
    with responses.RequestsMock() as rsps:
        yield rsps


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_TOKEN", TOKEN)
    monkeypatch.setenv("RUNCOMFY_MODEL_API_BASE", BASE)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_writes_the_catalog_entry(mocked_responses, tmp_path: Path, capsys) -> None:
    mocked_responses.get(
        f"{BASE}/v1/models/{T2I}",
        json=T2I_ENTRY,
        match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})],
    )
    when = datetime(2025, 3, 1, 12, 30, tzinfo=timezone.utc)
    code = models_cmd.pull((T2I,), dest=str(tmp_path / "s"), client=Client(BASE, TOKEN), now=when)
    path = tmp_path / "s" / "google__nano-banana-2-lite__text-to-image.json"
    assert code == 0
    assert capsys.readouterr().out == f"{path}  $0.044/output\n"
    stored = json.loads(path.read_text())
    assert stored["fetched_at"] == "2025-03-01T12:30:00Z"
    assert {k: stored[k] for k in ("base_price_usd", "price_unit", "pricing_note")} == {
        "base_price_usd": 0.044,
        "price_unit": "output",
        "pricing_note": "$0.044 per output",
    }
    assert stored["display_name"] == "Nano Banana 2 Lite Text to Image"
    schema = stored["input_schema"]
    assert schema["properties"]["guidance"]["type"] == "number"  # normalised
    assert schema["properties"]["image_url"]["x-media"] == "image_uri"
    assert schema["additionalProperties"] is False
    assert not list((tmp_path / "s").glob("*.part"))
    entry = read_entry(path)
    assert (entry.model_id, entry.price.price_unit, str(entry.price.base_price_usd)) == (
        T2I,
        "output",
        "0.044",
    )


def test_pull_default_dir_is_schemas_models_in_the_cwd(
    mocked_responses, env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    mocked_responses.get(f"{BASE}/v1/models/{T2I}", json=T2I_ENTRY)
    code, out, err = run(["models", "pull", T2I], capsys)
    assert code == 0, err
    assert out == "schemas/models/google__nano-banana-2-lite__text-to-image.json  $0.044/output\n"
    assert (tmp_path / "schemas/models/google__nano-banana-2-lite__text-to-image.json").is_file()


def test_pull_unknown_model_writes_the_others_and_exits_1(
    mocked_responses, env, tmp_path: Path, capsys
) -> None:
    mocked_responses.get(
        f"{BASE}/v1/models/acme/nope",
        status=400,
        json={"error_code": 400001, "error_message": "invalid model id"},
    )
    mocked_responses.get(f"{BASE}/v1/models/{T2I}", json=T2I_ENTRY)
    dest = tmp_path / "s"
    code, out, err = run(["models", "pull", "acme/nope", T2I, "--dir", str(dest)], capsys)
    assert code == 1
    assert err == (
        "error: acme/nope: not in the catalog (GET /v1/models/acme/nope HTTP 400 "
        "error_code 400001: invalid model id)\n"
        "1 of 2 models not pulled\n"
    )
    assert [p.name for p in dest.iterdir()] == ["google__nano-banana-2-lite__text-to-image.json"]


def test_pull_an_entry_without_input_schema_is_refused(
    mocked_responses, env, tmp_path: Path, capsys
) -> None:
    mocked_responses.get(f"{BASE}/v1/models/{T2I}", json={"model_id": T2I, "base_price_usd": 1})
    code, _, err = run(["models", "pull", T2I, "--dir", str(tmp_path / "s")], capsys)
    assert code == 1
    assert err == (
        f"error: {T2I}: GET /v1/models/{T2I}: the catalog entry has no input_schema object; "
        "not written\n"
    )
    assert not (tmp_path / "s").exists()


def test_pull_without_token_exits_3_and_sends_nothing(mocked_responses, tmp_path, capsys) -> None:
    code, _, err = run(["models", "pull", T2I, "--dir", str(tmp_path)], capsys)
    assert code == 3 and "RUNCOMFY_TOKEN is not set" in err
    assert len(mocked_responses.calls) == 0


def test_list_pages_through_the_catalog(mocked_responses, env, capsys) -> None:
    first = [
        {"model_id": T2I, "display_name": "Nano", "base_price_usd": 0.044, "price_unit": "output"},
        {
            "model_id": "bytedance/seedance-2.5/text-to-video/1080p",
            "display_name": "Seedance",
            "base_price_usd": 0.07,
            "price_unit": "per second",
        },
    ]
    second = [{"model_id": "acme/free-form", "display_name": "Acme"}]
    for offset, page in ((0, first), (2, second)):
        mocked_responses.get(
            f"{BASE}/v1/models",
            json={"models": page, "total": 3},
            match=[
                matchers.query_param_matcher({"search": "a", "limit": "100", "offset": str(offset)})
            ],
        )
    code, out, _ = run(["models", "list", "--search", "a"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "google/nano-banana-2-lite/text-to-image     Nano      $0.044/output",
        "bytedance/seedance-2.5/text-to-video/1080p  Seedance  $0.07/second",
        "acme/free-form                              Acme      unpriced",
    ]


def test_list_nothing_found(mocked_responses, env, capsys) -> None:
    mocked_responses.get(f"{BASE}/v1/models", json={"models": [], "total": 0})
    code, out, err = run(["models", "list", "--search", "zzz"], capsys)
    assert (code, out, err) == (0, "", "no models match 'zzz'\n")

"""Hostile catalogs and schema files: references outside the schema, depth, size and patterns
that take exponential time, prices that are not amounts, a catalog that pages forever, text
that would drive a terminal. Each ends in a clear error within 2 s, never a hang, a request
or a traceback."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import responses

from batchrun.cli import main

T2I = "google/nano-banana-2-lite/text-to-image"
BASE = "https://api.test"


def sweep(tmp_path: Path, schema: dict, *, prompts: int = 200) -> Path:
    """A manifest of `prompts` jobs of T2I, whose schema file beside it is `schema`."""
    folder = tmp_path / "schemas" / "models"
    folder.mkdir(parents=True)
    entry = {"model_id": T2I, "base_price_usd": 0.04, "price_unit": "image", "input_schema": schema}
    (folder / (T2I.replace("/", "__") + ".json")).write_text(json.dumps(entry))
    path = tmp_path / "m.yaml"
    matrix = {"prompt": ["a" * 40 + f"!{i}" for i in range(prompts)]}
    path.write_text(json.dumps({"version": 1, "models": [{"id": T2I, "matrix": matrix}]}))
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    started = time.monotonic()
    code = main(["validate", str(path)])
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    print(f"validate: exit {code} in {took:.2f}s")
    return code, out + err, took


class Silent:
    """A port that accepts connections into its backlog and never answers; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)
        self._thread.start()

    def _count(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_a_remote_ref_is_refused_and_never_fetched(tmp_path: Path, capsys) -> None:
    silent = Silent()
    try:
        schema = {
            "type": "object",
            "properties": {"prompt": {"$ref": f"http://127.0.0.1:{silent.port}/s"}},
        }
        code, text, took = validate(sweep(tmp_path, schema), capsys)
        assert code == 2 and took < 2
        assert "points outside the schema; only references inside it (#/...) are followed" in text
        assert silent.connections == 0
    finally:
        silent.close()


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "file:///dev/zero", "other.json#/a"])
def test_a_file_ref_is_refused_and_never_read(tmp_path: Path, capsys, ref: str) -> None:
    schema = {"type": "object", "properties": {"prompt": {"$ref": ref}}}
    code, text, took = validate(sweep(tmp_path, schema), capsys)
    assert code == 2 and took < 2 and "Traceback" not in text
    assert f"$.properties.prompt.$ref: '{ref}' points outside the schema" in text


def test_a_local_ref_still_works(tmp_path: Path, capsys) -> None:
    schema = {
        "type": "object",
        "$defs": {"text": {"type": "string"}},
        "properties": {"prompt": {"$ref": "#/$defs/text"}},
    }
    code, text, _ = validate(sweep(tmp_path, schema, prompts=3), capsys)
    assert code == 0, text


def test_a_schema_nested_300_deep_is_refused_at_once(tmp_path: Path, capsys) -> None:
    deep: dict = {"type": "string"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"x": deep}}
    deep["properties"]["prompt"] = {"type": "string"}
    code, text, took = validate(sweep(tmp_path, deep, prompts=3), capsys)
    assert code == 2 and took < 2 and "Traceback" not in text and "Recursion" not in text
    assert "the input schema is nested deeper than 64 levels" in text


def test_a_huge_schema_is_refused_at_once(tmp_path: Path, capsys) -> None:
    props = {f"p{i}": {"type": "string"} for i in range(150_000)}
    props["prompt"] = {"type": "string"}
    code, text, took = validate(sweep(tmp_path, {"type": "object", "properties": props}), capsys)
    assert code == 2 and took < 10  # 47 s before the limit; about 0.5 s on an idle machine
    assert "the input schema has more than 20,000 nodes" in text


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(\\w*)*x$", "^(a|aa){2,}$", "^(a)\\1$"])
def test_a_pattern_that_can_take_exponential_time_is_refused(tmp_path, capsys, pattern) -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string", "pattern": pattern}}}
    code, text, took = validate(sweep(tmp_path, schema), capsys)
    assert code == 2 and took < 2
    assert "it can take exponential time on a prompt" in text


def test_models_pull_refuses_a_deep_schema_and_pulls_the_others(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok")
    deep: dict = {"type": "string"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"x": deep}}
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    good = {"model_id": "acme/good", "base_price_usd": 1, "price_unit": "image"}
    good["input_schema"] = schema
    with responses.RequestsMock() as rsps:
        rsps.get(
            f"{BASE}/v1/models/acme/deep", json={"model_id": "acme/deep", "input_schema": deep}
        )
        rsps.get(f"{BASE}/v1/models/acme/dear", json={**good, "base_price_usd": "1e400"})
        rsps.get(f"{BASE}/v1/models/acme/good", json=good)
        code = main(["models", "pull", "acme/deep", "acme/dear", "acme/good",
                     "--dir", str(tmp_path / "s"), "--api-base", BASE])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["acme__good.json"]
    assert "error: acme/deep: " in err and "nested too deep" in err
    assert "error: acme/dear: " in err and "'1e400' is not an amount in USD" in err
    assert err.endswith("2 of 3 models not pulled\n") and "Traceback" not in err


def test_models_list_stops_paging_a_catalog_that_claims_a_huge_total(capsys, monkeypatch):
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok")
    page = {"models": [{"model_id": "acme/m", "display_name": "\x1b]0;owned\x07M\x1b[31m"}],
            "total": 10**12}  # fmt: skip
    with responses.RequestsMock() as rsps:
        rsps.get(f"{BASE}/v1/models", json=page)
        started = time.monotonic()
        code = main(["models", "list", "--api-base", BASE])
        took = time.monotonic() - started
        calls = len(rsps.calls)
    out, err = capsys.readouterr()
    assert code == 0 and calls == 50 and took < 2
    assert "warning: stopped after 50 pages (50 models); narrow it with --search" in err
    assert "\x1b" not in out and "\x07" not in out  # shown escaped, never executed
    assert "\\x1b]0;owned\\x07M" in out


@pytest.mark.parametrize("bad", [{"type": 5}, {"minLength": "x"}, {"enum": 3}, {"required": 1}])
def test_a_schema_jsonschema_cannot_use_is_a_clean_error(tmp_path: Path, capsys, bad) -> None:
    schema = {"type": "object", "properties": {"prompt": bad}}
    code, text, _ = validate(sweep(tmp_path, schema, prompts=2), capsys)
    assert code == 2 and "Traceback" not in text
    assert "$.input_schema.properties.prompt" in text and "not a usable JSON Schema" in text

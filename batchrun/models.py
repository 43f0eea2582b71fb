"""Per-model input schemas: find, load, normalise the API's non-standard parts, validate inputs."""

from __future__ import annotations

import copy
import difflib
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

# The catalog's media formats: a single URL string or a list of them.
_MEDIA_FORMATS = {"image_uri": False, "image_uris": True, "video_uris": True, "audio_uris": True}
_URL_PATTERN = r"^(https?://|data:)"
_SCHEMA_KEYWORDS_TO_DROP = ("model_id", "output_type", "$comment")


def schemas_root() -> Path:
    """The `schemas/` folder: inside the installed wheel, or the source checkout's."""
    packaged = Path(__file__).resolve().parent / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"


def models_dir() -> Path:
    return schemas_root() / "models"


def schema_file_name(model_id: str) -> str:
    """`a/b/c` -> `a__b__c.json`, the file name of a model's schema."""
    return model_id.replace("/", "__") + ".json"


def known_models() -> list[str]:
    """Model ids that have a local schema, sorted."""
    return sorted(p.stem.replace("__", "/") for p in models_dir().glob("*.json"))


@cache
def raw_schema(model_id: str) -> dict[str, Any] | None:
    """The schema file as stored (the catalog's dialect), or None when there is none."""
    path = models_dir() / schema_file_name(model_id)
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def normalise(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn the catalog's JSON-Schema-like dialect into standard JSON Schema.

    `"type": "float"` becomes `number`; media `format`s become URL-shaped strings (or lists of
    them); `validations` (file size, aspect ratio: only checkable on the file) move to
    `x-validations`; unknown fields are refused so a typo in a sweep fails before it is paid for.
    """
    out = copy.deepcopy(schema)
    for key in _SCHEMA_KEYWORDS_TO_DROP:
        out.pop(key, None)
    _normalise_node(out)
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _normalise_node(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _normalise_node(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "float":
        node["type"] = "number"
    elif isinstance(node.get("type"), list):
        node["type"] = ["number" if t == "float" else t for t in node["type"]]
    fmt = node.get("format")
    if fmt in _MEDIA_FORMATS:
        node.pop("format")
        node["x-media"] = fmt
        url = {"type": "string", "pattern": _URL_PATTERN}
        if _MEDIA_FORMATS[fmt]:
            node.setdefault("type", "array")
            node.setdefault("items", url)
        else:
            node.setdefault("type", "string")
            node.setdefault("pattern", _URL_PATTERN)
    if "validations" in node:
        node["x-validations"] = node.pop("validations")
    for value in node.values():
        _normalise_node(value)


@cache
def input_schema(model_id: str) -> dict[str, Any] | None:
    """The normalised input schema of a model, or None when there is no local schema."""
    raw = raw_schema(model_id)
    return None if raw is None else normalise(raw)


@cache
def _validator(model_id: str) -> Draft202012Validator | None:
    schema = input_schema(model_id)
    return None if schema is None else Draft202012Validator(schema)


def output_type(model_id: str) -> str | None:
    """IMAGE, VIDEO, ... as the catalog says, when known."""
    raw = raw_schema(model_id)
    return None if raw is None else raw.get("output_type")


def validate_inputs(model_id: str, inputs: dict[str, Any]) -> list[str] | None:
    """Problems with `inputs` for `model_id` as `$.field: message` lines, sorted by path.

    Returns None when the model has no local schema (the caller decides: warn, or refuse
    under --strict); an empty list means valid.
    """
    validator = _validator(model_id)
    if validator is None:
        return None
    if validator.is_valid(inputs):
        return []
    problems = []
    for err in sorted(validator.iter_errors(inputs), key=lambda e: list(map(str, e.path))):
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        if err.validator == "additionalProperties" and not err.path:
            for key in sorted(map(str, inputs)):
                message = unknown_field(model_id, key)
                if message:
                    problems.append(f"$.{key}: {message}")
            continue
        problems.append(f"{path}: {err.message}")
    return problems


def unknown_field(model_id: str, key: str) -> str:
    """'unknown field ...; did you mean ...?' (or the known fields), for a field not in the
    model's schema; empty when the schema knows the field."""
    known = list((input_schema(model_id) or {}).get("properties", {}))
    if key in known:
        return ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(sorted(known))}"
    return f"unknown field {key!r}; {hint}"

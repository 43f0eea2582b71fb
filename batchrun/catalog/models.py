"""Per-model input schemas: find, load, normalise the API's non-standard parts, validate inputs.

A schema file is either a plain JSON-schema file (the packaged ones) or a catalog entry as
`batchrun models pull` stores it: the input schema under `input_schema`, beside the price
fields and when it was fetched. `Schemas` looks files up along a search path of folders.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from batchrun.catalog.pricing import Price, parse_price
from batchrun.errors import ManifestError

# The catalog's media formats: a single URL string or a list of them.
_MEDIA_FORMATS = {
    "image_uri": False,
    "image_uris": True,
    "video_uri": False,
    "video_uris": True,
    "audio_uri": False,
    "audio_uris": True,
}
_URL_PATTERN = r"^(https?://|data:)"
_SCHEMA_KEYWORDS_TO_DROP = (
    "model_id",
    "output_type",
    "$comment",
    "base_price_usd",
    "price_unit",
    "pricing_note",
)


def schemas_root() -> Path:
    """The `schemas/` folder: inside the installed wheel, or the source checkout's."""
    packaged = Path(__file__).resolve().parents[1] / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "schemas"


def models_dir() -> Path:
    """The packaged model schemas."""
    return schemas_root() / "models"


def schema_file_name(model_id: str) -> str:
    """`a/b/c` -> `a__b__c.json`, the file name of a model's schema."""
    return model_id.replace("/", "__") + ".json"


def model_id_of(path: Path) -> str:
    """The model id a schema file is named for (`a__b__c.json` -> `a/b/c`)."""
    return path.stem.replace("__", "/")


@dataclass(frozen=True)
class SchemaEntry:
    """One model's schema file, read: the input schema as stored and the price, if any."""

    model_id: str
    path: Path
    raw: dict[str, Any]  # the input schema in the catalog's dialect (or already normalised)
    price: Price
    output_type: str | None = None
    display_name: str | None = None
    fetched_at: str | None = None


def read_entry(path: Path, model_id: str | None = None) -> SchemaEntry:
    """Read a schema file; ManifestError naming the file and the fix when it is unusable."""
    model_id = model_id or model_id_of(path)
    fix = f"pull it again: batchrun models pull {model_id} --dir {path.parent}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}); {fix}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the model schema ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a model schema must be a JSON object; {fix}")
    is_entry = "input_schema" in data
    raw = data["input_schema"] if is_entry else data
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: $.input_schema must be a JSON object; {fix}")
    problem = schema_problem(raw)
    if problem:
        raise ManifestError(f"{path}: {problem}; {fix}")
    try:  # a schema jsonschema cannot use ("type": 5) is said here, not as a traceback later
        Draft202012Validator.check_schema(normalise(raw))
    except SchemaError as exc:
        where = "$.input_schema" + "".join(f".{p}" for p in exc.path)
        raise ManifestError(
            f"{path}: {where}: not a usable JSON Schema ({exc.message}); {fix}"
        ) from None
    try:
        price = parse_price(data)
    except ValueError as exc:
        raise ManifestError(f"{path}: {exc}; {fix}") from None
    output_type = data.get("output_type", raw.get("output_type"))
    return SchemaEntry(
        model_id=model_id,
        path=path,
        raw=raw,
        price=price,
        output_type=output_type if isinstance(output_type, str) else None,
        display_name=data.get("display_name") if is_entry else None,
        fetched_at=data.get("fetched_at") if is_entry else None,
    )


@dataclass
class Schemas:
    """Model schemas along a search path: the first folder holding a model's file wins."""

    dirs: tuple[Path, ...]
    _entries: dict[str, SchemaEntry | None] = field(default_factory=dict, repr=False)
    _normalised: dict[str, dict[str, Any] | None] = field(default_factory=dict, repr=False)
    _validators: dict[str, Draft202012Validator | None] = field(default_factory=dict, repr=False)

    @classmethod
    def along(cls, dirs: Iterable[Path]) -> Schemas:
        """A search path of the given folders (missing ones skipped), then the packaged one."""
        path: list[Path] = []
        for d in [*dirs, models_dir()]:
            d = Path(d)
            if d.is_dir() and d.resolve() not in {p.resolve() for p in path}:
                path.append(d)
        return cls(tuple(path))

    def entry(self, model_id: str) -> SchemaEntry | None:
        """The model's schema file, read, or None when no folder has one."""
        if model_id not in self._entries:
            found = None
            name = schema_file_name(model_id)
            for folder in self.dirs:
                path = folder / name
                if path.is_file():
                    found = read_entry(path, model_id)
                    break
            self._entries[model_id] = found
        return self._entries[model_id]

    def raw_schema(self, model_id: str) -> dict[str, Any] | None:
        """The input schema as stored (the catalog's dialect), or None when there is none."""
        found = self.entry(model_id)
        return None if found is None else found.raw

    def input_schema(self, model_id: str) -> dict[str, Any] | None:
        """The normalised input schema of a model, or None when there is no schema file."""
        if model_id not in self._normalised:
            raw = self.raw_schema(model_id)
            self._normalised[model_id] = None if raw is None else normalise(raw)
        return self._normalised[model_id]

    def price(self, model_id: str) -> Price | None:
        """The model's price as its schema file gives it (None: no schema file)."""
        found = self.entry(model_id)
        return None if found is None else found.price

    def output_type(self, model_id: str) -> str | None:
        """IMAGE, VIDEO, ... as the catalog says, when known."""
        found = self.entry(model_id)
        return None if found is None else found.output_type

    def known_models(self) -> list[str]:
        """Model ids that have a schema file in some folder of the path, sorted."""
        return sorted({model_id_of(p) for d in self.dirs for p in d.glob("*.json")})

    def validate_inputs(self, model_id: str, inputs: dict[str, Any]) -> list[str] | None:
        """Problems with `inputs` for `model_id` as `$.field: message` lines, sorted by path.

        Returns None when the model has no schema (the caller decides: warn, or refuse
        under --strict); an empty list means valid.
        """
        if model_id not in self._validators:
            schema = self.input_schema(model_id)
            self._validators[model_id] = None if schema is None else validator(schema)
        checker = self._validators[model_id]
        if checker is None:
            return None
        if checker.is_valid(inputs):
            return []
        problems = []
        for err in sorted(checker.iter_errors(inputs), key=lambda e: list(map(str, e.path))):
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
            if err.validator == "additionalProperties" and not err.path:
                for key in sorted(map(str, inputs)):
                    message = self.unknown_field(model_id, key)
                    if message:
                        problems.append(f"$.{key}: {message}")
                continue
            problems.append(f"{path}: {err.message}")
        return problems

    def unknown_field(self, model_id: str, key: str) -> str:
        """'unknown field ...; did you mean ...?' (or the known fields), for a field not in
        the model's schema; empty when the schema knows the field."""
        known = list((self.input_schema(model_id) or {}).get("properties", {}))
        if key in known:
            return ""
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = f"known fields: {', '.join(sorted(known))}"
        return f"unknown field {key!r}; {hint}"


@cache
def packaged() -> Schemas:
    """The schemas shipped with batchrun (what the simulator serves)."""
    return Schemas((models_dir(),))


# What a model schema may be: a catalog (or a file) is outside input, and validating each job
# against it must neither reach the network, nor recurse without end, nor take seconds a job.
MAX_DEPTH = 64
MAX_NODES = 20_000
# A quantified group that itself holds a quantifier or an alternation ("(a+)+", "(\\w*)*",
# "(a|aa){2,}"): the shapes that make a regex engine backtrack for exponential time on a string
# that nearly matches.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}|](?:[^()\\]|\\.)*\)[+*{]")
_BACKREFERENCE = re.compile(r"\\[1-9]")


def _refuse_retrieval(uri: str) -> Resource:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


# $refs resolve inside the schema only: no file is read and no URL fetched, whatever it says.
_LOCAL_ONLY: Registry = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose $refs resolve inside it only."""
    return Draft202012Validator(schema, registry=_LOCAL_ONLY)


def schema_problem(schema: Any) -> str:
    """Why an input schema cannot be used ('' when it can): nested deeper than MAX_DEPTH,
    larger than MAX_NODES, a $ref outside itself, or a pattern that could take exponential
    time. Walked without recursion, so any input gives an answer at once."""
    stack: list[tuple[Any, int, str]] = [(schema, 0, "$")]
    nodes = 0
    while stack:
        node, depth, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"the input schema has more than {MAX_NODES:,} nodes; too large to check jobs"
        if depth > MAX_DEPTH:
            return f"the input schema is nested deeper than {MAX_DEPTH} levels (at {where[:80]})"
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return (
                    f"{where}.$ref: {ref[:80]!r} points outside the schema; only references "
                    "inside it (#/...) are followed"
                )
            props = node.get("patternProperties")
            patterns = [node.get("pattern"), *(props if isinstance(props, dict) else ())]
            for pattern in patterns:
                if isinstance(pattern, str) and _pattern_problem(pattern):
                    return f"{where}.pattern: {pattern[:80]!r} {_pattern_problem(pattern)}"
            stack.extend((v, depth + 1, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{i}]") for i, v in enumerate(node))
    return ""


def _pattern_problem(pattern: str) -> str:
    if _NESTED_QUANTIFIER.search(pattern) or _BACKREFERENCE.search(pattern):
        return (
            "repeats a group that holds a quantifier or an alternative, or refers back (it can "
            "take exponential time on a prompt); not used to check jobs"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a regular expression ({exc})"
    return ""


def normalise(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn the catalog's JSON-Schema-like dialect into standard JSON Schema.

    `"type": "float"` becomes `number`; media `format`s become URL-shaped strings (or lists of
    them); `validations` (file size, aspect ratio: only checkable on the file) move to
    `x-validations`; unknown fields are refused so a typo in a sweep fails before it is paid for.
    Normalising a normalised schema changes nothing.
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


# The packaged schemas, for callers without a search path (the simulator, grid's defaults).


def known_models() -> list[str]:
    """Model ids that have a packaged schema, sorted."""
    return packaged().known_models()


def raw_schema(model_id: str) -> dict[str, Any] | None:
    """The packaged input schema as stored (the catalog's dialect), or None."""
    return packaged().raw_schema(model_id)


def input_schema(model_id: str) -> dict[str, Any] | None:
    """The normalised packaged input schema of a model, or None."""
    return packaged().input_schema(model_id)


def output_type(model_id: str) -> str | None:
    """IMAGE, VIDEO, ... as the packaged schema says, when known."""
    return packaged().output_type(model_id)


def validate_inputs(model_id: str, inputs: dict[str, Any]) -> list[str] | None:
    """`Schemas.validate_inputs` against the packaged schemas."""
    return packaged().validate_inputs(model_id, inputs)

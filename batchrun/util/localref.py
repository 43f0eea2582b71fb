"""A local file as a job's input value: the reference a manifest's `{local: PATH}` or
`{glob: PATTERN}` becomes, and the forms it takes where it is shown or hashed.

A reference is the JSON object `{"local": PATH, "sha256": HEX, "bytes": N, "mime": TYPE}`:
PATH is relative to the manifest's folder (as written there), TYPE is read from the file's
magic bytes. state.db stores it as it is; a job's id, the cache key and merge use only its
identity (sha256 and type), so moving the folder, or two files with the same bytes, change
nothing; what is sent is made from it at submit time (a `data:` URI or a bucket URL).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

KEYS = frozenset({"local", "sha256", "bytes", "mime"})


def make(path: str, sha256: str, size: int, mime: str) -> dict[str, Any]:
    """The reference of one file (`path` as the manifest gives it, relative to its folder)."""
    return {"local": path, "sha256": sha256, "bytes": size, "mime": mime}


def is_ref(value: Any) -> bool:
    """Whether `value` is a local-file reference."""
    return type(value) is dict and value.keys() == KEYS


def holds_ref(value: Any) -> bool:
    """Whether `value` is a reference or a list holding one (a plural media field)."""
    if type(value) is list:
        return any(is_ref(v) for v in value)
    return is_ref(value)


def refs(inputs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field, reference) for every reference in a job's inputs, lists included."""
    for name, value in inputs.items():
        if is_ref(value):
            yield name, value
        elif type(value) is list:
            for item in value:
                if is_ref(item):
                    yield name, item


def identity(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with each reference replaced by what identifies its bytes (sha256 and type):
    what a job id, the cache key and merge are worked out from."""
    return {k: _map(v, _identity) for k, v in inputs.items()}


def shown(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` as `plan --json` shows them: `{"local": PATH, "sha256": .., "bytes": ..}`."""
    return {k: _map(v, _shown) for k, v in inputs.items()}


def text(value: Any) -> str | None:
    """A reference (or a list of them) as a report shows it: the local path(s); None when
    `value` holds none."""
    if is_ref(value):
        return str(value["local"])
    if type(value) is list and value and all(is_ref(v) for v in value):
        return " ".join(str(v["local"]) for v in value)
    return None


def _map(value: Any, fn: Any) -> Any:
    if is_ref(value):
        return fn(value)
    if type(value) is list:
        return [fn(v) if is_ref(v) else v for v in value]
    return value


def _identity(ref: dict[str, Any]) -> dict[str, Any]:
    return {"local_sha256": ref["sha256"], "mime": ref["mime"]}


def _shown(ref: dict[str, Any]) -> dict[str, Any]:
    return {"local": ref["local"], "sha256": ref["sha256"], "bytes": ref["bytes"]}

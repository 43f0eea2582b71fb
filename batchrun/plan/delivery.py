"""How each local file of a job reaches the API, decided from its reference alone, and what
makes a file impossible to send: the same decision for `validate` (before anything is sent)
and for the run (right before the submit is built, run/inputs.py).

- Inline, as a `data:<type>;base64,...` URI: an image of at most INLINE_MAX_BYTES, while the
  whole request stays under REQUEST_MAX_BYTES (RunComfy's own limits for inline images), and
  unless `uploads.inline: never`. The smallest images go inline first.
- Through the bucket (`uploads.to`): everything else. With no bucket, such a file is a problem.

Which fields may take a local file: one whose schema format is a media URL (image_uri,
video_uri, audio_uri or their plurals), else (no such format known) one named `*_url` or
`*_urls`; the file's type (by its magic bytes) must match the format's kind.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from batchrun.plan.settings import UploadSettings
from batchrun.util import localref
from batchrun.util.media import kind_of

MIB = 1024 * 1024
INLINE_MAX_BYTES = 6 * MIB
REQUEST_MAX_BYTES = 64 * MIB
# What a bucket URL may add to a request, at most (a presigned URL is about 1.5 KB).
URL_ALLOWANCE = 4096

INLINE = "inline"
BUCKET = "bucket"

S3_EXTRA = "pip install 'runcomfy-batchrun[s3]'"


@dataclass(frozen=True)
class Route:
    """One local file of a job and how it goes: INLINE, BUCKET, or '' (it cannot: `why`)."""

    field: str
    ref: dict[str, Any]
    way: str
    why: str = ""


def data_uri_length(size: int, mime: str) -> int:
    """The length of a file of `size` bytes as a `data:` URI."""
    return len(f"data:{mime};base64,") + 4 * math.ceil(size / 3)


def routes(inputs: dict[str, Any], uploads: UploadSettings) -> list[Route]:
    """How each local file of one job's inputs goes (see the module's docstring)."""
    found = list(localref.refs(inputs))
    if not found:
        return []
    others = {k: v for k, v in inputs.items() if not localref.holds_ref(v)}
    used = len(json.dumps(others)) + 64
    candidates = []
    out: dict[int, Route] = {}
    for i, (name, ref) in enumerate(found):
        why = _not_inline(ref, uploads)
        if why:
            out[i] = _bucket(name, ref, why, uploads)
            used += URL_ALLOWANCE
        else:
            candidates.append(i)
    for i in sorted(candidates, key=lambda i: found[i][1]["bytes"]):
        name, ref = found[i]
        size = data_uri_length(ref["bytes"], ref["mime"])
        if used + size < REQUEST_MAX_BYTES:
            out[i] = Route(name, ref, INLINE)
            used += size
        else:
            why = "inline, it would take the request past the 64 MiB a request may be"
            out[i] = _bucket(name, ref, why, uploads)
            used += URL_ALLOWANCE
    return [out[i] for i in range(len(found))]


def _not_inline(ref: dict[str, Any], uploads: UploadSettings) -> str:
    """Why a file cannot go inline ('' when it may)."""
    if uploads.inline == "never":
        return "uploads.inline is never"
    kind = kind_of(ref["mime"])
    if kind != "image":
        return f"a {kind} file ({ref['mime']}) cannot be sent inline, only images can"
    if ref["bytes"] > INLINE_MAX_BYTES:
        return (
            f"an image of {ref['bytes'] / MIB:.1f} MiB cannot be sent inline (at most 6 MiB); "
            "shrink it, or"
        )
    return ""


def _bucket(name: str, ref: dict[str, Any], why: str, uploads: UploadSettings) -> Route:
    if uploads.to is not None:
        return Route(name, ref, BUCKET)
    fix = (
        f"add `uploads: {{to: s3://BUCKET/PREFIX}}` to the manifest so it is uploaded to a "
        f"bucket ({S3_EXTRA})"
    )
    text = f"{why} {fix}" if why.endswith(", or") else f"{why}; {fix}"
    return Route(name, ref, "", f"{ref['local']}: {text}")


def field_problem(name: str, prop: dict[str, Any] | None, ref: dict[str, Any]) -> str:
    """Why field `name` (its normalised schema `prop`, None when unknown) cannot take the
    local file `ref` ('' when it can)."""
    media = prop.get("x-media") if isinstance(prop, dict) else None
    path, mime = ref["local"], ref["mime"]
    if not isinstance(media, str):
        if name.endswith(("_url", "_urls")):
            return ""
        return (
            f"{path}: {name!r} takes no media URL, so it cannot take a local file; use "
            "{local:} and {glob:} only for fields whose schema format is image_uri, video_uri "
            "or audio_uri (or their plurals), or named *_url / *_urls"
        )
    want = media.split("_")[0]
    if kind_of(mime) != want:
        return (
            f"{path} is {_a(kind_of(mime))} file ({mime}, by its content), but {name!r} "
            f"takes {_a(want)} ({media}); name {_a(want)} file there"
        )
    return ""


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def placeholders(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with each local file as a stand-in `data:` URI, for checking against the
    model's schema (which wants a URL there)."""
    out = {}
    for name, value in inputs.items():
        if localref.is_ref(value):
            value = _stand_in(value)
        elif type(value) is list and any(localref.is_ref(v) for v in value):
            value = [_stand_in(v) if localref.is_ref(v) else v for v in value]
        out[name] = value
    return out


def _stand_in(ref: dict[str, Any]) -> str:
    return f"data:{ref['mime']};base64,"

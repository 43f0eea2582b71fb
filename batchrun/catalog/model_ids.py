"""What a model id may be before it goes into a URL or a file name: path segments of printable
characters, none empty, none `.` or `..`, and none of `?`, `#`, `%`, `\\` or whitespace. An id
such as `acme/model/../../requests/RID/cancel` would otherwise reach another endpoint."""

from __future__ import annotations

import re

_BAD_CHARS = re.compile(r"[?#%\\\s\x00-\x1f\x7f]")


def problem(model_id: str) -> str:
    """Why `model_id` cannot be used ('' when it can)."""
    if not model_id:
        return "a model id cannot be empty"
    bad = _BAD_CHARS.search(model_id)
    if bad:
        return f"a model id cannot hold {bad.group(0)!r} (found in {model_id!r})"
    segments = model_id.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return (
            f"{model_id!r} has an empty, '.' or '..' segment; a model id is names joined by "
            "single slashes, e.g. blackforestlabs/flux-1-kontext/pro/edit"
        )
    return ""

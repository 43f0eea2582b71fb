"""What the service does with media inputs.

- A `data:` URI is decoded at submit: one that is not base64, has bad base64, or holds an
  image over 6 MiB is refused (422 with `detail`). The job keeps a short form of it
  (`data:TYPE;sha256,HEX`), and counts by that.
- An http(s) URL is fetched with a plain GET (no cookies, no token, a short timeout) when the
  job runs; one that cannot be fetched fails the job with `input FIELD could not be fetched:
  HTTP STATUS`. A job counts by its URLs without their query strings (a re-signed URL is the
  same input).

Which URLs are fetched is the `fetch_inputs` setting: `local` (the default: 127.0.0.1 and
localhost only, so `--simulate` stays offline with public example URLs in a manifest), `all`
or `off`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

INLINE_IMAGE_MAX_BYTES = 6 * 1024 * 1024
REQUEST_MAX_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 5.0
FETCH_MAX_BYTES = 512 * 1024 * 1024
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DATA = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.DOTALL)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, no cookies


def decode_data_uris(inputs: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`inputs` with each data: URI in its short form, and a 422 `detail` entry for each one
    the service would refuse."""
    detail: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, list):
            out[name] = [_decoded(v, ["body", name, i], detail) for i, v in enumerate(value)]
        else:
            out[name] = _decoded(value, ["body", name], detail)
    return out, detail


def _decoded(value: Any, loc: list[Any], detail: list[dict[str, Any]]) -> Any:
    if not isinstance(value, str) or not value.startswith("data:"):
        return value
    m = _DATA.match(value)
    if m is None or ";base64" not in m.group(2):
        detail.append({"loc": loc, "msg": "a data: URI must be base64", "type": "value_error"})
        return value[:40]
    mime = m.group(1) or "text/plain"
    try:
        data = base64.b64decode(value[m.end() :], validate=True)
    except (binascii.Error, ValueError):
        detail.append({"loc": loc, "msg": "invalid base64 in data: URI", "type": "value_error"})
        return value[:40]
    if mime.startswith("image/") and len(data) > INLINE_IMAGE_MAX_BYTES:
        detail.append(
            {
                "loc": loc,
                "msg": f"inline image of {len(data)} bytes is over the 6 MiB limit; "
                "give a URL instead",
                "type": "value_error",
            }
        )
    return f"data:{mime};sha256,{hashlib.sha256(data).hexdigest()}"


def identity_form(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with every http(s) URL's query string left out."""
    return {k: _map(v, _unsigned) for k, v in inputs.items()}


def _map(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [fn(v) for v in value]
    return fn(value)


def _unsigned(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(("http://", "https://")) and "?" in value:
        return value.split("?", 1)[0]
    return value


def fetch_problem(inputs: dict[str, Any], mode: str) -> str:
    """Why the job cannot run: the first URL input that could not be fetched ('' if none)."""
    if mode == "off":
        return ""
    for name, value in inputs.items():
        for url in value if isinstance(value, list) else [value]:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                continue
            if mode == "local" and (urlsplit(url).hostname or "") not in _LOCAL_HOSTS:
                continue
            why = _fetch(url)
            if why:
                return f"input {name} could not be fetched: {why}"
    return ""


def _fetch(url: str) -> str:
    """'' when a plain GET of `url` answers 200 with its whole body, else why not."""
    request = urllib.request.Request(url, headers={"User-Agent": "runcomfy-sim-fetch"})
    try:
        with _OPENER.open(request, timeout=FETCH_TIMEOUT_S) as answer:
            got = 0
            while chunk := answer.read(1 << 16):
                got += len(chunk)
                if got > FETCH_MAX_BYTES:
                    return "larger than the service fetches"
            return "" if answer.status == 200 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no answer ({type(reason).__name__})"

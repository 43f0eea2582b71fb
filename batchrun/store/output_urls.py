"""A job's output URLs: collected from its `output`, checked before anything is fetched, and
the file names they give.

Host patterns: "*.example.com" matches sub-domains of example.com only (a.example.com,
a.b.example.com), not example.com itself; a plain name ("example.com", "127.0.0.1") matches
exactly that host. Matching is on the hostname parsed by urllib.parse, case-insensitive,
ignoring the port and a trailing dot.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from batchrun.store.records import JobRow

_SKIP_KEYS = frozenset({"status_url", "result_url", "cancel_url"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 100


def _url_like(text: str) -> bool:
    """Whether a string of an output is a URL (or a path) to collect."""
    return "://" in text or text.startswith(("/", "\\"))


def _walk(value: Any, key: str, found: dict[str, str]) -> None:
    """Each URL in `value` (under `key`) into `found`, with the key it was first seen under (a
    call a level, not a generator: a report walks 100,000s of outputs)."""
    if isinstance(value, str):
        if _url_like(value) and value not in found:
            found[value] = key
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk(v, key, found)
    elif isinstance(value, (dict, Mapping)):  # a dict without the slower Mapping check
        for k, v in value.items():
            if k not in _SKIP_KEYS:
                _walk(v, str(k), found)


def output_keys(output: Any) -> dict[str, str]:
    """Each collected URL -> the `output` key it was found under ("" at the top level)."""
    keys: dict[str, str] = {}
    _walk(output, "", keys)
    return keys


def collect_urls(output: Any) -> list[str]:
    """Every URL-looking string in `output`, in document order, each once."""
    if type(output) is str:  # the usual bare URL, without the walk (a report asks 100,000s)
        return [output] if _url_like(output) else []
    return list(output_keys(output))


def default_allow_hosts(api_base: str) -> list[str]:
    """RunComfy's output hosts plus the API base's own host (the simulator serves files)."""
    hosts = ["*.runcomfy.net", "*.runcomfy.com"]
    try:
        host = urlsplit(api_base).hostname
    except ValueError:
        host = None
    if host and host not in hosts:
        hosts.append(host)
    return hosts


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` matches one of the patterns (see the module docstring)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def refusal(url: str, allow_hosts: Sequence[str]) -> str:
    """Why `url` must not be fetched ("" when it may be)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "refused: not a valid URL"
    if not parts.scheme:
        return "refused: not an absolute http(s) URL"
    if parts.scheme not in ("http", "https"):
        return f"refused: scheme {parts.scheme!r} not allowed (only http and https)"
    if not host:
        return "refused: URL has no host"
    if parts.username is not None or parts.password is not None:
        return "refused: URL carries credentials"
    if not host_allowed(host, allow_hosts):
        return f"refused: host {host} not allowed (add it to outputs.allow_hosts to trust it)"
    return ""


def safe_name(raw: str) -> str:
    """`raw` reduced to [A-Za-z0-9._-], no leading dot, at most 100 chars ("" if nothing left)."""
    name = _UNSAFE.sub("_", raw).lstrip(".")
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and stem and len(ext) <= 10 else ""
        name = name[: _MAX_NAME - len(ext) - 1] + "." + ext if ext else name[:_MAX_NAME]
    return "" if name.strip("._") == "" else name


def url_name(url: str) -> str:
    """The sanitised last path segment of `url` after percent-decoding ("" if unusable)."""
    segment = urlsplit(url).path.rsplit("/", 1)[-1]
    decoded = unquote(segment)
    # %2F and %5C decode to separators: keep only what follows the last one.
    return safe_name(re.split(r"[/\\]", decoded)[-1])


def with_ext(name: str, content_type: str) -> str:
    """`name`, with the extension of `content_type` when it has none."""
    if "." in name.strip("."):
        return name
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip().lower()) or ""
    return name + ext


class Names:
    """File names handed out in turn: each is the name asked for, or name-2, name-3... (before
    the extension), the first not yet taken. Many equal names cost O(1) each, not O(n)."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)
        self._next: dict[str, int] = {}  # name -> the first suffix not yet tried for it

    def claim(self, name: str) -> str:
        if name not in self.taken:
            self.taken.add(name)
            return name
        stem, dot, ext = name.rpartition(".")
        stem, ext = (stem, "." + ext) if dot and stem else (name, "")
        n = self._next.get(name, 2)
        while f"{stem}-{n}{ext}" in self.taken:
            n += 1
        self._next[name] = n + 1
        claimed = f"{stem}-{n}{ext}"
        self.taken.add(claimed)
        return claimed


def needs_files(run_dir: Path, row: JobRow) -> bool:
    """A succeeded job whose outputs are not all on disk, complete (killed mid-download)."""
    urls = collect_urls(row.output)
    if not urls:
        return False
    if len(row.files) != len(urls):
        return True
    for f in row.files:
        if f.error or not f.name:
            return True
        try:
            if (run_dir / f.name).stat().st_size != f.size:
                return True
        except OSError:
            return True
    return False

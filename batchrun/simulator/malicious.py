"""Malicious mode: hostile results for batchrun's security tests.

With `malicious=True` every job succeeds, and job number `seq` (0-based submit order since start
or reset) gets variant `VARIANTS[seq % len(VARIANTS)]`:

- URL variants (output is a one-element array holding the URL):
  `dotdot` `BASE/files/<id>/../../../escape.png`, `pct_dotdot` `.../%2e%2e%2f%2e%2e%2fescape.png`,
  `backslash` `...\\..\\escape.png`, `absolute` `.../%2Fetc%2Fpasswd` (last segment decodes to an
  absolute path), `bare_path` `/etc/passwd` (no scheme), `file_scheme` `file:///etc/passwd`,
  `ftp_scheme` `ftp://127.0.0.1/escape.png`, `evil_host` `http://evil.example.com/x.png`
  (never served), `huge` `.../huge.png` (`huge_file_bytes`, 5 MB by default),
  `truncated` `.../short.png` (Content-Length larger than the bytes sent, then the connection
  closes). The simulator serves every URL of its own host that it hands out, whatever a client
  does to the path, so a client that sanitises instead of refusing still gets bytes.
- Body variants: `malformed_json` (result answers 200 with truncated JSON) and `error_200`
  (result answers HTTP 200 with a top-level `error_code`).

The result response of a malicious job carries the header `X-Sim-Malicious: <variant>`.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

VARIANTS = (
    "dotdot",
    "pct_dotdot",
    "backslash",
    "absolute",
    "bare_path",
    "file_scheme",
    "ftp_scheme",
    "evil_host",
    "huge",
    "truncated",
    "malformed_json",
    "error_200",
)
BODY_VARIANTS = {"malformed_json", "error_200"}


def variant(seq: int) -> str:
    return VARIANTS[seq % len(VARIANTS)]


def url_for(name: str, base_url: str, request_id: str) -> str | None:
    """The hostile output URL of a URL variant (None for body variants)."""
    files = f"{base_url}/files/{request_id}"
    return {
        "dotdot": f"{files}/../../../escape.png",
        "pct_dotdot": f"{files}/%2e%2e%2f%2e%2e%2fescape.png",
        "backslash": f"{files}/..\\..\\escape.png",
        "absolute": f"{files}/%2Fetc%2Fpasswd",
        "bare_path": "/etc/passwd",
        "file_scheme": "file:///etc/passwd",
        "ftp_scheme": "ftp://127.0.0.1/escape.png",
        "evil_host": "http://evil.example.com/x.png",
        "huge": f"{files}/huge.png",
        "truncated": f"{files}/short.png",
    }.get(name)


def served_paths(url: str, base_url: str) -> list[str]:
    """Store keys under which the simulator serves `url`: as sent, and dot-normalised."""
    if not url.startswith(base_url + "/"):
        return []
    path = unquote(urlsplit(url).path.replace("\\", "%5C"))
    normalised = posixpath.normpath(path)
    return sorted({path, normalised, path.replace("\\", "/")})

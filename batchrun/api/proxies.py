"""HTTP settings from the environment (proxies, CA bundle), read once instead of per request.

requests reads them on every call when `Session.trust_env` is on: it scans os.environ for
proxies twice per request (a quarter of batchrun's CPU on a busy run). A session from
`session()` has trust_env off and carries the CA bundle the environment named when it was
built; `env_proxies(url)` says which proxies HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY
give a URL, for callers to keep per host. With trust_env off requests never reads ~/.netrc,
so no credentials from it ride along.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping

import requests
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies


def session() -> requests.Session:
    """A new Session with the environment's CA bundle and trust_env off."""
    s = requests.Session()
    s.trust_env = False
    # The same order requests uses (Session.merge_environment_settings).
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        s.verify = bundle
    return s


def env_proxies(url: str) -> dict[str, str]:
    """The proxies the environment gives `url` ({} when NO_PROXY covers its host)."""
    return dict(get_environ_proxies(url))


def str_headers(headers: Mapping[str, str | bytes]) -> CaseInsensitiveDict[str]:
    """A copy of `headers` with bytes values decoded as latin-1, which http.client encodes a
    str value with: the same bytes go out, and the copy is what PreparedRequest.headers holds."""
    return CaseInsensitiveDict(
        {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in headers.items()}
    )


# A Retry-After is obeyed up to this many seconds (a server asking for an hour gets 5 minutes).
MAX_RETRY_AFTER_S = 300.0
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}(\.[0-9]{1,9})?")


def strict_int(text: str | None) -> int | None:
    """A header's whole number (Content-Length, Retry-After): ASCII digits only, else None
    ('²' passes str.isdigit and then breaks int(); '1e3', ' 5 5', '-1' are no numbers)."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def strict_seconds(text: str | None) -> float | None:
    """Seconds as a header gives them: ASCII digits with an optional fraction ('0.5'), else
    None (no 'inf', 'nan', '1e9', '²')."""
    if text is None:
        return None
    text = text.strip()
    return float(text) if _DECIMAL.fullmatch(text) else None


# Set by the run's signal handler (SIGINT, SIGTERM, SIGHUP): body reads stop soon after. Plain
# globals: a signal handler may set them while the flagged thread holds any lock.
_interrupted = False
_interrupted_at = 0.0


def interrupt(on: bool = True) -> None:
    global _interrupted, _interrupted_at
    _interrupted_at = time.monotonic()
    _interrupted = on


def interrupted(grace: float = 0.0) -> bool:
    """A signal came, at least `grace` seconds ago (an answer already arriving may finish)."""
    return _interrupted and time.monotonic() - _interrupted_at >= grace

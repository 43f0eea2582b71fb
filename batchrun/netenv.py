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

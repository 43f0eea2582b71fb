"""The RunComfy Model API client: one requests.Session, timeouts on every call, error mapping."""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import quote, urlencode

import requests

from batchrun import __version__, netenv
from batchrun.errors import (
    ApiError,
    AuthError,
    ConfigError,
    InsufficientBalanceError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)

DEFAULT_API_BASE = "https://model-api.runcomfy.net"

# error_code values documented in reference/api-facts.md
AUTH_CODES = frozenset({400004, 403001})
BALANCE_CODES = frozenset({400002})
NOT_FOUND_CODES = frozenset({404001})
SERVER_CODES = frozenset({500001})
INPUT_CODES = frozenset({400001, 422})


class Client:
    """Submit, poll, fetch and cancel RunComfy requests; counts calls per endpoint."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5, 60),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if any(c.isspace() or not c.isprintable() for c in token):
            # http.client would refuse it with a message quoting the header, token included
            raise ConfigError(
                "RUNCOMFY_TOKEN contains whitespace or a control character (a stray newline "
                "from a file?); set it to the token alone"
            )
        self._token = token
        self._secrets = _secret_forms(token)
        if session is None:
            # Proxies and CA bundle read once here, not on every call (see netenv).
            session = netenv.session()
            session.proxies.update(netenv.env_proxies(self.base_url))
        self._session = session
        self._session.headers.setdefault("User-Agent", f"batchrun/{__version__}")
        self.timeout = timeout
        # What requests would work out from the environment on every call, once: the base URL
        # is fixed, so its proxies (NO_PROXY is per host) and CA bundle are too.
        self._send_settings = session.merge_environment_settings(
            self.base_url, {}, False, None, None
        )
        self._url_as_is = False  # see _prepare
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- endpoints ----------------------------------------------------------------------

    def submit(self, model_id: str, inputs: dict[str, Any]) -> str:
        """POST /v1/models/{model_id}: the new request id."""
        body = self._call("submit", "POST", f"/v1/models/{_path(model_id)}", json=inputs)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            # The server accepted something but gave no id: we cannot track it, nor retry it.
            raise TransportError(
                "submit answer has no request_id",
                endpoint=f"POST /v1/models/{model_id}",
                status=200,
                maybe_sent=True,
            )
        return request_id

    def status(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/status."""
        return self._call("status", "GET", f"/v1/requests/{_path(request_id)}/status")

    def result(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/result?include_cost=true (also answers while not finished)."""
        return self._call(
            "result",
            "GET",
            f"/v1/requests/{_path(request_id)}/result",
            params={"include_cost": "true"},
        )

    def cancel(self, request_id: str) -> dict[str, Any]:
        """POST /v1/requests/{id}/cancel: `outcome` is cancelled or not_cancellable."""
        return self._call("cancel", "POST", f"/v1/requests/{_path(request_id)}/cancel")

    def model(self, model_id: str) -> dict[str, Any]:
        """GET /v1/models/{model_id}: the catalog entry with its input_schema."""
        return self._call("catalog", "GET", f"/v1/models/{_path(model_id)}")

    def models(self, *, search: str = "", limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """GET /v1/models: `{models, total}`."""
        params = {"search": search, "limit": str(limit), "offset": str(offset)}
        return self._call("catalog", "GET", "/v1/models", params=params)

    def close(self) -> None:
        self._session.close()

    # ---- plumbing -----------------------------------------------------------------------

    def _call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        endpoint = f"{method} {path}"
        with self._lock:
            self.calls[kind] += 1
        url = self.base_url + path + ("?" + urlencode(params) if params else "")
        try:
            prepared = self._prepare(method, url, json)
            resp = self._session.send(
                prepared, timeout=self.timeout, allow_redirects=False, **self._send_settings
            )
        except requests.RequestException as exc:
            raise self._transport_error(exc, endpoint) from None
        return self._decode(resp, endpoint)

    def _prepare(self, method: str, url: str, json: Any) -> requests.PreparedRequest:
        """What Session.request prepares, without re-merging the settings on every call.

        The session's headers, cookies and hooks still apply. The URL is the base URL plus
        quoted path parts: once requests' own check (scheme, host, IDNA, quoting) leaves one
        unchanged, it leaves them all unchanged, so it runs until it has done so once.
        """
        session = self._session
        p = requests.PreparedRequest()
        p.method = method
        if self._url_as_is:
            p.url = url
        else:
            p.prepare_url(url, None)  # raises InvalidURL / MissingSchema for a bad base URL
            self._url_as_is = p.url == url
        headers = netenv.str_headers(session.headers)
        headers["Authorization"] = f"Bearer {self._token}"
        headers["Accept"] = "application/json"
        p.headers = headers
        p.prepare_cookies(session.cookies)
        p.prepare_body(None, None, json)
        p.hooks = session.hooks
        return p

    def _decode(self, resp: requests.Response, endpoint: str) -> dict[str, Any]:
        # A server may echo the token back: scrub the whole body before anything reads it,
        # so no message, detail or snippet derived from it can carry the token.
        raw = resp.text
        try:
            # decoded first, then scrubbed: \u0074... or \/ escapes cannot hide the token
            body = self._scrub_all(json.loads(raw))
        except ValueError:
            body = None
        text = self._scrub(raw)
        if resp.status_code >= 400 or (isinstance(body, dict) and "error_code" in body):
            raise self._api_error(resp, text, body, endpoint)
        if not isinstance(body, dict):
            raise TransportError(
                f"answer is not a JSON object: {_snippet(text)}",
                endpoint=endpoint,
                status=resp.status_code,
                # the server did answer; for a submit it may have created the request
                maybe_sent=True,
            )
        return body

    def _api_error(self, resp: requests.Response, text: str, body: Any, endpoint: str) -> ApiError:
        status = resp.status_code
        body = body if isinstance(body, dict) else {}
        code = _int_or_none(body.get("error_code"))
        message = _message(body) or _describe_body(resp, text) or "error"
        detail = body.get("detail")
        if detail:
            message = f"{message}: {_render_detail(detail)}"
        message = self._scrub(message)
        kw: dict[str, Any] = {
            "endpoint": endpoint,
            "status": status,
            "error_code": code,
            "detail": detail,
        }
        if status in (401, 403) or code in AUTH_CODES:
            return AuthError(message, **kw)
        if status == 402 or code in BALANCE_CODES:
            return InsufficientBalanceError(message, **kw)
        if status == 429 or code == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            return RateLimitedError(message, retry_after=retry_after, **kw)
        if status == 404 or code in NOT_FOUND_CODES:
            return NotFoundError(message, **kw)
        if status >= 500 or code in SERVER_CODES:
            return ServerError(message, **kw)
        if status in (400, 422) or code in INPUT_CODES:
            return InvalidInputError(message, **kw)
        return ApiError(message, **kw)

    def _transport_error(self, exc: requests.RequestException, endpoint: str) -> TransportError:
        maybe_sent = not _never_sent(exc)
        what = "read timed out" if isinstance(exc, requests.ReadTimeout) else type(exc).__name__
        reason = self._scrub(str(exc))
        # requests' messages repeat the host; the path is in the endpoint already.
        message = f"{what}: {_snippet(reason, 200)}"
        unreachable = "" if maybe_sent else unreachable_cause(exc)
        return TransportError(
            message, endpoint=endpoint, maybe_sent=maybe_sent, unreachable=unreachable
        )

    def _scrub(self, text: str) -> str:
        """Never let the token reach a message, even if a server echoes it back: as it is,
        percent-encoded, or in JSON escapes (which are decoded where one could hide it)."""
        if not self._token:
            return text
        if "\\" in text:
            decoded = _unescape_json(text)
            if self._token in decoded:
                text = decoded
        for form in self._secrets:
            text = text.replace(form, "***")
        return text

    def _scrub_all(self, value: Any) -> Any:
        """A decoded JSON value with the token scrubbed from every string, keys included."""
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, list):
            return [self._scrub_all(v) for v in value]
        if isinstance(value, dict):
            return {self._scrub(str(k)): self._scrub_all(v) for k, v in value.items()}
        return value


def _secret_forms(token: str) -> list[str]:
    """The token as a server might echo it: as is, JSON-escaped, percent-encoded."""
    if not token:
        return []
    forms = {token, json.dumps(token)[1:-1], token.replace("/", "\\/"), quote(token, safe="")}
    return sorted(forms, key=len, reverse=True)


_JSON_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[\\/\"bfnrt])")
_SIMPLE = {"/": "/", "\\": "\\", '"': '"', "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape_json(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        return chr(int(e[1:], 16)) if e[0] == "u" else _SIMPLE[e]

    return _JSON_ESCAPE.sub(one, text)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (refused, connect timeout,
    a TLS handshake that failed)."""
    if isinstance(exc, requests.ConnectTimeout) or _tls_handshake_failure(exc):
        return True
    if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
        name = type(inner).__name__
        if name in ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError"):
            return True
        if isinstance(inner, ConnectionRefusedError) or "refused" in str(inner).lower():
            return True
    return isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema))


def _tls_handshake_failure(exc: requests.RequestException) -> str:
    """What failed in a TLS handshake (before anything was sent), or ''."""
    if not isinstance(exc, requests.exceptions.SSLError):
        return ""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "TLS certificate verify failed"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "TLS handshake failed (is it an http:// server?)"
    if "handshake" in text.lower():
        return "TLS handshake failed"
    return ""


def unreachable_cause(exc: requests.RequestException) -> str:
    """Why no connection reached the server, as a user reads it ('connection refused'), or ''
    when this error does not say the API is unreachable."""
    tls = _tls_handshake_failure(exc)
    if tls:
        return tls
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if not isinstance(exc, requests.ConnectionError):
        return ""
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)  # urllib3 MaxRetryError wraps the cause
    text = str(inner).lower()
    if type(inner).__name__ == "NameResolutionError" or "name or service not known" in text:
        return "host name not found (DNS)"
    if isinstance(inner, ConnectionRefusedError) or "refused" in text:
        return "connection refused"
    if type(inner).__name__ == "NewConnectionError":
        errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(inner))
        return errno_text.group(1).strip().lower() if errno_text else "no connection"
    return ""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _message(body: dict[str, Any]) -> str:
    for key in ("error_message", "message", "error"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            inner = value.get("message") or value.get("error_message")
            if isinstance(inner, str) and inner:
                return inner
    return ""


def _render_detail(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = str(item.get("msg") or item.get("message") or item)
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _describe_body(resp: requests.Response, text: str) -> str:
    text = text.strip()
    if text.startswith("<"):
        # an HTML error page from a proxy: its title says enough
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        what = f"HTML page: {_snippet(title.group(1))}" if title else "HTML page"
        return f"{resp.reason or 'error'} ({what})"
    return _snippet(text) or resp.reason or ""  # the caller scrubs the message built from it


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _snippet(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(segment: str) -> str:
    # model ids contain slashes that are part of the path; keep them, escape the rest
    return quote(segment, safe="/-_.~")

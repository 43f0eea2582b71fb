"""The RunComfy Model API client: one requests.Session, timeouts on every call, error mapping."""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import requests
import urllib3

from batchrun import __version__
from batchrun.api import proxies as netenv
from batchrun.api.connection import never_sent, unreachable_cause
from batchrun.catalog import model_ids
from batchrun.errors import (
    AcceptedWithError,
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
from batchrun.util.safetext import unsigned

# error_code values documented in reference/api-facts.md
AUTH_CODES = frozenset({400004, 403001})
BALANCE_CODES = frozenset({400002})
NOT_FOUND_CODES = frozenset({404001})
SERVER_CODES = frozenset({500001})
INPUT_CODES = frozenset({400001, 422})

# Every answer is read in full within DEADLINE_S of sending (a server trickling its body a byte
# at a time must not outlast job_timeout), and at most MAX_ANSWER_BYTES once decoded (gzip).
DEADLINE_S = 90.0
MAX_ANSWER_BYTES = 8 * 1024 * 1024
READ_SIZE = 64 * 1024
# Once the deadline has passed, what has already arrived is still read for this long.
LATE_GRACE_S = 0.2
# After a signal, an answer already arriving is read on for this long: a submit's answer that
# came back with the signal keeps its request id instead of leaving the job unknown.
INTERRUPT_GRACE_S = 1.0


class Client:
    """Submit, poll, fetch and cancel RunComfy requests; counts calls per endpoint."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5, 60),
        deadline: float = DEADLINE_S,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        clock: Callable[[], float] = time.monotonic,
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
        self.deadline = deadline
        self.max_answer_bytes = max_answer_bytes
        self._clock = clock
        # What requests would work out from the environment on every call, once: the base URL
        # is fixed, so its proxies (NO_PROXY is per host) and CA bundle are too.
        self._send_settings = session.merge_environment_settings(
            self.base_url, {}, False, None, None
        )
        self._send_settings["stream"] = True  # the body is read by _read, within limits
        self._url_as_is = False  # see _prepare
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # ---- endpoints ----------------------------------------------------------------------

    def submit(self, model_id: str, inputs: dict[str, Any]) -> str:
        """POST /v1/models/{model_id}: the new request id.

        A 200 that carries a request id and a non-zero `error_code` raises AcceptedWithError
        (with the request id): the request may run and be billed, so it is kept and read.
        """
        _check_model_id(model_id)
        try:
            body = self._call("submit", "POST", f"/v1/models/{_path(model_id)}", json=inputs)
        except ApiError as exc:
            if exc.status is not None and exc.status < 400 and exc.request_id:
                _check_request_id(exc.request_id, exc.endpoint)
                raise AcceptedWithError(
                    f"submit answered 200 with a request id and error_code {exc.error_code} "
                    f"({exc}); kept and read, as it may run and be billed",
                    request_id=exc.request_id,
                    endpoint=exc.endpoint,
                    status=exc.status,
                    error_code=exc.error_code,
                ) from None
            raise
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            # The server accepted something but gave no id: we cannot track it, nor retry it.
            raise TransportError(
                "submit answer has no request_id",
                endpoint=f"POST /v1/models/{model_id}",
                status=200,
                maybe_sent=True,
            )
        _check_request_id(request_id, f"POST /v1/models/{model_id}")
        return request_id

    def status(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/status."""
        return self._call("status", "GET", f"/v1/requests/{_segment(request_id)}/status")

    def result(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{id}/result?include_cost=true (also answers while not finished)."""
        return self._call(
            "result",
            "GET",
            f"/v1/requests/{_segment(request_id)}/result",
            params={"include_cost": "true"},
        )

    def cancel(self, request_id: str) -> dict[str, Any]:
        """POST /v1/requests/{id}/cancel: `outcome` is cancelled or not_cancellable."""
        return self._call("cancel", "POST", f"/v1/requests/{_segment(request_id)}/cancel")

    def model(self, model_id: str) -> dict[str, Any]:
        """GET /v1/models/{model_id}: the catalog entry with its input_schema."""
        _check_model_id(model_id)
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
        deadline = self._clock() + self.deadline
        try:
            prepared = self._prepare(method, url, json)
            resp = self._session.send(
                prepared, timeout=self.timeout, allow_redirects=False, **self._send_settings
            )
            try:
                self._read(resp, endpoint, deadline)
            finally:
                resp.close()
        except requests.RequestException as exc:
            raise self._transport_error(exc, endpoint) from None
        return self._decode(resp, endpoint)

    def _read(self, resp: requests.Response, endpoint: str, deadline: float) -> None:
        """The whole body into resp.content, within the deadline and the size cap (decoded)."""
        chunks: list[bytes] = []
        size = 0
        late: float | None = None  # when the deadline was first seen passed
        while True:
            stop = netenv.interrupted(grace=INTERRUPT_GRACE_S)
            now = self._clock()
            if now > deadline and late is None:
                # A deadline can pass while the process is stopped (Ctrl-Z, a paused
                # container) with the answer waiting in the socket: read on for a moment,
                # which takes what already arrived and still cuts off a trickle.
                late = now
            if stop or (late is not None and now - late > LATE_GRACE_S):
                why = "interrupted" if stop else f"not in {self.deadline:g}s"
                raise TransportError(
                    f"answer {why}: {size} bytes read",
                    endpoint=endpoint,
                    status=resp.status_code,
                    maybe_sent=True,
                )
            try:
                data = resp.raw.read1(READ_SIZE, decode_content=True)
            except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                raise requests.ConnectionError(f"answer cut short: {type(exc).__name__}") from None
            if not data:
                break
            size += len(data)
            if size > self.max_answer_bytes:
                raise TransportError(
                    f"answer larger than {self.max_answer_bytes // 1024**2} MB decoded; not read",
                    endpoint=endpoint,
                    status=resp.status_code,
                    maybe_sent=True,
                )
            chunks.append(data)
        # requests has no public way to hand it a body read by hand: its own two fields, so
        # resp.json() and resp.text decode what was read here
        resp._content = b"".join(chunks)  # noqa: SLF001
        resp._content_consumed = True  # type: ignore[attr-defined]  # noqa: SLF001

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
        except RecursionError:
            raise TransportError(
                "answer nested too deep to read",
                endpoint=endpoint,
                status=resp.status_code,
                maybe_sent=True,  # the server did answer: a submit may have been taken
            ) from None
        text = self._scrub(raw)
        if resp.status_code >= 400 or (isinstance(body, dict) and _error_code_set(body)):
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
        request_id = body.get("request_id")
        kw: dict[str, Any] = {
            "endpoint": endpoint,
            "status": status,
            "error_code": code,
            "detail": detail,
            "request_id": request_id if isinstance(request_id, str) and request_id else None,
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
        maybe_sent = not never_sent(exc)
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
        percent-encoded, or in JSON escapes (which are decoded where one could hide it); nor
        a signed URL's signature (an input URL a server echoes in an error)."""
        text = unsigned(text)
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


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), at most
    MAX_RETRY_AFTER_S: a server asking for an hour, or for 2099, gets a few minutes. Strict:
    `inf`, `1e9` or `²` are no number of seconds (None)."""
    if not value:
        return None
    value = value.strip()
    seconds = netenv.strict_seconds(value)
    if seconds is not None:
        return min(seconds, netenv.MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    try:
        delta = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(0.0, delta), netenv.MAX_RETRY_AFTER_S)


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


def _check_model_id(model_id: str) -> None:
    """The last guard: no URL is built from a model id that could reach another endpoint."""
    bad = model_ids.problem(model_id)
    if bad:
        raise InvalidInputError(f"not sent: {bad}", endpoint=f"model {model_id!r}")


def _error_code_set(body: dict[str, Any]) -> bool:
    """An `error_code` that says something went wrong: absent, null, 0 and "" do not (some
    answers carry `"error_code": null` beside a request id)."""
    code = body.get("error_code")
    return code not in (None, 0, "", "0", False)


def _path(segment: str) -> str:
    # model ids contain slashes that are part of the path; keep them, escape the rest
    return quote(segment, safe="/-_.~")


def _segment(request_id: str) -> str:
    """A request id as one path segment: a slash, `?`, `#` or `%` in it is escaped, never a
    path, query or fragment of its own."""
    return quote(request_id, safe="-_.~")


def _check_request_id(request_id: str, endpoint: str) -> None:
    """A request id goes into the URLs of its reads and its cancel as one escaped segment; `.`
    and `..` cannot be escaped (they would read another path), so such an id is not used. The
    submit may have been accepted and billed all the same: the job is unknown."""
    if request_id in (".", ".."):
        raise TransportError(
            f"submit answer's request_id {request_id!r} is not a path segment; not used in a URL",
            endpoint=endpoint,
            status=200,
            maybe_sent=True,
        )

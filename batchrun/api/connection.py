"""What a failed HTTP call says about the connection: did the request certainly not reach the
server (so a submit cannot have been billed), and is the API unreachable (and why)."""

from __future__ import annotations

import re

import requests


def never_sent(exc: requests.RequestException) -> bool:
    """True when the request certainly did not reach the server (refused, connect timeout,
    a TLS handshake that failed)."""
    if isinstance(exc, requests.ConnectTimeout) or tls_handshake_failure(exc):
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


def tls_handshake_failure(exc: requests.RequestException) -> str:
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
    tls = tls_handshake_failure(exc)
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

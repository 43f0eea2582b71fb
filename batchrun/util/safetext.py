"""Text from outside (a server's error, request id, URL or file name; a hand-edited state.db or
report.csv) made safe to print: no control character reaches a terminal, a log or an XML file.

A terminal executes ANSI escapes (ESC, and the 8-bit CSI U+009B), a CR redraws the line, a
backspace erases what was shown; XML 1.0 forbids most C0 characters even as `&#...;`. Each
such character is shown as its Python escape (`\\x1b`, `\\r`, `\\x9b`) instead, so the text
stays readable and nothing is lost from view. The stored data keeps what came (state.db,
`status --json`); only what is printed or rendered for reading passes through here.
"""

from __future__ import annotations

import re

# C0, DEL, C1; lone surrogates (not encodable, not XML) and the non-characters XML refuses.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with every control character shown as its escape (`\\x1b[31m` stays visible as
    those characters, harmless); `lines` keeps newlines and tabs (a multi-line message)."""
    pattern = _CONTROL_BUT_LINES if lines else _CONTROL
    return pattern.sub(_escape, text) if pattern.search(text) else text


def is_printable(text: str) -> bool:
    """Whether `text` holds no control character: printable(text) is `text`. One search of
    a column's cells joined tells it of them all."""
    return _CONTROL.search(text) is None


# A signed URL's secret parts (S3 SigV4 and V2, GCS): a presigned URL is a credential for its
# object, whatever text carries it.
_SIGNED = re.compile(
    r"(?i)((?:X-(?:Amz|Goog)-)?(?:Signature|Credential|Security-Token)|AWSAccessKeyId)"
    r"=[^&\s\"'<>\\]+"
)


def unsigned(text: str) -> str:
    """`text` with every URL signature's secret parts replaced by ***."""
    return _SIGNED.sub(r"\1=***", text) if "=" in text else text

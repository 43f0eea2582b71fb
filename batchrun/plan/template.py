"""`{name}` templates in manifest strings: compile once, render many times.

`"{x}"` alone keeps x's type (a seed stays an integer); inside a longer string values are
written as text (booleans as true/false, lists and dicts as JSON). `{{` and `}}` are literal
braces; any other lone brace is an error, so a typo never reaches the API silently.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from batchrun.util import localref

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A malformed template, or a placeholder with no value."""


class Template:
    """A compiled template: literal text and placeholder names, in order."""

    __slots__ = ("parts", "exact", "names")

    def __init__(self, parts: tuple[str | tuple[str], ...], exact: str | None) -> None:
        self.parts = parts  # str = literal text, (name,) = placeholder
        self.exact = exact  # the name, when the whole string is one placeholder
        self.names = tuple(p[0] for p in parts if isinstance(p, tuple))


@lru_cache(maxsize=65536)
def compile_template(text: str) -> Template | None:
    """The compiled template, or None when `text` holds no braces (a plain string)."""
    if "{" not in text and "}" not in text:
        return None
    parts: list[str | tuple[str]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(
                f"lone {token!r} in {text!r}; write {token * 2} for a literal brace"
            )
        else:
            name = m.group(1).strip()
            if not _NAME.match(name):
                raise TemplateError(
                    f"bad placeholder {token!r} in {text!r}: a placeholder is a var or "
                    f"field name like {{color}}; write {{{{ and }}}} for literal braces"
                )
            parts.append((name,))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    exact = parts[0][0] if len(parts) == 1 and isinstance(parts[0], tuple) else None
    # Merge adjacent literals (from escapes) so rendering joins fewer pieces.
    merged: list[str | tuple[str]] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + part
        else:
            merged.append(part)
    return Template(tuple(merged), exact)


def as_text(value: Any) -> str:
    """How a value is written inside a longer string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if localref.is_ref(value):
        return str(value["local"])  # a local file within a text: its path
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


class Renderer:
    """Renders values against one combination's names; names may refer to other templates."""

    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context
        self._done: dict[str, Any] = {}
        self._stack: list[str] = []

    def lookup(self, name: str) -> Any:
        if name in self._done:
            return self._done[name]
        if name not in self.context:
            known = ", ".join(sorted(self.context)) or "none"
            raise TemplateError(f"unknown placeholder {{{name}}}; known names: {known}")
        if name in self._stack:
            cycle = " -> ".join([*self._stack[self._stack.index(name) :], name])
            raise TemplateError(f"placeholders refer to each other in a loop: {cycle}")
        self._stack.append(name)
        try:
            value = self.render(self.context[name])
        finally:
            self._stack.pop()
        self._done[name] = value
        return value

    def render(self, value: Any) -> Any:
        if isinstance(value, str):
            tpl = compile_template(value)
            if tpl is None:
                return value
            if tpl.exact is not None:
                return self.lookup(tpl.exact)
            return "".join(
                p if isinstance(p, str) else as_text(self.lookup(p[0])) for p in tpl.parts
            )
        if isinstance(value, list):
            return [self.render(v) for v in value]
        if isinstance(value, dict) and not localref.is_ref(value):
            return {k: self.render(v) for k, v in value.items()}
        return value

"""One row of a model's sweep, prepared once for all its combinations: a million-job plan
spends its time here, so per combination only what varies is computed.

- `fast_maker`: values of the free axes -> (vars, inputs), when every template of the row is
  a string over plain values (str, int, float) that needs no other template: then each one is
  a `str.format` over the combination's values, with the row's constants written in once.
  With it, each var and input as a `Column` (an axis, a constant or a string template), so a
  block of combinations can be counted a column at a time (blocks.py). None otherwise: the
  caller takes the general path (grid's Renderer), which also reports template errors.
- `canonical_writer`: inputs -> the canonical JSON (sorted keys, compact, ASCII) the job id is
  hashed from, byte for byte what `json.JSONEncoder(sort_keys=True, separators=(",", ":"))`
  writes, with the keys and the values that are the same for the whole row encoded once
  (`canonical_parts`: that text around the values that vary).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from batchrun.plan.template import TemplateError, as_text, compile_template

CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
_ESCAPE = json.encoder.encode_basestring_ascii  # what both encoders write for a string
# Values `str.format` writes as `as_text` does (a bool would be written True, not true).
PLAIN_TYPES = (str, int, float)

Inputs = dict[str, Any]
Maker = Callable[[tuple[Any, ...]], tuple[Inputs, Inputs]]
Encoder = Callable[[Any], str]
# The canonical JSON of a row's inputs: literal texts around the varying values (see below).
CanonicalParts = tuple[list[str], list[tuple[str, Encoder]]]
VARIES: Any = object()  # a Column's `constant` when its value is not the same in every combination


class Column(NamedTuple):
    """How one var or input of a row's combinations is made from the free axes' values."""

    make: Callable[[tuple[Any, ...]], Any]  # values -> the value (before `coerce`)
    axis: int = -1  # the free axis it is, when it is one
    constant: Any = VARIES  # the value of every combination, when it is one
    text: Callable[..., str] | None = None  # a string template: `text(*values)` fills it
    # The template's JSON string, when no character of it needs escaping: `pattern % pick(values)`
    quoted: tuple[str, Callable[[tuple[Any, ...]], Any]] | None = None
    coerce: str | None = None  # integer|number|boolean: a string becomes one where it can


class FastRow(NamedTuple):
    """A row whose combinations are made without the general renderer (see `fast_maker`)."""

    make: Maker
    var_columns: dict[str, Column]  # in the order of the vars `make` gives
    input_columns: dict[str, Column]  # in the order of the inputs `make` gives
    coerce: Callable[[str, str], Any]  # (text, kind) -> the value (see Column.coerce)


@dataclass(frozen=True)
class RowShape:
    """What one row of a model's sweep is made of: the free axes (vars first, as the product
    runs), the row's own values and the fixed inputs, and which names may hold templates."""

    axes: list[tuple[str, list[Any], bool]]  # (name, values, is_var), not set by the row
    row_vars: Inputs
    row_inputs: Inputs
    fixed: Inputs
    maybe: set[str]  # names whose values may hold a template (or a list or dict)
    plain_axes: set[str]  # axes whose every value is a PLAIN_TYPES value
    json_axes: set[str]  # plain axes whose every value's text JSON writes as it is (`json_plain`)
    todo_vars: list[str]  # names to render, in vars and in inputs
    todo_inputs: list[str]
    coerce: list[tuple[str, str]]  # (input field, integer|number|boolean) present in the row

    def input_value(self, name: str) -> Any:
        """The row's constant value of an input field that is not a free axis."""
        return self.row_inputs[name] if name in self.row_inputs else self.fixed[name]

    def axes_names(self) -> set[str]:
        return {k for k, _, _ in self.axes}

    def input_keys(self) -> list[str]:
        keys = dict.fromkeys(self.fixed)
        keys.update(dict.fromkeys(k for k, _, is_var in self.axes if not is_var))
        keys.update(dict.fromkeys(self.row_inputs))
        return list(keys)


def fast_maker(shape: RowShape, coerce: Callable[[str, str], Any]) -> FastRow | None:
    """(vars, inputs) of a combination of the row's free axes, and their columns; None when a
    template needs the general path."""
    positions = {name: i for i, (name, _, _) in enumerate(shape.axes)}
    var_axes = [k for k, _, is_var in shape.axes if is_var]
    field_axes = [k for k, _, is_var in shape.axes if not is_var]
    var_names = set(shape.row_vars) | set(var_axes)
    input_names = set(shape.fixed) | set(field_axes) | set(shape.row_inputs)

    def source(name: str) -> tuple[int, Any] | None:
        """(axis position, None) or (-1, constant); None when not plain or unknown."""
        if name in shape.maybe or name not in var_names | input_names:
            return None
        if name in positions:
            return (positions[name], None) if name in shape.plain_axes else None
        return -1, shape.row_vars[name] if name in var_names else shape.input_value(name)

    json_axes = {positions[k] for k in shape.json_axes if k in positions}
    rendered: dict[tuple[bool, str], Column] = {}
    for is_var, todo, present in (
        (True, shape.todo_vars, var_names),
        (False, shape.todo_inputs, input_names),
    ):
        for name in todo:
            if name not in present:
                continue
            if name in positions:
                return None  # an axis of templates: each value its own template
            value = shape.row_vars[name] if is_var else shape.input_value(name)
            column = _compiled(value, source, json_axes)
            if column is None:
                return None
            rendered[is_var, name] = column
    make = _maker(shape, var_axes, field_axes, rendered, coerce)
    return FastRow(make, *_columns(shape, rendered), coerce)


def _columns(
    shape: RowShape, rendered: dict[tuple[bool, str], Column]
) -> tuple[dict[str, Column], dict[str, Column]]:
    """Every var and input of the row's combinations as a Column, in `make`'s key order."""
    axes = {name: (i, is_var) for i, (name, _, is_var) in enumerate(shape.axes)}
    kinds = dict(shape.coerce)

    def column(is_var: bool, name: str, constant: Any) -> Column:
        if (is_var, name) in rendered:
            found = rendered[is_var, name]
        elif name in axes and axes[name][1] == is_var:
            found = Column(itemgetter(axes[name][0]), axis=axes[name][0])
        else:
            found = Column(lambda values: constant, constant=constant)
        return found if is_var else found._replace(coerce=kinds.get(name))

    var_columns = {k: column(True, k, shape.row_vars.get(k)) for k in shape.row_vars}
    var_columns.update((k, column(True, k, None)) for k, _, is_var in shape.axes if is_var)
    input_columns = {
        k: column(False, k, shape.input_value(k) if k not in axes else None)
        for k in shape.input_keys()
    }
    return var_columns, input_columns


def _compiled(
    value: Any, source: Callable[[str], tuple[int, Any] | None], json_axes: set[int]
) -> Column | None:
    """How the template renders from the values, or None when the general path must."""
    if type(value) in (list, dict):
        return _copied(value)
    if type(value) is not str:
        return None
    try:
        tpl = compile_template(value)
    except TemplateError:
        return None
    if tpl is None:
        return None
    if tpl.exact is not None:
        where = source(tpl.exact)
        if where is None:
            return None
        index, constant = where
        if index >= 0:
            return Column(itemgetter(index), axis=index)
        return Column(lambda values: constant, constant=constant)
    pieces: list[str] = []
    for part in tpl.parts:
        if type(part) is str:
            pieces.append(_literal(part))
            continue
        where = source(part[0])
        if where is None:
            return None
        index, constant = where
        pieces.append(f"{{{index}}}" if index >= 0 else _literal(as_text(constant)))
    render = "".join(pieces).format
    quoted = _quoted(tpl.parts, source, json_axes)
    return Column(lambda values: render(*values), text=render, quoted=quoted)


def _quoted(
    parts: tuple[str | tuple[str], ...],
    source: Callable[[str], tuple[int, Any] | None],
    json_axes: set[int],
) -> tuple[str, Callable[[tuple[Any, ...]], Any]] | None:
    """A template's JSON string as a %-pattern over the axes it names (and what picks them from
    the values), when no character of it needs escaping; else None."""
    pattern: list[str] = []
    picked: list[int] = []
    for part in parts:
        if type(part) is str:
            literal = part
        else:
            where = source(part[0])
            if where is None:
                return None
            index, constant = where
            if index >= 0:
                if index not in json_axes:
                    return None
                pattern.append("%s")
                picked.append(index)
                continue
            literal = as_text(constant)
        if not json_plain(literal):
            return None
        pattern.append(literal.replace("%", "%%"))
    return ('"' + "".join(pattern) + '"', itemgetter(*picked)) if picked else None


def json_plain(text: str) -> bool:
    """Whether JSON writes this text as it is, between quotes (no character escaped)."""
    return _ESCAPE(text) == f'"{text}"'


def _copied(value: list[Any] | dict[str, Any]) -> Column | None:
    """A list or dict of plain values and no template renders to a copy of itself."""
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if type(item) not in _SCALARS or (type(item) is str and ("{" in item or "}" in item)):
            return None
    if isinstance(value, dict):
        mapping = value
        return Column(lambda values: dict(mapping), constant=mapping)
    sequence = value
    return Column(lambda values: list(sequence), constant=sequence)


_SCALARS = (str, int, float, bool, type(None))


def _maker(
    shape: RowShape,
    var_axes: list[str],
    field_axes: list[str],
    rendered: dict[tuple[bool, str], Column],
    coerce: Callable[[str, str], Any],
) -> Maker:
    nv = len(var_axes)
    # The keys in the order the general path makes them (fixed, axes, row), values to come.
    base_vars = {**shape.row_vars, **dict.fromkeys(var_axes)}
    base_inputs = {**shape.fixed, **dict.fromkeys(field_axes), **shape.row_inputs}
    render_vars = [(name, c.make) for (is_var, name), c in rendered.items() if is_var]
    render_inputs = [(name, c.make) for (is_var, name), c in rendered.items() if not is_var]
    coerced = shape.coerce

    def make(values: tuple[Any, ...]) -> tuple[Inputs, Inputs]:
        combo_vars = dict(base_vars)
        combo_vars.update(zip(var_axes, values, strict=False))  # the vars come first
        inputs = dict(base_inputs)
        if field_axes:
            inputs.update(zip(field_axes, values[nv:] if nv else values, strict=True))
        for name, fn in render_vars:
            combo_vars[name] = fn(values)
        for name, fn in render_inputs:
            inputs[name] = fn(values)
        for name, kind in coerced:
            value = inputs[name]
            if type(value) is str:
                inputs[name] = coerce(value, kind)
        return combo_vars, inputs

    return make


def canonical_writer(shape: RowShape) -> Callable[[Inputs], str]:
    """inputs -> canonical JSON, for the inputs of this row's combinations (one key set)."""
    parts = canonical_parts(shape)
    if parts is None:
        return CANONICAL
    texts, dynamic = parts
    render = "{}".join(_literal(t) for t in texts).format
    if len(dynamic) == 1:
        [(only, enc)] = dynamic
        return lambda inputs: render(enc(inputs[only]))
    return lambda inputs: render(*[enc(inputs[k]) for k, enc in dynamic])


def canonical_parts(shape: RowShape) -> CanonicalParts | None:
    """The canonical JSON of the row's inputs as the literal texts around the values that vary
    and those values' keys and encoders (one text more than keys); None when a key is no str."""
    keys = shape.input_keys()
    if not all(type(k) is str for k in keys):
        return None
    varying = {k for k, _, is_var in shape.axes if not is_var}
    varying.update(shape.todo_inputs)
    varying.update(name for name, _ in shape.coerce)
    texts: list[str] = []
    dynamic: list[tuple[str, Encoder]] = []
    text = "{"
    for i, key in enumerate(sorted(keys)):
        text += ("" if i == 0 else ",") + _ESCAPE(key) + ":"
        if key in varying:
            texts.append(text)
            dynamic.append((key, _encoder(shape, key)))
            text = ""
        else:
            text += CANONICAL(shape.input_value(key))
    texts.append(text + "}")
    return texts, dynamic


def _encoder(shape: RowShape, key: str) -> Encoder:
    """How the row's values of `key` are encoded: a string template always gives a string."""
    if key in shape.todo_inputs and all(k != key for k, _ in shape.coerce):
        value = shape.input_value(key) if key not in shape.axes_names() else None
        try:
            tpl = compile_template(value) if type(value) is str else None
        except TemplateError:
            tpl = None  # the combinations report it
        if tpl is not None and tpl.exact is None:
            return _ESCAPE
    return encode


def encode(value: Any) -> str:
    """One value as canonical JSON (nested dicts with sorted keys)."""
    kind = type(value)
    if kind is str:
        return _ESCAPE(value)
    if kind is int:
        return int.__repr__(value)
    return CANONICAL(value)


def encode_object(obj: Inputs) -> str:
    """A dict as compact JSON in its own key order (what `json.dumps(obj, separators=(",",
    ":"))` writes): the keys' part made once per key order, the values encoded directly."""
    keys = tuple(obj)
    render = _OBJECT_FORMATS.get(keys)
    if render is None:
        if not all(type(k) is str for k in keys) or len(_OBJECT_FORMATS) >= 1000:
            return _COMPACT(obj)
        inner = ",".join(_literal(_ESCAPE(k)) + ":{}" for k in keys)
        render = _OBJECT_FORMATS[keys] = ("{{" + inner + "}}").format
    return render(*[_compact(v) for v in obj.values()])


_OBJECT_FORMATS: dict[tuple[str, ...], Callable[..., str]] = {}


def _compact(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _ESCAPE(value)
    if kind is int:
        return int.__repr__(value)
    return _COMPACT(value)


def _literal(text: str) -> str:
    """`text` inside a str.format pattern."""
    return text.replace("{", "{{").replace("}", "}}")

"""The manifest's `expect:` blocks (top level, and per model replacing it key by key) as
checked records: what every job's output files must be.

The JSON Schema checks each value's shape (unknown keys, types, negative numbers, units);
this module checks what a schema cannot say (min > max, a check the file type cannot have,
files that will not be downloaded, a library the checks need) and merges each model's block
over the top-level one. The files are checked by fetch/expectations.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from batchrun.plan.settings import parse_size
from batchrun.util import probe

# An exact `duration_s` matches within this many seconds: containers store durations in
# their own time units and a frame rate rarely divides a second evenly.
DURATION_SLACK_S = 0.1
_RANGES = ("files", "width", "height", "duration_s")
_SIZES = ("min_bytes", "max_bytes")
_NOT_FOR = {  # checks a type of file cannot have
    probe.IMAGE: ("duration_s",),
    probe.AUDIO: ("width", "height"),
}

Where = tuple[str | int, ...]  # a path in the manifest: ("models", 0, "expect", "width")
Problem = tuple[Where, str]


@dataclass(frozen=True)
class Span:
    """An exact value (`low == high`) or a range [low, high], both ends included."""

    low: float
    high: float

    @property
    def exact(self) -> bool:
        return self.low == self.high

    def holds(self, value: float, slack: float = 0.0) -> bool:
        return self.low - slack <= value <= self.high + slack

    def __str__(self) -> str:
        return number(self.low) if self.exact else f"[{number(self.low)}, {number(self.high)}]"


@dataclass(frozen=True)
class Expect:
    """One job's expectations; None: not checked."""

    files: Span | None = None
    type: str | None = None
    width: Span | None = None
    height: Span | None = None
    duration_s: Span | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class Expectations:
    """The expectations of every model of a manifest (each model's block over the top one)."""

    top: Expect = Expect()
    models: Mapping[str, Expect] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.top) or any(self.models.values())

    def of(self, model_id: str) -> Expect:
        """What the jobs of `model_id` must produce (empty: nothing checked)."""
        return self.models.get(model_id, self.top)


def number(value: float) -> str:
    """5 -> '5', 4.5 -> '4.5', 3.14159 -> '3.142'."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def expectations(data: Mapping[str, Any], *, download: bool) -> tuple[Expectations, list[Problem]]:
    """The manifest's `expect:` blocks (its shapes already checked by the JSON Schema) as a
    record, and what is wrong with them."""
    problems: list[Problem] = []
    raw_top = data.get("expect")
    top = _block(raw_top or {}, ("expect",), problems)
    per_model: dict[str, Expect] = {}
    given_at: dict[str, int] = {}
    for index, model in enumerate(data.get("models") or []):
        if not isinstance(model, dict) or "expect" not in model:
            continue
        where: Where = ("models", index, "expect")
        merged = _block(model["expect"] or {}, where, problems, over=raw_top or {})
        model_id = str(model.get("id"))
        if model_id in per_model and per_model[model_id] != merged:
            first = given_at[model_id]
            problems.append(
                (where, f"{model_id!r} already has other expectations (models[{first}]); "
                 "a model's jobs share one expect: block, so give the same one or merge them"),
            )  # fmt: skip
            continue
        per_model[model_id] = merged
        given_at[model_id] = index
    found = Expectations(top, per_model)
    if found and not download:
        where = ("expect",) if raw_top else ("models", min(given_at.values()), "expect")
        problems.append(
            (where, "expectations are checked on the downloaded files, and outputs.download is "
             "false; set outputs.download: true or remove the expect: block"),
        )  # fmt: skip
    problems += _libraries(data, top, per_model, given_at)
    return found, problems


def _block(
    raw: Mapping[str, Any],
    where: Where,
    problems: list[Problem],
    over: Mapping[str, Any] | None = None,
) -> Expect:
    """One block (keys with null removed), merged over `over`'s keys, as an Expect."""
    values = {**(over or {}), **raw}
    kw: dict[str, Any] = {}
    for key in _RANGES:
        if values.get(key) is not None:
            span = _span(values[key])
            if span.low > span.high and key in raw:
                problems.append(
                    ((*where, key), f"[{number(span.low)}, {number(span.high)}]: the minimum "
                     f"is above the maximum; write [{number(span.high)}, {number(span.low)}]"),
                )  # fmt: skip
            kw[key] = span
    for key in _SIZES:
        if values.get(key) is not None:
            kw[key] = _bytes(values[key], (*where, key), problems)
    kw["type"] = values.get("type")
    expect = Expect(**kw)
    low, high = expect.min_bytes, expect.max_bytes
    if (
        low is not None
        and high is not None
        and low > high
        and ("min_bytes" in raw or "max_bytes" in raw)
    ):
        problems.append(
            ((*where, "min_bytes"), f"min_bytes ({low:,} bytes) is above max_bytes "
             f"({high:,} bytes); lower min_bytes or raise max_bytes"),
        )  # fmt: skip
    for key in _NOT_FOR.get(expect.type or "", ()):
        if getattr(expect, key) is not None and (key in raw or "type" in raw):
            problems.append(
                ((*where, key if key in raw else "type"), f"{key} does not apply to type: "
                 f"{expect.type} ({_APPLIES[key]}); remove one of them"),
            )  # fmt: skip
    return expect


_APPLIES = {"duration_s": "video and audio have a duration", "width": "images and video have a "
            "width", "height": "images and video have a height"}  # fmt: skip


def _span(value: Any) -> Span:
    if isinstance(value, list):
        return Span(float(value[0]), float(value[1]))
    return Span(float(value), float(value))


def _bytes(value: Any, where: Where, problems: list[Problem]) -> int | None:
    if value == 0:
        return 0
    try:
        return parse_size(value)
    except ValueError as exc:
        problems.append((where, f"{exc} (KB, MB, GB: powers of 1000; KiB, MiB, GiB: of 1024)"))
        return None


def _libraries(
    data: Mapping[str, Any], top: Expect, models: dict[str, Expect], at: dict[str, int]
) -> list[Problem]:
    """The optional libraries the checks need and this Python lacks: one line per need."""
    blocks: list[tuple[Where, Expect]] = [(("expect",), top)] if data.get("expect") else []
    blocks += [(("models", at[m], "expect"), e) for m, e in models.items()]
    out: list[Problem] = []
    sizes = next(((w, e) for w, e in blocks if (e.width or e.height) and e.type != probe.VIDEO),
                 None)  # fmt: skip
    if sizes and not probe.pillow_installed():
        where, e = sizes
        key = "width" if e.width else "height"
        out.append(
            ((*where, key), "reading image sizes needs Pillow, which is not installed: "
             "pip install 'runcomfy-batchrun[images]'"),
        )  # fmt: skip
    durations = next((w for w, e in blocks if e.duration_s), None)
    if durations and not probe.mutagen_installed():
        out.append(
            ((*durations, "duration_s"), "reading durations needs mutagen, which is not "
             "installed: pip install 'runcomfy-batchrun[media]'"),
        )  # fmt: skip
    return out

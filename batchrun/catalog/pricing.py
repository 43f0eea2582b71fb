"""Prices and estimates: a model's catalog price and what one job of it will cost.

An estimate is `base_price_usd` x units, in exact decimals: per second, the job's `duration`
(or the schema's default); per image, output, request or run, 1 times a count input such as
`num_images` where there is one. A model with no price or a unit we do not know is unpriced
(None), never $0. Amounts are summed exactly and rounded to cents only when printed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

PER_SECOND = "second"
PER_ITEM = "item"

# Spellings of price_unit (after "per " or "/" and a plural "s" are taken off).
_UNITS = {
    "second": PER_SECOND,
    "sec": PER_SECOND,
    "s": PER_SECOND,
    "image": PER_ITEM,
    "output": PER_ITEM,
    "request": PER_ITEM,
    "run": PER_ITEM,
    "video": PER_ITEM,
    "generation": PER_ITEM,
}
# Inputs that ask for more than one output of a per-item model, first match wins.
COUNT_FIELDS = (
    "num_images",
    "num_outputs",
    "num_videos",
    "number_of_images",
    "number_of_outputs",
    "number_of_videos",
)
DURATION_FIELD = "duration"
_NUMBER = re.compile(r"^\s*\d+(\.\d+)?\s*$")
# No model costs more than this per unit: a larger price (or cost) is a catalog's mistake or
# an attack ("1e400"), refused before any sum or rounding could overflow.
MAX_PRICE_USD = Decimal(10_000)
# Nor asks for more units than this of one job (seconds, images).
MAX_UNITS = Decimal(1_000_000)
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Price:
    """A model's price as the catalog gives it; `base_price_usd` None means unpriced."""

    base_price_usd: Decimal | None = None
    price_unit: str | None = None
    pricing_note: str | None = None

    @property
    def unit_kind(self) -> str | None:
        """PER_SECOND, PER_ITEM, or None when the unit is missing or unknown."""
        return unit_kind(self.price_unit)

    @property
    def priced(self) -> bool:
        return self.base_price_usd is not None and self.unit_kind is not None


UNPRICED = Price()


def parse_price(data: Mapping[str, Any]) -> Price:
    """The price fields of a catalog entry; ValueError when one has the wrong type."""
    amount = data.get("base_price_usd")
    unit = data.get("price_unit")
    note = data.get("pricing_note")
    if amount is not None:
        parsed = _decimal(amount, MAX_PRICE_USD)
        if parsed is None:
            raise ValueError(
                f"$.base_price_usd: {repr(amount)[:40]} is not an amount in USD "
                f"(a finite number from 0 to {plain(MAX_PRICE_USD)})"
            )
        amount = parsed
    if unit is not None and not isinstance(unit, str):
        raise ValueError(f"$.price_unit: {unit!r} is not a string")
    if note is not None and not isinstance(note, str):
        raise ValueError(f"$.pricing_note: {note!r} is not a string")
    return Price(amount, unit, note)


def unit_kind(price_unit: str | None) -> str | None:
    """What a `price_unit` counts: "per image", "/image", "images", "output image" -> item;
    "second", "sec", "s", "second of video" -> second; anything else -> None."""
    if not isinstance(price_unit, str):
        return None
    text = price_unit.strip().lower()
    text = text.removeprefix("per ").removeprefix("/").strip()
    text = text.split(" of ", 1)[0].strip()
    words = text.split()
    if not words:
        return None
    word = words[-1]
    if word not in _UNITS and word.endswith("s"):
        word = word[:-1]
    return _UNITS.get(word)


def unit_label(price_unit: str | None) -> str:
    """The unit as printed after a price: "per image" -> "image"."""
    text = (price_unit or "").strip()
    return text.removeprefix("per ").removeprefix("/").strip() or "?"


def estimate(
    price: Price | None, inputs: Mapping[str, Any], schema: Mapping[str, Any] | None
) -> Decimal | None:
    """What one job with `inputs` costs, exactly; None when it cannot be known."""
    if price is None or price.base_price_usd is None:
        return None
    kind = price.unit_kind
    if kind == PER_SECOND:
        seconds = _number(_value(DURATION_FIELD, inputs, schema))
        return None if seconds is None else price.base_price_usd * seconds
    if kind == PER_ITEM:
        for name in COUNT_FIELDS:
            value = _value(name, inputs, schema)
            if value is _ABSENT:
                continue
            count = _number(value)
            if count is None or count != count.to_integral_value():
                return None
            return price.base_price_usd * count
        return price.base_price_usd
    return None


class Estimator:
    """`estimate` for one model's jobs, remembering the answer per value of the inputs that
    matter (a 100,000-job plan has few distinct durations)."""

    def __init__(self, price: Price | None, schema: Mapping[str, Any] | None) -> None:
        self.price = price
        self.schema = schema
        kind = price.unit_kind if price is not None and price.priced else None
        # Only the inputs the unit counts matter; an unpriced model needs none.
        fields = {PER_SECOND: (DURATION_FIELD,), PER_ITEM: COUNT_FIELDS}.get(kind or "", ())
        self._fields = frozenset(fields)
        self._priced = kind is not None
        # (field, type of its value, the value or its repr) per input that matters -> estimate
        self._memo: dict[tuple[tuple[str, type, str | int | float], ...], Decimal | None] = {}

    @property
    def fields(self) -> frozenset[str]:
        """The inputs an estimate depends on (none for an unpriced model)."""
        return self._fields if self._priced else frozenset()

    def __call__(self, inputs: Mapping[str, Any]) -> Decimal | None:
        if not self._priced:
            return None
        present = inputs.keys() & self._fields  # usually none: then one answer for all
        key = tuple(
            (f, type(v), v if isinstance(v, (str, int, float)) else repr(v))
            for f, v in sorted((f, inputs[f]) for f in present)
        )
        if key not in self._memo:
            self._memo[key] = estimate(self.price, inputs, self.schema)
        return self._memo[key]


def usd(amount: Decimal) -> str:
    """`$1.23`: rounded to cents for reading; a positive amount under half a cent is `<$0.01`."""
    if 0 < amount < Decimal("0.005"):
        return "<$0.01"
    return f"${amount.quantize(_CENT, rounding=ROUND_HALF_UP):,}"


def price_label(price: Price | None) -> str:
    """`$0.044/output` as RunComfy's own CLI prints it, or `unpriced`."""
    if price is None or price.base_price_usd is None:
        return "unpriced"
    return f"${plain(price.base_price_usd)}/{unit_label(price.price_unit)}"


def plain(amount: Decimal) -> str:
    """An exact amount without exponent or trailing zeros: 0.3500 -> 0.35, 1E+1 -> 10."""
    text = format(amount.normalize(), "f")
    return text


_ABSENT: Any = object()


def _value(name: str, inputs: Mapping[str, Any], schema: Mapping[str, Any] | None) -> Any:
    """The job's input, else the schema's default, else _ABSENT."""
    if name in inputs:
        return inputs[name]
    prop = ((schema or {}).get("properties") or {}).get(name)
    if isinstance(prop, dict) and "default" in prop:
        return prop["default"]
    return _ABSENT


def _number(value: Any) -> Decimal | None:
    """A count or duration as an exact decimal >= 0; None for "auto", booleans, text."""
    if isinstance(value, bool) or value is _ABSENT:
        return None
    if isinstance(value, str):
        value = value.strip() if _NUMBER.match(value) else None
        if value is None:
            return None
    return _decimal(value, MAX_UNITS)


def _decimal(value: Any, ceiling: Decimal) -> Decimal | None:
    """An int, float or numeric string as a finite Decimal from 0 to `ceiling` (a float by its
    repr); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (int, float, str)) else None
    except (InvalidOperation, ValueError):
        return None
    if amount is None or not amount.is_finite() or not 0 <= amount <= ceiling:
        return None
    return amount

"""pricing: every unit spelling, count inputs, duration defaults, and what stays unpriced."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batchrun.catalog.pricing import (
    PER_ITEM,
    PER_SECOND,
    Estimator,
    Price,
    estimate,
    parse_price,
    plain,
    price_label,
    unit_kind,
    usd,
)


@pytest.mark.parametrize(
    ("unit", "kind"),
    [
        ("second", PER_SECOND),
        ("seconds", PER_SECOND),
        ("sec", PER_SECOND),
        ("s", PER_SECOND),
        ("per second", PER_SECOND),
        ("/second", PER_SECOND),
        ("Per Second of video", PER_SECOND),
        ("image", PER_ITEM),
        ("images", PER_ITEM),
        ("per image", PER_ITEM),
        ("/image", PER_ITEM),
        ("per output image", PER_ITEM),
        ("output", PER_ITEM),
        ("request", PER_ITEM),
        ("per request", PER_ITEM),
        ("run", PER_ITEM),
        ("video", PER_ITEM),
        ("1k tokens", None),
        ("megapixel", None),
        ("", None),
        (None, None),
    ],
)
def test_unit_spellings(unit: str | None, kind: str | None) -> None:
    assert unit_kind(unit) == kind


def _schema(**props: object) -> dict:
    return {"type": "object", "properties": props}


D = Decimal
# (id, price, unit, schema, inputs, expected estimate)
TABLE = [
    ("per-image", "0.04", "image", _schema(), {}, D("0.04")),
    ("per-output", "0.044", "output", _schema(), {"prompt": "x"}, D("0.044")),
    ("per-request", "0.1", "per request", None, {}, D("0.1")),
    ("per-run", "0.5", "/run", _schema(), {}, D("0.5")),
    ("num_images input", "0.04", "image", _schema(num_images={}), {"num_images": 3}, D("0.12")),
    (
        "num_outputs default",
        "0.02",
        "output",
        _schema(num_outputs={"type": "integer", "default": 4}),
        {},
        D("0.08"),
    ),
    (
        "number_of_images input beats default",
        "0.03",
        "images",
        _schema(number_of_images={"default": 4}),
        {"number_of_images": 2},
        D("0.06"),
    ),
    ("count field without default", "0.04", "image", _schema(num_images={}), {}, D("0.04")),
    ("count as text", "0.04", "image", _schema(), {"num_images": "2"}, D("0.08")),
    ("count not whole", "0.04", "image", _schema(), {"num_images": 1.5}, None),
    ("count not a number", "0.04", "image", _schema(), {"num_images": "many"}, None),
    (
        "per-second input",
        "0.07",
        "second",
        _schema(duration={"default": 5}),
        {"duration": 10},
        D("0.7"),
    ),
    ("per-second default", "0.07", "second", _schema(duration={"default": 5}), {}, D("0.35")),
    ("per-second float", "0.1", "sec", _schema(), {"duration": 2.5}, D("0.25")),
    ("per-second text", "0.05", "s", _schema(), {"duration": "8"}, D("0.40")),
    ("per-second auto", "0.05", "second", _schema(duration={"default": "auto"}), {}, None),
    ("per-second no duration", "0.05", "second", _schema(prompt={}), {}, None),
    ("per-second bool", "0.05", "second", _schema(), {"duration": True}, None),
    ("per-second negative", "0.05", "second", _schema(), {"duration": -5}, None),
    (
        "seconds ignore counts",
        "0.1",
        "second",
        _schema(),
        {"duration": 3, "num_images": 4},
        D("0.3"),
    ),
    ("unknown unit", "0.01", "1k tokens", _schema(), {}, None),
    ("no unit", "0.01", None, _schema(), {}, None),
    ("no price", None, "image", _schema(), {}, None),
    ("free", "0", "image", _schema(), {}, D("0")),
]


@pytest.mark.parametrize(
    ("price", "unit", "schema", "inputs", "expected"),
    [t[1:] for t in TABLE],
    ids=[t[0] for t in TABLE],
)
def test_estimate_table(
    price: str | None, unit: str | None, schema: dict | None, inputs: dict, expected: D | None
) -> None:
    p = Price(None if price is None else D(price), unit)
    assert estimate(p, inputs, schema) == expected
    assert Estimator(p, schema)(inputs) == expected


def test_no_price_record_is_unpriced_not_zero() -> None:
    assert estimate(None, {"duration": 5}, None) is None


def test_estimator_remembers_per_value_and_type() -> None:
    est = Estimator(Price(D("0.1"), "second"), _schema(duration={"default": 5}))
    assert est({"duration": 2}) == D("0.2")
    assert est({"duration": "2"}) == D("0.2")
    assert est({}) == D("0.5")
    assert est({"duration": True}) is None  # True == 1, but it is not a duration


def test_sums_are_exact() -> None:
    p = Price(D("0.1"), "second")
    total = sum((estimate(p, {"duration": d}, None) or D() for d in (1, 2)), D())
    assert total == D("0.3")  # 0.1 + 0.2 in floats is 0.30000000000000004


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"base_price_usd": 0.044, "price_unit": "output"}, Price(D("0.044"), "output")),
        ({"base_price_usd": "0.07", "price_unit": "second"}, Price(D("0.07"), "second")),
        ({"base_price_usd": 1, "pricing_note": "n"}, Price(D("1"), None, "n")),
        ({"base_price_usd": None}, Price()),
        ({}, Price()),
    ],
)
def test_parse_price(data: dict, expected: Price) -> None:
    assert parse_price(data) == expected


NOT_AMOUNT = "is not an amount in USD (a finite number from 0 to 10000)"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"base_price_usd": True}, f"$.base_price_usd: True {NOT_AMOUNT}"),
        ({"base_price_usd": -1}, f"$.base_price_usd: -1 {NOT_AMOUNT}"),
        ({"base_price_usd": "cheap"}, f"$.base_price_usd: 'cheap' {NOT_AMOUNT}"),
        ({"base_price_usd": "1e400"}, f"$.base_price_usd: '1e400' {NOT_AMOUNT}"),
        ({"base_price_usd": "Infinity"}, f"$.base_price_usd: 'Infinity' {NOT_AMOUNT}"),
        ({"base_price_usd": float("nan")}, f"$.base_price_usd: nan {NOT_AMOUNT}"),
        ({"base_price_usd": 10_001}, f"$.base_price_usd: 10001 {NOT_AMOUNT}"),
        ({"base_price_usd": 1, "price_unit": 5}, "$.price_unit: 5 is not a string"),
    ],
)
def test_parse_price_refuses_wrong_types(data: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_price(data)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "$0.00"),
        ("0.004", "<$0.01"),
        ("0.005", "$0.01"),
        ("0.125", "$0.13"),
        ("1234.5", "$1,234.50"),
    ],
)
def test_usd_rounds_to_cents_for_reading(amount: str, text: str) -> None:
    assert usd(D(amount)) == text


def test_labels() -> None:
    assert price_label(Price(D("0.044"), "output")) == "$0.044/output"
    assert price_label(Price(D("0.0700"), "per second")) == "$0.07/second"
    assert price_label(Price(None, "image")) == "unpriced"
    assert price_label(None) == "unpriced"
    assert plain(D("1E+1")) == "10"
    assert plain(D("0.3500")) == "0.35"

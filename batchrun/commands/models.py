"""`batchrun models`: store catalog entries (input schema + price) as schema files; list the
catalog with prices."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from batchrun.api.client import Client
from batchrun.catalog.models import normalise, schema_file_name, schema_problem
from batchrun.catalog.pricing import parse_price, price_label
from batchrun.commands.common import api_base, token
from batchrun.errors import (
    ApiError,
    AuthError,
    InvalidInputError,
    ManifestError,
    NotFoundError,
    UnreachableError,
)
from batchrun.store.atomic import write_text
from batchrun.util.safetext import printable

DEFAULT_DIR = Path("schemas") / "models"
_PAGE = 100
MAX_PAGES = 50  # 5,000 models: far more than the catalog holds
_ENTRY_KEYS = ("model_id", "display_name", "categories", "output_type")
_PRICE_KEYS = ("base_price_usd", "price_unit", "pricing_note")


def pull(
    model_ids: tuple[str, ...],
    *,
    dest: str | None,
    api_base_option: str | None = None,
    client: Client | None = None,
    now: datetime | None = None,
) -> int:
    """Fetch each model's catalog entry and write it to DIR/<id with / as __>.json; 0, or 1
    when some model could not be pulled (the others are written)."""
    folder = Path(dest) if dest else DEFAULT_DIR
    client = client or Client(api_base(api_base_option), token())
    fetched_at = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = 0
    for model_id in model_ids:
        # Each model on its own: a bad one is reported and the others are still pulled.
        try:
            entry = catalog_entry(client.model(model_id), model_id, fetched_at)
        except (NotFoundError, InvalidInputError) as exc:
            failed += 1
            click.echo(printable(f"error: {model_id}: not in the catalog ({exc})"), err=True)
            continue
        except (AuthError, UnreachableError):
            raise  # no model can be pulled: said once, by cli.main
        except (ApiError, ManifestError) as exc:
            failed += 1
            click.echo(printable(f"error: {model_id}: {exc}; not written"), err=True)
            continue
        path = write_text(folder / schema_file_name(model_id), json.dumps(entry, indent=2) + "\n")
        click.echo(printable(f"{path}  {price_label(parse_price(entry))}"))
    if failed and len(model_ids) > 1:
        click.echo(f"{failed} of {len(model_ids)} models not pulled", err=True)
    return 1 if failed else 0


def catalog_entry(body: dict[str, Any], model_id: str, fetched_at: str) -> dict[str, Any]:
    """What a schema file holds: the entry's names and price, when it was fetched, and its
    input schema normalised to standard JSON Schema."""
    endpoint = f"GET /v1/models/{model_id}"
    schema = body.get("input_schema")
    if not isinstance(schema, dict):
        raise ApiError("the catalog entry has no input_schema object", endpoint=endpoint)
    try:
        parse_price(body)
    except ValueError as exc:
        raise ApiError(f"the catalog entry's price is unusable: {exc}", endpoint=endpoint) from None
    entry: dict[str, Any] = {
        "$comment": f"Catalog entry of {model_id} (GET /v1/models/{model_id}) as pulled by "
        "`batchrun models pull`; pull again to refresh the price.",
        "model_id": model_id,
    }
    entry.update({k: body[k] for k in _ENTRY_KEYS[1:] if k in body})
    entry.update({k: body.get(k) for k in _PRICE_KEYS})
    entry["fetched_at"] = fetched_at
    problem = schema_problem(schema)
    if problem:
        raise ApiError(f"the catalog entry is unusable: {problem}", endpoint=endpoint)
    entry["input_schema"] = normalise(schema)
    return entry


def list_models(
    search: str, *, api_base_option: str | None = None, client: Client | None = None
) -> int:
    """Print id, name and price of every catalog model matching `search`; 0."""
    client = client or Client(api_base(api_base_option), token())
    rows = [
        (str(m.get("model_id", "")), str(m.get("display_name") or ""), _price(m))
        for m in catalog(client, search)
    ]
    if not rows:
        click.echo(f"no models match {search!r}" if search else "the catalog is empty", err=True)
        return 0
    rows = [(printable(a), printable(b), printable(c)) for a, b, c in rows]  # catalog text
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for model_id, name, price in rows:
        click.echo(f"{model_id:<{widths[0]}}  {name:<{widths[1]}}  {price}".rstrip())
    return 0


def catalog(client: Client, search: str = "") -> Iterator[dict[str, Any]]:
    """Every model of `GET /v1/models?search=`, page by page: until an empty page, the
    catalog's `total`, or MAX_PAGES (a catalog claiming a huge total must not page forever)."""
    offset = 0
    for _ in range(MAX_PAGES):
        body = client.models(search=search, limit=_PAGE, offset=offset)
        page = body.get("models")
        if not isinstance(page, list) or not page:
            return
        yield from (m for m in page if isinstance(m, dict))
        offset += len(page)
        total = body.get("total")
        if not isinstance(total, int) or offset >= total:
            return
    click.echo(
        f"warning: stopped after {MAX_PAGES} pages ({offset} models); narrow it with --search",
        err=True,
    )


def _price(model: dict[str, Any]) -> str:
    try:
        return price_label(parse_price(model))
    except ValueError:
        return "unpriced"

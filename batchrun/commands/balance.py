"""`batchrun balance`: the account balance (account-wide: one wallet pays for everything)."""

from __future__ import annotations

import json

import click

from batchrun.api.balance import balance_base, read_balance
from batchrun.catalog.pricing import usd
from batchrun.commands.common import api_base, token
from batchrun.errors import ConfigError, TransportError


def balance(*, api_base_option: str | None, as_json: bool) -> int:
    """Print the account balance; 0, or 3 when it cannot be read."""
    base = balance_base(api_base(api_base_option))
    try:
        amount = read_balance(base, token())
    except TransportError as exc:
        raise ConfigError(f"cannot read the balance at {base}: {exc}") from None
    if as_json:
        click.echo(json.dumps({"balance_usd": float(amount), "scope": "account", "base": base}))
    else:
        click.echo(f"balance: {usd(amount)} (account-wide, from {base})")
    return 0

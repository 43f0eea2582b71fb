"""The account balance: `GET {serverless base}/balance` with the same token (RunComfy's CLI
`balance`), answering `{"balance_usd": .., "currency": "USD"}`. One wallet pays for Model API
requests, serverless deployments and training alike: the balance is account-wide."""

from __future__ import annotations

import os
from decimal import Decimal

import requests

from batchrun.errors import ApiError, AuthError, TransportError
from batchrun.store import origin as og
from batchrun.store.origin import DEFAULT_API_BASE

SERVERLESS_BASE_ENV = "RUNCOMFY_SERVERLESS_API_BASE"
DEFAULT_SERVERLESS_BASE = "https://api.runcomfy.net/prod/v2"
TIMEOUT_S = 5.0


def balance_base(model_api_base: str) -> str:
    """Where the balance is read: RUNCOMFY_SERVERLESS_API_BASE, else RunComfy's serverless
    base for RunComfy's own Model API, else the model API base itself (a local simulator
    serves /balance there)."""
    chosen = os.environ.get(SERVERLESS_BASE_ENV, "").strip()
    if chosen:
        return chosen.rstrip("/")
    if og.normalise(model_api_base) == og.normalise(DEFAULT_API_BASE):
        return DEFAULT_SERVERLESS_BASE
    return og.normalise(model_api_base)


def read_balance(base: str, token: str, *, timeout: float = TIMEOUT_S) -> Decimal:
    """The balance in USD; AuthError for a refused token, ApiError for any other answer that
    is not a balance, TransportError when it could not be read. Never carries the token."""
    endpoint = "GET /balance"
    try:
        answer = requests.get(
            f"{base}/balance",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise TransportError(type(exc).__name__, endpoint=endpoint) from None
    if answer.status_code in (401, 403):
        raise AuthError("the token was refused", endpoint=endpoint, status=answer.status_code)
    try:
        value = answer.json().get("balance_usd") if answer.status_code == 200 else None
        amount = Decimal(str(value)) if isinstance(value, (int, float, str)) else None
    except (ValueError, AttributeError, ArithmeticError):
        amount = None
    if amount is None or not amount.is_finite() or isinstance(value, bool):
        raise ApiError("no balance_usd in the answer", endpoint=endpoint, status=answer.status_code)
    return amount

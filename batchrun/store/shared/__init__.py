"""A sweep shared by workers on several machines, kept in PostgreSQL (`--state postgresql://`).

What the workers of one sweep share, each piece one statement so that it holds with any number
of workers:
- the jobs, with claims: a worker takes pending jobs with `FOR UPDATE SKIP LOCKED` under a lease
  it renews while alive; a lapsed lease's accepted requests are taken over and polled by their
  recorded ids, and its submit in the air becomes `unknown` (never sent again unasked);
- the rate window: the times of the sweep's latest calls in one row; a call is allowed when
  fewer than the limit fell in the last window (the database's clock, so the machines' clocks
  do not matter);
- the budget and the in-flight slots: a reservation is one UPDATE that fails when
  spent + reserved + estimate would pass the cap (or the slots are all taken).

psycopg 3 is an extra (`pip install 'runcomfy-batchrun[postgres]'`), imported only here.

The package: connection.py (transactions, patience, the password scrubbed), schema.py (the
tables and their migrations), jobs.py, claims.py, gate.py, reading.py, account.py (the pieces of
SharedState, put together in state.py).
"""

from batchrun.store.shared.claims import Claimed
from batchrun.store.shared.connection import (
    DEFAULT_LEASE_S,
    PATIENCE_S,
    LeaseLost,
    SharedStateLost,
    scrub,
)
from batchrun.store.shared.schema import SCHEMA_VERSION
from batchrun.store.shared.state import SharedState

__all__ = [
    "DEFAULT_LEASE_S",
    "PATIENCE_S",
    "SCHEMA_VERSION",
    "Claimed",
    "LeaseLost",
    "SharedState",
    "SharedStateLost",
    "scrub",
]

"""Claims under leases: pending jobs taken with FOR UPDATE SKIP LOCKED, and what a lapsed lease
left taken over."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from batchrun.store import ledger, records, transitions
from batchrun.store.shared.connection import (
    DEFAULT_LEASE_S,
    Connection,
    _one,
    _patient,
    _qualified,
)
from batchrun.store.shared.schema import _NOT_HALTED, BLOCKED, HELD
from batchrun.store.state import assignments


@dataclass(frozen=True)
class Claimed:
    """What a claim handed this worker: pending jobs to submit, and accepted requests whose
    worker's lease lapsed (to poll by their recorded ids)."""

    pending: list[records.JobRow]
    taken_over: list[records.JobRow]


_LOST_SUBMIT = (
    "its worker was lost while submitting; the submit may have reached the server, so it is "
    "not sent again unless you rerun with --resubmit-unknown"
)


class Claims(Connection):
    # ---- claims -------------------------------------------------------------------------

    @_patient
    def claim(self, limit: int, lease_s: float = DEFAULT_LEASE_S) -> Claimed:
        """Up to `limit` pending jobs nobody holds, in plan order, leased to this worker; and
        every job a lapsed lease left behind: accepted ones taken over (to be polled), a
        submit in the air made `unknown` (it may have reached the server)."""
        lease = f"{lease_s} seconds"
        with self._tx() as conn:
            lost = conn.execute(
                "WITH old AS (SELECT job_id, reserved_usd FROM jobs WHERE sweep = %(s)s AND "
                "status = %(submitting)s AND lease_until < now() FOR UPDATE) "
                "UPDATE jobs j SET status = %(unknown)s, owner = NULL, lease_until = NULL, "
                "error = %(error)s, reserved_usd = NULL FROM old "
                "WHERE j.sweep = %(s)s AND j.job_id = old.job_id "
                "RETURNING j.job_id, COALESCE(old.reserved_usd, 0)",
                {
                    "s": self.sweep,
                    "submitting": records.SUBMITTING,
                    "unknown": records.UNKNOWN,
                    "error": _LOST_SUBMIT,
                },
            ).fetchall()
            if lost:  # may have been billed: what it held is spent, its slot freed
                conn.execute(
                    "UPDATE attempts SET answer = %s WHERE sweep = %s AND answer = %s "
                    "AND job_id = ANY(%s)",
                    (ledger.UNKNOWN, self.sweep, ledger.SENDING, [j for j, _ in lost]),
                )
                held = sum((Decimal(r) for _, r in lost), Decimal(0))
                conn.execute(
                    "UPDATE sweeps SET spent_usd = spent_usd + %s, reserved_usd = reserved_usd "
                    "- %s, in_flight = in_flight - %s WHERE sweep = %s",
                    (held, held, len(lost), self.sweep),
                )
            taken = conn.execute(
                f"UPDATE jobs SET owner = %s, lease_until = now() + %s::interval "
                f"WHERE sweep = %s AND status IN (%s, %s) AND lease_until < now() "
                f"RETURNING {records.COLUMNS}",
                (self.worker, lease, self.sweep, records.QUEUED, records.RUNNING),
            ).fetchall()
            pending = conn.execute(
                f"WITH c AS (SELECT job_id FROM jobs WHERE sweep = %s AND status = %s "
                f"AND in_manifest = 1 AND (lease_until IS NULL OR lease_until < now()) "
                f"AND gate NOT IN (%s, %s) AND {_NOT_HALTED} "
                f"ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE jobs j SET owner = %s, lease_until = now() + %s::interval FROM c "
                f"WHERE j.sweep = %s AND j.job_id = c.job_id "
                f"RETURNING {_qualified('j')}",
                (
                    self.sweep,
                    records.PENDING,
                    HELD,
                    BLOCKED,
                    self.sweep,
                    limit,
                    self.worker,
                    lease,
                    self.sweep,
                ),  # fmt: skip
            ).fetchall()
        return Claimed(
            pending=sorted((records.decode_row(r) for r in pending), key=lambda r: r.position),
            taken_over=[records.decode_row(r) for r in taken],
        )

    @_patient
    def renew(self, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Extend this worker's leases (call well within a lease); returns how many it holds."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE workers SET lease_until = now() + %s::interval "
                "WHERE sweep = %s AND worker = %s",
                (f"{lease_s} seconds", self.sweep, self.worker),
            )
            cur = conn.execute(
                "UPDATE jobs SET lease_until = now() + %s::interval "
                "WHERE sweep = %s AND owner = %s",
                (f"{lease_s} seconds", self.sweep, self.worker),
            )
            return cur.rowcount

    @_patient
    def let_go(self) -> int:
        """This worker stops: the pending jobs it holds go back to the others, with the slots
        and the room they reserved (their submits were never sent). Jobs at the server stay
        leased until the lease lapses, then another worker polls them."""
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM workers WHERE sweep = %s AND worker = %s", (self.sweep, self.worker)
            )
            freed = conn.execute(
                "WITH old AS (SELECT job_id, reserved_usd FROM jobs WHERE sweep = %(s)s AND "
                "owner = %(w)s AND status = %(p)s FOR UPDATE) UPDATE jobs j SET owner = NULL, "
                "lease_until = NULL, reserved_usd = NULL FROM old WHERE j.sweep = %(s)s AND "
                "j.job_id = old.job_id RETURNING old.reserved_usd",
                {"s": self.sweep, "w": self.worker, "p": records.PENDING},
            ).fetchall()
            held = [Decimal(r) for (r,) in freed if r is not None]
            if held:
                conn.execute(
                    "UPDATE sweeps SET reserved_usd = reserved_usd - %s, "
                    "in_flight = in_flight - %s WHERE sweep = %s",
                    (sum(held, Decimal(0)), len(held), self.sweep),
                )
        return len(freed)

    @_patient
    def unfinished(self) -> int:
        """Jobs of the sweep some worker still has to do something about (pending, being
        submitted, at the server), whoever holds them; pending jobs no longer count once the
        sweep is halted, nor those of a model whose canary failed."""
        with self._tx() as conn:
            row = _one(
                conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE sweep = %s AND in_manifest = 1 "
                    f"AND (status IN (%s, %s, %s) OR (status = %s AND gate <> %s "
                    f"AND {_NOT_HALTED}))",
                    (
                        self.sweep,
                        records.SUBMITTING,
                        records.QUEUED,
                        records.RUNNING,
                        records.PENDING,
                        BLOCKED,
                        self.sweep,
                    ),  # fmt: skip
                )
            )
        return int(row[0])

    @_patient
    def requeue(self, statuses: Iterable[str], error: str = "") -> int:
        """--retry-failed / --resubmit-unknown: the sweep's jobs in `statuses` back to pending
        (a FAILED job whose request the server stopped knowing stays, as in StateStore)."""
        statuses = list(statuses)
        sets, params = assignments(transitions.requeue(error), "%s")
        unread = "(status = %s AND substr(error, 1, %s) = %s)"
        unread_args = (records.FAILED, len(records.NOT_FOUND), records.NOT_FOUND)
        which = (
            "(status = ANY(%s) OR {u})"
            if records.UNKNOWN in statuses
            else ("(status = ANY(%s) AND NOT {u})")
        )
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = %s WHERE sweep = %s AND in_manifest = 1 "
                f"AND (lease_until IS NULL OR lease_until < now()) AND {which.format(u=unread)}",
                (*params, time.time(), self.sweep, statuses, *unread_args),
            )
            return cur.rowcount

"""The sweep's one account: its rate window, in-flight slots and cost cap."""

from __future__ import annotations

from decimal import Decimal

from batchrun.store.shared.connection import Connection, _one, _patient


class Account(Connection):
    # ---- the account: rate, slots, budget -----------------------------------------------

    @_patient
    def take_call(self, limit: int, window_s: float = 1.0) -> float:
        """One API call of the sweep's `limit` per `window_s`: 0.0 when taken, else how long
        until one may be (nothing taken then)."""
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE sweeps SET calls = (CASE WHEN cardinality(calls) < %(n)s THEN calls "
                "ELSE calls[cardinality(calls) - %(n)s + 2:] END) "
                "|| extract(epoch FROM clock_timestamp())::double precision "
                "WHERE sweep = %(s)s AND (cardinality(calls) < %(n)s OR "
                "calls[cardinality(calls) - %(n)s + 1] <= "
                "extract(epoch FROM clock_timestamp()) - %(w)s) RETURNING 1",
                {"n": limit, "s": self.sweep, "w": window_s},
            ).fetchone()
            if row is not None:
                return 0.0
            oldest, now = _one(
                conn.execute(
                    "SELECT calls[cardinality(calls) - %s + 1], "
                    "extract(epoch FROM clock_timestamp())::double precision "
                    "FROM sweeps WHERE sweep = %s",
                    (limit, self.sweep),
                )
            )
        return max(0.001, float(oldest) + window_s - float(now))

    @_patient
    def reserve(
        self, job_id: str, model_id: str, estimate: Decimal | None, max_in_flight: int | None
    ) -> bool:
        """Before a submit: one in-flight slot and the job's best estimate of the cap, both or
        neither; asking again for a job that holds them is a yes. The best estimate is the
        higher of `estimate` and the highest actual cost of the model in the sweep; with
        neither, the job holds all the room left under a cap (so it goes alone)."""
        with self._tx() as conn:
            held = _one(
                conn.execute(
                    "SELECT reserved_usd IS NOT NULL FROM jobs WHERE sweep = %s AND job_id = %s",
                    (self.sweep, job_id),
                )
            )[0]
            if held:
                return True
            best = _one(
                conn.execute(
                    "SELECT GREATEST(%s::numeric, MAX(actual_usd::numeric)) FROM attempts "
                    "WHERE sweep = %s AND model_id = %s AND actual_usd IS NOT NULL",
                    (estimate, self.sweep, model_id),
                )
            )[0]
            cap, spent, reserved, flights = _one(
                conn.execute(
                    "SELECT cap_usd, spent_usd, reserved_usd, in_flight FROM sweeps "
                    "WHERE sweep = %s FOR UPDATE",
                    (self.sweep,),
                )
            )
            if max_in_flight is not None and flights >= max_in_flight:
                return False
            room = None if cap is None else Decimal(cap) - Decimal(spent) - Decimal(reserved)
            amount = Decimal(best) if best is not None else (room or Decimal(0))
            if room is not None and (amount > room or room <= 0):
                return False
            conn.execute(
                "UPDATE sweeps SET in_flight = in_flight + 1, reserved_usd = reserved_usd + %s "
                "WHERE sweep = %s",
                (amount, self.sweep),
            )
            conn.execute(
                "UPDATE jobs SET reserved_usd = %s WHERE sweep = %s AND job_id = %s",
                (amount, self.sweep, job_id),
            )
        return True

    @_patient
    def settle(self, job_id: str, actual: Decimal | None, *, billed: bool = True) -> None:
        """The job's attempt is over: its slot and reservation go back, and what it cost (or,
        unknown but billed, its reservation) is spent."""
        with self._tx() as conn:
            row = conn.execute(
                "WITH old AS (SELECT reserved_usd FROM jobs WHERE sweep = %(s)s AND job_id = "
                "%(j)s AND reserved_usd IS NOT NULL FOR UPDATE) UPDATE jobs SET reserved_usd = "
                "NULL FROM old WHERE sweep = %(s)s AND job_id = %(j)s RETURNING old.reserved_usd",
                {"s": self.sweep, "j": job_id},
            ).fetchone()
            if row is None:
                return  # settled already (by this worker or one that took it over)
            held = Decimal(row[0])
            spent = (actual if actual is not None else held) if billed else Decimal(0)
            conn.execute(
                "UPDATE sweeps SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s, "
                "in_flight = in_flight - 1 WHERE sweep = %s",
                (held, spent, self.sweep),
            )

    @_patient
    def money(self) -> tuple[Decimal | None, Decimal, Decimal, int]:
        """(cap, spent, reserved, in flight) of the sweep."""
        with self._tx() as conn:
            cap, spent, reserved, flights = _one(
                conn.execute(
                    "SELECT cap_usd, spent_usd, reserved_usd, in_flight FROM sweeps "
                    "WHERE sweep = %s",
                    (self.sweep,),
                )
            )
        return cap, Decimal(spent), Decimal(reserved), int(flights)

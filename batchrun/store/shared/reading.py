"""Reading the sweep from any machine: its sweeps, figures, workers and files (status, export)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from batchrun.store.shared.connection import Connection, _one, _patient
from batchrun.store.shared.schema import _TO_DO


class Reading(Connection):
    # ---- reading the sweep from any machine (status, export) -----------------------------

    @_patient
    def sweeps(self) -> list[str]:
        with self._tx() as conn:
            return [r[0] for r in conn.execute("SELECT sweep FROM sweeps ORDER BY sweep")]

    @_patient
    def facts(self) -> dict[str, Any]:
        """The sweep's row: manifest digest, origin, cap, what the account holds, the halt."""
        with self._tx() as conn:
            sha, origin, cap, spent, reserved, flights, halted = _one(
                conn.execute(
                    "SELECT manifest_sha256, origin, cap_usd, spent_usd, reserved_usd, "
                    "in_flight, halted FROM sweeps WHERE sweep = %s",
                    (self.sweep,),
                )
            )
        return {
            "manifest_sha256": sha, "origin": origin,
            "cap_usd": None if cap is None else Decimal(cap), "spent_usd": Decimal(spent),
            "reserved_usd": Decimal(reserved), "in_flight": int(flights), "halted": halted,
        }  # fmt: skip

    @_patient
    def workers(self) -> list[dict[str, Any]]:
        """The sweep's workers: those alive (joined, lease renewed) and any holding jobs to
        do, each with its host, run folder, jobs held and seconds until its lease lapses
        (negative: lapsed, its jobs waiting for another worker to take them over)."""
        with self._tx() as conn:
            joined = conn.execute(
                "SELECT worker, host, run_dir, "
                "extract(epoch FROM lease_until - now())::double precision "
                "FROM workers WHERE sweep = %s ORDER BY started",
                (self.sweep,),
            ).fetchall()
            holding = conn.execute(
                "SELECT owner, COUNT(*), "
                "extract(epoch FROM MAX(lease_until) - now())::double precision "
                "FROM jobs WHERE sweep = %s AND owner IS NOT NULL AND status = ANY(%s) "
                "GROUP BY owner",
                (self.sweep, list(_TO_DO)),
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for worker, host, run_dir, left in joined:
            out[worker] = {"worker": worker, "host": host, "run_dir": run_dir, "jobs_held": 0,
                           "lease_left_s": round(float(left), 1)}  # fmt: skip
        for worker, held, left in holding:
            entry = out.setdefault(
                worker,
                {"worker": worker, "host": worker.split(":")[0], "run_dir": "",
                 "lease_left_s": round(float(left), 1)},
            )  # fmt: skip
            entry["jobs_held"] = int(held)
        return list(out.values())

    @_patient
    def file_places(self) -> dict[str, tuple[str, str]]:
        """Job id -> (the run folder its files were downloaded into, that machine's name)."""
        with self._tx() as conn:
            cur = conn.execute(
                "SELECT job_id, files_dir, files_host FROM jobs WHERE sweep = %s "
                "AND files_dir IS NOT NULL",
                (self.sweep,),
            )
            return {job_id: (folder, host or "") for job_id, folder, host in cur.fetchall()}

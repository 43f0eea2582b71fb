"""One halt, one set of canaries and one ambiguous-submit breaker for the sweep."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from batchrun.store.shared.schema import (
    _BAD,
    _BLOCKED_META,
    _FINISHED,
    _TO_DO,
    BLOCKED,
    CANARY,
    HELD,
)

if TYPE_CHECKING:
    import psycopg

from batchrun.store import records
from batchrun.store.shared.connection import Connection, _one, _patient


class Gate(Connection):
    # ---- the workers, the halt and the canaries (one decision for the sweep) ---------------

    @_patient
    def join(self, run_dir: str, host: str, lease_s: float, *, canary: int = 0) -> bool:
        """This worker joins the sweep (renewed with its leases, gone at let_go). The first
        worker of a run (no other alive) starts the sweep's gate afresh, as a rerun of a run
        folder does: the halt counts from now, and each model's canaries (`canary` per model,
        0: none) are picked again. True when it did."""
        with self._tx() as conn:
            conn.execute("SELECT 1 FROM sweeps WHERE sweep = %s FOR UPDATE", (self.sweep,))
            alive = _one(
                conn.execute(
                    "SELECT COUNT(*) FROM workers WHERE sweep = %s AND worker <> %s "
                    "AND lease_until > now()",
                    (self.sweep, self.worker),
                )
            )[0]
            if not alive:
                conn.execute("DELETE FROM workers WHERE sweep = %s", (self.sweep,))
            conn.execute(
                "INSERT INTO workers (sweep, worker, host, run_dir, started, lease_until) "
                "VALUES (%s, %s, %s, %s, %s, now() + %s::interval) ON CONFLICT (sweep, worker) "
                "DO UPDATE SET lease_until = excluded.lease_until",
                (self.sweep, self.worker, host, run_dir, time.time(), f"{lease_s} seconds"),
            )
            if alive:
                return False
            finished, failed = self._finished_failed(conn)
            conn.execute(
                "UPDATE sweeps SET halted = '', ambiguous = 0, halt_base = %s WHERE sweep = %s",
                ([finished, failed], self.sweep),
            )
            conn.execute("UPDATE jobs SET gate = '' WHERE sweep = %s AND gate <> ''", (self.sweep,))
            conn.execute(
                "DELETE FROM meta WHERE sweep = %s AND key LIKE %s",
                (self.sweep, _BLOCKED_META + "%"),
            )
            if canary > 0:
                self._pick_canaries(conn, canary)
        return True

    def _finished_failed(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        finished, failed = _one(
            conn.execute(
                "SELECT COUNT(*) FILTER (WHERE status = ANY(%s)), "
                "COUNT(*) FILTER (WHERE status = ANY(%s)) FROM jobs WHERE sweep = %s",
                (list(_FINISHED), list(_BAD), self.sweep),
            )
        )
        return int(finished), int(failed)

    def _pick_canaries(self, conn: psycopg.Connection[Any], n: int) -> None:
        """Per model: N successes (not from the cache) open it; else the first jobs still to
        do, in expansion order, are its canaries, and its other jobs are held."""
        conn.execute(
            "WITH proven AS (SELECT model_id, COUNT(*) AS n FROM jobs WHERE sweep = %(s)s "
            "AND in_manifest = 1 AND status = %(ok)s AND cached = 0 GROUP BY model_id), "
            "ranked AS (SELECT job_id, model_id, row_number() OVER (PARTITION BY model_id "
            "ORDER BY position) AS r FROM jobs WHERE sweep = %(s)s AND in_manifest = 1 "
            "AND status = ANY(%(todo)s)) "
            "UPDATE jobs j SET gate = CASE WHEN ranked.r <= %(n)s - COALESCE(proven.n, 0) "
            "THEN %(canary)s ELSE %(held)s END "
            "FROM ranked LEFT JOIN proven ON proven.model_id = ranked.model_id "
            "WHERE j.sweep = %(s)s AND j.job_id = ranked.job_id AND COALESCE(proven.n, 0) < %(n)s",
            {
                "s": self.sweep, "ok": records.SUCCEEDED, "todo": list(_TO_DO), "n": n,
                "canary": CANARY, "held": HELD,
            },
        )  # fmt: skip

    @_patient
    def judge_canaries(self) -> None:
        """Each model whose canaries are all decided: all succeeded, its held jobs go to
        whichever worker claims them; one failed, they are blocked (with why, in meta)."""
        with self._tx() as conn:
            canaries = conn.execute(
                "SELECT job_id, model_id, status, error FROM jobs WHERE sweep = %s AND gate = %s "
                "ORDER BY position",
                (self.sweep, CANARY),
            ).fetchall()
            by_model: dict[str, list[tuple[str, str, str]]] = {}
            for job_id, model, status, error in canaries:
                by_model.setdefault(model, []).append((job_id, status, error))
            for model, jobs in by_model.items():
                bad = [j for j in jobs if j[1] in (*_BAD, records.CANCELLED, records.UNKNOWN)]
                if not bad and any(status != records.SUCCEEDED for _, status, _ in jobs):
                    continue  # still undecided
                conn.execute(
                    "UPDATE jobs SET gate = CASE WHEN gate = %s THEN %s ELSE '' END "
                    "WHERE sweep = %s AND model_id = %s AND gate IN (%s, %s)",
                    (HELD, BLOCKED if bad else "", self.sweep, model, HELD, CANARY),
                )
                if bad:
                    job_id, status, error = bad[0]
                    shown = records.report_status(status) if status != records.UNKNOWN else status
                    why = f"job {job_id} {shown}" + (f": {error}" if error else "")
                    conn.execute(
                        "INSERT INTO meta (sweep, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (sweep, key) DO UPDATE SET value = excluded.value",
                        (self.sweep, _BLOCKED_META + model, why),
                    )

    @_patient
    def gate_counts(self, *, count: bool = True) -> tuple[int, int, str]:
        """(finished, failed) since the run began (its first worker joined; (0, 0) without
        `count`), and why the sweep halted ('' when it has not)."""
        with self._tx() as conn:
            finished, failed = self._finished_failed(conn) if count else (0, 0)
            base, halted = _one(
                conn.execute("SELECT halt_base, halted FROM sweeps WHERE sweep = %s", (self.sweep,))
            )
        if not count:
            return 0, 0, str(halted)
        return finished - int(base[0]), failed - int(base[1]), str(halted)

    @_patient
    def halt(self, why: str) -> str:
        """Halt the sweep (every worker stops submitting); returns why it halted (the first
        worker's reason when another halted it already)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE sweeps SET halted = %s WHERE sweep = %s AND halted = ''",
                (why, self.sweep),
            )
            return str(
                _one(conn.execute("SELECT halted FROM sweeps WHERE sweep = %s", (self.sweep,)))[0]
            )

    @_patient
    def held_back(self) -> tuple[str, dict[str, str]]:
        """Why the sweep halted ('' when not) and model -> why its canary failed."""
        with self._tx() as conn:
            halted = _one(
                conn.execute("SELECT halted FROM sweeps WHERE sweep = %s", (self.sweep,))
            )[0]
            blocked = conn.execute(
                "SELECT substr(key, %s), value FROM meta WHERE sweep = %s AND key LIKE %s",
                (len(_BLOCKED_META) + 1, self.sweep, _BLOCKED_META + "%"),
            ).fetchall()
        return str(halted), dict(blocked)

    @_patient
    def note_submit(self, *, ambiguous: bool) -> int:
        """The sweep's count of submits in a row with no answer to read, after this one."""
        with self._tx() as conn:
            if ambiguous:
                row = conn.execute(
                    "UPDATE sweeps SET ambiguous = ambiguous + 1 WHERE sweep = %s "
                    "RETURNING ambiguous",
                    (self.sweep,),
                ).fetchone()
                return int(row[0]) if row else 0
            conn.execute(
                "UPDATE sweeps SET ambiguous = 0 WHERE sweep = %s AND ambiguous > 0",
                (self.sweep,),
            )
        return 0

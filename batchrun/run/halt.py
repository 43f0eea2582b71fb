"""Sweep control before each submit: the failure-rate halt (`run.halt`) and the canaries
(`run.canary`), a submit policy (run/policy.py).

Asked about a pending job (`admit`), the gate lets it go or sets it aside (it stays pending in
state.db); after outcomes were applied, `released(jobs)` gives the jobs set aside that may go
now. Both read the job table only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from batchrun.plan.settings import HaltRule
from batchrun.run import policy
from batchrun.run.policy import Decision, JobsView
from batchrun.store import state as st
from batchrun.store.records import JobRow

_BAD = (st.FAILED, st.TIMED_OUT)
_FINISHED = (st.SUCCEEDED, st.FAILED, st.TIMED_OUT, st.CANCELLED)


class SweepGate(policy.Policy):
    """`run.halt` and `run.canary` for one run of the scheduler.

    `start` is the job table's counts when the run begins (after cache hits): the halt looks at
    the jobs finished by this run only, so a rerun after a halt gets a fresh start.
    """

    def __init__(
        self,
        *,
        halt: HaltRule | None,
        canary: int,
        rows: Iterable[JobRow],
        start: Counter[str] | None = None,
    ) -> None:
        rows = list(rows)
        self.rule = halt
        self.start = Counter(r.status for r in rows) if start is None else Counter(start)
        self.halted = ""  # why, once halted (it stays so for the run)
        self.canaries: dict[str, list[str]] = {}  # model -> its canaries still undecided
        self.held: dict[str, list[str]] = {}  # model -> its jobs waiting for the canaries
        self.blocked: dict[str, str] = {}  # model -> why its other jobs are not sent
        # A succeeded job whose files are not judged yet (expectations) is no proof yet.
        self.unjudged: Callable[[str], bool] = lambda job_id: False
        if canary > 0:
            self._pick_canaries(rows, canary)

    def _pick_canaries(self, rows: list[JobRow], n: int) -> None:
        """Per model: N successes (not from the cache) open it; else the first jobs still to do,
        in expansion order, are its canaries (jobs in flight from an earlier run included)."""
        by_model: dict[str, list[JobRow]] = {}
        for row in sorted(rows, key=lambda r: r.position):
            by_model.setdefault(row.model_id, []).append(row)
        to_do = (st.PENDING, st.SUBMITTING, st.QUEUED, st.RUNNING)
        for model, model_rows in by_model.items():
            proven = sum(1 for r in model_rows if r.status == st.SUCCEEDED and not r.cached)
            if proven >= n:
                continue
            picked = [r.job_id for r in model_rows if r.status in to_do][: n - proven]
            if picked:
                self.canaries[model] = picked
                self.held[model] = []

    # ---- the scheduler's questions ------------------------------------------------------

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        if self.admit(job.job_id, jobs):
            return policy.SEND
        return Decision(policy.SET_ASIDE, self.halted or self.blocked.get(job.model_id, "canary"))

    def admit(self, job_id: str, jobs: JobsView) -> bool:
        if self.halted or self._check_halt(jobs):
            return False
        model = jobs.rows[job_id].model_id
        if model in self.blocked:
            return False
        if model in self.held and job_id not in self.canaries[model]:
            self.held[model].append(job_id)
            return False
        return True

    def released(self, jobs: JobsView) -> list[str]:
        if not self.canaries:
            return []
        out: list[str] = []
        for model in list(self.canaries):
            waiting = self.canaries[model]
            rows = [jobs.rows[j] for j in waiting]
            bad = [r for r in rows if r.status in (*_BAD, st.CANCELLED, st.UNKNOWN)]
            if bad:
                self.blocked[model] = _canary_failure(bad[0])
            elif all(r.status == st.SUCCEEDED and not self.unjudged(r.job_id) for r in rows):
                if not self.halted:
                    out += self.held[model]
            else:
                continue
            del self.canaries[model]
            self.held.pop(model)
        return out

    def _check_halt(self, jobs: JobsView) -> bool:
        rule = self.rule
        if rule is None:
            return False
        counts = jobs.counts
        finished = sum(counts[s] - self.start[s] for s in _FINISHED)
        if finished < rule.min_finished:
            return False
        failed = sum(counts[s] - self.start[s] for s in _BAD)
        if failed <= rule.failure_rate * finished:
            return False
        self.halted = (
            f"{failed} of {finished} finished jobs failed "
            f"({percent(failed / finished)} > {percent(rule.failure_rate)})"
        )
        return True

    # ---- after the run ------------------------------------------------------------------

    def explain(self, rows: list[JobRow]) -> list[str]:
        return self.problems(sum(1 for r in rows if r.status == st.PENDING))

    def problems(self, not_submitted: int) -> list[str]:
        """The lines that explain why jobs were not submitted (empty: none were held back)."""
        lines = []
        if self.halted:
            lines.append(
                f"halted: {self.halted}; {not_submitted} job{'s' if not_submitted != 1 else ''} "
                "not submitted; fix the cause and rerun to continue"
            )
        for model, why in self.blocked.items():
            lines.append(
                f"canary failed for {model}: {why}; its other jobs were not submitted; fix the "
                "cause and rerun with --retry-failed (the canaries go first again)"
            )
        return lines


def _canary_failure(row: JobRow) -> str:
    status = st.report_status(row.status) if row.status != st.UNKNOWN else "unknown"
    error = f": {row.error}" if row.error else ""
    return f"job {row.job_id} {status}{error}"


def percent(share: float) -> str:
    text = f"{share * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"

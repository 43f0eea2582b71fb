"""Sweep control before each submit: the failure-rate halt (`run.halt`) and the canaries
(`run.canary`), a submit policy (run/policy.py).

Asked about a pending job (`admit`), the gate lets it go or sets it aside (it stays pending in
state.db); after outcomes were applied, `released(jobs)` decides the canaries that ended, and
`closed()` says which pending jobs the run need not read now. They read the job table only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from batchrun.plan.settings import HaltRule
from batchrun.run import policy
from batchrun.run.policy import Decision, JobsView
from batchrun.store import state as st
from batchrun.store.records import Brief, JobRow

_BAD = (st.FAILED, st.TIMED_OUT)
_FINISHED = (st.SUCCEEDED, st.FAILED, st.TIMED_OUT, st.CANCELLED)
_TO_DO = (st.PENDING, st.SUBMITTING, st.QUEUED, st.RUNNING)


class SweepGate(policy.Policy):
    """`run.halt` and `run.canary` for one run of the scheduler.

    `rows`: the run's jobs in plan order (store.brief: id, model, status, cached), read once.
    `start` is their counts when the run begins (after cache hits): the halt looks at the jobs
    finished by this run only, so a rerun after a halt gets a fresh start.

    While a model's canaries are undecided, its other jobs are set aside and the model is
    closed (`closed`): the run reads none of them; once the canaries pass, it reads them again.
    """

    def __init__(
        self,
        *,
        halt: HaltRule | None,
        canary: int,
        rows: Iterable[Brief | JobRow],
        start: Counter[str] | None = None,
    ) -> None:
        self.rule = halt
        self.halted = ""  # why, once halted (it stays so for the run)
        self.canaries: dict[str, list[str]] = {}  # model -> its canaries still undecided
        self.blocked: dict[str, str] = {}  # model -> why its other jobs are not sent
        # A succeeded job whose files are not judged yet (expectations) is no proof yet.
        self.unjudged: Callable[[str], bool] = lambda job_id: False
        counted = self._pick_canaries(rows, canary)
        self.start = counted if start is None else Counter(start)

    def _pick_canaries(self, rows: Iterable[Brief | JobRow], n: int) -> Counter[str]:
        """Per model: N successes (not from the cache) open it; else the first jobs still to do,
        in plan order, are its canaries (jobs in flight from an earlier run included). Returns
        the rows' counts."""
        counts: Counter[str] = Counter()
        proven: Counter[str] = Counter()
        to_do: dict[str, list[str]] = {}
        for row in rows:
            counts[row.status] += 1
            if n <= 0:
                continue
            if row.status == st.SUCCEEDED and not row.cached:
                proven[row.model_id] += 1
            elif row.status in _TO_DO:
                picked = to_do.setdefault(row.model_id, [])
                if len(picked) < n:
                    picked.append(row.job_id)
        for model, picked in to_do.items():
            if proven[model] < n:
                self.canaries[model] = picked[: n - proven[model]]
        return counts

    def canary_ids(self) -> list[str]:
        """The canaries still undecided."""
        return [job_id for picked in self.canaries.values() for job_id in picked]

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
        return model not in self.canaries or job_id in self.canaries[model]

    def closed(self) -> policy.Closed:
        if self.halted:
            return policy.Closed(every=True)
        return policy.Closed(frozenset(self.canaries) | frozenset(self.blocked))

    def watching(self, job_id: str) -> bool:
        return any(job_id in picked for picked in self.canaries.values())

    def released(self, jobs: JobsView) -> list[str]:
        """Decides the canaries that ended: a model whose canaries all passed opens (its other
        jobs are read again, see `closed`), one with a failed canary is blocked. Gives no job
        ids: the ones set aside are back in state.db, not here."""
        for model in list(self.canaries):
            rows = [jobs.rows[j] for j in self.canaries[model]]
            bad = [r for r in rows if r.status in (*_BAD, st.CANCELLED, st.UNKNOWN)]
            if bad:
                self.blocked[model] = _canary_failure(bad[0])
            elif not all(r.status == st.SUCCEEDED and not self.unjudged(r.job_id) for r in rows):
                continue
            del self.canaries[model]
        return []

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

    def explain(self, not_sent: Counter[str]) -> list[str]:
        return self.problems(sum(not_sent.values()))

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

"""`run.halt`, `run.canary` and the ambiguous-submit breaker of a shared sweep: one decision
for every worker, kept in the database (store/shared/), a submit policy (run/policy.py).

- The halt counts the jobs the whole sweep finished since its run began (its first worker
  joined); the worker that sees the rule broken marks the sweep halted, and every worker stops
  submitting at its next look (the jobs at the server still finish and are recorded).
- The canaries are picked once for the sweep when its run begins: the first `canary` jobs of
  each model; its other jobs are held in the database, so no worker claims them until the
  canaries succeeded (then any worker may), or a canary failed (then none does).
- Submits with no answer to read, counted in a row across the workers, halt the sweep at
  MAX_AMBIGUOUS_SUBMITS as the breaker of one run stops it.

Each worker looks at most every CHECK_S (a few more submits may leave meanwhile, each
within the sweep's rate and slots).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from batchrun.errors import ApiError
from batchrun.plan.settings import HaltRule
from batchrun.run import policy
from batchrun.run.breaker import MAX_AMBIGUOUS_SUBMITS
from batchrun.run.halt import percent
from batchrun.run.policy import Decision, JobsView, Told
from batchrun.store.records import JobRow
from batchrun.store.shared import SharedState

CHECK_S = 0.25


class SharedGate(policy.Policy):
    def __init__(
        self,
        state: SharedState,
        *,
        halt: HaltRule | None,
        canary: int,
        clock: Callable[[], float],
    ) -> None:
        self.state = state
        self.rule = halt
        self.canary = canary
        self.clock = clock
        self.halted = ""  # why, once the sweep halted
        self._looked = float("-inf")

    def look(self, *, now: bool = False) -> str:
        """Judge the canaries, count the sweep's outcomes, halt it when the rule is broken;
        returns why the sweep halted ('' while it has not)."""
        at = self.clock()
        if not now and at - self._looked < CHECK_S:
            return self.halted
        self._looked = at
        if self.canary:
            self.state.judge_canaries()
        rule = self.rule
        finished, failed, halted = self.state.gate_counts(count=rule is not None)
        if not halted and rule is not None and finished >= rule.min_finished:
            if failed > rule.failure_rate * finished:
                halted = self.state.halt(
                    f"{failed} of {finished} finished jobs of the sweep failed "
                    f"({percent(failed / finished)} > {percent(rule.failure_rate)})"
                )
        self.halted = halted
        return halted

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        if self.look():
            return Decision(policy.STOP, f"the sweep halted: {self.halted}")
        return policy.SEND

    def released(self, jobs: JobsView) -> list[str]:
        self.look()  # the canaries' verdict reaches the database for every worker
        return []

    def told(self, event: Told) -> Decision | None:
        if event.what == policy.ACCEPTED:
            self.state.note_submit(ambiguous=False)
        elif event.what == policy.AMBIGUOUS:
            if self.state.note_submit(ambiguous=True) >= MAX_AMBIGUOUS_SUBMITS:
                why = (
                    f"{MAX_AMBIGUOUS_SUBMITS} submits in a row across the workers got no "
                    "answer we could read; each may have been billed, so no more are sent. "
                    "Check the API base, proxy and network, then rerun (--resubmit-unknown "
                    "sends the ambiguous ones again)"
                )
                self.halted = self.state.halt(why)
                return Decision(policy.STOP, self.halted, error=ApiError(self.halted))
        return None

    def explain(self, not_sent: Counter[str]) -> list[str]:
        halted, blocked = self.state.held_back()
        lines = []
        if halted:
            left = sum(not_sent.values())
            lines.append(
                f"halted: {halted}; {left} job{'s' if left != 1 else ''} of the sweep not "
                "submitted; fix the cause and rerun to continue"
            )
        for model, why in sorted(blocked.items()):
            lines.append(
                f"canary failed for {model}: {why}; its other jobs were not submitted; fix "
                "the cause and rerun with --retry-failed (the canaries go first again)"
            )
        return lines

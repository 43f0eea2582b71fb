"""Models the API refused in a way that repeats for every job of the model (an unknown model
id, inputs its schema rejects, a model path that is not there): after the first refusal the
model's other jobs are not sent this run; they stay pending, and a rerun after the fix sends
them. Other models carry on. A submit policy (run/policy.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from batchrun.api import answers as api_answers
from batchrun.errors import ApiError
from batchrun.run import policy
from batchrun.run.policy import Decision, JobsView, Told
from batchrun.store.records import JobRow
from batchrun.util.safetext import printable

_ANSWERS = (policy.ACCEPTED, policy.REFUSED, policy.AMBIGUOUS)
# Asked every turn of the scheduler's loop while it holds: one decision, not one per ask.
_ONE_AT_A_TIME = Decision(policy.HOLD, "one submit of the model at a time until one is accepted")


@dataclass(frozen=True)
class Refusal:
    model_id: str
    answer: str  # the API's answer, as the error says it
    fix: str


class ModelRefusals(policy.Policy):
    """Asked before a job's submit, told each submit sent and answered.

    Until the API has accepted one of a model's submits, that model's submits go one at a
    time: a model the API refuses for every job costs one refused request, not one per
    worker."""

    def __init__(self) -> None:
        self.refused: dict[str, Refusal] = {}
        self._accepted: set[str] = set()  # models the API took a submit of
        self._probing: dict[str, int] = {}  # model -> its submits in the air, before that

    def ask(self, job: JobRow, jobs: JobsView) -> Decision:
        model = job.model_id
        if model in self.refused:
            return Decision(policy.SET_ASIDE, self.refused[model].answer)
        if model not in self._accepted and self._probing.get(model):
            return _ONE_AT_A_TIME
        return policy.SEND

    def sending(self, job: JobRow) -> None:
        if job.model_id not in self._accepted:
            self._probing[job.model_id] = self._probing.get(job.model_id, 0) + 1

    def told(self, event: Told) -> Decision | None:
        model = event.job.model_id
        if event.what in _ANSWERS and model in self._probing:
            self._probing[model] -= 1
        if event.what in (policy.ACCEPTED, policy.RESUMED):  # the API took one of its model's
            self._accepted.add(model)
        elif event.what == policy.REFUSED and event.verdict == api_answers.FAILED:
            assert event.error is not None
            self._note(model, event.error)
        return None

    def _note(self, model_id: str, exc: BaseException) -> None:
        """A submit of `model_id` was refused: does the refusal stop the model?"""
        fix = api_answers.model_refusal_fix(exc, model_id)
        if fix and model_id not in self.refused:
            answer = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            self.refused[model_id] = Refusal(model_id, answer, fix)

    def closed(self) -> policy.Closed:
        return policy.Closed(frozenset(self.refused))

    def explain(self, not_sent: Counter[str]) -> list[str]:
        """One line per stopped model: the model, the answer, what was not sent, the fix."""
        out = []
        for r in self.refused.values():
            n = not_sent[r.model_id]
            out.append(
                f"model {r.model_id} refused: {printable(r.answer)}; its other "
                f"{n} job{'s' if n != 1 else ''} not sent (they stay pending). {r.fix}, then "
                "rerun the same command"
            )
        return out

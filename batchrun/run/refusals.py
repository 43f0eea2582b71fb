"""Models the API refused in a way that repeats for every job of the model (an unknown model
id, inputs its schema rejects, a model path that is not there): after the first refusal the
model's other jobs are not sent this run; they stay pending, and a rerun after the fix sends
them. Other models carry on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from batchrun.api import answers as api_answers
from batchrun.errors import ApiError
from batchrun.util.safetext import printable


@dataclass(frozen=True)
class Refusal:
    model_id: str
    answer: str  # the API's answer, as the error says it
    fix: str


class ModelRefusals:
    """Asked before a job's submit (`holds`, `may_send`), told each submit sent and answered.

    Until the API has accepted one of a model's submits, that model's submits go one at a
    time: a model the API refuses for every job costs one refused request, not one per
    worker."""

    def __init__(self) -> None:
        self.refused: dict[str, Refusal] = {}
        self._accepted: set[str] = set()  # models the API took a submit of
        self._probing: dict[str, int] = {}  # model -> its submits in the air, before that

    def may_send(self, model_id: str) -> bool:
        return model_id in self._accepted or not self._probing.get(model_id)

    def sending(self, model_id: str) -> None:
        if model_id not in self._accepted:
            self._probing[model_id] = self._probing.get(model_id, 0) + 1

    def answered(self, model_id: str, *, accepted: bool) -> None:
        if model_id in self._probing:
            self._probing[model_id] -= 1
        if accepted:
            self._accepted.add(model_id)

    def note(self, model_id: str, exc: BaseException) -> bool:
        """A submit of `model_id` was refused; True when the refusal stops the model."""
        fix = api_answers.model_refusal_fix(exc, model_id)
        if not fix or model_id in self.refused:
            return bool(fix)
        answer = str(exc) if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
        self.refused[model_id] = Refusal(model_id, answer, fix)
        return True

    def holds(self, model_id: str) -> bool:
        return model_id in self.refused

    def lines(self, not_sent: Counter[str]) -> list[str]:
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

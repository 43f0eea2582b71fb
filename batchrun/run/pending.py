"""Jobs waiting to be submitted, the longest-running model's first.

With one model this is first in, first out. With several, a batch ends sooner when the long
jobs start early (they do not all end up in its last seconds): a model whose run time is not
known yet goes first (taking turns among such models, so each is learned soon), then the model
whose jobs are expected to run longest.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable


class PendingJobs:
    """Job ids by model; `pop()` picks the next by `expected(model)` (None: not known yet)."""

    def __init__(self, model_of: Callable[[str], str], expected: Callable[[str], float | None]):
        self._model_of = model_of
        self._expected = expected
        self._by_model: dict[str, deque[str]] = {}
        self._taken: Counter[str] = Counter()  # submits handed out per model
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def extend(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self._by_model.setdefault(self._model_of(job_id), deque()).append(job_id)
            self._size += 1

    def appendleft(self, job_id: str) -> None:
        """A job back from a refused or failed attempt: it goes next among its model's."""
        self._by_model.setdefault(self._model_of(job_id), deque()).appendleft(job_id)
        self._size += 1

    def __getitem__(self, index: int) -> str:
        """`pending[0]`: the job `popleft()` would hand out now (only index 0 is known)."""
        if index != 0 or not self._size:
            raise IndexError(index)
        return self._by_model[self._next_model()][0]

    def popleft(self) -> str:
        model = self._next_model()
        self._taken[model] += 1
        self._size -= 1
        return self._by_model[model].popleft()

    def _next_model(self) -> str:
        waiting = [m for m, jobs in self._by_model.items() if jobs]
        if len(waiting) == 1:
            return waiting[0]
        known = {m: self._expected(m) for m in waiting}
        unknown = [m for m in waiting if known[m] is None]
        if unknown:
            return min(unknown, key=lambda m: self._taken[m])
        return max(waiting, key=lambda m: known[m] or 0.0)

    def clear(self) -> None:
        self._by_model.clear()
        self._size = 0

"""A run folder's pending jobs, read from state.db a page at a time in plan order: the Feed
(run/parts.py) of `batchrun run`, so a run's memory holds what it is working on, not the sweep.

A page is read when the jobs the scheduler still holds run low. The models the policies close
(run/policy.py: a refused model, one waiting for its canaries, every model once halted) are
left out of the read; when one opens again, reading starts over from the first position, and
the jobs set aside meanwhile (still pending in state.db) come back in plan order.
"""

from __future__ import annotations

from collections.abc import Callable

from batchrun.run.jobtable import JobTable
from batchrun.run.policy import OPEN, Closed
from batchrun.store.records import JobRow
from batchrun.store.state import StateStore

PAGE = 1000  # jobs read at a time; another page is read when fewer than half are left


class PendingPages:
    def __init__(
        self,
        store: StateStore,
        jobs: JobTable,
        closed: Callable[[], Closed] = lambda: OPEN,
        *,
        chosen: Callable[[str], bool] | None = None,
        page: int | None = None,
    ) -> None:
        """`chosen`: the jobs of a subset (None: every job of the manifest); `page`: jobs read
        at a time (None: PAGE)."""
        self.store, self.jobs, self.closed = store, jobs, closed
        self.chosen = chosen
        self.page = PAGE if page is None else page
        self._after = -1  # the position of the last job read
        self._seen = OPEN  # what was closed at the last read
        self._exhausted = False  # the last read reached the end (of what was open)

    def more(self, waiting: int | None) -> tuple[list[JobRow], list[JobRow]] | None:
        if waiting is None:
            return None
        closed = self._look()
        if self._exhausted or closed.every or waiting >= self.page // 2:
            return None
        rows: list[JobRow] = []
        while len(rows) < self.page and not self._exhausted:
            got = self.store.pending_page(self._after, self.page, skip_models=closed.models)
            self._exhausted = len(got) < self.page
            if got:
                self._after = got[-1].position
            rows += [r for r in got if r.job_id not in self.jobs.rows and self._wanted(r)]
        return (rows, []) if rows else None

    def done(self) -> bool:
        closed = self._look()
        return self._exhausted or closed.every

    def _look(self) -> Closed:
        """What the policies close now; a model opened since the last read starts it over."""
        closed = self.closed()
        if (self._seen.every and not closed.every) or self._seen.models - closed.models:
            self._after, self._exhausted = -1, False
        self._seen = closed
        return closed

    def _wanted(self, row: JobRow) -> bool:
        return self.chosen is None or self.chosen(row.job_id)

"""The end of a run: its closing lines (the final line, then what to do next) and its exit code."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.results.report import without_output
from batchrun.run.budget import Budget
from batchrun.run.money_text import cost_text
from batchrun.run.progress import report_counts
from batchrun.run.scheduler import Scheduler
from batchrun.store import state as st
from batchrun.store.records import JobRow
from batchrun.util.durations import duration

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class EndCounts:
    """What the closing lines say of the run's jobs, counted in one pass over them (a cursor
    of state.db: the jobs are not held)."""

    counts: Counter[str] = field(default_factory=Counter)
    file_errors: int = 0
    without_output: int = 0
    cached: int = 0
    saved_usd: float = 0.0
    failed_by_model: Counter[str] = field(default_factory=Counter)  # failed or timed out
    not_sent: Counter[str] = field(default_factory=Counter)  # pending, per model

    @classmethod
    def of(cls, rows: Iterable[JobRow]) -> EndCounts:
        ended = cls()
        for row in rows:
            ended.counts[row.status] += 1
            ended.file_errors += sum(1 for f in row.files if f.error)
            ended.without_output += without_output(row)
            if row.cached:
                ended.cached += 1
                ended.saved_usd += row.saved_usd or 0.0
            if row.status in (st.FAILED, st.TIMED_OUT):
                ended.failed_by_model[row.model_id] += 1
            elif row.status == st.PENDING:
                ended.not_sent[row.model_id] += 1
        return ended

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())

    def dumps(self) -> str:
        """As JSON, to keep with the folder's revision (a resume with nothing to do reads it
        back instead of every job)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> EndCounts | None:
        """What dumps wrote; None when it is not that (an older or edited value)."""
        try:
            data: dict[str, Any] = json.loads(text)
            for name in ("counts", "failed_by_model", "not_sent"):
                data[name] = Counter(data[name])
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None

    def text(self) -> str:
        """'succeeded 10 (2 without output), failed 1': the counts, and the successes that
        brought no output (a server answer worth a look, not a failure)."""
        empty = self.without_output
        notes = {"succeeded": f" ({empty} without output)"} if empty else {}
        return ", ".join(
            f"{k} {n}{notes.get(k, '')}" for k, n in report_counts(self.counts).items()
        )

    def cached_note(self) -> str:
        """' (12 from the cache, saved $0.48)' for the final line; '' when none came from it."""
        if not self.cached:
            return ""
        return f" ({self.cached} from the cache, saved ${self.saved_usd:.2f})"


def say_how_it_ended(
    ended: EndCounts,
    sched: Scheduler,
    budget: Budget,
    *,
    run_dir: Path,
    elapsed: float,
    left_out: int | None,
    quiet: bool,
    echo: Callable[[str], None],
) -> int:
    """Say how the run ended (`left_out`: jobs a filter left out, None without one); returns
    EXIT_OK when every job succeeded with its files and nothing stopped the run, else
    EXIT_FAILED."""
    counts = ended.counts
    if not quiet:
        left = f" ({left_out} left out by the filter)" if left_out is not None else ""
        echo(
            f"{ended.jobs} jobs{left}: {ended.text()}{ended.cached_note()}. "
            f"{cost_text(budget)}. Elapsed {duration(elapsed)}. "
            f"Report: {run_dir / 'report.csv'}"
        )
    if ended.file_errors:
        echo(f"{ended.file_errors} output file(s) not downloaded; see the error column")
    refused = sched.refusals.refused
    retriable = sum(n for model, n in ended.failed_by_model.items() if model not in refused)
    if retriable:  # a refused model's failure is fixed in the manifest, not by a retry
        echo("rerun with --retry-failed to submit failed and timed-out jobs again")
    if counts.get(st.UNKNOWN):
        echo(
            f"{counts[st.UNKNOWN]} submit(s) may have reached the server; rerun with "
            "--resubmit-unknown to submit them again (may pay twice)"
        )
    if sched.at_server.abandoned:
        echo(f"{len(sched.at_server.abandoned)} job(s) still on the server; rerun to poll again")
    if sched.fatal is not None:
        echo(f"stopped submitting: {sched.fatal}")
    held = sched.policy.explain(ended.not_sent)
    for line in held:  # last: the lines that say why the run stopped short
        echo(line)
    ok = counts[st.SUCCEEDED] == ended.jobs and not ended.file_errors
    return EXIT_OK if ok and sched.fatal is None and not held else EXIT_FAILED

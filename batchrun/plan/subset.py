"""Part of a sweep: filters, the first N per model, a stable sample, a shard of a CI matrix.

Pure: a Plan's jobs and a `Selection` in, the chosen jobs (in expansion order) out. Every
choice depends on job ids only (never on positions), so the same selection picks the same jobs
when the manifest's lists are reordered.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from batchrun.store.records import JobLike

if TYPE_CHECKING:  # a plan's jobs are only named here: `approve --only` needs no plan module
    from batchrun.plan.grid import Job

_KINDS = "model=ID, input.FIELD=VALUE, var.NAME=VALUE or job=ID_PREFIX"
J = TypeVar("J", bound=JobLike)  # a plan's Job, or a run folder's JobRow
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class SelectionError(ValueError):
    """A selection that cannot be applied; `part` names which one ('only', 'sample', ...)."""

    def __init__(self, part: str, value: str, message: str) -> None:
        self.part, self.value = part, value
        super().__init__(message)


@dataclass(frozen=True)
class Filter:
    """One `KIND=VALUE` expression: kind is model, input, var or job; name the field."""

    text: str
    kind: str
    name: str
    value: str

    def matches(self, job: JobLike) -> bool:
        if self.kind == "model":
            return job.model_id == self.value
        if self.kind == "job":
            return job.job_id.startswith(self.value)
        source = job.inputs if self.kind == "input" else job.vars
        return self.name in source and _canonical(source[self.name]) in self._wanted

    @cached_property
    def _wanted(self) -> frozenset[str]:
        # The value as a string, and as JSON: `input.seed=3` matches 3, `input.seed="3"` "3".
        wanted = {_canonical(self.value)}
        try:
            wanted.add(_canonical(json.loads(self.value)))
        except ValueError:
            pass
        return frozenset(wanted)


@dataclass(frozen=True)
class Selection:
    """Which jobs of a plan to take; the empty Selection takes them all."""

    only: tuple[Filter, ...] = ()
    first: int | None = None  # per model, in expansion order
    sample: int | None = None
    seed: int = 0
    shard: tuple[int, int] | None = None  # (K, N), 1-based K

    @property
    def active(self) -> bool:
        return bool(self.only) or any(v is not None for v in (self.first, self.sample, self.shard))


@dataclass(frozen=True)
class Subset:
    """The chosen jobs in expansion order, and how many of the plan's were left out."""

    jobs: list[Job]
    left_out: int


def parse_filter(text: str) -> Filter:
    """`model=ID`, `input.FIELD=VALUE`, `var.NAME=VALUE` or `job=ID_PREFIX` as a Filter."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise SelectionError("only", text, f"expected {_KINDS}")
    kind, dot, name = key.partition(".")
    if kind in ("model", "job") and not dot:
        if not value:
            raise SelectionError("only", text, f"empty {kind}; expected {_KINDS}")
        return Filter(text, kind, "", value)
    if kind in ("input", "var") and dot and name:
        return Filter(text, kind, name, value)
    raise SelectionError("only", text, f"unknown filter {key!r}; expected {_KINDS}")


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N) as (K, N)."""
    k_text, sep, n_text = text.partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1:
        raise SelectionError("shard", text, "expected K/N with whole numbers, e.g. 1/4")
    if not 1 <= k <= n:
        raise SelectionError("shard", text, f"K must be between 1 and {n}, e.g. 1/{n}")
    return k, n


def shard_of(job_id: str, count: int) -> int:
    """The 1-based shard of `count` a job belongs to: stable, about even for many jobs."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def sample_key(job_id: str, seed: int) -> bytes:
    """The order `sample` draws jobs in: a hash of the seed and the job id."""
    return hashlib.sha256(f"{seed}:{job_id}".encode()).digest()


def select(jobs: Sequence[Job], selection: Selection) -> Subset:
    """Apply filters, then first-N per model, then the sample, then the shard."""
    if not selection.active:
        return Subset(list(jobs), 0)
    chosen = matching(jobs, selection.only)
    if selection.first is not None:
        per_model: Counter[str] = Counter()
        kept = []
        for job in chosen:
            per_model[job.model_id] += 1
            if per_model[job.model_id] <= selection.first:
                kept.append(job)
        chosen = kept
    if selection.sample is not None:
        if selection.sample > len(chosen):
            raise SelectionError(
                "sample",
                str(selection.sample),
                f"larger than the sweep ({len(chosen)} job{'s' if len(chosen) != 1 else ''}"
                f"{' after the filters' if len(chosen) != len(jobs) else ''}); "
                f"ask for at most {len(chosen)}",
            )
        ranked = sorted(chosen, key=lambda j: sample_key(j.job_id, selection.seed))
        picked = {j.job_id for j in ranked[: selection.sample]}
        chosen = [j for j in chosen if j.job_id in picked]
    if selection.shard is not None:
        k, n = selection.shard
        chosen = [j for j in chosen if shard_of(j.job_id, n) == k]
    return Subset(chosen, len(jobs) - len(chosen))


def matching(jobs: Sequence[J], only: Sequence[Filter]) -> list[J]:
    """The jobs every filter matches, in their order; SelectionError when a filter names a
    model or field no job has (a typo), or when no job matches."""
    chosen = list(jobs)
    for flt in only:
        _check_known(flt, jobs)
        chosen = [j for j in chosen if flt.matches(j)]
    if only and not chosen:
        texts = " ".join(f.text for f in only)
        raise SelectionError(
            "only", texts, "no job matches; `batchrun plan --json` shows every job's values"
        )
    return chosen


def _check_known(flt: Filter, jobs: Sequence[JobLike]) -> None:
    """A filter on a model or field no job has is a typo, not an empty selection."""
    if flt.kind == "job":
        return
    if flt.kind == "model":
        known = list(dict.fromkeys(j.model_id for j in jobs))
        if flt.value not in known:
            raise SelectionError(
                "only", flt.text, f"no model {flt.value!r}{_hint(flt.value, known)}"
            )
        return
    names = list(dict.fromkeys(_names(jobs, flt.kind)))
    if flt.name not in names:
        what = "input field" if flt.kind == "input" else "var"
        raise SelectionError(
            "only", flt.text, f"no job has {what} {flt.name!r}{_hint(flt.name, names)}"
        )


def _names(jobs: Iterable[JobLike], kind: str) -> Iterable[str]:
    for job in jobs:
        yield from job.inputs if kind == "input" else job.vars


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    listed = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"; did you mean {close[0]!r}?" if close else f"; known: {listed or '(none)'}"


def _canonical(value: Any) -> str:
    return str(_CANONICAL(value))

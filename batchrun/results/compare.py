"""The regression gate: match two runs' report.csv by job id and classify every job."""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from batchrun.errors import ChoiceError, CompareError, MissingDependencyError, StateError
from batchrun.results.reportcsv import INPUT_PREFIX, VAR_PREFIX, read_cells, split_cell, unguard
from batchrun.store import origin as og
from batchrun.store.state import STATE_FILE, StateStore
from batchrun.util.media import RASTER_SUFFIXES

# Outcome classes, in the order totals are shown. Every job has exactly one of the first six;
# `slower` is an extra mark on top of it (a job can be changed *and* slower).
OUTCOMES = ("unchanged", "changed", "regressed", "fixed", "new", "missing")
CLASSES = (*OUTCOMES, "slower")
DEFAULT_FAIL_ON = ("regressed", "missing", "changed")


def _pillow_missing() -> MissingDependencyError:
    return MissingDependencyError("image tolerance needs Pillow", package="Pillow", extra="images")


# The cells a comparison and its renderings read of each job (a job's card rebuilt from its
# row included), at these places in every side's rows; its report's input./var. columns follow.
COMPARED = (
    "job_id", "model_id", "status", "error", "run_s", "output_files", "output_urls",
    "output_sha256",
)  # fmt: skip
JOB_ID, MODEL_ID, STATUS, ERROR, RUN_S, FILES, URLS, SHA256 = range(len(COMPARED))


@dataclass
class Run:
    """One side of a comparison: its jobs' cells by job id, and where its files live."""

    label: str  # the path the user gave
    report: Path
    root: Path  # the run folder; output_files paths are relative to it
    rows: dict[str, Sequence[str]]  # a job's cells: COMPARED, then `fields`
    fields: tuple[str, ...] = ()  # its report.csv's input./var. columns, in header order
    origin: str = ""  # where its results came from (summary.json beside the report); "": unknown
    columns: list[str] = field(default_factory=list)  # the report.csv's header

    def file(self, rel: str) -> Path | None:
        """The local path of an output file, or None when it is not at hand."""
        path = self.root / rel
        return path if rel and path.is_file() else None

    @cached_property
    def places(self) -> dict[str, int]:
        """Where each column's cell is in a job's cells."""
        return {name: i for i, name in enumerate((*COMPARED, *self.fields))}

    @cached_property
    def _named(self) -> list[tuple[str, int]]:
        header = set(self.columns)
        return [(name, i) for name, i in self.places.items() if name in header]

    def row(self, cells: Sequence[str]) -> dict[str, str]:
        """A job's cells (one of `rows`) by column name, for the columns its report.csv has."""
        return {name: cells[i] for name, i in self._named}


@dataclass(frozen=True)
class Sides:
    """Both runs, and the swept values shown: (name, place in a baseline row, in a current
    row), None where that run has no such column."""

    baseline: Run
    current: Run
    swept: list[tuple[str, int | None, int | None]]


@dataclass(slots=True)
class JobDiff:
    """What happened to one job between the baseline and the current run."""

    job_id: str
    outcome: str  # one of OUTCOMES
    reason: str
    slower: bool
    failing: bool
    sides: Sides
    base: Sequence[str] | None  # its cells in each run, None where it is absent
    cur: Sequence[str] | None

    @property
    def classes(self) -> list[str]:
        return [self.outcome, "slower"] if self.slower else [self.outcome]

    @property
    def model_id(self) -> str:
        return (self.cur or self.base or ("", ""))[MODEL_ID]

    @property
    def baseline(self) -> dict[str, str] | None:
        return None if self.base is None else self.sides.baseline.row(self.base)

    @property
    def current(self) -> dict[str, str] | None:
        return None if self.cur is None else self.sides.current.row(self.cur)

    @property
    def varying(self) -> dict[str, str]:
        """The swept values of the job's current row (else its baseline row), unguarded."""
        now = self.cur is not None
        cells = self.cur if now else self.base
        values = {}
        for name, then_at, now_at in self.sides.swept:
            at = now_at if now else then_at
            value = "" if cells is None or at is None else cells[at]
            values[name] = unguard(value) if value[:1] == "'" else value
        return values


@dataclass
class Comparison:
    """The whole result: every job's diff, the totals and whether the gate passed."""

    baseline: Run
    current: Run
    jobs: list[JobDiff]
    fail_on: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)  # said in every rendering

    @property
    def totals(self) -> dict[str, int]:
        counts = dict.fromkeys(CLASSES, 0)
        for job in self.jobs:
            for cls in job.classes:
                counts[cls] += 1
        return counts

    @property
    def failing(self) -> list[JobDiff]:
        return [job for job in self.jobs if job.failing]

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def load_run(path_arg: str | os.PathLike[str]) -> Run:
    """Open one side of a comparison: a run folder or a report.csv path."""
    path = Path(path_arg)
    if not path.exists():
        raise CompareError(f"{path}: no such file or folder; give a run folder or its report.csv")
    report = path / "report.csv" if path.is_dir() else path
    if not report.is_file():
        raise CompareError(f"{path}: no report.csv in this folder; is it a batchrun run folder?")
    columns, rows = read_cells(report, lambda header: [*COMPARED[1:], *_fields(header)])
    return Run(
        label=str(path), report=report, root=report.parent, rows=rows,
        fields=_fields(columns), origin=_origin(report), columns=columns,
    )  # fmt: skip


def _fields(header: list[str]) -> tuple[str, ...]:
    """The input./var. columns of a report.csv's header, in its order."""
    return tuple(dict.fromkeys(c for c in header if c.startswith((INPUT_PREFIX, VAR_PREFIX))))


def _origin(report: Path) -> str:
    """Where the run beside `report` got its results: its state.db's record (the folder's own),
    else the `origin` of the summary.json beside it (a committed baseline has only that); ''
    when neither says (a bare report.csv): the comparison then notes it and is not refused."""
    if (report.parent / STATE_FILE).is_file():
        try:
            with StateStore.open(report.parent, create=False, lock=False) as store:
                found = og.recorded(store.meta(), report.parent)
        except StateError:
            found = None
        if found:
            return found
    try:
        summary = json.loads((report.parent / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    origin = summary.get("origin") if isinstance(summary, dict) else None
    return origin if isinstance(origin, str) else ""


def mixed_origins(baseline: Run, current: Run) -> str:
    """'' when both runs' results come from one origin (or one is not known), else a sentence
    naming both."""
    if not (baseline.origin and current.origin) or baseline.origin == current.origin:
        return ""
    return (
        f"the baseline {baseline.label} holds results from {og.label(baseline.origin)}, the "
        f"current run {current.label} from {og.label(current.origin)}"
    )


def unknown_origins(baseline: Run, current: Run) -> str:
    """'' when the origin of each run that has jobs is known, else a sentence saying which is
    not (so origins were not checked)."""
    sides = (("the baseline", baseline), ("the current run", current))
    unknown = [f"{side} {run.label}" for side, run in sides if run.rows and not run.origin]
    if not unknown:
        return ""
    return (
        f"origin not checked: {' and '.join(unknown)} record{'s' if len(unknown) == 1 else ''} "
        "no origin (no state.db or summary.json that says one beside the report.csv)"
    )


def empty_run(path_arg: str | os.PathLike[str]) -> Run:
    """A baseline that does not exist yet (`--update-baseline` is about to make it): no jobs."""
    path = Path(path_arg)
    return Run(label=str(path), report=path / "report.csv", root=path, rows={})


def _swept(baseline: Run, current: Run) -> list[tuple[str, int | None, int | None]]:
    """The input./var. columns whose value differs between jobs of either run (the jobs of a
    run whose header lacks the column not counted), in header order: each with the name
    shown and its place in each run's rows (None: that run has no such column)."""
    runs = [run for run in (baseline, current) if run.rows]
    swept = []
    for key in dict.fromkeys(key for run in runs for key in run.fields):
        values = [
            map(operator.itemgetter(run.places[key]), run.rows.values())
            for run in runs
            if key in run.places
        ]
        first = next(values[0])
        if any(any(map(first.__ne__, cells)) for cells in values):
            swept.append((key.split(".", 1)[1], baseline.places.get(key), current.places.get(key)))
    return swept


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


# 1 - SSIM (structural similarity) of 64x64 grayscale thumbnails, over 8x8 windows every
# 4 pixels: a re-encode scores near 0, a small edit a few hundredths, unrelated images near 1
# (measured examples in the README). The mean absolute pixel difference it replaces scored
# unrelated images 0.19-0.23: a tolerance of 0.3 passed anything.
_SIDE, _WINDOW, _STEP = 64, 8, 4
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def image_distance(a: Path, b: Path) -> float:
    """Perceptual distance of two images, 0 (same) .. 1 (unrelated): 1 - SSIM of 64x64
    grayscale thumbnails, at most 1. Raises MissingDependencyError when Pillow is missing."""
    try:
        from PIL import Image  # optional: the `images` extra
    except ImportError as exc:
        raise _pillow_missing() from exc

    def thumb(path: Path) -> bytes:
        # Not `with Image.open(path) as img`: Pillow types __enter__ with typing.Self, which
        # Python 3.10 lacks, so `img` would lose its type.
        img = Image.open(path)
        with img:  # mode L: one byte per pixel
            return img.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BOX).tobytes()

    return max(0.0, min(1.0, 1.0 - ssim(thumb(a), thumb(b), _SIDE)))


def ssim(pa: bytes, pb: bytes, side: int) -> float:
    """Mean SSIM of two side x side grayscale images over _WINDOW-pixel windows."""
    n = _WINDOW * _WINDOW
    scores = []
    for top in range(0, side - _WINDOW + 1, _STEP):
        for left in range(0, side - _WINDOW + 1, _STEP):
            xs = [pa[(top + r) * side + left + c] for r in range(_WINDOW) for c in range(_WINDOW)]
            ys = [pb[(top + r) * side + left + c] for r in range(_WINDOW) for c in range(_WINDOW)]
            mx, my = sum(xs) / n, sum(ys) / n
            vx = sum((x - mx) ** 2 for x in xs) / (n - 1)
            vy = sum((y - my) ** 2 for y in ys) / (n - 1)
            cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (n - 1)
            scores.append(
                ((2 * mx * my + _C1) * (2 * cov + _C2))
                / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
            )
    return sum(scores) / len(scores)


def _within_tolerance(
    base: Run, cur: Run, then: Sequence[str], now: Sequence[str], tolerance: float
) -> tuple[bool, str]:
    """Whether every differing output is an image at hand on both sides within tolerance."""
    bfiles, cfiles = split_cell(then[FILES]), split_cell(now[FILES])
    bsha, csha = split_cell(then[SHA256]), split_cell(now[SHA256])
    if len(bfiles) != len(cfiles) or len(bsha) != len(csha) or len(bfiles) != len(bsha):
        return False, ""
    worst = 0.0
    for bname, cname, bs, cs in zip(bfiles, cfiles, bsha, csha, strict=True):
        if bs == cs:
            continue
        bpath, cpath = base.file(bname), cur.file(cname)
        if bpath is None or cpath is None:
            return False, ""
        if not {bpath.suffix.lower(), cpath.suffix.lower()} <= RASTER_SUFFIXES:
            return False, ""
        try:
            dist = image_distance(bpath, cpath)
        except (OSError, ValueError):  # not decodable: judge by bytes
            return False, ""
        if dist > tolerance:
            return False, f" (image distance {dist:.4f} > {tolerance:g})"
        worst = max(worst, dist)
    return True, f"bytes differ, images within tolerance (distance {worst:.4f})"


def _changed_names(then: Sequence[str], now: Sequence[str]) -> str:
    bsha, csha = split_cell(then[SHA256]), split_cell(now[SHA256])
    names = split_cell(now[FILES]) or split_cell(then[FILES])
    if len(bsha) != len(csha):
        return f"{len(bsha)} output(s) then, {len(csha)} now"
    diff = [i for i, (b, c) in enumerate(zip(bsha, csha, strict=True)) if b != c]
    shown = [os.path.basename(names[i]) if i < len(names) else f"#{i + 1}" for i in diff]
    return ", ".join(shown)


def _classify(
    base: Run, cur: Run, then: Sequence[str], now: Sequence[str], tolerance: float | None
) -> tuple[str, str]:
    bstat, cstat = then[STATUS], now[STATUS]
    if bstat == "succeeded" and cstat != "succeeded":
        error = unguard(now[ERROR])
        return "regressed", f"succeeded then, {cstat or 'no status'} now" + (
            f": {error}" if error else ""
        )
    if bstat != "succeeded" and cstat == "succeeded":
        return "fixed", f"{bstat or 'no status'} then, succeeded now"
    if bstat != "succeeded":
        return "unchanged", f"{bstat} then, {cstat} now"
    btext, ctext = then[SHA256], now[SHA256]
    bsha = split_cell(btext)
    if btext == ctext or bsha == split_cell(ctext):
        # Without downloads there are no hashes: say so rather than claim the bytes match.
        return "unchanged", "same outputs" if bsha else "no output hashes to compare"
    detail = ""
    if tolerance is not None:
        same, detail = _within_tolerance(base, cur, then, now, tolerance)
        if same:
            return "unchanged", detail
    return "changed", f"output sha256 differs: {_changed_names(then, now)}{detail}"


def compare_runs(
    baseline: Run,
    current: Run,
    *,
    fail_on: tuple[str, ...] = DEFAULT_FAIL_ON,
    max_slowdown: float | None = None,
    image_tolerance: float | None = None,
) -> Comparison:
    """Classify every job of both runs; baseline order first, then jobs new in current."""
    unknown = [cls for cls in fail_on if cls not in CLASSES]
    if unknown:
        raise ChoiceError(
            f"unknown class {', '.join(unknown)}; choose from {', '.join(CLASSES)}",
            setting="fail_on",
            values=unknown,
            choices=list(CLASSES),
        )
    if image_tolerance is not None:
        try:
            import PIL  # noqa: F401  (optional; fail early, before any job is compared)
        except ImportError as exc:
            raise _pillow_missing() from exc
    if baseline.rows and current.rows and baseline.rows.keys().isdisjoint(current.rows):
        raise CompareError(
            f"{baseline.label} ({len(baseline.rows)} jobs) and {current.label} "
            f"({len(current.rows)} jobs) have no job in common: job ids come from the model "
            "and the inputs, so these runs are of different sweeps"
        )
    sides = Sides(baseline, current, _swept(baseline, current))
    base_rows, cur_rows = baseline.rows, current.rows
    order = list(base_rows) + [j for j in cur_rows if j not in base_rows]
    jobs: list[JobDiff] = []
    for job_id in order:
        then, now = base_rows.get(job_id), cur_rows.get(job_id)
        if then is None:
            outcome, reason = "new", "not in the baseline"
        elif now is None:
            outcome, reason = "missing", "in the baseline, not in the current run"
        else:
            outcome, reason = _classify(baseline, current, then, now, image_tolerance)
        slower = False
        if max_slowdown is not None and then and now:
            before, after = _float(then[RUN_S]), _float(now[RUN_S])
            if before is not None and after is not None and after > before * max_slowdown:
                slower = True
                reason += f"; run {after:.3f} s vs {before:.3f} s (> x{max_slowdown:g})"
        failing = outcome in fail_on or (slower and "slower" in fail_on)
        jobs.append(JobDiff(job_id, outcome, reason, slower, failing, sides, then, now))
    return Comparison(baseline=baseline, current=current, jobs=jobs, fail_on=fail_on)

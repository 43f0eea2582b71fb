"""The regression gate: match two runs' report.csv by job id and classify every job."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.errors import ChoiceError, CompareError, MissingDependencyError, StateError
from batchrun.results.reportcsv import INPUT_PREFIX, VAR_PREFIX, read_job_table, split_cell, unguard
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


@dataclass
class Run:
    """One side of a comparison: its report rows by job id, and where its files live."""

    label: str  # the path the user gave
    report: Path
    root: Path  # the run folder; output_files paths are relative to it
    rows: dict[str, dict[str, str]]
    origin: str = ""  # where its results came from (summary.json beside the report); "": unknown
    columns: list[str] | None = None  # the report.csv's header; None: rows made otherwise

    def file(self, rel: str) -> Path | None:
        """The local path of an output file, or None when it is not at hand."""
        path = self.root / rel
        return path if rel and path.is_file() else None


@dataclass
class JobDiff:
    """What happened to one job between the baseline and the current run."""

    job_id: str
    model_id: str
    outcome: str  # one of OUTCOMES
    reason: str
    slower: bool = False
    baseline: dict[str, str] | None = None
    current: dict[str, str] | None = None
    varying: dict[str, str] = field(default_factory=dict)
    failing: bool = False

    @property
    def classes(self) -> list[str]:
        return [self.outcome, "slower"] if self.slower else [self.outcome]


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
    columns, rows = read_job_table(report, compared)
    return Run(
        label=str(path), report=report, root=report.parent, rows=rows, origin=_origin(report),
        columns=columns,
    )  # fmt: skip


# The columns a comparison and its renderings read (a job's card rebuilt from its row
# included); a side's rows hold these alone.
COMPARED = frozenset(
    {"model_id", "status", "error", "run_s", "output_files", "output_urls", "output_sha256"}
)


def compared(column: str) -> bool:
    """Whether a comparison reads this report.csv column (COMPARED, input.*, var.*)."""
    return column in COMPARED or column.startswith((INPUT_PREFIX, VAR_PREFIX))


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


def swept_values(rows: list[dict[str, str]]) -> list[str]:
    """The input./var. columns whose value differs between jobs, in header order."""
    keys: dict[str, None] = {}
    last: object = None
    for row in rows:  # the rows of one report.csv share their columns: look once per report
        columns = row.keys()
        if columns != last:
            keys.update(dict.fromkeys(k for k in row if k.startswith((INPUT_PREFIX, VAR_PREFIX))))
            last = columns
    return [key for key in keys if _varies(rows, key)]


def _varies(rows: list[dict[str, str]], key: str) -> bool:
    """Whether the rows that have column `key` hold two values in it."""
    first: str | None = None
    for row in rows:
        value = row.get(key)
        if value is None:
            continue
        if first is None:
            first = value
        elif value != first:
            return True
    return False


def _swept(baseline: Run, current: Run, rows: list[dict[str, str]]) -> list[str]:
    """swept_values of both runs' rows; the input./var. columns looked for in the headers
    of runs read from a report.csv (each row holds its header's columns), not row by row."""
    if baseline.columns is None or current.columns is None:
        return swept_values(rows)
    keys = dict.fromkeys(
        key
        for run in (baseline, current)
        if run.rows
        for key in run.columns or ()
        if key.startswith((INPUT_PREFIX, VAR_PREFIX))
    )
    return [key for key in keys if _varies(rows, key)]


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
    base: Run, cur: Run, brow: dict[str, str], crow: dict[str, str], tolerance: float
) -> tuple[bool, str]:
    """Whether every differing output is an image at hand on both sides within tolerance."""
    bfiles, cfiles = split_cell(brow.get("output_files")), split_cell(crow.get("output_files"))
    bsha, csha = split_cell(brow.get("output_sha256")), split_cell(crow.get("output_sha256"))
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


def _changed_names(brow: dict[str, str], crow: dict[str, str]) -> str:
    bsha, csha = split_cell(brow.get("output_sha256")), split_cell(crow.get("output_sha256"))
    names = split_cell(crow.get("output_files")) or split_cell(brow.get("output_files"))
    if len(bsha) != len(csha):
        return f"{len(bsha)} output(s) then, {len(csha)} now"
    diff = [i for i, (b, c) in enumerate(zip(bsha, csha, strict=True)) if b != c]
    shown = [os.path.basename(names[i]) if i < len(names) else f"#{i + 1}" for i in diff]
    return ", ".join(shown)


def _classify(
    base: Run, cur: Run, brow: dict[str, str], crow: dict[str, str], tolerance: float | None
) -> tuple[str, str]:
    bstat, cstat = brow.get("status", ""), crow.get("status", "")
    if bstat == "succeeded" and cstat != "succeeded":
        error = unguard(crow.get("error", ""))
        return "regressed", f"succeeded then, {cstat or 'no status'} now" + (
            f": {error}" if error else ""
        )
    if bstat != "succeeded" and cstat == "succeeded":
        return "fixed", f"{bstat or 'no status'} then, succeeded now"
    if bstat != "succeeded":
        return "unchanged", f"{bstat} then, {cstat} now"
    btext, ctext = brow.get("output_sha256"), crow.get("output_sha256")
    bsha = split_cell(btext)
    if btext == ctext or bsha == split_cell(ctext):
        # Without downloads there are no hashes: say so rather than claim the bytes match.
        return "unchanged", "same outputs" if bsha else "no output hashes to compare"
    detail = ""
    if tolerance is not None:
        same, detail = _within_tolerance(base, cur, brow, crow, tolerance)
        if same:
            return "unchanged", detail
    return "changed", f"output sha256 differs: {_changed_names(brow, crow)}{detail}"


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
    all_rows = [*baseline.rows.values(), *current.rows.values()]
    varying = [(key, key.split(".", 1)[1]) for key in _swept(baseline, current, all_rows)]
    base_rows, cur_rows = baseline.rows, current.rows
    order = list(base_rows) + [j for j in cur_rows if j not in base_rows]
    jobs: list[JobDiff] = []
    for job_id in order:
        brow, crow = base_rows.get(job_id), cur_rows.get(job_id)
        if brow is None:
            outcome, reason = "new", "not in the baseline"
        elif crow is None:
            outcome, reason = "missing", "in the baseline, not in the current run"
        else:
            outcome, reason = _classify(baseline, current, brow, crow, image_tolerance)
        row = crow or brow or {}
        slower = False
        if max_slowdown is not None and brow and crow:
            then, now = _float(brow.get("run_s")), _float(crow.get("run_s"))
            if then is not None and now is not None and now > then * max_slowdown:
                slower = True
                reason += f"; run {now:.3f} s vs {then:.3f} s (> x{max_slowdown:g})"
        values = {}
        for key, name in varying:
            value = row.get(key, "")
            values[name] = unguard(value) if value[:1] == "'" else value
        failing = outcome in fail_on or (slower and "slower" in fail_on)
        jobs.append(
            JobDiff(job_id, row.get("model_id", ""), outcome, reason, slower, brow, crow, values,
                    failing)
        )  # fmt: skip
    return Comparison(baseline=baseline, current=current, jobs=jobs, fail_on=fail_on)

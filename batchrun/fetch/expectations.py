"""One job's downloaded files against its expectations (the manifest's `expect:`): what is
unmet, said as the job's error, e.g. `expect: width 512 != 1024 (image_0.png)`.

Every value is read from the file itself (util/probe.py). A value that cannot be read is
unmet, with the reason, never passed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from batchrun.plan.expect import DURATION_SLACK_S, Expect, Span, number
from batchrun.store.records import OutputFile
from batchrun.util import probe

PREFIX = "expect: "
MAX_SAID = 3  # unmet checks named in one error; the rest are counted


def unmet(expect: Expect, run_dir: Path, files: Sequence[OutputFile]) -> str:
    """The job's error for the checks its files fail ('' when all hold). Only a job whose
    files all downloaded is judged: a missing file is a download error, fetched again by a
    rerun, not a wrong result."""
    if not expect or any(f.error or not f.name for f in files):
        return ""
    found: list[str] = []
    if expect.files is not None and not expect.files.holds(len(files)):
        found.append(_differs("files", len(files), expect.files))
    for f in files:
        found += _file_unmet(expect, run_dir / f.name, f.size)
    if not found:
        return ""
    more = len(found) - MAX_SAID
    said = "; ".join(found[:MAX_SAID]) + (f"; and {more} more" if more > 0 else "")
    return PREFIX + said


def _file_unmet(expect: Expect, path: Path, size: int) -> list[str]:
    name = path.name
    out: list[str] = []
    if expect.min_bytes is not None and size < expect.min_bytes:
        out.append(f"min_bytes {size} < {expect.min_bytes} ({name})")
    if expect.max_bytes is not None and size > expect.max_bytes:
        out.append(f"max_bytes {size} > {expect.max_bytes} ({name})")
    wants_kind = expect.type or expect.width or expect.height or expect.duration_s
    if not wants_kind:
        return out
    try:
        kind = probe.kind(path)
    except OSError as exc:
        return [*out, f"cannot read {name}: {exc.strerror or exc}"]
    if expect.type is not None and kind != expect.type:
        out.append(f"type {kind or 'unknown'} != {expect.type} ({name})")
        return out  # its sizes and duration would only repeat that it is something else
    if expect.width or expect.height:
        out += _size_unmet(expect, path, kind, name)
    if expect.duration_s is not None:
        try:
            seconds = probe.duration(path, kind or "")
        except (probe.ProbeError, OSError) as exc:
            out.append(f"cannot read duration_s of {name}: {_why(exc, kind)}")
        else:
            if not expect.duration_s.holds(seconds, DURATION_SLACK_S if
                                           expect.duration_s.exact else 0.0):  # fmt: skip
                out.append(_differs("duration_s", seconds, expect.duration_s, name))
    return out


def _size_unmet(expect: Expect, path: Path, kind: str | None, name: str) -> list[str]:
    try:
        width, height = probe.dimensions(path, kind or "")
    except (probe.ProbeError, OSError) as exc:
        key = "width" if expect.width else "height"
        return [f"cannot read {key} of {name}: {_why(exc, kind)}"]
    out = []
    if expect.width is not None and not expect.width.holds(width):
        out.append(_differs("width", width, expect.width, name))
    if expect.height is not None and not expect.height.holds(height):
        out.append(_differs("height", height, expect.height, name))
    return out


def _differs(check: str, value: float, wanted: Span, name: str = "") -> str:
    where = f" ({name})" if name else ""
    op = "!=" if wanted.exact else "not in"
    return f"{check} {number(value)} {op} {wanted}{where}"


def _why(exc: BaseException, kind: str | None) -> str:
    if kind is None:
        return "not an image, video or audio format known here"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)

"""The manifest's `run:`, `outputs:`, `uploads:` and `report:` blocks as checked records, and
the parsers of their values (durations, rates, sizes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batchrun.util.s3url import parse_s3_url

GIB = 1024**3
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*/\s*(s|sec|second|min|minute)\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS.update({"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40})


@dataclass(frozen=True)
class HaltRule:
    """`run.halt`: stop submitting once `min_finished` jobs finished and more than
    `failure_rate` of them failed or timed out."""

    failure_rate: float
    min_finished: int = 10


@dataclass(frozen=True)
class RunSettings:
    """How the batch is run (the manifest's `run:` block, parsed)."""

    rate_limit: float | None = 10.0  # API calls per second; None = unlimited
    max_in_flight: int | None = None  # None: derived from the rate and the run times seen
    poll_interval: float = 2.0  # seconds
    job_timeout: float | None = 1800.0  # seconds; None = never
    retries: int = 1
    max_jobs: int = 10000
    max_cost_usd: Decimal | None = None  # budget; None = none (exact: 0.1 stays 0.1)
    halt: HaltRule | None = None
    canary: int = 0  # jobs per model that must succeed before its others are sent; 0 = off
    cache: str | None = None  # the cross-run cache folder; None = off
    state: str | None = None  # a shared sweep's PostgreSQL URL; None = the run folder's state.db
    lease_s: float = 30.0  # a shared sweep's claim lease, seconds
    report_every: float = 30.0  # seconds between the reports' rewrites as it runs; 0: at the end


@dataclass(frozen=True)
class OutputSettings:
    """Where results go (the manifest's `outputs:` block, parsed, `{name}` filled in)."""

    dir: str
    download: bool = True
    allow_hosts: tuple[str, ...] = ()
    max_file_bytes: int = 2 * GIB
    mirror: str | None = None  # s3://BUCKET/PREFIX the files and reports are copied to


# The longest a presigned S3 URL may live (SigV4).
MAX_PRESIGN_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class UploadSettings:
    """How local input files reach the API (the manifest's `uploads:` block, parsed): `to`
    is None when no bucket is given (images of at most 6 MiB go inline then)."""

    to: str | None = None  # s3://BUCKET/PREFIX
    expires_s: float = 24 * 3600.0
    inline: str = "auto"  # auto | never
    endpoint_url: str | None = None
    public_base: str | None = None


@dataclass(frozen=True)
class ReportSettings:
    """The contact sheet's grid (the manifest's `report:` block): swept field names."""

    rows: str | None = None
    cols: str | None = None


def parse_duration(value: object) -> float:
    """ "2s", "500ms", "30m", "1h" or a number of seconds -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 2s, 500ms, 30m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a duration; write e.g. 2s, 500ms, 30m, 1h")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return seconds


def parse_every(value: object) -> float:
    """A duration, or 0 (`0`, `"0"`, `"0s"`: never, until the end) -> seconds (>= 0)."""
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        m = _DURATION.match(str(value))
        if m and float(m.group(1)) == 0:
            return 0.0
    return parse_duration(value)


def parse_rate(value: object) -> float:
    """ "10/s", "600/min" or a number (per second) -> calls per second (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate; write e.g. 10/s or 600/min")
    if isinstance(value, (int, float)):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a rate; write e.g. 10/s or 600/min")
        rate = float(m.group(1)) / (60.0 if m.group(2).startswith("min") else 1.0)
    if rate <= 0:
        raise ValueError(f"{value!r}: a rate must be positive")
    return rate


def parse_size(value: object) -> int:
    """500MB, 2GiB or a number of bytes -> bytes (> 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size; write e.g. 500MB or 2GiB")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be positive")
    return size


def run_settings(run: dict[str, Any]) -> tuple[RunSettings, list[tuple[str, str]]]:
    """The `run:` block as a record, and its problems as (key, message)."""
    problems: list[tuple[str, str]] = []
    kw: dict[str, Any] = {}
    parsers = {"rate_limit": parse_rate, "poll_interval": parse_duration}
    parsers["job_timeout"] = parse_duration
    parsers["lease"] = parse_duration
    parsers["report_every"] = parse_every
    for key, parse in parsers.items():
        if key not in run:
            continue
        value = run[key]
        if value is None or (key == "rate_limit" and value == "unlimited"):
            if key in ("poll_interval", "report_every"):
                problems.append((key, "must be a duration, not null"))
            kw[key] = None
            continue
        try:
            kw["lease_s" if key == "lease" else key] = parse(value)
        except ValueError as exc:
            problems.append((key, str(exc)))
    for key in ("max_in_flight", "retries", "max_jobs"):
        if key in run:
            kw[key] = run[key]
    if "max_cost_usd" in run:
        # A float by its shortest repr: 0.1 in YAML is 0.1 dollars, not 0.1000000000000000055.
        kw["max_cost_usd"] = Decimal(repr(run["max_cost_usd"]))
    if "halt" in run:  # the schema checked 0 <= failure_rate <= 1 and min_finished >= 1
        halt = run["halt"]
        kw["halt"] = HaltRule(float(halt["failure_rate"]), halt.get("min_finished", 10))
    kw.update({key: run[key] for key in ("canary", "cache", "state") if key in run})
    return RunSettings(**kw), problems


def output_settings(
    outputs: dict[str, Any], name: str
) -> tuple[OutputSettings, list[tuple[str, str]]]:
    """The `outputs:` block as a record (its dir with {name} filled in), and its problems."""
    problems: list[tuple[str, str]] = []
    template = outputs.get("dir", "outputs/{name}")
    out_dir = template
    try:
        out_dir = _fill_name(template, name)
    except ValueError as exc:
        problems.append(("dir", str(exc)))
    size = 2 * GIB
    if "max_file_size" in outputs:
        try:
            size = parse_size(outputs["max_file_size"])
        except ValueError as exc:
            problems.append(("max_file_size", str(exc)))
    mirror = outputs.get("mirror")
    if isinstance(mirror, str):
        try:
            mirror = str(parse_s3_url(mirror))
        except ValueError as exc:
            problems.append(("mirror", str(exc)))
        if outputs.get("download") is False:
            problems.append(
                (
                    "mirror",
                    "mirrors the downloaded files, so it needs download: true (or remove it)",
                )
            )
    settings = OutputSettings(
        dir=out_dir,
        download=outputs.get("download", True),
        allow_hosts=tuple(outputs.get("allow_hosts", ())),
        max_file_bytes=size,
        mirror=mirror if isinstance(mirror, str) else None,
    )
    return settings, problems


def _fill_name(template: str, name: str) -> str:
    """outputs.dir knows one placeholder, {name}; {{ and }} are literal braces."""
    out = []
    for part in re.split(r"(\{\{|\}\}|\{[^{}]*\}|[{}])", template):
        if part == "{name}":
            out.append(name)
        elif part in ("{{", "}}"):
            out.append(part[0])
        elif part.startswith("{") or part in ("{", "}"):
            raise ValueError(f"unknown placeholder {part!r}; outputs.dir only knows {{name}}")
        else:
            out.append(part)
    return "".join(out)


def upload_settings(uploads: dict[str, Any]) -> tuple[UploadSettings, list[tuple[str, str]]]:
    """The `uploads:` block as a record, and its problems as (key, message)."""
    if not uploads:
        return UploadSettings(), []
    problems: list[tuple[str, str]] = []
    expires = 24 * 3600.0
    if "expires" in uploads:
        try:
            expires = parse_duration(uploads["expires"])
        except ValueError as exc:
            problems.append(("expires", str(exc)))
        if expires > MAX_PRESIGN_S and not uploads.get("public_base"):
            problems.append(
                (
                    "expires",
                    f"{uploads['expires']!r} is longer than 168h (7 days), the longest a "
                    "presigned S3 URL may live; write 168h or less",
                )
            )
    settings = UploadSettings(
        to=str(uploads["to"]).rstrip("/"),
        expires_s=expires,
        inline=uploads.get("inline", "auto"),
        endpoint_url=uploads.get("endpoint_url"),
        public_base=uploads.get("public_base"),
    )
    return settings, problems

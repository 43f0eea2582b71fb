"""Simulator settings: one dataclass, built from flags, `--sim KEY=VALUE` pairs or a YAML file."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*$")
_SECONDS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min)?\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass
class SimSettings:
    """Everything the simulator can be told; the defaults make a demo feel real."""

    token: str = "sim-token"
    seed: int = 0
    # Jobs the account runs at once (alias: workers); the rest wait in a FIFO queue with a
    # queue_position. 0 means unlimited (every job starts at once, nothing queues).
    concurrency: int = 4
    # Run time: seconds (the mean, drawn uniformly within +- run_time_jitter, a fraction),
    # or a distribution: "0.5-1.5" (uniform), "lognormal:MEDIAN:SIGMA[:CAP]" (long-tailed).
    # A number given in code (SimSettings(run_time=0.05)) becomes a fixed RunTime on init.
    run_time: RunTime | float = field(default_factory=lambda: RunTime(1.0))
    run_time_jitter: float = 0.5
    # Per-model run time overriding `run_time`: {model_id: seconds or a distribution}.
    run_times: dict[str, RunTime] = field(default_factory=dict)
    # API calls per rolling second on /v1/ endpoints; a call that would make more than this
    # many in any one second is answered 429 + Retry-After. None = unlimited.
    rate_limit: float | None = None
    error_rate: float = 0.0  # fraction of API calls answered 500/502/503
    drop_rate: float = 0.0  # fraction of API calls whose connection is closed mid-response
    slow: float = 0.0  # seconds of latency added to every API call
    fail_rate: float = 0.0  # fraction of jobs that end `failed`
    expire_after: float | None = None  # seconds after finishing until results/files are 404
    drift: float = 0.0  # fraction of jobs (by input identity + seed) whose bytes differ
    malicious: bool = False  # hostile outputs for security tests (see simulator.malicious)
    huge_file_bytes: int = 5 * 1024 * 1024  # size of the malicious "huge" file
    # USD the account can pay; a submit that the jobs accepted so far (not failed or cancelled)
    # plus its own cost would take past it is refused: HTTP 402, error_code 400002. None: no limit.
    balance: float | None = None
    # When a job is billed: "success" (when it succeeds; failed and cancelled jobs cost
    # nothing) or "accept" (every submit the API accepts, as a server that bills at the door).
    bill_on: str = "success"
    # Whether /result answers `include_cost=true` with a `cost`; off, results carry none.
    result_costs: bool = True
    # Folder to persist jobs in (simulator.persist); a restart with it reloads them. None: memory.
    state_dir: str | None = None
    # Which http(s) URL inputs a running job fetches (simulator.media): "local" (127.0.0.1 and
    # localhost only: offline with public example URLs), "all", or "off".
    fetch_inputs: str = "local"

    def __post_init__(self) -> None:
        # Numbers given in code (SimSettings(run_time=0.05)) mean a fixed mean run time.
        self.run_time = _run_time(self.run_time)
        self.run_times = {k: _run_time(v) for k, v in self.run_times.items()}

    @property
    def workers(self) -> int:
        """The old name of `concurrency`."""
        return self.concurrency

    @property
    def max_workers_unlimited(self) -> bool:
        """concurrency == 0: every job starts at once."""
        return self.concurrency == 0

    def run_time_of(self, model_id: str) -> RunTime:
        """The run-time distribution of a model's jobs."""
        if model_id in self.run_times:
            return self.run_times[model_id]
        return _run_time(self.run_time)  # already one since __post_init__, unless reassigned

    def mean_run_time(self, model_id: str) -> float:
        return self.run_time_of(model_id).mean

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SimSettings:
        """Build settings from strings or numbers (`rate_limit: 10/s`, `slow: 200ms`, ...).

        Keys may use `-` or `_`. Raises ValueError naming the bad key or value.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).strip().replace("-", "_")
            if key in _ALIASES:
                if _ALIASES[key] in data or _ALIASES[key].replace("_", "-") in data:
                    both = f"give {_ALIASES[key]!r} or its old name {raw_key!r}, not both"
                    raise ValueError(both)
                key = _ALIASES[key]
            if key not in names:
                known = ", ".join(sorted(names))
                raise ValueError(f"unknown simulator setting {raw_key!r}; known: {known}")
            try:
                kwargs[key] = _PARSERS[key](value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"simulator setting {raw_key}={value!r}: {exc}") from None
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SimSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class RunTime:
    """How long a job runs: `fixed` (mean +- run_time_jitter), `uniform` (low..high) or
    `lognormal` (median, sigma, capped at `cap`), drawn from one seeded fraction per job."""

    low: float  # fixed: the mean; uniform: the low end; lognormal: the median
    high: float | None = None  # uniform: the high end
    kind: str = "fixed"
    sigma: float = 0.0  # lognormal: the spread of log(run time)
    cap: float | None = None  # lognormal: no job runs longer

    def _key(self) -> tuple[Any, ...]:
        return (self.low, self.high, self.kind, self.sigma, self.cap)

    def __eq__(self, other: object) -> bool:
        # A fixed run time is its seconds: settings built from `run_time: 1.5` equal 1.5.
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return self.kind == "fixed" and self.low == other
        if isinstance(other, RunTime):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.low) if self.kind == "fixed" else hash(self._key())

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.low + (self.high or self.low)) / 2
        if self.kind == "lognormal":
            mean = self.low * math.exp(self.sigma**2 / 2)
            return min(mean, self.cap) if self.cap is not None else mean
        return self.low

    def draw(self, u: float, jitter: float) -> float:
        """The run time for a job whose seeded fraction is `u` (0 <= u < 1)."""
        if self.kind == "uniform":
            return self.low + ((self.high or self.low) - self.low) * u
        if self.kind == "lognormal":
            z = NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
            value = self.low * math.exp(self.sigma * z)
            return min(value, self.cap) if self.cap is not None else value
        return max(0.0, self.low * (1.0 + jitter * (2.0 * u - 1.0)))


def parse_run_time(value: Any) -> RunTime:
    """`1.5` / `200ms` (mean, jittered), `0.5-1.5` (uniform, seconds), or
    `lognormal:MEDIAN:SIGMA[:CAP]` (e.g. `lognormal:1s:0.8:20s`)."""
    if isinstance(value, RunTime):
        return value
    text = str(value).strip()
    if text.lower().startswith("lognormal:"):
        parts = text.split(":")[1:]
        if len(parts) not in (2, 3):
            raise ValueError("expected lognormal:MEDIAN:SIGMA[:CAP], e.g. lognormal:1s:0.8:20s")
        sigma = float(parts[1])
        if sigma < 0 or not math.isfinite(sigma):
            raise ValueError("a lognormal sigma must be zero or more")
        cap = parse_seconds(parts[2]) if len(parts) == 3 else None
        return RunTime(parse_seconds(parts[0]), kind="lognormal", sigma=sigma, cap=cap)
    low, sep, high = text.partition("-")
    if sep and low.strip():
        lo, hi = parse_seconds(low), parse_seconds(high)
        if hi < lo:
            raise ValueError("a run-time range goes from low to high, e.g. 0.5-1.5")
        return RunTime(lo, hi, kind="uniform")
    return RunTime(parse_seconds(value))


def _run_time(value: Any) -> RunTime:
    return value if isinstance(value, RunTime) else parse_run_time(value)


def parse_rate(value: Any) -> float | None:
    """`10`, `10/s`, `600/min` -> calls per second; `none`/`0`/None -> unlimited."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    else:
        m = _RATE.match(str(value))
        if not m:
            raise ValueError("expected a rate like 10/s or 600/min")
        rate = float(m.group(1))
        if m.group(2) and m.group(2).startswith("m"):
            rate /= 60.0
    if rate < 0 or not math.isfinite(rate):
        raise ValueError("a rate must be a positive number")
    return rate or None


def parse_seconds(value: Any) -> float:
    """`1.5`, `1.5s`, `200ms`, `2m` -> seconds (>= 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _SECONDS.match(str(value))
        if not m:
            raise ValueError("expected seconds like 1.5, 1.5s or 200ms")
        unit = m.group(2) or "s"
        seconds = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}[unit]
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("must be zero or more seconds")
    return seconds


def _optional_seconds(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off")):
        return None
    return parse_seconds(value)


def _fraction(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a fraction between 0 and 1")
    text = str(value).strip()
    number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0.0 <= number <= 1.0:
        raise ValueError("expected a fraction between 0 and 1 (or a percentage like 5%)")
    return number


def _int(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("expected a whole number")
    number = int(str(value).strip()) if isinstance(value, str) else int(value)
    if number < minimum:
        raise ValueError(f"must be at least {minimum}")
    return number


def _usd(value: Any) -> float:
    number = float(str(value).strip().removeprefix("$"))
    if number < 0 or not math.isfinite(number):
        raise ValueError("expected an amount in USD >= 0")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")


def _token(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError("a token must be non-empty without spaces")
    return text


def _run_times(value: Any) -> dict[str, RunTime]:
    """A mapping {model: run time}, or `model=1.5,other=2-4` as one string."""
    if isinstance(value, dict):
        return {str(k).strip(): parse_run_time(v) for k, v in value.items()}
    out: dict[str, RunTime] = {}
    for pair in (p for p in str(value).split(",") if p.strip()):
        model, sep, seconds = pair.partition("=")
        if not sep:
            raise ValueError("expected model=seconds[,model=seconds...]")
        out[model.strip()] = parse_run_time(seconds)
    return out


_PARSERS: dict[str, Any] = {
    "token": _token,
    "seed": lambda v: _int(v, minimum=-(2**63)),
    "concurrency": _int,
    "run_time": parse_run_time,
    "run_time_jitter": _fraction,
    "run_times": _run_times,
    "rate_limit": parse_rate,
    "error_rate": _fraction,
    "drop_rate": _fraction,
    "slow": parse_seconds,
    "fail_rate": _fraction,
    "expire_after": _optional_seconds,
    "drift": _fraction,
    "malicious": _bool,
    "huge_file_bytes": lambda v: _int(v, minimum=1),
    "balance": lambda v: None if v is None or str(v).strip().lower() in ("", "none") else _usd(v),
    "bill_on": lambda v: _choice(v, ("success", "accept")),
    "result_costs": _bool,
    "state_dir": lambda v: None if v is None or not str(v).strip() else str(v),
    "fetch_inputs": lambda v: _choice(v, ("local", "all", "off")),
}


def _choice(value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return text


# Other names a setting is known by: {alias: setting}.
_ALIASES = {"workers": "concurrency"}


def load_settings(config_file: str | None, overrides: dict[str, Any]) -> SimSettings:
    """Settings from an optional YAML file, then `overrides` (None values are ignored)."""
    data: dict[str, Any] = {}
    if config_file:
        import yaml

        with open(config_file, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError("expected a mapping of setting: value")
        data.update(loaded.get("simulator", loaded) if "simulator" in loaded else loaded)
    given = {k: v for k, v in overrides.items() if v is not None}
    for alias, name in _ALIASES.items():  # a flag wins over the file, by either name
        if name in given or alias in given:
            data.pop(alias, None)
            data.pop(name, None)
    data.update(given)
    return SimSettings.from_mapping(data)

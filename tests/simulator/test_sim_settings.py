"""SimSettings.from_mapping / load_settings: strings and numbers in, clear errors out."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.simulator import SimSettings
from batchrun.simulator.settings import load_settings


def test_defaults_feel_like_a_demo() -> None:
    s = SimSettings()
    assert (s.token, s.seed, s.workers, s.run_time, s.rate_limit) == ("sim-token", 0, 4, 1.0, None)
    assert not s.max_workers_unlimited and SimSettings(concurrency=0).max_workers_unlimited


def test_from_mapping_parses_strings() -> None:
    s = SimSettings.from_mapping(
        {
            "rate-limit": "600/min",
            "run_time": "200ms",
            "slow": "1.5s",
            "error_rate": "5%",
            "fail_rate": 0.25,
            "workers": "0",
            "malicious": "yes",
            "expire_after": "2m",
            "seed": "42",
            "run_times": "a/b=2,c/d=0.5",
        }
    )
    assert s.rate_limit == 10.0
    assert s.run_time == 0.2 and s.slow == 1.5 and s.expire_after == 120
    assert s.error_rate == 0.05 and s.fail_rate == 0.25
    assert s.workers == 0 and s.malicious is True and s.seed == 42
    assert s.mean_run_time("a/b") == 2 and s.mean_run_time("x/y") == 0.2


@pytest.mark.parametrize(
    "data, message",
    [
        ({"rate": 5}, "unknown simulator setting 'rate'"),
        ({"error_rate": 2}, "simulator setting error_rate=2: expected a fraction"),
        ({"rate_limit": "fast"}, "simulator setting rate_limit='fast': expected a rate like 10/s"),
        ({"workers": -1}, "simulator setting workers=-1: must be at least 0"),
        ({"slow": "soon"}, "simulator setting slow='soon': expected seconds"),
        ({"malicious": "maybe"}, "simulator setting malicious='maybe': expected true or false"),
    ],
)
def test_bad_keys_and_values_are_named(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        SimSettings.from_mapping(data)


def test_load_settings_from_yaml_with_flags_winning(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("rate_limit: 5/s\nfail_rate: 0.1\nrun_times:\n  a/b: 3\n")
    s = load_settings(str(config), {"fail_rate": "0.2", "seed": None})
    assert (s.rate_limit, s.fail_rate, s.seed, s.run_times) == (5.0, 0.2, 0, {"a/b": 3.0})

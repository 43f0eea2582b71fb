"""A server that asks the run to wait (429 with a huge Retry-After: seconds, a date in 2099): the
wait is capped at 5 minutes, and the progress line (the CI log line and the terminal bar) says
what the run waits for while it waits, not only that time passes."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from batchrun.api.ratelimit import RateLimiter
from batchrun.plan.build import build_plan
from batchrun.run import progress
from batchrun.run.engine import RunOptions, run_batch
from batchrun.run.progress import Progress, server_wait

from .conftest import TOKEN
from .hostile_api import Call, HostileApi, Jumps, Reply, manifest_for

WAITING = re.compile(r"waiting (\d+) s: server rate limit \(Retry-After\)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("retry_after", [300.0, 45.5, 3.0])
def test_a_log_line_says_what_the_run_waits_for_at_once(retry_after: float) -> None:
    clock, out = Clock(), io.StringIO()
    limiter = RateLimiter(10.0, clock=clock)
    bar = Progress(
        4, stream=out, interval=5.0, clock=clock, waiting=server_wait(limiter.paused_for)
    )
    counts = {"pending": 3, "running": 1}
    bar.update(counts, 0, 1)
    clock.now += 5.0
    bar.update(counts, 0, 1)  # an interval passed: a line, nothing to wait for
    limiter.throttled(retry_after)
    clock.now += 0.5
    bar.update(counts, 0, 2)  # the pause began: a line now, not at the next interval
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "waiting" not in lines[0]
    assert lines[1].endswith(
        f"; waiting {int(-(-(retry_after - 0.5) // 1))} s: server rate limit (Retry-After)"
    ), lines
    clock.now += max(retry_after, 5.0)  # the pause is over, and an interval passed
    bar.update(counts, 1, 3)
    assert "waiting" not in out.getvalue().splitlines()[-1]


def test_a_short_pause_without_retry_after_is_not_announced() -> None:
    clock, out = Clock(), io.StringIO()
    limiter = RateLimiter(10.0, clock=clock)
    bar = Progress(
        4, stream=out, interval=5.0, clock=clock, waiting=server_wait(limiter.paused_for)
    )
    bar.update({"pending": 4}, 0, 0)
    limiter.throttled(None)  # the limiter's own 1 s pause
    bar.update({"pending": 4}, 0, 1)
    assert out.getvalue() == ""


def test_the_terminal_bar_says_it_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "is_terminal", lambda stream: True)
    clock, out = Clock(), io.StringIO()
    limiter = RateLimiter(10.0, clock=clock)
    bar = Progress(
        4, stream=out, interval=5.0, clock=clock, waiting=server_wait(limiter.paused_for)
    )
    limiter.throttled(300.0)
    bar.update({"pending": 4}, 0, 1, force=True)
    assert "waiting 300 s: server rate limit (Retry-After)" in out.getvalue()
    clock.now += 301.0
    bar.update({"succeeded": 4}, 4, 5, force=True)
    bar.close()
    assert not bar.parts({"succeeded": 4}, 5)[-1].startswith("waiting")


RETRY_AFTERS = {
    "seconds": "300",
    "an-hour": "3600",
    "2099": "Thu, 01 Jan 2099 00:00:00 GMT",
    "huge": "99999999999",
}


@pytest.mark.parametrize("variant", sorted(RETRY_AFTERS))
def test_a_run_told_to_wait_says_so_in_its_log_lines(
    tmp_path: Path, capsys: Any, variant: str
) -> None:
    """In-process, the monotonic clock jumping 5 s a read: the 5-minute pause passes in no time,
    and the CI log lines show it from its start, capped at 300 s."""

    def answer(call: Call) -> Reply | None:
        if call.kind == "submit" and call.n == 1:
            return Reply(429, {"error_code": 429001}, {"Retry-After": RETRY_AFTERS[variant]})
        return None

    manifest_for(tmp_path, 1, run={"job_timeout": "100h", "poll_interval": "1s"})
    with HostileApi(answer) as api:
        options = RunOptions(
            api.base_url,
            TOKEN,
            run_dir=tmp_path / "run",
            handle_signals=False,
            echo=lambda text: None,
            clock=Jumps(5.0, start=0.0),
            sleep=lambda s: None,
        )
        capsys.readouterr()
        code = run_batch(build_plan(tmp_path / "m.yaml"), options)
    err = capsys.readouterr().err
    assert code == 0, err
    assert api.calls["submit"] == 2
    waits = [int(m) for m in WAITING.findall(err)]
    assert waits, err
    print(f"Retry-After {RETRY_AFTERS[variant]}: the log lines said waiting {waits} s")
    assert max(waits) <= 300 and waits[0] >= 200, waits  # capped, and said from the start

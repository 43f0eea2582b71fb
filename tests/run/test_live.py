"""Reports while the run goes (run/live.py): when they are written, and a `--simulate` run in a
child process whose report.csv fills in and whose report.html says it is live until the end."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchrun.errors import CompareError
from batchrun.plan.settings import run_settings
from batchrun.results.reportcsv import read_jobs
from batchrun.run.live import SHARE, LiveReport, waiting_text
from testing.cli import batchrun_cmd, clean_env

REFRESH = 'http-equiv="refresh"'


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _now(live: LiveReport) -> None:
    """One tick, and its write (on the writer thread) done."""
    live.tick()
    live.wait()


def test_written_when_due_and_only_when_something_changed() -> None:
    clock, changes, writes = _Clock(), [0], []
    live = LiveReport(30, lambda: lambda: writes.append(clock.now), lambda: changes[0], clock)
    _now(live)
    assert writes == []  # nothing is due at the start
    clock.now += 30
    changes[0] = 1
    _now(live)
    assert writes == [130.0]
    clock.now += 29
    changes[0] = 2
    _now(live)
    assert writes == [130.0]  # not yet due
    clock.now += 1
    _now(live)
    assert writes == [130.0, 160.0]
    clock.now += 60
    _now(live)  # due, but nothing changed since
    assert writes == [130.0, 160.0]


def test_a_slow_write_spaces_the_next_ones_out() -> None:
    clock, changes = _Clock(), [0]

    def slow_write() -> None:
        clock.now += 3.0  # a write that takes 3 s

    live = LiveReport(10, lambda: slow_write, lambda: changes[0], clock)
    clock.now += 10
    changes[0] = 1
    _now(live)
    assert live.writes == 1 and live.cost_s == 3.0
    assert live.due == clock.now + SHARE * 3.0  # not every 10 s: at most 1/SHARE of the time


def test_the_loop_goes_on_while_a_write_is_under_way() -> None:
    clock, changes = _Clock(), [0]
    started, release, loop_thread = threading.Event(), threading.Event(), threading.get_ident()
    said: list[int] = []  # the thread each part of the write ran on

    def write() -> Callable[[], None]:
        said.append(threading.get_ident())  # what the reports say: taken on the loop's thread

        def work() -> None:
            said.append(threading.get_ident())
            started.set()
            assert release.wait(30), "the write was never released"

        return work

    live = LiveReport(1, write, lambda: changes[0], clock)
    clock.now += 1
    changes[0] = 1
    live.tick()  # returns with the write under way
    assert started.wait(30) and live.busy
    for _ in range(100):  # the loop's steps: each tick returns at once, no second write
        clock.now += 1
        changes[0] += 1
        live.tick()
    assert live.busy and live.writes == 1
    release.set()
    live.wait()
    assert not live.busy and said[0] == loop_thread != said[1]
    clock.now += SHARE * live.cost_s + 1
    _now(live)
    assert live.writes == 2


def test_a_write_that_fails_stops_the_live_reports() -> None:
    clock = _Clock()

    def fail() -> None:
        raise OSError("disk full")

    live = LiveReport(1, lambda: fail, lambda: 1, clock)
    clock.now += 1
    _now(live)
    assert live.every == 0 and isinstance(live.error, OSError)
    clock.now += 100
    _now(live)
    assert live.writes == 1


def test_every_zero_never_writes() -> None:
    clock = _Clock()
    live = LiveReport(0, lambda: pytest.fail("written"), lambda: 1, clock)
    clock.now += 1000
    _now(live)
    assert live.writes == 0


def test_a_run_polls_and_finishes_jobs_while_a_live_write_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first live write is held until every job of the run has finished: only a loop
    that goes on while the write is under way gets them there."""
    from batchrun.cli import main
    from batchrun.results import report
    from batchrun.store import state as st
    from batchrun.store.state import StateStore

    run_dir = tmp_path / "out"
    seen: list[dict[str, int]] = []
    real = report.write_from_state

    def held(*args: Any, **kwargs: Any) -> None:
        if not seen:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with StateStore.open(run_dir, create=False, lock=False) as store:
                    seen.append(store.counts())
                if seen[-1].get(st.SUCCEEDED) == 12:
                    break
                time.sleep(0.05)
        real(*args, **kwargs)

    monkeypatch.setattr(report, "write_from_state", held)
    _sweep(tmp_path, "100ms")
    sim = ["--sim", "run_time=0.3-0.6", "--sim", "workers=3", "--sim", "seed=3"]
    args = ["run", str(tmp_path / "sweep.yaml"), "--simulate", "--run-dir", str(run_dir), "-q"]
    assert main([*args, *sim]) == 0
    # the write was held from early in the run (jobs still to do) until all 12 had finished
    assert seen[0].get(st.SUCCEEDED, 0) < 12 and seen[-1] == {st.SUCCEEDED: 12}
    assert len(read_jobs(run_dir / "report.csv")) == 12


def test_waiting_text() -> None:
    assert waiting_text(12, "") == "waiting on 12 jobs at the server"
    assert waiting_text(1, "waiting 30 s: server rate limit (Retry-After)") == (
        "waiting on 1 job at the server; waiting 30 s: server rate limit (Retry-After)"
    )
    assert waiting_text(0, "", stopped="budget: the cap is reached") == "budget: the cap is reached"


@pytest.mark.parametrize(
    ("value", "seconds"), [("30s", 30.0), ("2m", 120.0), (5, 5.0), (0, 0.0), ("0", 0.0)]
)
def test_report_every_values(value: object, seconds: float) -> None:
    settings, problems = run_settings({"report_every": value})
    assert problems == [] and settings.report_every == seconds


def test_report_every_default_and_a_bad_value() -> None:
    assert run_settings({})[0].report_every == 30.0
    assert run_settings({"report_every": "soon"})[1] == [
        ("report_every", "'soon' is not a duration; write e.g. 2s, 500ms, 30m, 1h")
    ]


def _sweep(root: Path, report_every: object) -> None:
    quick = Path(__file__).resolve().parents[2] / "manifests" / "quickstart.yaml"
    manifest = yaml.safe_load(quick.read_text())
    manifest["name"] = "live"
    manifest["run"].update(poll_interval="100ms", rate_limit="200/s", report_every=report_every)
    manifest["matrix"] = {"seed": [1, 2, 3, 4]}  # x 3 colors: 12 jobs
    (root / "sweep.yaml").write_text(yaml.safe_dump(manifest))


def _start(root: Path) -> subprocess.Popen[bytes]:
    # Jobs of 0.5-2 s, three at a time: the run lasts several seconds.
    sim = ["--sim", "run_time=0.5-2", "--sim", "workers=3", "--sim", "seed=3"]
    cmd = batchrun_cmd("run", "sweep.yaml", "--simulate", "--run-dir", "out", "-q", *sim)
    return subprocess.Popen(cmd, cwd=root, env=clean_env(), stderr=subprocess.PIPE)


def test_reports_fill_in_while_the_run_goes(tmp_path: Path) -> None:
    _sweep(tmp_path, "500ms")
    out = tmp_path / "out"
    proc = _start(tmp_path)
    seen: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not seen:
            time.sleep(0.1)
            try:
                statuses = [r["status"] for r in read_jobs(out / "report.csv").values()]
                html = (out / "report.html").read_text()
                summary = json.loads((out / "summary.json").read_text())
            except (OSError, ValueError, CompareError):
                continue  # not written yet (each file is replaced whole, never half written)
            if 0 < statuses.count("succeeded") < len(statuses):
                seen = {"statuses": statuses, "html": html, "summary": summary}
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert seen, "no report with some jobs finished and others not appeared during the run"
    assert len(seen["statuses"]) == 12  # type: ignore[arg-type]
    html = str(seen["html"])
    assert f'<meta {REFRESH} content="5">' in html
    assert '<p class="live"><strong>live</strong> running: ' in html
    assert "at the server" in html and "spent" in html
    assert seen["summary"]["live"] is True  # type: ignore[index]
    # The final report: every job, no live line, no reload.
    final = read_jobs(out / "report.csv")
    assert [r["status"] for r in final.values()] == ["succeeded"] * 12
    html = (out / "report.html").read_text()
    assert REFRESH not in html and 'class="live"' not in html
    assert "live" not in json.loads((out / "summary.json").read_text())


def test_report_every_zero_writes_only_at_the_end(tmp_path: Path) -> None:
    _sweep(tmp_path, 0)
    proc = _start(tmp_path)
    try:
        time.sleep(3)  # past the first jobs' ends
        assert proc.poll() is None, "the run ended too soon to tell"
        assert not (tmp_path / "out" / "report.csv").exists()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "out" / "report.csv").is_file()

"""Server-side concurrency (`concurrency`, alias `workers`) with queue positions, run-time
distributions, and the run times the server reports in /_sim/stats."""

from __future__ import annotations

import threading

import pytest
from simhelpers import T2I, SimClient, wait_for

from batchrun.simulator import SimSettings
from batchrun.simulator.jobqueue import draw_run_time
from batchrun.simulator.settings import RunTime, load_settings, parse_run_time


def test_at_most_n_jobs_run_and_the_rest_queue_with_their_positions(make_sim) -> None:
    client = SimClient(make_sim(concurrency=2, run_time=30))
    ids = [client.submit_ok(T2I, {"prompt": f"p{i}"}) for i in range(5)]
    wait_for(lambda: client.sim.stats()["jobs"]["in_progress"] == 2)
    states = [client.status(rid) for rid in ids]
    assert [s["status"] for s in states] == ["in_progress"] * 2 + ["in_queue"] * 3
    assert [s.get("queue_position") for s in states[2:]] == [1, 2, 3]
    assert client.post(f"/v1/requests/{ids[2]}/cancel").status_code == 202
    assert [client.status(rid).get("queue_position") for rid in ids[3:]] == [1, 2]
    assert client.result(ids[4])["queue_position"] == 2  # /result says it too


@pytest.mark.parametrize("key", ["concurrency", "workers"])
def test_workers_is_another_name_for_concurrency(key: str) -> None:
    assert SimSettings.from_mapping({key: "3"}).concurrency == 3
    assert load_settings(None, {key: 0}).max_workers_unlimited
    assert SimSettings(concurrency=5).workers == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5", RunTime(1.5)),
        ("200ms", RunTime(0.2)),
        ("0.5-1.5", RunTime(0.5, 1.5, kind="uniform")),
        ("20s-60s", RunTime(20.0, 60.0, kind="uniform")),
        ("lognormal:1s:0.8:20s", RunTime(1.0, kind="lognormal", sigma=0.8, cap=20.0)),
        ("lognormal:2:0.5", RunTime(2.0, kind="lognormal", sigma=0.5)),
    ],
)
def test_run_time_forms(text: str, expected: RunTime) -> None:
    assert parse_run_time(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5-0.5", "a run-time range goes from low to high"),
        ("lognormal:1s", "expected lognormal:MEDIAN:SIGMA[:CAP]"),
        ("fast", "expected seconds like 1.5, 1.5s or 200ms"),
    ],
)
def test_bad_run_times_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="run_time") as err:
        SimSettings.from_mapping({"run_time": text})
    assert message in str(err.value)


def _draws(settings: SimSettings, model: str = T2I, n: int = 400) -> list[float]:
    return [draw_run_time(settings, model, f"identity {i}", 0) for i in range(n)]


def test_uniform_run_times_cover_the_range_and_stay_in_it() -> None:
    draws = _draws(SimSettings.from_mapping({"run_time": "0.5-1.5", "seed": 3}))
    assert min(draws) >= 0.5 and max(draws) <= 1.5
    assert min(draws) < 0.55 and max(draws) > 1.45
    assert 0.95 < sum(draws) / len(draws) < 1.05
    assert RunTime(0.5, 1.5, kind="uniform").mean == 1.0


def test_lognormal_run_times_have_a_long_tail_up_to_the_cap() -> None:
    draws = sorted(_draws(SimSettings.from_mapping({"run_time": "lognormal:1s:1.0:6s"}), n=2000))
    median = draws[len(draws) // 2]
    assert 0.85 < median < 1.15
    assert max(draws) == 6.0  # capped, and the cap is reached
    assert draws[int(0.95 * len(draws))] > 3.5  # the tail: p95 is well above twice the median
    assert RunTime(1.0, kind="lognormal", sigma=0.0).draw(0.99, 0.0) == pytest.approx(1.0)


def test_per_model_run_times_take_any_form() -> None:
    settings = SimSettings.from_mapping(
        {"run_time": "0.1", "run_time_jitter": 0, "run_times": {"a/video": "20-60"}}
    )
    assert set(_draws(settings, T2I, 20)) == {0.1}
    video = _draws(settings, "a/video", 50)
    assert all(20 <= d <= 60 for d in video) and len(set(video)) > 40
    assert settings.mean_run_time("a/video") == 40
    assert SimSettings.from_mapping({"run_times": "x/y=1-3"}).run_times == {
        "x/y": RunTime(1.0, 3.0, kind="uniform")
    }


def test_stats_report_the_runs_as_the_server_timed_them(make_sim) -> None:
    client = SimClient(make_sim(run_time="0.1-0.2", concurrency=0))
    ids = [client.submit_ok(T2I, {"prompt": f"p{i}"}) for i in range(4)]
    for rid in ids:
        client.wait_status(rid, "completed")
    before = client.sim.stats()
    assert before["last_result_at"] is None
    client.result(ids[0])
    stats = client.sim.stats()
    runs = stats["run_times"]
    assert runs["jobs"] == 4
    assert 0.4 <= runs["total_s"] <= 0.8 + 0.2  # four runs of 0.1-0.2 s (scheduler slack)
    assert 0.1 <= runs["max_s"] <= 0.25
    assert runs["first_submit_at"] <= runs["first_finished_at"] <= runs["last_finished_at"]
    assert stats["last_result_at"] >= runs["last_finished_at"]


def test_concurrency_and_its_old_name_together_are_refused() -> None:
    with pytest.raises(ValueError, match="give 'concurrency' or its old name 'workers', not both"):
        SimSettings.from_mapping({"concurrency": 10, "workers": 0})


def test_a_concurrency_flag_wins_over_workers_in_the_file(tmp_path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("workers: 2\n")
    assert load_settings(str(config), {"concurrency": 7}).concurrency == 7
    assert load_settings(str(config), {"concurrency": None}).concurrency == 2


def test_failing_jobs_finishing_while_submits_arrive_never_lock_the_server(make_sim) -> None:
    """The job scheduler releases a failed job's amount while it holds the queue's lock; a
    submit holds the billing lock while it enters the queue: the two must not wait on each
    other (they did: a server with failing jobs and submits arriving stopped answering)."""
    client = SimClient(make_sim(run_time=0.0, fail_rate=1.0, concurrency=0))
    done: list[int] = []

    def submits(worker: int) -> None:
        for i in range(60):
            client.submit_ok(T2I, {"prompt": f"w{worker} p{i}"})
        done.append(worker)

    threads = [threading.Thread(target=submits, args=(w,), daemon=True) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(done) == list(range(6)), "the simulator stopped answering submits"
    wait_for(lambda: client.sim.stats()["jobs"]["failed"] == 360)

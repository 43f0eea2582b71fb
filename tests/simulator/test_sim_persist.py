"""`state_dir`: a simulator stopped mid-batch and started again remembers its requests."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

from simhelpers import T2I, SimClient, wait_for

from batchrun.simulator import SimSettings, Simulator
from batchrun.simulator.persist import JOURNAL


def _prompts(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"umbrella {i}"} for i in range(n)]


def _file_sha(client: SimClient, url: str) -> str:
    assert url.startswith(client.base + "/"), url  # always the current base URL
    r = client.session.get(url, timeout=10)
    assert r.status_code == 200, (url, r.status_code)
    return hashlib.sha256(r.content).hexdigest()


def test_restart_mid_batch_answers_old_ids_serves_files_and_counts_submits(
    make_sim: Any, tmp_path: Path
) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state, run_time=0.3, workers=2)
    client = SimClient(first)
    ids = [client.submit_ok(T2I, inputs) for inputs in _prompts(6)]
    done = client.wait_status(ids[0], "completed")
    assert client.status(ids[-1])["status"] == "in_queue"  # stopped mid-batch
    port = first.port
    first_result = client.result(ids[0])
    first.stop()

    second = make_sim(state_dir=state, run_time=0.3, workers=2)
    assert second.port == port  # the port is taken back, stored URLs keep working
    client = SimClient(second)
    assert done["status"] == "completed"
    assert client.result(ids[0])["output"] == first_result["output"]
    for rid in ids:  # every old id is known; the rest finish as if the server had kept going
        client.wait_status(rid, "completed", timeout=5)
    stats = second.stats()
    assert stats["submits"] == 6 and stats["duplicate_submits"] == 0
    assert stats["jobs"]["completed"] == 6
    fresh = Simulator(SimSettings(run_time=0.0)).start()  # same inputs, no state: same bytes
    try:
        fresh_client = SimClient(fresh)
        for rid, inputs in zip(ids, _prompts(6), strict=True):
            url = client.result(rid)["output"]["image"]
            new = fresh_client.submit_ok(T2I, inputs)
            fresh_client.wait_status(new, "completed")
            expected = _file_sha(fresh_client, fresh_client.result(new)["output"]["image"])
            assert _file_sha(client, url) == expected
    finally:
        fresh.stop()

    client.submit_ok(T2I, _prompts(1)[0])  # a resubmit across restarts is a duplicate
    assert second.stats()["submits_per_identity"][f'{T2I} {{"prompt":"umbrella 0"}}'] == 2
    assert second.stats()["duplicate_submits"] == 1


def test_reloaded_jobs_keep_state_from_wall_clock_and_cancellations(
    make_sim: Any, tmp_path: Path
) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state, run_time=30.0, workers=1)
    client = SimClient(first)
    running, queued, cancelled = (client.submit_ok(T2I, p) for p in _prompts(3))
    assert client.post(f"/v1/requests/{cancelled}/cancel").json()["outcome"] == "cancelled"
    first.stop()

    second = make_sim(state_dir=state, run_time=30.0, workers=1)
    client = SimClient(second)
    assert client.status(running)["status"] == "in_progress"
    # worker limits do not apply to reloaded jobs: it has been "running" since its submit
    assert client.status(queued)["status"] == "in_progress"
    assert client.status(cancelled)["status"] == "cancelled"
    assert client.post(f"/v1/requests/{running}/cancel").json()["outcome"] == "not_cancellable"
    assert second.stats()["jobs"] == {
        "in_queue": 0,
        "in_progress": 2,
        "completed": 0,
        "cancelled": 1,
        "failed": 0,
        "succeeded": 0,
    }


def test_port_taken_falls_back_and_urls_use_the_new_base(make_sim: Any, tmp_path: Path) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state, run_time=0.0)
    client = SimClient(first)
    rid = client.submit_ok()
    client.wait_status(rid, "completed")
    old_url = client.result(rid)["output"]["image"]
    port = first.port
    first.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        second = make_sim(state_dir=state, run_time=0.0)
        assert second.port != port
        client = SimClient(second)
        url = client.result(rid)["output"]["image"]
        assert url == old_url.replace(f":{port}/", f":{second.port}/")
        assert _file_sha(client, url)


def test_journal_holds_no_token_and_survives_a_torn_tail(make_sim: Any, tmp_path: Path) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state, token="tok-not-state-1234", run_time=0.0)
    client = SimClient(first)
    rid = client.submit_ok()
    first.stop()
    journal = state / JOURNAL
    assert "tok-not-state-1234" not in journal.read_text()
    with open(journal, "a") as fh:  # a kill -9 in the middle of an append
        fh.write('{"type":"submit","request_id":"to')

    second = make_sim(state_dir=state, token="tok-not-state-1234", run_time=0.0)
    client = SimClient(second)
    assert client.wait_status(rid, "completed")
    other = client.submit_ok(T2I, {"prompt": "after the tear"})
    second.stop()
    lines = journal.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole again
    assert [r["request_id"] for r in records if r["type"] == "submit"] == [rid, other]


def test_reset_forgets_the_journal_too(make_sim: Any, tmp_path: Path) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state, run_time=0.0)
    client = SimClient(first)
    rid = client.submit_ok()
    assert client.post("/_sim/reset").status_code == 200
    first.stop()
    second = make_sim(state_dir=state, run_time=0.0)
    assert SimClient(second).get(f"/v1/requests/{rid}/status").status_code == 404
    assert second.stats()["submits"] == 0


def test_state_dir_setting_from_mapping() -> None:
    assert SimSettings.from_mapping({"state-dir": "x/.simulator"}).state_dir == "x/.simulator"
    assert SimSettings.from_mapping({"state_dir": ""}).state_dir is None
    assert SimSettings().state_dir is None


def test_without_state_dir_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with Simulator(SimSettings(run_time=0.0)) as sim:
        rid = SimClient(sim).submit_ok()
        wait_for(lambda: SimClient(sim).status(rid)["status"] == "completed")
    assert list(cwd.iterdir()) == []

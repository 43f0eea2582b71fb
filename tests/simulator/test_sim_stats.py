"""`/_sim/stats` tells a paid-twice input from the manifest's `repeat:` copies: a duplicate is
an input accepted more than once of which one request was never asked about by its id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simhelpers import T2I, SimClient

from batchrun.simulator import Simulator
from testing.cli import invoke

IDENT = f'{T2I} {{"prompt":"an orange umbrella"}}'


def _repeat_manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "repeat.yaml"
    path.write_text(
        "version: 1\n"
        "name: repeat\n"
        "run: {poll_interval: 0.05s}\n"
        "outputs: {download: false}\n"
        "models:\n"
        f"  - id: {T2I}\n"
        "    inputs: {prompt: an orange umbrella}\n"
        f"    repeat: {n}\n",
        encoding="utf-8",
    )
    return path


def _run(sim: Simulator, manifest: Path, run_dir: Path) -> int:
    got = invoke(
        "run", str(manifest), "--api-base", sim.base_url, "--run-dir", str(run_dir), "--quiet",
        token=sim.token,
    )  # fmt: skip
    return got.code


def test_repeat_copies_are_not_duplicates_a_lost_answer_resent_is(
    sim: Simulator, tmp_path: Path
) -> None:
    assert _run(sim, _repeat_manifest(tmp_path, 3), tmp_path / "run") == 0
    stats = sim.stats()
    assert stats["submits_per_identity"] == {IDENT: 3}  # three jobs, one body
    assert stats["untracked_submits"] == 0
    assert stats["duplicate_submits"] == 0

    # The same input sent again by a client that never asks about it: paid twice.
    SimClient(sim).submit_ok(T2I, {"prompt": "an orange umbrella"})
    stats = sim.stats()
    assert stats["submits_per_identity"] == {IDENT: 4}
    assert stats["untracked_submits"] == 1
    assert stats["duplicate_submits"] == 1


def test_a_submit_not_yet_asked_about_is_untracked_until_it_is(client: SimClient) -> None:
    first = client.submit_ok(T2I, {"prompt": "a"})
    second = client.submit_ok(T2I, {"prompt": "a"})
    assert client.sim.stats()["untracked_submits"] == 2
    assert client.sim.stats()["duplicate_submits"] == 1
    client.status(first)
    client.get(f"/v1/requests/{second}/result")
    stats = client.sim.stats()
    assert stats["untracked_submits"] == 0 and stats["duplicate_submits"] == 0
    client.get("/v1/requests/nope/result")  # an unknown id marks nothing
    assert client.sim.stats()["submits"] == 2


def test_asked_marks_survive_a_restart(make_sim: Callable[..., Simulator], tmp_path: Path) -> None:
    state = tmp_path / "sim"
    first = make_sim(state_dir=state)
    assert _run(first, _repeat_manifest(tmp_path, 2), tmp_path / "run") == 0
    lost = SimClient(first).submit_ok(T2I, {"prompt": "an orange umbrella"})
    first.stop()

    second = make_sim(state_dir=state)
    stats = second.stats()
    assert stats["submits_per_identity"] == {IDENT: 3}
    assert stats["untracked_submits"] == 1 and stats["duplicate_submits"] == 1
    SimClient(second).status(lost)
    assert second.stats()["duplicate_submits"] == 0

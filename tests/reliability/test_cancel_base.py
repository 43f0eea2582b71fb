"""`batchrun cancel` sends the token where the user says now, not where the run folder says:
--api-base, else RUNCOMFY_MODEL_API_BASE, else the base recorded in state.db. Two servers: the
token reaches only the chosen one, and the first line says which and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.cli import clean_env, run_cli
from testing.folders import queued_run_folder

from .conftest import TOKEN, read_report
from .hostile_api import Call, HostileApi, Reply


def _cancelled(call: Call) -> Reply | None:
    return Reply(body={"outcome": "cancelled"}) if call.kind == "cancel" else None


@pytest.mark.parametrize("chooser", ["recorded", "env", "env-v1", "option", "option-over-env"])
def test_the_token_goes_only_to_the_chosen_base(tmp_path: Path, chooser: str) -> None:
    run_dir = tmp_path / "run"
    with (
        HostileApi(_cancelled) as recorded,
        HostileApi(_cancelled) as env_api,
        HostileApi(_cancelled) as option_api,
    ):
        queued_run_folder(run_dir, recorded.base_url)
        extra: dict[str, str] = {}
        args = ["cancel", str(run_dir)]
        if chooser in ("env", "option-over-env"):
            extra["RUNCOMFY_MODEL_API_BASE"] = env_api.base_url
        if chooser == "env-v1":  # RunComfy's CLI documents the base with /v1
            extra["RUNCOMFY_MODEL_API_BASE"] = env_api.base_url + "/v1/"
        if chooser.startswith("option"):
            args += ["--api-base", option_api.base_url]
        res = run_cli(*args, env=clean_env(TOKEN, **extra), timeout=60)
        servers = {"recorded": recorded, "env": env_api, "option": option_api}
        calls = {name: list(api.log) for name, api in servers.items()}
    assert res.returncode == 0, res.stdout + res.stderr
    chosen = {"recorded": "recorded", "env": "env", "env-v1": "env"}.get(chooser, "option")
    assert [c.kind for c in calls[chosen]] == ["cancel", "cancel"]
    assert all(c.headers.get("Authorization") == f"Bearer {TOKEN}" for c in calls[chosen])
    for name, log in calls.items():
        if name != chosen:
            assert log == [], f"{name} was asked: {log}"
    assert "cancelled 2 queued request(s)" in res.stderr
    base = servers[chosen].base_url
    first = res.stdout.splitlines()[0]
    if chosen == "recorded":
        assert first == f"cancelling on {base} (recorded in the run folder)"
    else:
        source = "--api-base" if chosen == "option" else "RUNCOMFY_MODEL_API_BASE"
        assert first == (
            f"cancelling on {base} (from {source}; the run folder recorded {recorded.base_url})"
        )


def test_a_base_equal_to_the_recorded_one_is_not_called_different(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with HostileApi(_cancelled) as api:
        queued_run_folder(run_dir, api.base_url + "/v1")
        env = clean_env(TOKEN, RUNCOMFY_MODEL_API_BASE=api.base_url)
        res = run_cli("cancel", str(run_dir), env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"cancelling on {api.base_url} (from RUNCOMFY_MODEL_API_BASE)\n"
    assert api.calls["cancel"] == 2


@pytest.mark.parametrize("named_by", ["env", "option", "none"])
def test_a_simulated_folder_cancels_on_a_base_named_now(tmp_path: Path, named_by: str) -> None:
    """`run --simulate` folders have no server once the run ends, unless the user names one:
    the environment counts as naming it, as --api-base does."""
    run_dir = tmp_path / "run"
    with HostileApi(_cancelled) as api:
        queued_run_folder(run_dir, "http://127.0.0.1:9")
        (run_dir / ".simulator").mkdir()
        extra = {"RUNCOMFY_MODEL_API_BASE": api.base_url} if named_by == "env" else {}
        option = ["--api-base", api.base_url] if named_by == "option" else []
        res = run_cli("cancel", str(run_dir), *option, env=clean_env(TOKEN, **extra), timeout=60)
    assert res.returncode == 0, res.stderr
    if named_by == "none":
        assert "simulated run" in res.stderr and api.calls["cancel"] == 0
    else:
        assert res.stdout.startswith(f"cancelling on {api.base_url} (from ")
        assert api.calls["cancel"] == 2


def test_the_report_says_cancelled_after_cancel(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with HostileApi(_cancelled) as api:
        queued_run_folder(run_dir, api.base_url)
        assert run_cli("report", str(run_dir), timeout=60).returncode == 0
        before = {r["job_id"]: r["status"] for r in read_report(run_dir)}
        assert list(before.values()).count("queued") == 2
        res = run_cli("cancel", str(run_dir), env=clean_env(TOKEN), timeout=60)
    assert res.returncode == 0, res.stderr
    after = {r["job_id"]: r["status"] for r in read_report(run_dir)}
    assert after == {j: "cancelled" if s == "queued" else s for j, s in before.items()}

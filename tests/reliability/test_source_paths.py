"""{file:} and {csv:} sources read only inside the manifest's folder (symlinks resolved), unless
BATCHRUN_ALLOW_OUTSIDE_SOURCES=1: a manifest cannot pour /proc/self/environ or a file beside
the project into prompts, `plan --json` and the report."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testing.cli import batchrun_cmd

from .conftest import TOKEN, clean_env, run_cli, sweep, write_manifest

SECRET = "outside-secret-d41d8"


def _manifest(tmp_path: Path, source: dict) -> Path:
    data = sweep(1)
    data["vars"] = {"p": source}
    data["models"][0]["inputs"]["prompt"] = "{p}"
    return write_manifest(tmp_path / "project" / "m.yaml", data)


def _layout(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "outside.txt").write_text(SECRET + "\n")
    (tmp_path / "outside.csv").write_text(f"p\n{SECRET}\n")
    (tmp_path / "project" / "inside.txt").write_text("a cat\n")
    (tmp_path / "project" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "project" / "dirlink").symlink_to(tmp_path, target_is_directory=True)


OUTSIDE = {
    "absolute-proc": {"file": "/proc/self/environ"},
    "absolute": {"file": "{tmp}/outside.txt"},
    "dotdot": {"file": "../outside.txt"},
    "symlink": {"file": "link.txt"},
    "symlinked-folder": {"file": "dirlink/outside.txt"},
    "csv-dotdot": {"csv": "../outside.csv", "column": "p"},
    "csv-absolute": {"csv": "{tmp}/outside.csv", "column": "p"},
}


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("variant", sorted(OUTSIDE))
def test_a_source_outside_the_manifest_folder_is_refused(
    tmp_path: Path, variant: str, command: str
) -> None:
    _layout(tmp_path)
    source = {k: v.replace("{tmp}", str(tmp_path)) for k, v in OUTSIDE[variant].items()}
    manifest = _manifest(tmp_path, source)
    args = [command, str(manifest)]
    if command == "plan":
        args.append("--json")
    else:
        args += ["--api-base", "http://127.0.0.1:9", "--run-dir", str(tmp_path / "run")]
    res = run_cli(*args, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "outside the manifest's folder" in out and "BATCHRUN_ALLOW_OUTSIDE_SOURCES" in out
    assert SECRET not in out and TOKEN not in out and "Traceback" not in out


def test_inside_sources_still_work_and_the_opt_in_reads_outside(tmp_path: Path) -> None:
    _layout(tmp_path)
    manifest = _manifest(tmp_path, {"file": "inside.txt"})
    res = run_cli("plan", str(manifest), "--json", timeout=60)
    assert res.returncode == 0 and "a cat" in res.stdout, res.stderr

    manifest = _manifest(tmp_path, {"file": "../outside.txt"})
    env = clean_env(BATCHRUN_ALLOW_OUTSIDE_SOURCES="1")
    res = subprocess.run(
        batchrun_cmd("plan", str(manifest), "--json"), capture_output=True, text=True, env=env
    )
    assert res.returncode == 0 and SECRET in res.stdout, res.stderr

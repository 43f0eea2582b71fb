"""`batchrun compare` in CI: `-` is stdout, special files are written through, the step
summary is appended to, a missing baseline is created, runs of different sweeps exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchrun.cli import main
from batchrun.store import atomic
from tests.results.test_compare import BASELINE, CURRENT, write_run


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE)
    write_run(tmp_path / "cur", CURRENT)
    return "base", "cur"


@pytest.mark.parametrize("option", ["--json", "--markdown", "--junit", "--html"])
def test_dash_is_stdout_for_every_output_option(runs, option, capsys) -> None:
    assert main(["compare", *runs, option, "-"]) == 1
    out, err = capsys.readouterr()
    assert not Path("-").exists()
    assert "regressed" in err  # the table moves to stderr
    start = {"--json": "{", "--markdown": "#", "--junit": "<?xml", "--html": "<!doctype"}
    assert out.lstrip().lower().startswith(start[option].lower())
    if option == "--json":
        assert json.loads(out)["passed"] is False


def test_markdown_appends_to_the_step_summary(runs, tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("## from an earlier step\n")
    assert main(["compare", *runs, "--markdown", str(summary)]) == 1
    text = summary.read_text()
    assert text.startswith("## from an earlier step\n")
    assert "regressed" in text.split("\n", 1)[1]


def test_a_symlink_is_written_through_not_replaced(runs, tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["compare", *runs, "--json", str(link)]) == 1
    assert link.is_symlink()
    assert json.loads(target.read_text())["passed"] is False


def test_a_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert atomic.write_output(fifo, "through the pipe\n") == str(fifo)
        assert os.read(reader, 100) == b"through the pipe\n"
    finally:
        os.close(reader)
    assert fifo.exists() and not fifo.is_file()
    assert not (tmp_path / "pipe.part").exists()


def test_dev_null_stays_a_device(runs) -> None:
    assert atomic.write_output("/dev/null", "x") == "/dev/null"
    assert Path("/dev/null").is_char_device()


def test_a_missing_baseline_without_update_is_still_exit_2(runs, capsys) -> None:
    assert main(["compare", "baselines/demo", "cur"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_runs_with_no_job_in_common_exit_2(runs, tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "other", [{"job_id": "zz", "seed": 9, "content": "z"}])
    assert main(["compare", "base", "other"]) == 2
    assert capsys.readouterr().err == (
        "error: base (5 jobs) and other (1 jobs) have no job in common: job ids come from "
        "the model and the inputs, so these runs are of different sweeps\n"
    )

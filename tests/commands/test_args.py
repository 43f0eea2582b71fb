"""`run`'s options record and the resume line rendered from it: the line a run prints to be
continued parses back, with the click command, to the same options; every option either goes
to that line or says why not."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pytest

from batchrun.cli import main
from batchrun.commands import options as opt
from batchrun.commands.args import RunArgs
from batchrun.run.engine import RunOptions

Parse = Callable[..., RunArgs]


@pytest.fixture
def parse(monkeypatch: pytest.MonkeyPatch) -> Parse:
    """The RunArgs that `batchrun run ARGV` hands to commands.run.run, through cli.main."""
    import batchrun.commands.run as run_command

    def parsed(*argv: str) -> RunArgs:
        seen: list[RunArgs] = []
        monkeypatch.setattr(run_command, "run", lambda args: _note(seen, args))
        assert main(["run", *argv]) == 0
        return seen[0]

    return parsed


def resume_line_parsed(parse: Parse, args: RunArgs, folder: str) -> RunArgs:
    words = shlex.split(args.resume_command(Path(folder)))
    assert words[:2] == ["batchrun", "run"]
    return parse(*words[2:])


# Each with --run-dir (a resume line always has it), each option one that resumes.
ROUND_TRIPS = [
    [],
    ["--simulate"],
    ["--simulate", "--sim", "fail_rate=0.1", "--sim=run_time=0.5-1.5"],
    ["--shard", "2/4"],
    ["--shard", "1/4", "--shard-full-rate"],
    ["--max-cost", "2.50"],
    ["--max-cost", "$1,000"],
    ["--cache", "~/batchrun cache"],
    ["--schemas", "my schemas"],
    ["--api-base", "http://127.0.0.1:8787/v1"],
    ["--only", "model=acme/m", "--only", "var.color=deep blue", "--first", "2"],
    ["--sample", "3", "--seed", "-1"],
    ["--only", "input.prompt=--not-a-flag", "--cache", "-not-a-flag-either"],
    [
        "--simulate",
        "--sim",
        "seed=7",
        "--shard",
        "3/3",
        "--shard-full-rate",
        "--max-cost",
        "0",
        "--cache",
        ".cache",
        "--schemas",
        "schemas/models",
        "--only",
        "job=ab12",
        "--first",
        "1",
        "--sample",
        "2",
        "--seed",
        "9",
    ],
    [
        "--api-base",
        "https://proxy.example/v1/",
        "--shard",
        "1/2",
        "--max-cost",
        "25",
        "--cache",
        "c",
        "--schemas",
        "s",
        "--only",
        "input.seed=42",
    ],
]


@pytest.mark.parametrize("argv", ROUND_TRIPS, ids=lambda argv: " ".join(argv) or "none")
def test_the_resume_line_parses_back_to_the_same_options(parse: Parse, argv: list[str]) -> None:
    args = parse("sweeps/m 1.yaml", "--run-dir", "runs/m 1", *argv)
    assert resume_line_parsed(parse, args, "runs/m 1") == args


def test_the_resume_line_names_the_run_folder_the_run_chose(parse: Parse) -> None:
    args = parse("m.yaml", "--only", "model=acme/m")
    assert args.run_dir is None
    again = resume_line_parsed(parse, args, "outputs/m")
    assert again == replace(args, run_dir="outputs/m")


def test_the_resume_line_reads_folder_jobs_api_then_settings(parse: Parse) -> None:
    simulated = parse(
        *["m.yaml", "--cache", "c", "--max-cost", "2.50", "--schemas", "sch", "--simulate"],
        *["--sim", "fail_rate=0.1", "--shard-full-rate", "--shard", "1/4", "--first", "2"],
        *["--only", "model=acme/m", "--run-dir", "r b"],
    )
    assert simulated.resume_command(Path("r b")) == (
        "batchrun run m.yaml --run-dir 'r b' --only=model=acme/m --first=2 --shard=1/4 "
        "--shard-full-rate --simulate --sim=fail_rate=0.1 --schemas sch --max-cost 2.50 --cache c"
    )
    remote = parse("m.yaml", "--api-base", "http://h/v1", "--sample", "3", "--seed", "-1")
    assert remote.resume_command(Path("outputs/m")) == (
        "batchrun run m.yaml --run-dir outputs/m --sample=3 --seed=-1 --api-base http://h/v1"
    )


def test_api_base_is_left_out_beside_simulate_which_ignores_it(parse: Parse) -> None:
    args = parse("m.yaml", "--simulate", "--api-base", "http://h")
    line = args.resume_command(Path("runs/a"))
    assert line == "batchrun run m.yaml --run-dir runs/a --simulate"
    assert resume_line_parsed(parse, args, "runs/a") == replace(
        args, run_dir="runs/a", api_base_option=None
    )


def test_options_for_this_run_only_stay_out_of_the_resume_line(parse: Parse) -> None:
    flags = ["--retry-failed", "--resubmit-unknown", "--cancel-on-interrupt", "--strict", "-q"]
    args = parse("m.yaml", "--run-dir", "runs/a", *flags)
    assert args.resume_command(Path("runs/a")) == "batchrun run m.yaml --run-dir runs/a"
    assert resume_line_parsed(parse, args, "runs/a") == replace(
        args,
        retry_failed=False,
        resubmit_unknown=False,
        cancel_on_interrupt=False,
        strict=False,
        quiet=False,
    )


def test_every_run_option_is_resumed_or_says_why_not() -> None:
    rules = {f.name: opt.resume_rule(f) for f in opt.fields(RunArgs) if f.name != "manifest"}
    unsaid = [
        name
        for name, rule in rules.items()
        if not isinstance(rule, opt.Resumed) and not (isinstance(rule, opt.NotResumed) and rule.why)
    ]
    assert unsaid == [], "give these resume=Resumed(PART) or resume=NotResumed(why)"
    assert {name for name, rule in rules.items() if isinstance(rule, opt.NotResumed)} == {
        "retry_failed",
        "resubmit_unknown",
        "cancel_on_interrupt",
        "strict",
        "quiet",
        "state",  # its password is never printed
    }


def _note(seen: list[Any], value: Any) -> int:
    """Stand-in for a command: keep what it was given, exit 0."""
    seen.append(value)
    return 0


def _given(option: opt.Option) -> list[str]:
    """The option on a command line with a value other than its default."""
    value: object = "v 1"
    if option.attrs.get("is_flag"):
        value = True
    elif option.attrs.get("multiple"):
        value = ("k=v", "k2=v 2")
    elif isinstance(click.types.convert_type(option.attrs.get("type")), click.types.IntParamType):
        value = 3
    return option.argv(value, joined=True)


def test_each_resumed_option_alone_goes_to_the_line_and_back(parse: Parse) -> None:
    base = parse("m.yaml", "--run-dir", "runs/a")
    for f in opt.fields(RunArgs):
        if not isinstance(opt.resume_rule(f), opt.Resumed) or f.name == "run_dir":
            continue
        option = opt.declaration(f)
        assert isinstance(option, opt.Option), f.name  # a resumed field is an --option
        given = _given(option)
        args = parse("m.yaml", "--run-dir", "runs/a", *given)
        assert args != base, given
        assert resume_line_parsed(parse, args, "runs/a") == args, given


MANIFEST = """\
version: 1
name: resumed
models:
  - id: acme/m
    inputs: {prompt: a cat}
    matrix: {seed: [1, 2, 3]}
"""


def test_run_hands_the_engine_the_resume_line_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchrun.commands.run as run_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RUNCOMFY_TOKEN", "tok-args")
    Path("m.yaml").write_text(MANIFEST)
    seen: list[RunOptions] = []
    monkeypatch.setattr(run_command, "run_batch", lambda plan, options: _note(seen, options))
    argv = ["run", "m.yaml", "--first", "1", "--max-cost", "1", "--api-base", "http://h", "-q"]
    assert main(argv) == 0
    assert seen[0].run_dir == Path("outputs/resumed")
    assert seen[0].resume_command == (
        "batchrun run m.yaml --run-dir outputs/resumed --first=1 --api-base http://h --max-cost 1"
    )

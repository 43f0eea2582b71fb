"""`batchrun compare`: classes, the gate, and its markdown / JUnit / JSON / HTML outputs.

Run folders are written by hand here (report.csv + files/), so these tests do not depend on
the run engine; tests/test_compare_e2e.py covers runs made by the simulator.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from batchrun.cli import main
from batchrun.errors import ChoiceError, MissingDependencyError
from batchrun.results import compare

COLUMNS = [
    "job_id",
    "model_id",
    "status",
    "request_id",
    "error",
    "attempts",
    "submitted_at",
    "finished_at",
    "queue_s",
    "run_s",
    "cost_usd",
    "output_files",
    "output_urls",
    "output_sha256",
    "input.prompt",
    "input.seed",
    "var.color",
]
MODEL = "acme/painter"


def write_run(root: Path, jobs: list[dict], origin: str | None = "simulator") -> Path:
    """A run folder: report.csv plus files/<job_id>/image.png holding each job's `content`,
    and a summary.json giving the run's `origin` (none: a bare report.csv)."""
    root.mkdir(parents=True, exist_ok=True)
    if origin is not None:
        (root / "summary.json").write_text(json.dumps({"origin": origin}))
    rows = []
    for job in jobs:
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            job_id=job["job_id"],
            model_id=MODEL,
            status=job.get("status", "succeeded"),
            error=job.get("error", ""),
            attempts="1",
            run_s=job.get("run_s", "1.000"),
            **{
                "input.prompt": job.get("prompt", "a cat"),
                "input.seed": str(job["seed"]),
                "var.color": job.get("color", "red"),
            },
        )
        content = job.get("content")
        if content is not None and row["status"] == "succeeded":
            rel = f"files/{job['job_id']}/image.png"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            data = content if isinstance(content, bytes) else content.encode()
            path.write_bytes(data)
            row.update(
                output_files=rel,
                output_urls=f"https://example.invalid/{job['job_id']}.png",
                output_sha256=hashlib.sha256(data).hexdigest(),
            )
        rows.append(row)
    with (root / "report.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


BASELINE = [
    {"job_id": "j1", "seed": 1, "content": "one", "run_s": "1.000"},
    {"job_id": "j2", "seed": 2, "content": "two"},
    {"job_id": "j3", "seed": 3, "content": "three"},
    {"job_id": "j4", "seed": 4, "status": "failed", "error": "server said no"},
    {"job_id": "j5", "seed": 5, "content": "five"},
]
CURRENT = [
    {"job_id": "j1", "seed": 1, "content": "one", "run_s": "3.000"},
    {"job_id": "j2", "seed": 2, "content": "TWO"},
    {"job_id": "j3", "seed": 3, "status": "failed", "error": "out of memory"},
    {"job_id": "j4", "seed": 4, "content": "four"},
    {"job_id": "j6", "seed": 6, "content": "six"},
]


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE)
    write_run(tmp_path / "cur", CURRENT)
    return "base", "cur"


def test_each_class_is_detected(runs: tuple[str, str]) -> None:
    result = compare.compare_runs(*map(compare.load_run, runs), max_slowdown=2.0)
    classes = {job.job_id: job.classes for job in result.jobs}
    assert classes == {
        "j1": ["unchanged", "slower"],
        "j2": ["changed"],
        "j3": ["regressed"],
        "j4": ["fixed"],
        "j5": ["missing"],
        "j6": ["new"],
    }
    assert result.totals == {
        "unchanged": 1,
        "changed": 1,
        "regressed": 1,
        "fixed": 1,
        "new": 1,
        "missing": 1,
        "slower": 1,
    }
    assert [job.job_id for job in result.failing] == ["j2", "j3", "j5"]
    assert result.exit_code == 1


def test_slower_is_off_unless_asked(runs: tuple[str, str]) -> None:
    result = compare.compare_runs(*map(compare.load_run, runs))
    assert result.totals["slower"] == 0


def test_report_csv_paths_work_like_folders(runs: tuple[str, str]) -> None:
    result = compare.compare_runs(
        compare.load_run("base/report.csv"), compare.load_run("cur/report.csv")
    )
    assert {job.job_id for job in result.failing} == {"j2", "j3", "j5"}


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [
        ("regressed,missing,changed", 1),
        ("fixed", 1),
        ("new", 1),
        ("slower", 1),
        ("unchanged", 1),
        ("", 0),
    ],
)
def test_fail_on_picks_the_failing_classes(
    runs: tuple[str, str], fail_on: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compare", *runs, "--max-slowdown", "2", "--fail-on", fail_on]
    assert main(args) == code


def test_fail_on_ignores_classes_not_listed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE[:2])
    write_run(tmp_path / "cur", CURRENT[:2])  # j1 unchanged (slower), j2 changed
    assert main(["compare", "base", "cur", "--fail-on", "regressed,missing"]) == 0
    assert main(["compare", "base", "cur"]) == 1
    assert main(["compare", "base", "cur", "--fail-on", "slower"]) == 0
    assert main(["compare", "base", "cur", "--fail-on", "slower", "--max-slowdown", "2.5"]) == 1
    assert main(["compare", "base", "cur", "--fail-on", "slower", "--max-slowdown", "3"]) == 0


def test_unknown_fail_on_class_is_a_usage_error(runs, capsys) -> None:
    assert main(["compare", *runs, "--fail-on", "broken"]) == 2
    assert capsys.readouterr().err == (
        "error: --fail-on: unknown class broken; choose from unchanged, changed, regressed, "
        "fixed, new, missing, slower\n"
    )


def test_unknown_fail_on_class_carries_the_facts_without_option_text(runs) -> None:
    with pytest.raises(ChoiceError) as info:
        compare.compare_runs(*map(compare.load_run, runs), fail_on=("broken", "changed", "x"))
    exc = info.value
    assert (exc.setting, exc.values, exc.choices) == (
        "fail_on",
        ["broken", "x"],
        list(compare.CLASSES),
    )
    assert str(exc) == (
        "unknown class broken, x; choose from unchanged, changed, regressed, fixed, new, "
        "missing, slower"
    )
    assert exc.exit_code == 2


def test_identical_runs_pass(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a", BASELINE)
    write_run(tmp_path / "b", BASELINE)
    assert main(["compare", "a", "b"]) == 0
    assert capsys.readouterr().out.endswith("PASS: 0 failing job(s) of 5\n")


def test_terminal_table(runs, capsys) -> None:
    assert main(["compare", *runs]) == 1
    assert capsys.readouterr().out == (
        "class       jobs\n"
        "unchanged      1\n"
        "changed        1  fails the gate\n"
        "regressed      1  fails the gate\n"
        "fixed          1\n"
        "new            1\n"
        "missing        1  fails the gate\n"
        "slower         0\n"
        "\n"
        "failing jobs (3):\n"
        "  changed    j2  acme/painter  seed=2\n"
        "    output sha256 differs: image.png\n"
        "  regressed  j3  acme/painter  seed=3\n"
        "    succeeded then, failed now: out of memory\n"
        "  missing    j5  acme/painter  seed=5\n"
        "    in the baseline, not in the current run\n"
        "\n"
        "FAIL: 3 failing job(s) of 6\n"
    )


SMALL_BASE = [
    {"job_id": "k1", "seed": 1, "content": "one", "color": "red"},
    {"job_id": "k2", "seed": 2, "content": "two", "color": "red"},
    {"job_id": "k3", "seed": 1, "content": "three", "color": "blue", "prompt": "'=1+1 <b>"},
]
SMALL_CUR = [
    {"job_id": "k1", "seed": 1, "content": "one", "color": "red"},
    {"job_id": "k2", "seed": 2, "content": "TWO", "color": "red"},
    {
        "job_id": "k3",
        "seed": 1,
        "status": "failed",
        "error": "'=bad | <input>",
        "color": "blue",
        "prompt": "'=1+1 <b>",
    },
]


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", SMALL_BASE)
    write_run(tmp_path / "cur", SMALL_CUR)
    return "base", "cur"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_markdown_is_pinned(small, tmp_path: Path) -> None:
    assert main(["compare", *small, "--markdown", "out/summary.md"]) == 1
    assert (tmp_path / "out/summary.md").read_text() == (
        "## batchrun compare: FAIL\n"
        "\n"
        "Baseline `base` (3 jobs) vs current `cur` (3 jobs). "
        "Gate fails on: regressed, missing, changed.\n"
        "\n"
        "| class | jobs |\n"
        "|---|---:|\n"
        "| unchanged | 1 |\n"
        "| changed | 1 :x: |\n"
        "| regressed | 1 :x: |\n"
        "| fixed | 0 |\n"
        "| new | 0 |\n"
        "| missing | 0 |\n"
        "| slower | 0 |\n"
        "\n"
        "### Failing jobs (2)\n"
        "\n"
        "<details>\n"
        "<summary><b>changed</b> <code>k2</code> acme/painter · "
        "prompt=a cat, seed=2, color=red</summary>\n"
        "\n"
        "- reason: output sha256 differs: image.png\n"
        "- baseline: succeeded; run 1.000 s; files `files/k2/image.png`\n"
        "- current: succeeded; run 1.000 s; files `files/k2/image.png`\n"
        "\n"
        "</details>\n"
        "\n"
        "<details>\n"
        "<summary><b>regressed</b> <code>k3</code> acme/painter · "
        "prompt==1+1 &lt;b&gt;, seed=1, color=blue</summary>\n"
        "\n"
        "- reason: succeeded then, failed now: =bad \\| &lt;input&gt;\n"
        "- baseline: succeeded; run 1.000 s; files `files/k3/image.png`\n"
        "- current: failed; run 1.000 s; error: =bad \\| &lt;input&gt;\n"
        "\n"
        "</details>\n"
    )


def test_markdown_without_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a", SMALL_BASE)
    assert main(["compare", "a", "a", "--markdown", "s.md"]) == 0
    text = (tmp_path / "s.md").read_text()
    assert text.startswith("## batchrun compare: PASS\n")
    assert text.endswith(
        "| unchanged | 3 |\n| changed | 0 |\n"
        + "".join(f"| {c} | 0 |\n" for c in ("regressed", "fixed", "new", "missing", "slower"))
        + "\nNo failing jobs.\n"
    )


def test_markdown_lists_at_most_max_jobs(small) -> None:
    from batchrun.results.compare_output import markdown

    result = compare.compare_runs(compare.load_run("base"), compare.load_run("cur"))
    text = markdown(result, max_jobs=1)
    assert text.count("<details>") == 1
    assert text.endswith("</details>\n\n... and 1 more: see the --json or --junit output.\n")


def test_json_is_pinned(small, tmp_path: Path) -> None:
    assert main(["compare", *small, "--json", "r.json"]) == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    side = {
        "status": "succeeded",
        "run_s": "1.000",
        "error": "",
        "output_files": ["files/k1/image.png"],
        "output_sha256": [sha("one")],
    }
    varying = {"prompt": "a cat", "seed": "1", "color": "red"}
    assert doc == {
        "baseline": "base",
        "current": "cur",
        "fail_on": ["regressed", "missing", "changed"],
        "passed": False,
        "warnings": [],
        "totals": {
            "unchanged": 1,
            "changed": 1,
            "regressed": 1,
            "fixed": 0,
            "new": 0,
            "missing": 0,
            "slower": 0,
        },
        "jobs": [
            {
                "job_id": "k1",
                "model_id": MODEL,
                "class": "unchanged",
                "slower": False,
                "failing": False,
                "reason": "same outputs",
                "varying": varying,
                "baseline": side,
                "current": side,
            },
            {
                "job_id": "k2",
                "model_id": MODEL,
                "class": "changed",
                "slower": False,
                "failing": True,
                "reason": "output sha256 differs: image.png",
                "varying": {**varying, "seed": "2"},
                "baseline": {
                    **side,
                    "output_files": ["files/k2/image.png"],
                    "output_sha256": [sha("two")],
                },
                "current": {
                    **side,
                    "output_files": ["files/k2/image.png"],
                    "output_sha256": [sha("TWO")],
                },
            },
            {
                "job_id": "k3",
                "model_id": MODEL,
                "class": "regressed",
                "slower": False,
                "failing": True,
                "reason": "succeeded then, failed now: =bad | <input>",
                "varying": {"prompt": "=1+1 <b>", "seed": "1", "color": "blue"},
                "baseline": {
                    **side,
                    "output_files": ["files/k3/image.png"],
                    "output_sha256": [sha("three")],
                },
                "current": {
                    "status": "failed",
                    "run_s": "1.000",
                    "error": "=bad | <input>",
                    "output_files": [],
                    "output_sha256": [],
                },
            },
        ],
    }
    # Pinned as text too: key order and layout are part of the format.
    assert (
        (tmp_path / "r.json")
        .read_text()
        .startswith(
            '{\n  "baseline": "base",\n  "current": "cur",\n  "fail_on": [\n    "regressed",\n'
        )
    )


def test_junit_parses_back(runs, tmp_path: Path) -> None:
    assert main(["compare", *runs, "--junit", "junit.xml"]) == 1
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    for element in (root, suite):
        assert element.get("tests") == "6"
        assert element.get("failures") == "3"
        assert element.get("errors") == "0"
        assert element.get("skipped") == "0"
        float(element.get("time", "missing"))
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f"j{i} [seed={i}]" for i in (1, 2, 3, 4, 5, 6)]
    assert {c.get("classname") for c in cases} == {MODEL}
    for case in cases:
        float(case.get("time", "missing"))
    failures = {c.get("name"): f for c in cases if (f := c.find("failure")) is not None}
    assert {name: (f.get("type"), f.get("message")) for name, f in failures.items()} == {
        "j2 [seed=2]": ("changed", "output sha256 differs: image.png"),
        "j3 [seed=3]": ("regressed", "succeeded then, failed now: out of memory"),
        "j5 [seed=5]": ("missing", "in the baseline, not in the current run"),
    }
    assert "j3: regressed: succeeded then, failed now" in (failures["j3 [seed=3]"].text or "")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda p: None,
            "error: {p}: no such file or folder; give a run folder or its report.csv\n",
        ),
        (
            lambda p: p.mkdir(),
            "error: {p}: no report.csv in this folder; is it a batchrun run folder?\n",
        ),
        (
            lambda p: p.write_text("a,b\n1,2\n"),
            "error: {p}: not a batchrun report: no job_id column in the header\n",
        ),
        (lambda p: p.write_text(""), "error: {p}: empty file, not a batchrun report.csv\n"),
        (
            lambda p: p.write_bytes(b"\xff\xfe\x00job_id"),
            "error: {p}: not a readable report.csv ('utf-8' codec can't decode byte 0xff in "
            "position 0: invalid start byte)\n",
        ),
        (
            lambda p: p.write_text("job_id,status\nx,succeeded\nx,failed\n"),
            "error: {p}: row 3: job_id x appears twice\n",
        ),
    ],
)
def test_unusable_inputs_exit_2_naming_the_path(runs, tmp_path, setup, message, capsys) -> None:
    bad = tmp_path / "bad"
    setup(bad)
    assert main(["compare", "base", str(bad)]) == 2
    assert capsys.readouterr().err == message.format(p=bad)


def test_missing_pillow_is_a_clear_error(runs, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` raise ImportError
    assert main(["compare", *runs, "--image-tolerance", "0.01"]) == 2
    assert capsys.readouterr().err == (
        "error: image tolerance needs Pillow: pip install 'runcomfy-batchrun[images]'\n"
    )


def test_missing_pillow_carries_the_extra_without_install_text(runs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError) as info:
        compare.compare_runs(*map(compare.load_run, runs), image_tolerance=0.01)
    exc = info.value
    assert (exc.package, exc.extra) == ("Pillow", "images")
    assert str(exc) == "image tolerance needs Pillow"
    assert exc.exit_code == 2


def _picture(path: Path, *, compress_level: int, mark: bool = False) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (96, 64))
    img.putdata(
        [((x * 5) % 256, (y * 7) % 256, (x * y) % 256) for y in range(64) for x in range(96)]
    )
    if mark:
        ImageDraw.Draw(img).ellipse((20, 10, 70, 55), fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", compress_level=compress_level)
    return path.read_bytes()


@pytest.mark.parametrize(("mark", "expected"), [(False, "unchanged"), (True, "changed")])
def test_image_tolerance(tmp_path: Path, monkeypatch, mark: bool, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    base = _picture(tmp_path / "img/base.png", compress_level=9)
    cur = _picture(tmp_path / "img/cur.png", compress_level=0, mark=mark)
    assert base != cur  # the bytes always differ
    write_run(tmp_path / "a", [{"job_id": "p", "seed": 1, "content": base}])
    write_run(tmp_path / "b", [{"job_id": "p", "seed": 1, "content": cur}])
    strict = compare.compare_runs(compare.load_run("a"), compare.load_run("b"))
    assert strict.jobs[0].outcome == "changed"
    tolerant = compare.compare_runs(
        compare.load_run("a"), compare.load_run("b"), image_tolerance=0.02
    )
    assert tolerant.jobs[0].outcome == expected
    assert main(["compare", "a", "b", "--image-tolerance", "0.02"]) == (1 if mark else 0)


def test_image_tolerance_needs_both_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = _picture(tmp_path / "img/base.png", compress_level=9)
    cur = _picture(tmp_path / "img/cur.png", compress_level=0)
    write_run(tmp_path / "a", [{"job_id": "p", "seed": 1, "content": base}])
    write_run(tmp_path / "b", [{"job_id": "p", "seed": 1, "content": cur}])
    (tmp_path / "a/files/p/image.png").unlink()  # a committed baseline without its files
    result = compare.compare_runs(compare.load_run("a"), compare.load_run("b"), image_tolerance=0.5)
    assert result.jobs[0].outcome == "changed"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data) -> None:
        self.text.append(data)


def test_html_shows_changed_and_regressed_side_by_side(small, tmp_path: Path) -> None:
    assert main(["compare", *small, "--html", "pages/compare.html"]) == 1
    page = tmp_path / "pages/compare.html"
    parser = _Links()
    parser.feed(page.read_text())
    # k2 both sides, k3 baseline only (current failed); k1 (unchanged) not shown
    assert sorted(parser.imgs) == [
        "../base/files/k2/image.png",
        "../base/files/k3/image.png",
        "../cur/files/k2/image.png",
    ]
    for src in parser.imgs:
        assert (page.parent / src).is_file()
    text = "".join(parser.text)
    assert (
        "=bad | <input>" in text and "'=bad" not in text
    )  # the error, escaped in the source and readable as text
    assert "<input>" not in page.read_text()
    assert "k1" not in text


# ---- origins -----------------------------------------------------------------------------------

REAL = "https://model-api.runcomfy.net"
MIXED = (
    f"mixed origins (--allow-mixed-origins): the baseline base holds results from the simulator, "
    f"the current run cur from {REAL}"
)


def test_runs_of_two_origins_exit_2_naming_both(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE)
    write_run(tmp_path / "cur", BASELINE, origin=REAL)  # the same results, from a real API
    assert main(["compare", "base", "cur", "--json", "c.json"]) == 2
    assert capsys.readouterr().err == (
        f"error: the baseline base holds results from the simulator, the current run cur from "
        f"{REAL}; a simulated result must not pass for a real one (or the other way round): "
        "compare runs of one origin, or give --allow-mixed-origins to compare them all the same\n"
    )
    assert not (tmp_path / "c.json").exists()


def test_allowed_mixed_origins_are_said_in_every_output(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE)
    write_run(tmp_path / "cur", BASELINE, origin=REAL)
    outputs = ["--markdown", "c.md", "--junit", "c.xml", "--json", "c.json", "--html", "c.html"]
    assert main(["compare", "base", "cur", "--allow-mixed-origins", *outputs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == [f"warning: {MIXED}", "", "PASS: 0 failing job(s) of 5"]
    assert f"> **Warning:** {MIXED}" in (tmp_path / "c.md").read_text().splitlines()
    suite = ET.parse(tmp_path / "c.xml").getroot().find("testsuite")
    assert suite is not None
    assert [(p.get("name"), p.get("value")) for p in suite.iter("property")] == [("warning", MIXED)]
    assert json.loads((tmp_path / "c.json").read_text())["warnings"] == [MIXED]
    parser = _Links()
    parser.feed((tmp_path / "c.html").read_text())
    assert MIXED in "".join(parser.text)
    # --quiet keeps the warning with the verdict
    assert main(["compare", "base", "cur", "--allow-mixed-origins", "--quiet"]) == 0
    assert capsys.readouterr().out == f"warning: {MIXED}\nPASS: 0 failing job(s) of 5\n"


def test_a_bare_report_csv_is_compared_with_a_note(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "base", BASELINE, origin=None)  # report.csv and files/ only
    write_run(tmp_path / "cur", BASELINE, origin=REAL)
    assert main(["compare", "base/report.csv", "cur", "--json", "c.json"]) == 0
    note = (
        "origin not checked: the baseline base/report.csv records no origin (no state.db or "
        "summary.json that says one beside the report.csv)"
    )
    assert capsys.readouterr().out.splitlines()[-3] == f"warning: {note}"
    assert json.loads((tmp_path / "c.json").read_text())["warnings"] == [note]


def test_a_folders_state_db_says_its_origin(tmp_path: Path) -> None:
    from batchrun.store.state import StateStore

    write_run(tmp_path / "run", BASELINE, origin=None)
    with StateStore.open(tmp_path / "run") as store:
        store.set_meta(origin=REAL, api_base=REAL)
    assert compare.load_run(tmp_path / "run").origin == REAL
    assert compare.load_run(tmp_path / "run" / "report.csv").origin == REAL


_SIDE = st.tuples(
    st.lists(st.sampled_from(["var.a", "input.b", "var.c"]), unique=True),
    st.lists(st.tuples(*[st.sampled_from(["x", "y"])] * 3), min_size=1, max_size=4),
)


@given(_SIDE, _SIDE)
@settings(max_examples=200, deadline=None)
def test_a_value_shows_where_its_column_holds_two_values(
    then: tuple[list[str], list[tuple[str, ...]]], now: tuple[list[str], list[tuple[str, ...]]]
) -> None:
    """A job's `varying` names the input./var. columns holding two values among the jobs of
    the runs that have the column (in header order, the baseline's first), with the value of
    its current row, else of its baseline row ('' where that run has no such column)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        runs = []
        for name, (columns, values) in (("base", then), ("cur", now)):
            path = Path(folder) / name / "report.csv"
            path.parent.mkdir()
            with open(path, "w", newline="", encoding="utf-8") as fh:
                out = csv.writer(fh)
                out.writerow(["job_id", "model_id", "status", *columns])
                for i, row in enumerate(values):
                    out.writerow([f"j{i}", MODEL, "failed", *row[: len(columns)]])
            runs.append(compare.load_run(path))
        result = compare.compare_runs(*runs)
    # Each run's cells by column (the rows' values past its columns unwritten).
    sides = [
        {key: [row[i] for row in values] for i, key in enumerate(columns)}
        for columns, values in (then, now)
    ]
    held: dict[str, set[str]] = {}
    for side in sides:
        for key, cells in side.items():
            held.setdefault(key, set()).update(cells)
    swept = [key for key in held if len(held[key]) > 1]
    for job in result.jobs:
        i = int(job.job_id[1:])
        side = sides[1] if i < len(now[1]) else sides[0]
        expected = {key.split(".")[1]: side[key][i] if key in side else "" for key in swept}
        assert job.varying == expected
        assert list(job.varying) == [key.split(".")[1] for key in swept]

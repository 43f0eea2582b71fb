"""`batchrun approve` (and `compare --update-baseline`, which approves every job) on run folders
the simulator made: some jobs then all, a missing baseline created, mixed origins refused,
files checked by sha256, the baseline's lock, and what cannot be approved."""

from __future__ import annotations

import shlex
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from batchrun.results.reportcsv import read_jobs, split_cell
from batchrun.store import lock as folder_lock
from batchrun.store.ledger import per_job
from batchrun.store.state import StateStore
from testing.cli import invoke, run_cli

FAST = ["--sim", "run_time=0.02", "--sim", "run_time_jitter=0", "--sim", "workers=0"]
REAL = "https://api.example.invalid"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folders of one 8-job sweep on the simulator: `base`, `drift` (some outputs differ)
    and `broken` (every job failed)."""
    root = tmp_path_factory.mktemp("approve")
    quick = Path(__file__).resolve().parents[2] / "manifests" / "quickstart.yaml"
    manifest = yaml.safe_load(quick.read_text())
    manifest["name"] = "approve"
    manifest["run"].update(poll_interval="20ms", max_in_flight=20, rate_limit="500/s", retries=0)
    manifest["vars"] = {"color": ["orange", "indigo"]}
    manifest["matrix"] = {"seed": [1, 2, 3, 4]}
    (root / "sweep.yaml").write_text(yaml.safe_dump(manifest))
    runs = [("base", []), ("drift", ["--sim", "drift=0.5"]), ("broken", ["--sim", "fail_rate=1"])]
    for name, extra in runs:
        done = run_cli("run", "sweep.yaml", "--simulate", "--run-dir", name, "-q", *FAST, *extra,
                       cwd=root)  # fmt: skip
        assert done.returncode in (0, 1), done.stdout + done.stderr
    return root


@pytest.fixture
def runs(made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("base", "drift", "broken"):
        shutil.copytree(made / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(folder: Path | str) -> dict[str, dict[str, str]]:
    return read_jobs(Path(folder) / "report.csv")


def shas(folder: Path) -> dict[str, list[str]]:
    return {job: split_cell(row["output_sha256"]) for job, row in rows(folder).items()}


def changed(a: Path, b: Path) -> set[str]:
    sa, sb = shas(a), shas(b)
    return {job for job in sa if sa[job] != sb.get(job)}


def test_some_jobs_then_all(runs: Path) -> None:
    drifted = sorted(changed(runs / "base", runs / "drift"))
    assert 2 <= len(drifted) < 8  # the simulator's drift changed some outputs, not all

    made = invoke("approve", "base", "--into", "bl")
    assert made.code == 0, made.stderr
    assert "approved 8 jobs into bl (created): 8 added, 0 replaced" in made.stderr
    assert shas(runs / "bl") == shas(runs / "base")

    # One job by a unique prefix of its id: only it changes, the line says old -> new.
    first = drifted[0]
    one = invoke("approve", "drift", "--into", "bl", "--job", first[:6])
    assert one.code == 0, one.stderr
    old, new = shas(runs / "base")[first][0], shas(runs / "drift")[first][0]
    assert f"replaced {first}: {old[:12]} -> {new[:12]}" in one.stderr
    assert "approved 1 job into bl (updated): 0 added, 1 replaced" in one.stderr
    assert changed(runs / "bl", runs / "drift") == set(drifted[1:])
    assert invoke("compare", "bl", "drift").code == 1

    # Then every job: the baseline holds the run's results, and the gate passes.
    every = invoke("approve", "drift", "--into", "bl")
    assert every.code == 0, every.stderr
    assert f"{len(drifted) - 1} replaced" in every.stderr
    assert shas(runs / "bl") == shas(runs / "drift")
    assert invoke("compare", "bl", "drift").code == 0
    for job, names in ((j, split_cell(r["output_files"])) for j, r in rows("bl").items()):
        for name in names:  # the files themselves, not only the rows
            src, dst = runs / "drift" / name, runs / "bl" / name
            assert dst.read_bytes() == src.read_bytes(), job


def test_only_uses_the_run_filters(runs: Path) -> None:
    assert invoke("approve", "base", "--into", "bl").code == 0
    done = invoke("approve", "drift", "--into", "bl", "--only", "var.color=indigo")
    assert done.code == 0, done.stderr
    indigo = {j for j, r in rows("drift").items() if r["var.color"] == "indigo"}
    assert changed(runs / "bl", runs / "drift") == changed(runs / "base", runs / "drift") - indigo
    typo = invoke("approve", "drift", "--into", "bl", "--only", "var.colour=indigo")
    assert typo.code == 2
    assert "no job has var 'colour'; did you mean 'color'?" in typo.stderr


def test_a_missing_baseline_is_a_run_folder_every_command_accepts(runs: Path) -> None:
    assert invoke("approve", "base", "--into", "new/bl").code == 0
    bl = runs / "new" / "bl"
    assert (bl / "state.db").is_file() and (bl / "report.html").is_file()
    status = invoke("status", str(bl))
    assert status.code == 0 and "results from the simulator" in status.stdout
    assert "8 jobs: succeeded 8" in status.stdout
    assert invoke("report", str(bl)).code == 0
    assert read_jobs(bl / "report.csv") == read_jobs(runs / "base" / "report.csv")
    assert invoke("compare", str(bl), "base").code == 0
    assert invoke("merge", str(bl), "--into", "merged").code == 0
    # The ledger came along: each job's cost in the baseline is what it cost in the run.
    with StateStore.open(bl, create=False, lock=False) as a:
        with StateStore.open(runs / "base", create=False, lock=False) as b:
            assert per_job(a.attempts()) == per_job(b.attempts()) != {}


def test_mixed_origins_are_refused_both_ways(runs: Path) -> None:
    shutil.copytree(runs / "base", runs / "real")
    shutil.rmtree(runs / "real" / ".simulator")
    with StateStore.open(runs / "real") as store:
        store.set_meta(origin=REAL, api_base=REAL)
    assert invoke("approve", "real", "--into", "real_bl").code == 0
    assert invoke("approve", "base", "--into", "sim_bl").code == 0
    before = (runs / "real_bl" / "report.csv").read_bytes()
    for current, into, theirs, ours in [
        ("base", "real_bl", "the simulator", REAL),
        ("real", "sim_bl", REAL, "the simulator"),
    ]:
        done = invoke("approve", current, "--into", into)
        assert done.code == 2
        assert "refusing to approve them" in done.stderr
        assert f"{into}: results from {ours}" in done.stderr
        assert f"{current}: results from {theirs}" in done.stderr
    assert (runs / "real_bl" / "report.csv").read_bytes() == before


def test_update_baseline_is_approving_every_job(runs: Path) -> None:
    assert invoke("approve", "base", "--into", "a").code == 0
    assert invoke("compare", "base", "base", "--update-baseline", "b").code == 0
    for name in ("a", "b"):
        again = invoke("compare", name, "drift", "--update-baseline", name)
        assert again.code == 1  # the gate's verdict on the comparison made before
        assert "baseline updated" in again.stdout
    assert read_jobs(runs / "a" / "report.csv") == read_jobs(runs / "b" / "report.csv")
    assert shas(runs / "a") == shas(runs / "drift")
    # A missing BASELINE that is also the folder to update is created: every job new.
    fresh = invoke("compare", "c", "drift", "--update-baseline", "c")
    assert fresh.code == 0 and fresh.stdout.endswith("baseline created: c\n")
    assert "approved 8 jobs into c (created)" in fresh.stdout


def test_failed_jobs_are_skipped_and_the_baseline_keeps_its_own(runs: Path) -> None:
    assert invoke("approve", "base", "--into", "bl").code == 0
    done = invoke("approve", "broken", "--into", "bl")
    assert done.code == 0, done.stderr
    assert done.stderr.count("only a succeeded result is approved") == 8
    assert "approved 0 jobs into bl (updated): 0 added, 0 replaced, 0 unchanged, 8 skipped" in (
        done.stderr
    )
    assert shas(runs / "bl") == shas(runs / "base")


def test_a_damaged_file_stops_the_approval(runs: Path) -> None:
    assert invoke("approve", "base", "--into", "bl").code == 0
    job = sorted(changed(runs / "base", runs / "drift"))[0]
    name = split_cell(rows("drift")[job]["output_files"])[0]
    (runs / "drift" / name).write_bytes(b"not what the run downloaded")
    done = invoke("approve", "drift", "--into", "bl")
    assert done.code == 2
    assert f"drift: {name}: its sha256 is not the one state.db recorded" in done.stderr
    assert shas(runs / "bl") == shas(runs / "base")  # nothing half done
    assert not list((runs / "bl").glob(".approving-*"))


def test_a_baseline_in_use_is_refused(runs: Path) -> None:
    (runs / "bl").mkdir()
    fd = folder_lock.take(runs / "bl")
    try:
        done = invoke("approve", "base", "--into", "bl")
    finally:
        folder_lock.release(fd)
    assert done.code == 2
    assert "run folder bl in use by pid" in done.stderr
    assert not (runs / "bl" / "state.db").exists()


def test_unknown_or_empty_job_ids_exit_2(runs: Path) -> None:
    unknown = invoke("approve", "base", "--into", "bl", "--job", "zzzz")
    assert unknown.code == 2
    assert "--job zzzz: no job of the run has this id" in unknown.stderr
    empty = invoke("approve", "base", "--into", "bl", "--job", "")
    assert empty.code == 2
    assert not (runs / "bl" / "state.db").exists()


def test_an_old_report_only_baseline(runs: Path) -> None:
    old = runs / "old"
    old.mkdir()
    shutil.copy(runs / "base" / "report.csv", old / "report.csv")
    (old / "files" / "gone").mkdir(parents=True)
    part = invoke("approve", "drift", "--into", "old", "--only", "var.color=indigo")
    assert part.code == 2
    assert "has a report.csv but no state.db" in part.stderr
    assert invoke("approve", "drift", "--into", "old").code == 0
    assert shas(old) == shas(runs / "drift")
    assert not (old / "files" / "gone").exists()


def test_current_must_be_a_run_folder(runs: Path) -> None:
    bare = runs / "bare"
    bare.mkdir()
    shutil.copy(runs / "base" / "report.csv", bare / "report.csv")
    done = invoke("approve", "bare", "--into", "bl")
    assert done.code == 2
    assert "bare: no state.db here, so not a run folder" in done.stderr
    itself = invoke("approve", "base", "--into", "base")
    assert itself.code == 2 and "is the current run itself" in itself.stderr


class _Page(HTMLParser):
    """The approve boxes, the command box and anything loaded from elsewhere in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[dict[str, str | None]] = []
        self.command = ""
        self.head = ""
        self.external: list[str] = []
        self.noscript = False
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("class") == "approve":
            self.boxes.append(found)
        if tag == "pre" and found.get("id") == "approve-cmd":
            self._in_pre, self.head = True, found.get("data-head") or ""
        self.noscript = self.noscript or tag == "noscript"
        for key in ("src", "href"):
            if (found.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(found[key] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_pre = self._in_pre and tag != "pre"

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.command += data


def test_the_compare_page_offers_the_approve_command(runs: Path) -> None:
    shutil.copytree(runs / "base", runs / "the baseline")
    shutil.copytree(runs / "drift", runs / "run 2")
    drifted = changed(runs / "base", runs / "drift")
    done = invoke("compare", "the baseline", "run 2", "--html", "out/compare.html")
    assert done.code == 1
    page = _Page()
    page.feed((runs / "out" / "compare.html").read_text())
    assert {box["value"] for box in page.boxes} == drifted  # one box per changed job
    assert all(box["data-arg"] == box["value"] and "checked" in box for box in page.boxes)
    head = ["batchrun", "approve", "run 2", "--into", "the baseline"]
    assert shlex.split(page.head) == head
    words = shlex.split(page.command)
    assert words[:5] == head and set(words[6::2]) == drifted and set(words[5::2]) == {"--job"}
    assert page.noscript and page.external == []
    # The command as the page shows it (no JavaScript: every box ticked) does the approving.
    assert invoke(*words[1:]).code == 0
    assert changed(runs / "the baseline", runs / "run 2") == set()


def test_a_regressed_job_has_nothing_to_approve(runs: Path) -> None:
    done = invoke("compare", "base", "broken", "--html", "c.html")
    assert done.code == 1
    text = (runs / "c.html").read_text()
    page = _Page()
    page.feed(text)
    assert page.boxes == [] and page.command == ""
    assert text.count("nothing to approve: the current run did not succeed") == 8


def test_the_ci_recipe_approves_through_approve() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "ci-workflow.yml"
    workflow = yaml.safe_load(path.read_text())
    lines = [
        line.strip()
        for job in workflow["jobs"].values()
        for step in job["steps"]
        for line in str(step.get("run", "")).splitlines()
    ]
    approves = [line for line in lines if line.startswith("batchrun approve ")]
    assert len(approves) == 3  # the first baseline (twice: single and sharded), the dispatch
    assert all('"$RUN_DIR" --into "$BASELINE"' in line for line in approves)
    assert not [line for line in lines if "--update-baseline" in line]
    assert "approve_jobs" in workflow[True]["workflow_dispatch"]["inputs"]  # YAML 1.1: on

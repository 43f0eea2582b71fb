"""report.html: the contact sheet, parsed back with html.parser."""

from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path

import pytest

from batchrun.errors import ChoiceError, UsageError
from batchrun.results import html_pages, html_report
from batchrun.store.records import FAILED, QUEUED, SUCCEEDED, JobRow, OutputFile

MODEL = "acme/painter"


class Page(HTMLParser):
    """Collects what the tests check: images, videos, links, per-job text, grid headers."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs: dict[str, list[str]] = {}  # job id -> img srcs
        self.job_text: dict[str, str] = {}
        self.titles: dict[str, str] = {}
        self.videos: list[str] = []
        self.urls: list[str] = []  # every src/href
        self.headers: list[str] = []
        self.sections: list[str] = []
        self.tags: set[str] = set()
        self._job: str | None = None
        self._depth = 0
        self._capture: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.urls += [a[k] for k in ("src", "href") if k in a]
        if tag == "div" and "job" in (a.get("class") or "").split():
            self._job, self._depth = a["id"], 0
            assert self._job not in self.titles, f"duplicate id {self._job}"
            self.titles[self._job] = a["title"]
            self.imgs.setdefault(self._job, [])
            self.job_text.setdefault(self._job, "")
        if self._job and tag == "div":
            self._depth += 1
        if tag == "img" and self._job:
            self.imgs[self._job].append(a["src"])
        if tag == "video":
            self.videos.append(a["src"])
        if tag in ("th", "h2"):
            self._capture = tag
            (self.headers if tag == "th" else self.sections).append("")

    def handle_endtag(self, tag) -> None:
        if tag in ("th", "h2"):
            self._capture = None
        if self._job and tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._job = None

    def handle_data(self, data) -> None:
        if self._job:
            self.job_text[self._job] += data
        if self._capture == "th":
            self.headers[-1] += data
        elif self._capture == "h2":
            self.sections[-1] += data


def png(path: Path, shade: int) -> OutputFile:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (shade, 0, 0)).save(path)
    return OutputFile(url=f"https://cdn.example.invalid/{path.name}", name="", size=1)


def make_jobs(run_dir: Path, *, models: tuple[str, ...] = (MODEL,)) -> list[JobRow]:
    """3 seeds x 2 colors per model; seed 3 + blue fails with an HTML-looking error."""
    jobs: list[JobRow] = []
    for model in models:
        for seed in (1, 2, 3):
            for color in ("red", "blue"):
                job_id = f"{model.split('/')[-1]}-{seed}-{color}"
                job = JobRow(
                    job_id=job_id,
                    position=len(jobs),
                    model_id=model,
                    inputs={"prompt": f"a {color} cat <&>", "seed": seed},
                    vars={"color": color},
                    status=SUCCEEDED,
                )
                if seed == 3 and color == "blue":
                    job.status = FAILED
                    job.error = f"{job_id}: <script>alert(1)</script> NSFW & co"
                else:
                    rel = f"files/{job_id}/image 1.png"
                    out = png(run_dir / rel, seed * 40)
                    out.name = rel
                    job.files = [out]
                jobs.append(job)
    return jobs


def test_every_succeeded_job_has_its_image_and_every_failed_job_its_error(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path)
    path = html_pages.write_html(tmp_path, jobs)
    assert path == tmp_path / "report.html"
    page = Page(path.read_text())
    assert set(page.job_text) == {job.job_id for job in jobs}
    for job in jobs:
        if job.status == SUCCEEDED:
            (src,) = page.imgs[job.job_id]
            assert not src.startswith(("/", "http:", "https:", "file:"))
            assert src == "files/" + job.job_id + "/image%201.png"
            assert (tmp_path / src.replace("%20", " ")).is_file()
        else:
            assert page.imgs[job.job_id] == []
            assert job.error in page.job_text[job.job_id]
            assert "failed" in page.job_text[job.job_id]
        # inputs on hover (title) and on click (<details>)
        assert f"seed: {job.inputs['seed']}" in page.titles[job.job_id]
        assert job.inputs["prompt"] in page.job_text[job.job_id]
    raw = path.read_text()
    assert "<script>" not in raw and "&lt;script&gt;" in raw


def test_self_contained(tmp_path: Path) -> None:
    page = Page(html_pages.write_html(tmp_path, make_jobs(tmp_path)).read_text())
    assert "style" in page.tags
    assert not {"link", "script", "iframe"} & page.tags
    assert all(not u.startswith(("http:", "https:", "//")) for u in page.urls)


def test_grid_uses_the_two_values_that_vary_most(tmp_path: Path) -> None:
    page = Page(html_pages.write_html(tmp_path, make_jobs(tmp_path)).read_text())
    # seed has 3 values (rows), color 2 (columns); the single model is not a dimension
    assert page.headers == ["input.seed \\ var.color", "red", "blue", "1", "2", "3"]
    assert page.sections == []


def test_rows_and_cols_can_be_chosen(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path)
    path = html_pages.write_html(tmp_path, jobs, rows_key="color", cols_key="input.seed")
    assert Page(path.read_text()).headers == [
        "var.color \\ input.seed",
        "1",
        "2",
        "3",
        "red",
        "blue",
    ]
    # a field that moves in lockstep with color (the templated prompt) can be chosen too
    path = html_pages.write_html(tmp_path, jobs, rows_key="prompt")
    assert Page(path.read_text()).headers[0] == "input.prompt \\ input.seed"


def test_unknown_rows_key_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no swept field 'size'; choose from .*input\.seed"):
        html_pages.write_html(tmp_path, make_jobs(tmp_path), rows_key="size")


@pytest.mark.parametrize("setting", ["rows_key", "cols_key"])
def test_unknown_grid_key_names_its_setting_and_choices(tmp_path: Path, setting: str) -> None:
    with pytest.raises(ChoiceError) as info:
        rows_key, cols_key = ("size", None) if setting == "rows_key" else (None, "size")
        html_pages.write_html(tmp_path, make_jobs(tmp_path), rows_key=rows_key, cols_key=cols_key)
    exc = info.value
    assert (exc.setting, exc.values) == (setting, ["size"])
    assert "input.seed" in exc.choices and "model" in exc.choices
    assert str(exc) == f"no swept field 'size'; choose from {', '.join(exc.choices)}"


def test_extra_dimensions_become_sections(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, models=("acme/painter", "acme/sketcher"))
    page = Page(html_pages.write_html(tmp_path, jobs).read_text())
    # seed (3 values) rows; model and color tie at 2: model (first in manifest order) columns
    assert page.headers[:3] == ["input.seed \\ model", "acme/painter", "acme/sketcher"]
    assert page.sections == ["var.color=red", "var.color=blue"]
    assert len(page.job_text) == 12


def test_a_cell_may_hold_several_jobs(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path)
    twin = JobRow(
        job_id="again",
        position=99,
        model_id=MODEL,
        inputs=dict(jobs[0].inputs),
        vars=dict(jobs[0].vars),
        repeat=1,
        status=QUEUED,
    )
    page = Page(html_pages.write_html(tmp_path, [*jobs, twin]).read_text())
    assert "queued" in page.job_text["again"]
    assert page.headers[:3] == ["input.seed \\ var.color", "red", "blue"]


def test_videos_and_refused_files(tmp_path: Path) -> None:
    video = tmp_path / "files/v/clip.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00")
    job = JobRow(
        job_id="v",
        position=0,
        model_id=MODEL,
        inputs={"seed": 1},
        status=SUCCEEDED,
        files=[
            OutputFile(url="https://x.invalid/clip.mp4", name="files/v/clip.mp4"),
            OutputFile(url="ftp://x.invalid/evil", error="refused: not http(s)"),
        ],
    )
    page = Page(html_pages.write_html(tmp_path, [job]).read_text())
    assert page.videos == ["files/v/clip.mp4"]
    assert "refused: not http(s)" in page.job_text["v"]


def test_rows_from_report(tmp_path: Path) -> None:
    (tmp_path / "files/a").mkdir(parents=True)
    (tmp_path / "files/a/out.png").write_bytes(b"png")
    with (tmp_path / "report.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "job_id",
                "model_id",
                "status",
                "error",
                "output_files",
                "output_urls",
                "output_sha256",
                "input.prompt",
                "input.seed",
                "var.color",
            ]
        )
        w.writerow(
            [
                "a",
                MODEL,
                "succeeded",
                "",
                "files/a/out.png",
                "https://u/a.png",
                "ab",
                "'=SUM(1)",
                "1",
                "red",
            ]
        )
        w.writerow(["b", MODEL, "failed", "'-boom", "", "", "", "x", "2", ""])
    a, b = html_report.rows_from_report(tmp_path / "report.csv")
    assert a.inputs == {"prompt": "=SUM(1)", "seed": "1"} and a.vars == {"color": "red"}
    assert a.files == [OutputFile(url="https://u/a.png", name="files/a/out.png", sha256="ab")]
    assert (b.status, b.error, b.vars, b.files) == ("failed", "-boom", {}, [])
    page = Page(html_pages.write_html(tmp_path, [a, b]).read_text())
    assert page.imgs["a"] == ["files/a/out.png"] and "-boom" in page.job_text["b"]


def plain_jobs(n: int, inputs=lambda i: {"seed": i}, variables=lambda i: {}) -> list[JobRow]:
    """`n` succeeded jobs without files (what the layout and the cap need)."""
    return [
        JobRow(
            job_id=f"j{i}",
            position=i,
            model_id=MODEL,
            inputs=inputs(i),
            vars=variables(i),
            status=SUCCEEDED,
        )
        for i in range(n)
    ]


def _grid_jobs(n: int) -> list[JobRow]:
    """`n` jobs of a sweep of 7 colors x seeds (seed slower), each with an image file."""
    jobs = plain_jobs(n, lambda i: {"seed": i // 7}, lambda i: {"color": f"c{i % 7}"})
    for job in jobs:
        job.files = [OutputFile(url="u", name=f"files/{job.job_id}/a.png")]
    return jobs


def test_a_large_run_is_paged_and_every_page_links_to_the_others(tmp_path: Path) -> None:
    per = html_pages.PAGE_CARDS
    n = 2 * per + 7
    first = html_pages.write_html(tmp_path, _grid_jobs(n))
    names = sorted(p.name for p in tmp_path.glob("report*.html"))
    assert names == ["report-2.html", "report-3.html", "report.html"]
    for number, name in enumerate(["report.html", "report-2.html", "report-3.html"], start=1):
        raw = (tmp_path / name).read_text()
        page = Page(raw)
        # pages of PAGE_CARDS jobs in expansion order (laid out in a grid on each page)
        start = (number - 1) * per
        assert set(page.job_text) == {f"j{i}" for i in range(start, min(n, start + per))}
        assert f"page {number} of 3" in raw
        links = {u for u in page.urls if u.startswith("report")}
        assert links - {name} == {"report.html", "report-2.html", "report-3.html"} - {name}
        assert all((tmp_path / link).is_file() for link in links)
        assert all('loading="lazy"' in tag for tag in raw.split("<img")[1:])
        assert page.headers[0] == "input.seed \\ var.color"  # one layout on every page
    index = first.read_text()
    assert f"{n} jobs</span>" in index  # the counts are of every job
    # the index: page 3 holds the last seeds; c0 is on every page
    last_seed = (n - 1) // 7
    assert f'<li>{last_seed}: <a href="report-3.html">3</a></li>' in index
    assert '<li>c0: <a href="report.html">1</a>&ndash;<a href="report-3.html">3</a></li>' in index


def test_a_page_links_to_its_neighbours_the_first_and_the_last() -> None:
    near = html_pages.NEAR
    links = Page(html_pages.nav(20, 40)).urls
    expected = [19, 21, 1, *range(20 - near, 20), *range(21, 21 + near), 40]
    assert links == [html_pages.page_name(n) for n in expected]
    assert Page(html_pages.nav(1, 40, every=True)).urls[1:] == [
        html_pages.page_name(n) for n in range(2, 41)
    ]


def test_the_first_page_stays_small_however_large_the_sweep(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    html_pages.write_html(small, _grid_jobs(2 * html_pages.PAGE_CARDS))
    html_pages.write_html(large, _grid_jobs(40 * html_pages.PAGE_CARDS))
    assert len(list(large.glob("report*.html"))) == 40
    size = (large / "report.html").stat().st_size
    # the same first page, plus 38 more page links and index entries
    assert size < (small / "report.html").stat().st_size + 38 * 400
    assert size < html_pages.PAGE_CARDS * 1000


def test_a_smaller_sweep_removes_the_pages_it_no_longer_has(tmp_path: Path) -> None:
    html_pages.write_html(tmp_path, _grid_jobs(11 * html_pages.PAGE_CARDS))
    (tmp_path / "report-x.html").write_text("not a page")
    assert html_pages.more_pages(tmp_path) == [f"report-{n}.html" for n in range(2, 12)]
    html_pages.write_html(tmp_path, _grid_jobs(html_pages.PAGE_CARDS + 1))
    names = sorted(p.name for p in tmp_path.glob("report*.html"))
    assert names == ["report-2.html", "report-x.html", "report.html"]
    html_pages.write_html(tmp_path, _grid_jobs(3))
    assert "nav" not in Page((tmp_path / "report.html").read_text()).tags
    assert not (tmp_path / "report-2.html").exists()


def test_a_page_of_a_live_report_says_so_and_reloads(tmp_path: Path) -> None:
    live = html_report.Live("running: 3/1007 done", 5)
    html_pages.write_html(tmp_path, _grid_jobs(2 * html_pages.PAGE_CARDS + 7), live=live)
    for name in ("report.html", "report-2.html", "report-3.html"):
        raw = (tmp_path / name).read_text()
        assert '<meta http-equiv="refresh" content="5">' in raw
        assert '<p class="live"><strong>live</strong> running: 3/1007 done</p>' in raw


def test_a_field_with_a_value_per_job_is_not_an_axis_when_others_can_be(tmp_path: Path) -> None:
    # prompt is templated from seed and color: 6 values for 6 jobs, all distinct
    def inputs(i: int) -> dict:
        return {"prompt": f"a {('red', 'blue')[i % 2]} cat, take {i // 2}", "seed": i // 2}

    jobs = plain_jobs(6, inputs, lambda i: {"color": ("red", "blue")[i % 2]})
    page = Page(html_pages.write_html(tmp_path, jobs).read_text())
    assert page.headers == ["input.seed \\ var.color", "red", "blue", "0", "1", "2"]
    assert page.sections == []
    # still a valid choice when asked for
    path = html_pages.write_html(tmp_path, jobs, rows_key="prompt")
    assert Page(path.read_text()).headers[0] == "input.prompt \\ input.seed"


def test_a_field_with_a_value_per_job_is_the_axis_when_alone(tmp_path: Path) -> None:
    page = Page(html_pages.write_html(tmp_path, plain_jobs(4)).read_text())
    assert page.headers == ["input.seed", "", "0", "1", "2", "3"]


def test_empty_cells_of_a_sparse_grid_are_spanned(tmp_path: Path) -> None:
    # every prompt row holds one job: 6 rows x 3 seed columns, 12 empty cells
    jobs = plain_jobs(6, lambda i: {"prompt": f"take {i}", "seed": i // 2})
    raw = html_pages.write_html(tmp_path, jobs, rows_key="prompt", cols_key="seed").read_text()
    grid = raw.split("<tbody>", 1)[1]
    # seeds 0 and 2: the job's cell and one spanning the other two; seed 1: empty, job, empty
    assert grid.count("<td") == 4 * 2 + 2 * 3 < 6 * 3
    assert grid.count('<td colspan="2"></td>') == 4
    assert grid.count("<td></td>") == 4 and 'colspan="1"' not in grid
    assert Page(raw).headers[:4] == ["input.prompt \\ input.seed", "0", "1", "2"]


def test_a_page_that_says_what_its_file_says_is_left_and_the_others_replaced(
    tmp_path: Path,
) -> None:
    per = html_pages.PAGE_CARDS
    jobs = _grid_jobs(3 * per)
    html_pages.write_html(tmp_path, jobs)
    names = ("report.html", "report-2.html", "report-3.html")
    before = {n: (tmp_path / n).stat().st_ino for n in names}
    texts = {n: (tmp_path / n).read_bytes() for n in names}
    jobs[2 * per + 5].status = FAILED  # a job of page 3 changed
    html_pages.write_html(tmp_path, jobs)
    after = {n: (tmp_path / n).stat().st_ino for n in names}
    assert after["report-2.html"] == before["report-2.html"]  # the same bytes: left
    assert (tmp_path / "report-2.html").read_bytes() == texts["report-2.html"]
    assert after["report-3.html"] != before["report-3.html"]
    assert (tmp_path / "report-3.html").read_bytes() != texts["report-3.html"]
    assert "s-failed" in (tmp_path / "report-3.html").read_text()
    # page 1 (its counts changed) is written every time
    assert after["report.html"] != before["report.html"]
    # a page edited meanwhile is written again, whatever it held
    (tmp_path / "report-2.html").write_text("edited")
    html_pages.write_html(tmp_path, jobs)
    assert (tmp_path / "report-2.html").read_bytes() == texts["report-2.html"]

"""report.html for a sweep of several models: the model is an axis like any other, section
titles name the model and no empty field, and the grid is set in the manifest or by
`report --rows/--cols`, kept across runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from batchrun.cli import main
from batchrun.results import html_report
from batchrun.store.records import SUCCEEDED, JobRow

IMAGE, VIDEO = "acme/image", "acme/video"


def jobs() -> list[JobRow]:
    """compare-models.yaml's shape: shared prompts, fields only one model has."""
    out: list[tuple[str, dict[str, Any]]] = []
    for prompt in ("fox", "owl", "cat"):
        for ratio in ("1:1", "16:9"):
            out.append((IMAGE, {"prompt": prompt, "aspect_ratio": ratio}))
        for duration in (5, 10):
            out.append(
                (
                    VIDEO,
                    {
                        "prompt": prompt,
                        "aspect_ratio": "16:9",
                        "generate_audio": False,
                        "duration": duration,
                    },
                )
            )
    return [
        JobRow(job_id=f"j{i:02d}", position=i, model_id=m, inputs=inp, status=SUCCEEDED)
        for i, (m, inp) in enumerate(out)
    ]


def tags(page: str, name: str) -> list[str]:
    return [re.sub("<[^>]+>", "", t) for t in re.findall(rf"<{name}>(.*?)</{name}>", page)]


def test_each_model_gets_a_section_titled_by_it(tmp_path: Path) -> None:
    page = html_report.render("t", jobs())
    assert tags(page, "h2") == [IMAGE, VIDEO]
    assert not re.search(r"=(,|<|$)", page)  # no `field=` label with an empty value
    assert "generate_audio=" not in page
    heads = re.findall(r"<thead><tr>(.*?)</tr></thead>", page)
    assert tags(heads[0], "th") == ["input.prompt \\ input.aspect_ratio", "1:1", "16:9"]


def test_cols_model_puts_the_models_side_by_side(tmp_path: Path) -> None:
    page = html_report.render("t", jobs(), cols_key="model")
    heads = [tags(h, "th") for h in re.findall(r"<thead><tr>(.*?)</tr></thead>", page)]
    assert ["input.prompt \\ model", IMAGE, VIDEO] in heads
    # sections only by a field every model has; none titled by an empty value
    assert tags(page, "h2") == ["input.aspect_ratio=1:1", "input.aspect_ratio=16:9"]


MANIFEST = {
    "version": 1,
    "name": "two",
    "run": {"poll_interval": "50ms", "rate_limit": "50/s"},
    "report": {"rows": "prompt", "cols": "model"},
    "matrix": {"prompt": ["a fox", "an owl"]},
    "models": [
        {"id": "google/nano-banana-2-lite/text-to-image"},
        {"id": "blackforestlabs/flux-3/text-to-video"},
    ],
}


def corner(run_dir: Path) -> str:
    page = (run_dir / "report.html").read_text()
    return tags(re.findall(r"<thead><tr>(.*?)</tr></thead>", page)[0], "th")[0]


def test_the_grid_comes_from_the_manifest_and_report_choices_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(MANIFEST))
    run_dir = tmp_path / "run"
    args = ["run", str(path), "--simulate", "--run-dir", str(run_dir), "-q"]
    assert main(args) == 0
    assert corner(run_dir) == "input.prompt \\ model"
    assert main(["report", str(run_dir), "--rows", "model", "--cols", "prompt"]) == 0
    assert corner(run_dir) == "model \\ input.prompt"
    assert main(args) == 0  # a later run keeps the grid chosen with `report`
    assert corner(run_dir) == "model \\ input.prompt"
    assert main(["report", str(run_dir)]) == 0
    assert corner(run_dir) == "model \\ input.prompt"

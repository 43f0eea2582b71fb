"""The manifest's `expect:` blocks: their values, each model's block over the top one, and
every problem with its line and the fix (exit 2 from `validate`, nothing sent)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchrun.plan.build import build_plan
from batchrun.plan.expect import Expect, Span
from batchrun.util import probe
from testing.cli import invoke

KONTEXT = "blackforestlabs/flux-1-kontext/pro/edit"
VIDEO = "bytedance/seedance-2.5/text-to-video/1080p"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def validate(path: Path) -> tuple[int, list[str]]:
    result = invoke("validate", str(path))
    return result.code, (result.stdout + result.stderr).splitlines()


def test_values_and_a_models_block_replacing_the_top_one_key_by_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
        version: 1
        expect:
          files: 1
          type: image
          width: 1024
          height: [512, 2048]
          min_bytes: 10000
          max_bytes: 50MB
        models:
          - id: {KONTEXT}
            inputs: {{prompt: p, image_url: "https://x.runcomfy.net/a.png"}}
          - id: {VIDEO}
            inputs: {{prompt: p}}
            expect: {{type: video, width: null, duration_s: [4.5, 5.5], max_bytes: 2MiB}}
        """)  # fmt: skip
    expect = build_plan(path).manifest.expect
    assert expect.of(KONTEXT) == Expect(
        files=Span(1, 1), type="image", width=Span(1024, 1024), height=Span(512, 2048),
        min_bytes=10_000, max_bytes=50_000_000,
    )  # fmt: skip
    assert expect.of(VIDEO) == Expect(
        files=Span(1, 1), type="video", height=Span(512, 2048), duration_s=Span(4.5, 5.5),
        min_bytes=10_000, max_bytes=2 * 1024 * 1024,
    )  # fmt: skip
    assert not build_plan(write(tmp_path, f"""\
        version: 1
        models: [{{id: {KONTEXT}, inputs: {{prompt: p, image_url: "https://x.runcomfy.net/a"}}}}]
        """)).manifest.expect  # fmt: skip


def test_every_problem_with_its_line_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
        version: 1
        expect:
          type: image
          widht: 1024
          height: [2048, 512]
          duration_s: 5
          max_bytes: 50MBs
          min_bytes: -3
          files: [1, 2, 3]
        models:
          - id: {KONTEXT}
            inputs: {{prompt: p, image_url: "https://x.runcomfy.net/a.png"}}
            expect: {{type: movie, width: [10, 5], min_bytes: 2MB, max_bytes: 1MB}}
        """)  # fmt: skip
    code, lines = validate(path)
    p = str(path)
    sizes = "(KB, MB, GB: powers of 1000; KiB, MiB, GiB: of 1024)"
    assert code == 2
    assert lines == [
        f"{p}: $.expect.files: [1, 2, 3] must be a count like 1, a range like [1, 4], or null"
        " (line 9)",
        f'{p}: $.expect.max_bytes: \'50MBs\' must be a size like "50MB", "2GiB" {sizes}, a '
        "number of bytes, or null (line 7)",
        f'{p}: $.expect.min_bytes: -3 must be a size like "10KB", "2MiB" {sizes}, a number '
        "of bytes, or null (line 8)",
        f"{p}: $.expect.widht: unknown key 'widht'; did you mean 'width'? (line 4)",
        f"{p}: $.models[0].expect.type: 'movie' must be image, video or audio (or null) (line 13)",
        f"{p}: $.expect.height: [2048, 512]: the minimum is above the maximum; write "
        "[512, 2048] (line 5)",
        f"{p}: $.expect.duration_s: duration_s does not apply to type: image (video and audio "
        "have a duration); remove one of them (line 6)",
        f"{p}: $.models[0].expect.width: [10, 5]: the minimum is above the maximum; write "
        "[5, 10] (line 13)",
        f"{p}: $.models[0].expect.min_bytes: min_bytes (2,000,000 bytes) is above max_bytes "
        "(1,000,000 bytes); lower min_bytes or raise max_bytes (line 13)",
        f"{p}: jobs' input fields not checked yet: fix the problems above first",
    ]


def test_expectations_need_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
        version: 1
        outputs: {{download: false}}
        expect: {{width: 1024}}
        models: [{{id: {KONTEXT}, inputs: {{prompt: p, image_url: "https://x.runcomfy.net/a"}}}}]
        """)  # fmt: skip
    assert validate(path) == (2, [
        f"{path}: $.expect: expectations are checked on the downloaded files, and "
        "outputs.download is false; set outputs.download: true or remove the expect: block "
        "(line 3)",
    ])  # fmt: skip


def test_two_entries_of_one_model_share_one_block(tmp_path: Path) -> None:
    path = write(tmp_path, f"""\
        version: 1
        models:
          - {{id: {VIDEO}, inputs: {{prompt: a}}, expect: {{duration_s: 5}}}}
          - {{id: {VIDEO}, inputs: {{prompt: b}}, expect: {{duration_s: 8}}}}
        """)  # fmt: skip
    code, lines = validate(path)
    assert (code, lines[0]) == (2,
        f"{path}: $.models[1].expect: {VIDEO!r} already has other expectations (models[0]); a "
        "model's jobs share one expect: block, so give the same one or merge them (line 4)",
    )  # fmt: skip


def test_a_missing_library_is_exit_2_with_the_pip_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, f"""\
        version: 1
        expect:
          height: 1024
          duration_s: [1, 2]
        models: [{{id: {VIDEO}, inputs: {{prompt: p}}}}]
        """)  # fmt: skip
    assert validate(path) == (0, [f"{path}: ok (1 job)"])
    monkeypatch.setattr(probe, "pillow_installed", lambda: False)
    monkeypatch.setattr(probe, "mutagen_installed", lambda: False)
    assert validate(path) == (2, [
        f"{path}: $.expect.height: reading image sizes needs Pillow, which is not installed: "
        "pip install 'runcomfy-batchrun[images]' (line 3)",
        f"{path}: $.expect.duration_s: reading durations needs mutagen, which is not "
        "installed: pip install 'runcomfy-batchrun[media]' (line 4)",
    ])  # fmt: skip
    # A video's size is read without Pillow.
    path.write_text(path.read_text().replace("height: 1024", "type: video\n  height: 1024"))
    monkeypatch.setattr(probe, "mutagen_installed", lambda: True)
    assert validate(path) == (0, [f"{path}: ok (1 job)"])

"""A job's downloaded files against its expectations: the error names the check, the file
and both values; what cannot be read is unmet, never passed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from batchrun.fetch.expectations import unmet
from batchrun.plan.expect import Expect, Span
from batchrun.simulator import outputs
from batchrun.store.records import OutputFile

KEY = outputs.content_key("m {}", 0, False)


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _files(run_dir: Path, **named: bytes) -> list[OutputFile]:
    folder = run_dir / "files" / "job1"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in named.items():
        (folder / name).write_bytes(data)
        out.append(OutputFile(url=f"https://x/{name}", name=f"files/job1/{name}",
                              sha256="ab", size=len(data)))  # fmt: skip
    return out


def exact(v: float) -> Span:
    return Span(v, v)


@pytest.mark.parametrize(
    "expect, error",
    [
        (Expect(width=exact(1024)), "expect: width 512 != 1024 (image_0.png)"),
        (Expect(height=Span(100, 200)), "expect: height 256 not in [100, 200] (image_0.png)"),
        (Expect(type="video"), "expect: type image != video (image_0.png)"),
        (Expect(files=exact(2)), "expect: files 1 != 2"),
        (Expect(files=Span(2, 4)), "expect: files 1 not in [2, 4]"),
        (Expect(min_bytes=10**6), "expect: min_bytes {size} < 1000000 (image_0.png)"),
        (Expect(max_bytes=10), "expect: max_bytes {size} > 10 (image_0.png)"),
        (Expect(duration_s=exact(5)),
         "expect: cannot read duration_s of image_0.png: an image file has no duration"),
        (Expect(width=exact(512), height=exact(256), type="image", files=exact(1)), ""),
    ],
)  # fmt: skip
def test_each_check_on_an_image(tmp_path: Path, expect: Expect, error: str) -> None:
    files = _files(tmp_path, **{"image_0.png": _png(512, 256)})
    assert unmet(expect, tmp_path, files) == error.format(size=files[0].size)


def test_a_video_size_and_duration(tmp_path: Path) -> None:
    files = _files(tmp_path, **{"video_0.mp4": outputs.video_bytes(KEY, 1280, 720, 3.2)})
    wanted = Expect(type="video", width=exact(1280), height=exact(720))
    assert unmet(wanted, tmp_path, files) == ""
    assert unmet(Expect(duration_s=Span(4.5, 5.5)), tmp_path, files) == (
        "expect: duration_s 3.2 not in [4.5, 5.5] (video_0.mp4)"
    )
    # An exact duration allows 0.1 s either way (container time units, frame rates).
    assert unmet(Expect(duration_s=exact(3.25)), tmp_path, files) == ""
    assert unmet(Expect(duration_s=exact(3.4)), tmp_path, files) == (
        "expect: duration_s 3.2 != 3.4 (video_0.mp4)"
    )


def test_what_cannot_be_read_fails_naming_the_file(tmp_path: Path) -> None:
    files = _files(tmp_path, **{"video_0.webm": b"\x1a\x45\xdf\xa3" + b"\x00" * 60,
                                "out.bin": b"not media at all"})  # fmt: skip
    assert unmet(Expect(width=exact(1024)), tmp_path, files) == (
        "expect: cannot read width of video_0.webm: only MP4/MOV video sizes can be read; "
        "cannot read width of out.bin: not an image, video or audio format known here"
    )
    assert unmet(Expect(type="image"), tmp_path, files) == (
        "expect: type video != image (video_0.webm); type unknown != image (out.bin)"
    )


def test_many_unmet_checks_name_three_and_count_the_rest(tmp_path: Path) -> None:
    files = _files(tmp_path, **{f"image_{i}.png": _png(8, 8) for i in range(4)})
    error = unmet(Expect(width=exact(16)), tmp_path, files)
    assert error == (
        "expect: width 8 != 16 (image_0.png); width 8 != 16 (image_1.png); "
        "width 8 != 16 (image_2.png); and 1 more"
    )


def test_files_not_all_downloaded_are_not_judged(tmp_path: Path) -> None:
    files = _files(tmp_path, **{"image_0.png": _png(8, 8)})
    missing = OutputFile(url="https://x/2.png", error="not downloaded: the run was interrupted")
    assert unmet(Expect(width=exact(16)), tmp_path, [*files, missing]) == ""
    assert unmet(Expect(), tmp_path, files) == ""
    assert unmet(Expect(files=exact(1)), tmp_path, []) == "expect: files 0 != 1"

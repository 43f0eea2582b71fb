"""Deterministic output bytes: valid PNGs with a visible pattern, small real MP4 videos."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import mutagen
import mutagen.mp4
import pytest
from PIL import Image

from batchrun.simulator import outputs
from batchrun.util import probe


def _key(text: str) -> str:
    return outputs.content_key(outputs.identity("m/x", {"prompt": text}), 0, False)


def test_png_is_valid_and_shows_a_pattern_not_noise() -> None:
    data = outputs.png_bytes(_key("a"), 128, 72)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (128, 72))
    colors = image.getcolors(maxcolors=128 * 72)
    assert colors is not None and 2 <= len(colors) <= 2 * 72  # two colours per row at most
    assert len(data) < 20_000  # compresses: a pattern, not noise


def test_same_inputs_same_bytes_different_inputs_or_drift_differ() -> None:
    assert outputs.png_bytes(_key("a"), 64, 64) == outputs.png_bytes(_key("a"), 64, 64)
    assert outputs.png_bytes(_key("a"), 64, 64) != outputs.png_bytes(_key("b"), 64, 64)
    ident = outputs.identity("m/x", {"prompt": "a"})
    assert outputs.content_key(ident, 0, True) != outputs.content_key(ident, 0, False)
    assert outputs.identity("m", {"a": 1, "b": 2}) == outputs.identity("m", {"b": 2, "a": 1})


@pytest.mark.parametrize(
    "ratio, size",
    [("16:9", (128, 72)), ("9:16", (72, 128)), ("1:1", (128, 128)), ("auto", (128, 128))],
)
def test_image_size_follows_aspect_ratio(ratio: str, size: tuple[int, int]) -> None:
    assert outputs.image_size({"aspect_ratio": ratio}) == size


def test_video_bytes_start_like_mp4_and_are_a_few_kb() -> None:
    data = outputs.video_bytes(_key("v"))
    assert data[4:8] == b"ftyp"
    assert 2_000 < len(data) < 7_000
    assert data == outputs.video_bytes(_key("v")) != outputs.video_bytes(_key("w"))


def test_videos_are_mp4s_a_container_reader_reads(tmp_path: Path) -> None:
    path = tmp_path / "video_0.mp4"
    path.write_bytes(outputs.video_bytes(_key("v"), 854, 480, 6.5))
    media = mutagen.File(path)
    assert isinstance(media, mutagen.mp4.MP4)
    assert getattr(media.info, "length", None) == pytest.approx(6.5)
    assert probe.kind(path) == "video" and probe.dimensions(path, "video") == (854, 480)
    # The one sample the track points at is mdat's payload, all of it.
    data = path.read_bytes()
    mdat = data.index(b"mdat") + 4
    (offset,) = struct.unpack(">I", data[data.index(b"stco") + 12 : data.index(b"stco") + 16])
    (size,) = struct.unpack(">I", data[data.index(b"stsz") + 16 : data.index(b"stsz") + 20])
    assert (offset, offset + size) == (mdat, len(data))


@pytest.mark.parametrize(
    "model, inputs, size",
    [
        ("bytedance/seedance-2.5/text-to-video/1080p", {"aspect_ratio": "16:9"}, (1920, 1080, 5.0)),
        ("bytedance/seedance-2.5/text-to-video/1080p", {"aspect_ratio": "9:16", "duration": 8},
         (1080, 1920, 8.0)),
        ("wan-ai/wan-3.0/image-to-video", {"resolution": "480p", "aspect_ratio": "1:1",
                                           "duration": 3}, (480, 480, 3.0)),
        ("blackforestlabs/flux-3/text-to-video", {"aspect_ratio": "auto", "duration": "auto"},
         (1280, 720, 5.0)),
        ("blackforestlabs/flux-3/text-to-video", {"duration": "12"}, (1280, 720, 12.0)),
        ("some/model", {"width": 640, "height": 360}, (640, 360, 5.0)),
    ],
)  # fmt: skip
def test_video_size_follows_the_inputs(model: str, inputs: dict, size: tuple) -> None:
    assert outputs.video_size(model, inputs) == size


def test_huge_chunks_add_up_exactly() -> None:
    assert sum(len(c) for c in outputs.huge_chunks(200_001, 65536)) == 200_001

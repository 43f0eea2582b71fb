"""--image-tolerance's scale: a re-encode scores near 0, a small edit a few hundredths,
unrelated images near 1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from batchrun.results.compare import image_distance
from batchrun.simulator.outputs import png_bytes

Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")


def sim_png(tmp_path: Path, key: str) -> Path:
    path = tmp_path / f"{key}.png"
    path.write_bytes(png_bytes(hashlib.sha256(key.encode()).hexdigest(), 512, 512))
    return path


def test_a_jpeg_re_encode_scores_near_0(tmp_path: Path) -> None:
    png = sim_png(tmp_path, "a")
    jpeg = tmp_path / "a.jpg"
    Image.open(png).convert("RGB").save(jpeg, quality=75)
    assert image_distance(png, jpeg) < 0.005


def test_a_small_edit_scores_a_few_hundredths(tmp_path: Path) -> None:
    png = sim_png(tmp_path, "a")
    edited = tmp_path / "edit.png"
    img = Image.open(png).convert("RGB")
    ImageDraw.Draw(img).rectangle((200, 200, 260, 260), fill=(255, 255, 255))
    img.save(edited)
    assert 0.005 < image_distance(png, edited) < 0.1


@pytest.mark.parametrize("other", ["b", "c", "d", "e"])
def test_unrelated_simulator_images_score_near_1(tmp_path: Path, other: str) -> None:
    assert image_distance(sim_png(tmp_path, "a"), sim_png(tmp_path, other)) > 0.8


def test_the_distance_is_symmetric_and_0_for_the_same_file(tmp_path: Path) -> None:
    a, b = sim_png(tmp_path, "a"), sim_png(tmp_path, "b")
    assert image_distance(a, a) == 0.0
    assert image_distance(a, b) == pytest.approx(image_distance(b, a))

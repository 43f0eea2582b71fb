"""Kinds, sizes and durations read from a file's bytes (never its name)."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import pytest
from PIL import Image

from batchrun.simulator import outputs
from batchrun.util import probe

KEY = outputs.content_key("m {}", 0, False)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pillow(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def _wav(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, data, kind",
    [
        ("a.png", _pillow("PNG"), "image"),
        ("a.jpg", _pillow("JPEG"), "image"),
        ("a.gif", _pillow("GIF"), "image"),
        ("a.webp", _pillow("WEBP"), "image"),
        ("a.mp4", outputs.video_bytes(KEY), "video"),
        ("a.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 60, "video"),
        ("a.wav", _wav(0.1), "audio"),
        ("a.mp3", b"ID3\x04\x00" + b"\x00" * 60, "audio"),
        ("a.avif", struct.pack(">I", 24) + b"ftypavif" + b"\x00" * 12, "image"),
        ("a.m4a", struct.pack(">I", 24) + b"ftypM4A " + b"\x00" * 12, "audio"),
        ("a.bin", b"hello, world" * 8, None),
        # The name says nothing: a PNG called .mp4 is an image, an MP4 called .png a video.
        ("image_0.mp4", _pillow("PNG"), "image"),
        ("video_0.png", outputs.video_bytes(KEY), "video"),
    ],
)
def test_kind_comes_from_the_bytes(tmp_path: Path, name: str, data: bytes, kind: str) -> None:
    assert probe.kind(_write(tmp_path, name, data)) == kind


def test_image_and_video_sizes(tmp_path: Path) -> None:
    png = _write(tmp_path, "a.png", _pillow("PNG", (64, 48)))
    assert probe.dimensions(png, "image") == (64, 48)
    mp4 = _write(tmp_path, "v.mp4", outputs.video_bytes(KEY, 854, 480, 3.0))
    assert probe.dimensions(mp4, "video") == (854, 480)


def _tkhd(width: int, height: int, matrix: tuple[int, ...], version: int = 0) -> bytes:
    times = b"\x00" * (32 if version == 1 else 20)
    return (
        bytes([version, 0, 0, 3])
        + times
        + b"\x00" * 16
        + struct.pack(">9i", *matrix)
        + struct.pack(">II", width << 16, height << 16)
    )


IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
TURNED = (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)  # 90 degrees, as phones record


@pytest.mark.parametrize("version", [0, 1])
def test_tkhd_size_both_versions_and_a_turned_track(version: int) -> None:
    assert probe.tkhd_size(_tkhd(1920, 1080, IDENTITY, version)) == (1920, 1080)
    assert probe.tkhd_size(_tkhd(1920, 1080, TURNED, version)) == (1080, 1920)
    assert probe.tkhd_size(_tkhd(0, 0, IDENTITY, version)) is None  # a sound track
    assert probe.tkhd_size(_tkhd(1920, 1080, IDENTITY, version)[:-4]) is None  # cut short


def test_what_cannot_be_read_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    webm = _write(tmp_path, "v.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 60)
    with pytest.raises(probe.ProbeError, match="^only MP4/MOV video sizes can be read$"):
        probe.dimensions(webm, "video")
    with pytest.raises(probe.ProbeError, match="^mutagen does not know this container's"):
        probe.duration(webm, "video")
    wav = _write(tmp_path, "a.wav", _wav(0.2))
    with pytest.raises(probe.ProbeError, match="^an audio file has no width or height$"):
        probe.dimensions(wav, "audio")
    png = _write(tmp_path, "a.png", _pillow("PNG"))
    with pytest.raises(probe.ProbeError, match="^an image file has no duration$"):
        probe.duration(png, "image")
    broken = _write(tmp_path, "b.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(probe.ProbeError, match="^Pillow cannot read it: "):
        probe.dimensions(broken, "image")
    # A moov whose boxes run past their end: no track, so no size (never a made-up one).
    bad = outputs.video_bytes(KEY)
    bad = bad[:40] + struct.pack(">I", 10**6) + bad[44:]
    with pytest.raises(probe.ProbeError, match="^no video track with a size$"):
        probe.dimensions(_write(tmp_path, "bad.mp4", bad), "video")
    monkeypatch.setattr(probe, "pillow_installed", lambda: False)
    with pytest.raises(probe.ProbeError, match=r"pip install 'runcomfy-batchrun\[images\]'"):
        probe.dimensions(png, "image")
    monkeypatch.setattr(probe, "mutagen_installed", lambda: False)
    with pytest.raises(probe.ProbeError, match=r"pip install 'runcomfy-batchrun\[media\]'"):
        probe.duration(wav, "audio")


def test_durations_of_video_and_audio(tmp_path: Path) -> None:
    mp4 = _write(tmp_path, "v.mp4", outputs.video_bytes(KEY, 1280, 720, 7.25))
    assert probe.duration(mp4, "video") == pytest.approx(7.25)
    wav = _write(tmp_path, "a.wav", _wav(1.5))
    assert probe.duration(wav, "audio") == pytest.approx(1.5)

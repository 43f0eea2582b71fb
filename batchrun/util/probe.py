"""What a media file is, read from its bytes (never its name): its kind (image, video, audio),
its width and height, its duration.

Kinds come from the file's first bytes (and, for MP4/MOV, from its tracks' handlers); image
sizes from Pillow; video sizes from the MP4/MOV track header (`tkhd`), parsed here; durations
from mutagen (MP4/MOV, MP3, WAV, FLAC, Ogg, AAC, AIFF, ...). Both libraries are optional
(the `[media]` extra) and imported only when asked. What cannot be read raises ProbeError
saying why: a check that cannot read a value must fail, never pass.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import BinaryIO

IMAGE, VIDEO, AUDIO = "image", "video", "audio"
KINDS = (IMAGE, VIDEO, AUDIO)

# ISO base media (MP4, MOV, HEIF, AVIF) major brands that are not video.
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_MAX_BOXES = 10_000  # a hostile file of empty boxes stops here


class ProbeError(Exception):
    """A value of a file cannot be read (the message says why)."""


def pillow_installed() -> bool:
    return importlib.util.find_spec("PIL") is not None


def mutagen_installed() -> bool:
    return importlib.util.find_spec("mutagen") is not None


def kind(path: Path) -> str | None:
    """IMAGE, VIDEO or AUDIO from the file's bytes; None when they match no known format."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[4:8] == b"ftyp":
            return _iso_kind(f, head[8:12])
        if head.startswith(b"OggS"):
            f.seek(0)
            first_pages = f.read(4096)
            video = any(m in first_pages for m in (b"\x80theora", b"OVP80", b"fishead"))
            return VIDEO if video else AUDIO
    return _magic_kind(head)


def _magic_kind(head: bytes) -> str | None:
    riff = head[8:12] if head.startswith(b"RIFF") else b""
    if (
        head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))
        or head.startswith((b"II*\x00", b"MM\x00*"))  # TIFF
        or riff == b"WEBP"
        or head.lstrip().startswith((b"<svg", b"<?xml"))
    ):
        return IMAGE
    if head.startswith(b"\x1a\x45\xdf\xa3") or riff == b"AVI ":  # Matroska / WebM, AVI
        return VIDEO
    if (
        head.startswith((b"ID3", b"fLaC", b"#!AMR", b"FORM"))
        or riff == b"WAVE"
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)  # MPEG audio / ADTS
    ):
        return AUDIO
    return None


def _iso_kind(f: BinaryIO, brand: bytes) -> str:
    """MP4/MOV/HEIF: images by brand; else video when a track is video, audio when the
    tracks are sound only (an unreadable `moov` falls back to the brand)."""
    if brand in _IMAGE_BRANDS:
        return IMAGE
    handlers = {h for h, _ in _tracks(f)}
    if b"vide" in handlers:
        return VIDEO
    if b"soun" in handlers or brand in _AUDIO_BRANDS:
        return AUDIO
    return VIDEO


def dimensions(path: Path, what: str) -> tuple[int, int]:
    """(width, height) of an image (Pillow) or of an MP4/MOV video (its video track's header,
    turned by its rotation)."""
    if what == IMAGE:
        if not pillow_installed():
            raise ProbeError("Pillow is not installed (pip install 'runcomfy-batchrun[images]')")
        # Optional dependency: imported only when an image's size is asked for.
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                width, height = image.size
                return int(width), int(height)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ProbeError(f"Pillow cannot read it: {exc}") from None
    if what == VIDEO:
        with path.open("rb") as f:
            if f.read(8)[4:8] != b"ftyp":
                raise ProbeError("only MP4/MOV video sizes can be read")
            sizes = [size for handler, size in _tracks(f) if handler == b"vide" and size]
        if not sizes:
            raise ProbeError("no video track with a size")
        return sizes[0]
    raise ProbeError(f"{_a(what)} file has no width or height")


def duration(path: Path, what: str) -> float:
    """Seconds of a video or audio file, as mutagen reads its container."""
    if what not in (VIDEO, AUDIO):
        raise ProbeError(f"{_a(what)} file has no duration")
    if not mutagen_installed():
        raise ProbeError("mutagen is not installed (pip install 'runcomfy-batchrun[media]')")
    # Optional dependency: imported only when a duration is asked for.
    import mutagen

    try:
        media = mutagen.File(path)
    except mutagen.MutagenError as exc:
        raise ProbeError(f"mutagen cannot read it: {exc}") from None
    length = getattr(getattr(media, "info", None), "length", None)
    if media is None or not isinstance(length, (int, float)) or length <= 0:
        raise ProbeError("mutagen does not know this container's duration")
    return float(length)


def _a(what: str | None) -> str:
    return {IMAGE: "an image", VIDEO: "a video", AUDIO: "an audio"}.get(what or "", "this")


# ---- MP4 / MOV boxes --------------------------------------------------------------------


def _tracks(f: BinaryIO) -> list[tuple[bytes, tuple[int, int] | None]]:
    """Each track's handler type (b"vide", b"soun", ...) and the size its header gives
    (None when zero or unreadable), in file order; [] when no `moov` can be read."""
    out: list[tuple[bytes, tuple[int, int] | None]] = []
    try:
        f.seek(0, 2)
        end = f.tell()
        for kind_, start, stop in _boxes(f, 0, end):
            if kind_ == b"moov":
                for sub, s_start, s_stop in _boxes(f, start, stop):
                    if sub == b"trak":
                        out.append(_track(f, s_start, s_stop))
                break
    except (OSError, struct.error, ValueError):
        return out
    return out


def _track(f: BinaryIO, start: int, stop: int) -> tuple[bytes, tuple[int, int] | None]:
    handler, size = b"", None
    for kind_, b_start, b_stop in _boxes(f, start, stop):
        if kind_ == b"tkhd":
            f.seek(b_start)
            size = tkhd_size(f.read(min(b_stop - b_start, 128)))
        elif kind_ == b"mdia":
            for sub, h_start, h_stop in _boxes(f, b_start, b_stop):
                if sub == b"hdlr" and h_stop - h_start >= 12:
                    f.seek(h_start + 8)  # version/flags, pre_defined
                    handler = f.read(4)
    return handler, size


def _boxes(f: BinaryIO, start: int, stop: int) -> list[tuple[bytes, int, int]]:
    """The boxes between `start` and `stop`: (type, payload start, payload end)."""
    out: list[tuple[bytes, int, int]] = []
    at = start
    while at + 8 <= stop and len(out) < _MAX_BOXES:
        f.seek(at)
        size, kind_ = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", f.read(8))
            header = 16
        elif size == 0:
            size = stop - at  # to the end of the enclosing box (or the file)
        if size < header or at + size > stop:
            raise ValueError("a box runs past its container")
        out.append((kind_, at + header, at + size))
        at += size
    return out


def tkhd_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from a `tkhd` box's payload (version 0 or 1), turned by 90 or 270
    degrees when its matrix says so; None when zero (a sound track) or too short."""
    if not payload:
        return None
    fixed = 4 + (32 if payload[0] == 1 else 20)  # version/flags, times, track id, duration
    matrix_at = fixed + 8 + 8  # reserved, layer, group, volume, reserved
    size_at = matrix_at + 36
    if len(payload) < size_at + 8:
        return None
    a, b = struct.unpack(">ii", payload[matrix_at : matrix_at + 8])
    width, height = (v >> 16 for v in struct.unpack(">II", payload[size_at : size_at + 8]))
    if not (width and height):
        return None
    turned = a == 0 and b != 0  # a rotation by 90 or 270 degrees
    return (height, width) if turned else (width, height)

"""Small real media files for tests of local inputs: images Pillow writes, a video by its
magic bytes (the service, and the simulator, only read its type)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"  # image_url: format image_uri
NANO_EDIT = "google/nano-banana-2-lite/edit"  # image_urls: format image_uris
I2V = "wan-ai/wan-3.0/image-to-video"


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size: int = 24) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format=fmt)
    return out.getvalue()


def write_image(path: Path, color: tuple[int, int, int], fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, fmt))
    return path


def write_video(path: Path, size: int = 4096) -> Path:
    """An MP4 as far as its magic bytes go (an `ftyp` box), `size` bytes long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    path.write_bytes(head + bytes(size - len(head)))
    return path


def write_big_image(path: Path, size: int) -> Path:
    """A PNG header followed by filler, `size` bytes: an image by its type, too big inline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = image_bytes((1, 2, 3))
    path.write_bytes(head + bytes(size - len(head)))
    return path

"""Deterministic output files: PNG images and small MP4 videos, and the store serving them.

Bytes depend only on a content key (model + canonical inputs + output slot + drift), never on
the request id, so the same inputs always give the same bytes. Rendering is lazy and cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BASE_SIZE = 128
_CACHE_ENTRIES = 512
_MAX_SIDE = 2048  # an image is drawn pixel by pixel: a larger one would take seconds


def canonical_json(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def identity(model_id: str, inputs: dict[str, Any]) -> str:
    """The input identity the stats count submits by: model id + canonical JSON of inputs."""
    return f"{model_id} {canonical_json(inputs)}"


def fraction(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (seeded per-job decisions)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def content_key(identity_: str, slot: int, drifted: bool) -> str:
    suffix = "|drift" if drifted else ""
    return hashlib.sha256(f"{identity_}|{slot}{suffix}".encode()).hexdigest()


def image_size(inputs: dict[str, Any]) -> tuple[int, int]:
    """The `width` and `height` inputs, when a schema has them; else a small size that keeps
    the requested aspect ratio (128 on the long side)."""
    given = _dimensions(inputs)
    if given is not None:
        return given
    ratio = _ratio(inputs.get("aspect_ratio", "1:1"))
    if ratio is None:
        return _BASE_SIZE, _BASE_SIZE
    w, h = ratio
    if w >= h:
        return _BASE_SIZE, max(16, round(_BASE_SIZE * h / w))
    return max(16, round(_BASE_SIZE * w / h)), _BASE_SIZE


def png_bytes(key: str, width: int, height: int) -> bytes:
    """A PNG with a visible pattern (checks or stripes over a gradient) coloured by `key`."""
    seed = bytes.fromhex(key)
    a, b = seed[0:3], seed[3:6]
    tile = 8 + seed[6] % 24
    pattern = seed[7] % 3  # 0 checks, 1 vertical stripes, 2 diagonal stripes
    rows = []
    for y in range(height):
        shade = 64 + (191 * y) // max(1, height - 1)  # vertical gradient, visible in any pattern
        ca = bytes(c * shade // 255 for c in a)
        cb = bytes(255 - (255 - c) * shade // 255 for c in b)
        row = bytearray(b"\x00")  # filter type 0 per scanline
        for x in range(width):
            if pattern == 0:
                on = (x // tile + y // tile) % 2
            elif pattern == 1:
                on = (x // tile) % 2
            else:
                on = ((x + y) // tile) % 2
            row += ca if on else cb
        rows.append(bytes(row))
    raw = b"".join(rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"Comment\x00batchrun simulator " + key[:16].encode())
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def video_size(model_id: str, inputs: dict[str, Any]) -> tuple[int, int, float]:
    """The (width, height, seconds) a video job asks for: `width`/`height` inputs, else the
    short side from `resolution` (or a `.../1080p` model id; 720p by default) and the shape
    from `aspect_ratio` (16:9 by default); seconds from `duration` (5 by default)."""
    given = _dimensions(inputs)
    if given is not None:
        width, height = given
    else:
        short = _resolution(str(inputs.get("resolution", ""))) or _resolution(model_id) or 720
        w, h = _ratio(inputs.get("aspect_ratio")) or (16.0, 9.0)
        long_side = 2 * round(short * max(w, h) / min(w, h) / 2)  # codecs want even sides
        width, height = (long_side, short) if w >= h else (short, long_side)
    try:
        seconds = float(inputs.get("duration", 5))
    except (TypeError, ValueError):  # "auto"
        seconds = 5.0
    return width, height, seconds if 0 < seconds <= 3600 else 5.0


def _resolution(text: str) -> int | None:
    m = re.search(r"(\d{3,4})p$", text)
    return int(m.group(1)) if m else None


def _ratio(value: object) -> tuple[float, float] | None:
    try:
        w, h = (float(x) for x in str(value).split(":"))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def _dimensions(inputs: dict[str, Any]) -> tuple[int, int] | None:
    """`width` and `height` inputs when a schema has them (positive integers, capped)."""
    w, h = inputs.get("width"), inputs.get("height")
    if type(w) is int and type(h) is int and 0 < w <= _MAX_SIDE and 0 < h <= _MAX_SIDE:
        return w, h
    return None


def video_bytes(key: str, width: int = 1280, height: int = 720, seconds: float = 5.0) -> bytes:
    """A small, well-formed MP4 (ftyp, moov with mvhd and one video track, mdat): container
    readers find its duration and dimensions; its one sample is deterministic bytes (a few
    KB), not a decodable picture."""
    seed = bytes.fromhex(key)
    size = 2048 + (int.from_bytes(seed[:2], "big") % 4096)
    body = bytearray()
    counter = 0
    while len(body) < size:
        body += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41")
    # mdat's payload starts after ftyp, moov and mdat's own header: moov is built twice, the
    # second time with the sample's real offset (its size does not depend on it).
    moov = _moov(width, height, seconds, size, 0)
    moov = _moov(width, height, seconds, size, len(ftyp) + len(moov) + 8)
    return ftyp + moov + _box(b"mdat", bytes(body[:size]))


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _full(kind: bytes, payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(width: int, height: int, seconds: float, sample: int, offset: int) -> bytes:
    scale = 1000
    duration = round(seconds * scale)
    mvhd = _full(
        b"mvhd",
        struct.pack(">IIII", 0, 0, scale, duration)
        + struct.pack(">IH", 0x10000, 0x100)  # rate 1.0, volume 1.0
        + b"\x00" * 10
        + _MATRIX
        + b"\x00" * 24
        + struct.pack(">I", 2),  # next track id
    )
    tkhd = _full(
        b"tkhd",
        struct.pack(">IIII", 0, 0, 1, 0)  # created, modified, track id 1, reserved
        + struct.pack(">I", duration)
        + b"\x00" * 8
        + struct.pack(">hhhH", 0, 0, 0, 0)  # layer, group, volume (0: video), reserved
        + _MATRIX
        + struct.pack(">II", width << 16, height << 16),  # 16.16 fixed point
        flags=3,  # enabled, in the movie
    )
    mdhd = _full(b"mdhd", struct.pack(">IIIIHH", 0, 0, scale, duration, 0x55C4, 0))  # "und"
    hdlr = _full(b"hdlr", struct.pack(">I", 0) + b"vide" + b"\x00" * 12 + b"VideoHandler\x00")
    avcc = _box(b"avcC", bytes([1, 0x42, 0xC0, 0x1E, 0xFF, 0xE0, 0x00]))  # no SPS/PPS
    avc1 = _box(
        b"avc1",
        b"\x00" * 6
        + struct.pack(">H", 1)  # data reference index
        + b"\x00" * 16
        + struct.pack(">HH", width, height)
        + struct.pack(">II", 0x480000, 0x480000)  # 72 dpi
        + struct.pack(">IH", 0, 1)  # reserved, frame count
        + b"\x00" * 32  # compressor name
        + struct.pack(">Hh", 0x18, -1)  # depth, predefined
        + avcc,
    )
    stbl = _box(
        b"stbl",
        _full(b"stsd", struct.pack(">I", 1) + avc1)
        + _full(b"stts", struct.pack(">III", 1, 1, duration))
        + _full(b"stsc", struct.pack(">IIII", 1, 1, 1, 1))
        + _full(b"stsz", struct.pack(">III", 0, 1, sample))
        + _full(b"stco", struct.pack(">II", 1, offset)),
    )
    dinf = _box(b"dinf", _full(b"dref", struct.pack(">I", 1) + _full(b"url ", b"", flags=1)))
    vmhd = _full(b"vmhd", b"\x00" * 8, flags=1)
    mdia = _box(b"mdia", mdhd + hdlr + _box(b"minf", vmhd + dinf + stbl))
    return _box(b"moov", mvhd + _box(b"trak", tkhd + mdia))


def huge_chunks(total: int, chunk: int = 65536) -> Iterator[bytes]:
    """`total` bytes starting with a PNG signature, in chunks (never held in memory at once)."""
    first = _PNG_SIGNATURE + b"\x00" * (min(chunk, total) - len(_PNG_SIGNATURE))
    yield first[:total]
    sent = len(first[:total])
    filler = b"\xab" * chunk
    while sent < total:
        part = filler[: min(chunk, total - sent)]
        sent += len(part)
        yield part


@dataclass(frozen=True)
class FileSpec:
    """One served file: how to render it, and until when (monotonic) it exists."""

    kind: str  # "png", "mp4", "huge", "truncated"
    key: str
    width: int = 0
    height: int = 0
    size: int = 0  # for "huge"
    expires_at: float | None = None
    seconds: float = 0.0  # for "mp4": its duration

    @property
    def content_type(self) -> str:
        return "video/mp4" if self.kind == "mp4" else "image/png"


class FileStore:
    """Paths (`/files/<request_id>/<name>`, unquoted) -> FileSpec, with a render cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, FileSpec] = {}
        self._cache: OrderedDict[tuple[str, str, int, int, float], bytes] = OrderedDict()

    def add(self, path: str, spec: FileSpec) -> None:
        with self._lock:
            self._files[path] = spec

    def get(self, path: str, now: float) -> FileSpec | None:
        with self._lock:
            spec = self._files.get(path)
        if spec is None or (spec.expires_at is not None and now >= spec.expires_at):
            return None
        return spec

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def paths(self, now: float) -> list[str]:
        with self._lock:
            items = list(self._files.items())
        return [p for p, s in items if s.expires_at is None or now < s.expires_at]

    def render(self, spec: FileSpec) -> bytes:
        """The full bytes of a png/mp4/truncated file (cached; "huge" is streamed instead)."""
        cache_key = (spec.kind, spec.key, spec.width, spec.height, spec.seconds)
        with self._lock:
            data = self._cache.get(cache_key)
            if data is not None:
                self._cache.move_to_end(cache_key)
                return data
        if spec.kind == "mp4":
            data = video_bytes(spec.key, spec.width, spec.height, spec.seconds)
        else:
            data = png_bytes(spec.key, spec.width or _BASE_SIZE, spec.height or _BASE_SIZE)
        with self._lock:
            self._cache[cache_key] = data
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def sha256(self, spec: FileSpec) -> str:
        if spec.kind == "huge":
            h = hashlib.sha256()
            for part in huge_chunks(spec.size):
                h.update(part)
            return h.hexdigest()
        return hashlib.sha256(self.render(spec)).hexdigest()

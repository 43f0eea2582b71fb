"""Deterministic output files: PNG images and video-like bytes, and the store serving them.

Bytes depend only on a content key (model + canonical inputs + output slot + drift), never on
the request id, so the same inputs always give the same bytes. Rendering is lazy and cached.
"""

from __future__ import annotations

import hashlib
import json
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
    """A small size that keeps the requested aspect ratio (128 on the long side)."""
    ratio = str(inputs.get("aspect_ratio", "1:1"))
    try:
        w, h = (float(x) for x in ratio.split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        return _BASE_SIZE, _BASE_SIZE
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


def video_bytes(key: str) -> bytes:
    """A few KB that start like an MP4 (ftyp box) followed by deterministic bytes."""
    seed = bytes.fromhex(key)
    size = 2048 + (int.from_bytes(seed[:2], "big") % 4096)
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    body = bytearray()
    counter = 0
    while len(body) < size:
        body += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    mdat = struct.pack(">I", 8 + size) + b"mdat" + bytes(body[:size])
    return ftyp + mdat


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

    @property
    def content_type(self) -> str:
        return "video/mp4" if self.kind == "mp4" else "image/png"


class FileStore:
    """Paths (`/files/<request_id>/<name>`, unquoted) -> FileSpec, with a render cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, FileSpec] = {}
        self._cache: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()

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
        cache_key = (spec.kind, spec.key, spec.width, spec.height)
        with self._lock:
            data = self._cache.get(cache_key)
            if data is not None:
                self._cache.move_to_end(cache_key)
                return data
        if spec.kind == "mp4":
            data = video_bytes(spec.key)
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

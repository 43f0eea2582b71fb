"""Kinds of output files by suffix: what report.html shows inline and compare can look at."""

from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".svg"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".m4v", ".ogv"})
# Images Pillow can decode into pixels; a vector image has none to compare.
RASTER_SUFFIXES = IMAGE_SUFFIXES - {".svg"}

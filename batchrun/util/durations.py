"""Durations as text: at a glance (`duration`) or as the manifest writes them (`secs`)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """45s, 3m05s, 1h02m: a duration to read at a glance."""
    whole = int(round(max(0.0, seconds)))
    if whole < 60:
        return f"{whole}s"
    minutes, sec = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def secs(seconds: float) -> str:
    """30m, 90s, 0.6s: a duration as the manifest would write it."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"

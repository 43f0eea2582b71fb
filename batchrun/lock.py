"""The run folder's lock: who holds it."""

from __future__ import annotations

import os
from pathlib import Path

LOCK_FILE = ".lock"


def holder(run_dir: Path) -> int | None:
    """The pid of a live `batchrun run` holding the folder, if any (read without locking)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
        pid = int(text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid

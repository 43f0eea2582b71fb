"""What a run folder has copied to its mirror bucket (`outputs.mirror`): one row per object,
written as soon as the store took it, so a killed run does not send it again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# state.db's table of them (schema version 4; store/migrations.py creates it).
TABLE = """
CREATE TABLE IF NOT EXISTS mirrored (
    url TEXT PRIMARY KEY,
    job_id TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mirrored_at REAL NOT NULL
)
"""
COLUMNS = "url, job_id, name, sha256, size, mirrored_at"


@dataclass(frozen=True)
class Mirrored:
    """One object in the mirror bucket: its s3:// URL, the job it belongs to ('' for the
    run's reports), the file's name in the run folder, its sha256 and size."""

    url: str
    job_id: str
    name: str
    sha256: str
    size: int
    mirrored_at: float = 0.0

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Mirrored:
        return cls(r[0], r[1], r[2], r[3], int(r[4]), float(r[5]))

    def row(self) -> tuple[Any, ...]:
        return (self.url, self.job_id, self.name, self.sha256, self.size, self.mirrored_at)


def urls_by_job(records: Iterable[Mirrored]) -> dict[str, list[str]]:
    """Each job's mirrored s3:// URLs, in name order (report.csv's mirror_urls)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for m in records:
        if m.job_id:
            found.setdefault(m.job_id, []).append((m.name, m.url))
    return {job: [url for _, url in sorted(pairs)] for job, pairs in found.items()}

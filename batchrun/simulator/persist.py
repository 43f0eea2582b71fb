"""Optional persistence (`state_dir`): what a real server remembers across a restart.

An append-only JSON-lines journal, `<state_dir>/journal.jsonl`, one record a line:

- `{"type": "submit", "request_id", "model_id", "inputs", "created_at", "seq", "occurrence",
  "run_time", "fails", "drifted"}`: an accepted submit with its per-job draws. It is fsynced
  before the 200 answer leaves, as a real server has stored a job it acknowledged;
- `{"type": "cancel", "request_id", "at"}`: a job cancelled while queued;
- `{"type": "asked", "request_id"}`: the client first asked about a job by its id (for the
  stats' `untracked_submits`; not fsynced);
- `{"type": "port", "port"}`: the port served on (the last one wins on restart).

Settings, the token included, are never written: they are configuration, not state. Outputs are
not written either: they are deterministic from model + inputs (+ the drift draw), so a restart
regenerates them under the current base URL.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.simulator.jobqueue import CANCELLED, Job
from batchrun.simulator.outputs import identity

JOURNAL = "journal.jsonl"


class StateDirInUse(RuntimeError):
    """Another simulator (process) serves from this state_dir."""


@dataclass
class Restored:
    """What a journal holds: the jobs (cancelled ones already marked), the last port and the
    request ids the client asked about."""

    jobs: list[Job] = field(default_factory=list)
    port: int | None = None
    asked: set[str] = field(default_factory=set)  # request ids the client asked about


class Journal:
    """The append-only record file; `append()` returns once the record is on disk (unless
    `durable=False`: written, not fsynced)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / JOURNAL
        self._lock = threading.Lock()
        # One simulator per state_dir: two would each believe they own the jobs and the port.
        self._dir_lock = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._dir_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._dir_lock)
            raise StateDirInUse(
                f"simulator state folder {self.dir} is in use by another simulator"
            ) from None
        self._drop_torn_tail()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for appends

    def append(self, record: dict[str, Any], *, durable: bool = True) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            if durable:
                os.fsync(self._fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        out = []
        with self._lock, open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # only a torn tail can be unreadable (see _drop_torn_tail)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def clear(self) -> None:
        """Forget everything (`/_sim/reset`)."""
        with self._lock:
            self._fh.truncate(0)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()
                os.close(self._dir_lock)  # releases the flock

    def _drop_torn_tail(self) -> None:
        # A kill -9 mid-append leaves a line without its newline. That record was never
        # acknowledged (the fsync comes before the answer), and appending after it would glue
        # the next record onto it: cut it off.
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                os.fsync(fh.fileno())


def submit_record(job: Job, drifted: bool) -> dict[str, Any]:
    return {
        "type": "submit",
        "request_id": job.request_id,
        "model_id": job.model_id,
        "inputs": job.inputs,
        "created_at": job.created_at,
        "seq": job.seq,
        "occurrence": job.occurrence,
        "run_time": job.run_time,
        "fails": job.fails,
        "drifted": drifted,
    }


def cancel_record(job: Job) -> dict[str, Any]:
    return {"type": "cancel", "request_id": job.request_id, "at": job.finished_at}


def restore(records: list[dict[str, Any]]) -> Restored:
    """Rebuild the jobs of a journal (in submit order) and the port last served on."""
    out = Restored()
    jobs: dict[str, Job] = {}
    for r in records:
        kind = r.get("type")
        if kind == "port" and isinstance(r.get("port"), int):
            out.port = r["port"]
        elif kind == "submit":
            job = Job(
                request_id=r["request_id"],
                model_id=r["model_id"],
                inputs=r["inputs"],
                identity=identity(r["model_id"], r["inputs"]),
                seq=int(r["seq"]),
                occurrence=int(r["occurrence"]),
                run_time=float(r["run_time"]),
                fails=bool(r["fails"]),
                created_at=float(r["created_at"]),
            )
            job.extra["drifted"] = bool(r.get("drifted", False))
            jobs[job.request_id] = job
        elif kind == "asked" and isinstance(r.get("request_id"), str):
            out.asked.add(r["request_id"])
        elif kind == "cancel" and r.get("request_id") in jobs:
            job = jobs[r["request_id"]]
            job.state = CANCELLED
            job.finished_at = float(r.get("at") or job.created_at)
    out.jobs = sorted(jobs.values(), key=lambda j: j.seq)
    return out

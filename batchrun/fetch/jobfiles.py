"""One job's output files on their way to files/<job_id>/: which URLs need a request, the
name each file gets, and what has landed so far.

The names are chosen before any transfer starts, in URL order, so a job's files may be fetched
in any order, several at once, and still get the names they would one after another.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.store.atomic import fsync_dir
from batchrun.store.output_urls import Names, refusal, safe_name, url_name
from batchrun.store.records import OutputFile

Stopped = Callable[[], bool]  # asked between reads: True abandons a transfer
INTERRUPTED = "not downloaded: the run was interrupted; rerun to fetch it"


def _never() -> bool:
    return False


@dataclass
class FileTask:
    """One file of a job still to fetch: its place in the job's URL list and its name."""

    index: int
    url: str
    name: str  # in files/<job_id>/; when `bare`, the stem the Content-Type's extension joins
    bare: bool = False


Transfer = Callable[["JobFiles", FileTask, Stopped], OutputFile]


@dataclass
class JobFiles:
    """One job's download: `results` in URL order (None: not settled yet) and `todo`, the
    files to transfer, in any order, from any thread."""

    job: JobDir
    run_dir: Path
    results: list[OutputFile | None]
    fetch_one: Transfer
    todo: list[FileTask] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def transfer(self, task: FileTask, stopped: Stopped = _never) -> OutputFile:
        """Fetch one file; never raises. Once `stopped()` says so, the transfer is abandoned
        (its temporary file removed) and the file's error says the run was interrupted."""
        return self.fetch_one(self, task, stopped)

    def sync(self) -> None:
        """Make the files renamed into the job's folder so far durable (one folder fsync)."""
        if self.job.written:
            self.job.written = False
            fsync_dir(self.job.path)

    def landed(self) -> list[OutputFile]:
        """The files settled so far, in URL order."""
        return [f for f in self.results if f is not None]

    def abandon(self) -> None:
        """A stop: every file not settled is one the run was interrupted before fetching (its
        record says so, and the next run fetches it); no temporary file of this job is left,
        even one a transfer stuck in a read still holds open."""
        for task in self.todo:
            if self.results[task.index] is None:
                self.results[task.index] = OutputFile(url=task.url, error=INTERRUPTED)
        self.job.remove_temporaries()


def plan(
    job: JobDir,
    run_dir: Path,
    urls: list[str],
    existing: Sequence[OutputFile],
    keys: Mapping[str, str] | None,
    allow_hosts: Sequence[str],
    fetch_one: Transfer,
) -> JobFiles:
    """Settle what needs no request (refused URLs, files intact on disk from `existing`) and
    name the rest; `keys` (url -> output key) names files whose URL has no usable name."""
    prefix = f"files/{job.job_id}/"
    previous = {
        f.url: f
        for f in existing
        if f.name.startswith(prefix) and safe_name(f.name[len(prefix) :]) == f.name[len(prefix) :]
    }
    # Names already held by other URLs' files stay theirs.
    wanted = set(urls)
    taken = Names(
        f.name[len(prefix) :] for u, f in previous.items() if u in wanted and f.name and f.sha256
    )
    job.remove_stale_parts(keep={f.name[len(prefix) :] for f in previous.values()})
    files = JobFiles(job, run_dir, [None] * len(urls), fetch_one)
    bare: list[FileTask] = []
    for index, url in enumerate(urls):
        why = refusal(url, allow_hosts)
        old = previous.get(url)
        if why:
            files.results[index] = OutputFile(url=url, error=why)
        elif old and old.sha256 and _intact(run_dir, old):
            files.results[index] = old
        elif old and old.name:
            files.todo.append(FileTask(index, url, old.name[len(prefix) :]))
        else:
            name = url_name(url) or safe_name((keys or {}).get(url, "")) or f"output-{index + 1}"
            task = FileTask(index, url, name, bare="." not in name.strip("."))
            if task.bare:
                bare.append(task)  # its extension comes with the answer's Content-Type
            else:
                task.name = taken.claim(name)
            files.todo.append(task)
    # A bare name gets a stem no other name has before its extension, so whatever extension
    # its answer brings, it collides with no other file's name.
    stems = Names(n.rpartition(".")[0] or n for n in taken.taken)
    for task in bare:
        task.name = stems.claim(task.name)
    return files


def _intact(run_dir: Path, old: OutputFile) -> bool:
    try:
        return (run_dir / old.name).stat().st_size == old.size
    except OSError:
        return False


class JobDir:
    """files/<job_id>/ under a resolved files root: created and checked once per job."""

    def __init__(self, files_root: Path, job_id: str) -> None:
        self.job_id = job_id
        self.path = files_root / job_id
        self.written = False  # a file was renamed into it: JobFiles.sync fsyncs the folder
        self._checked: bool | None = None

    def remove_stale_parts(self, keep: Collection[str] = ()) -> None:
        """One process owns a run folder (state lock), so a .part here is from a crash, unless
        it is an output of that name (`keep`)."""
        self._remove(lambda name: name.endswith(".part") and name not in keep)

    def remove_temporaries(self) -> None:
        """Remove the hidden `.NAME.part` files downloads write to (no output name starts with
        a dot: output_urls.safe_name)."""
        self._remove(lambda name: name.startswith(".") and name.endswith(".part"))

    def _remove(self, which: Callable[[str], bool]) -> None:
        """Unlink the entries `which` names; only inside a real folder, never through a link
        planted as files/ or files/<job_id>."""
        if not (_real_dir(self.path.parent) and _real_dir(self.path)):
            return
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in entries:
                if which(entry.name):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def ready(self) -> bool:
        """Create the folder; False when files/ or files/<job_id> is not a real folder.

        The root was resolved once, so a real (non-symlink) files/ and job folder under it
        are the folders the names are meant to land in.
        """
        if self._checked is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._checked = _real_dir(self.path.parent) and _real_dir(self.path)
        return self._checked


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False

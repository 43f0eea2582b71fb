"""What a finished job produced: output URLs in its model's shape (files registered), its cost,
or an error; in malicious mode, the job's hostile variant.

Called by the scheduler thread just before the job's state becomes `completed`.
"""

from __future__ import annotations

import time

from batchrun.simulator import catalog, malicious, media
from batchrun.simulator.jobqueue import Job
from batchrun.simulator.outputs import (
    FileSpec,
    FileStore,
    content_key,
    fraction,
    image_size,
    video_size,
)
from batchrun.simulator.settings import SimSettings
from batchrun.simulator.stats import Stats

_ERROR_SHAPES = (
    {"code": "MODEL_ERROR", "message": "simulated failure: the model could not process inputs"},
    {"message": "simulated failure: content policy violation"},
    "simulated failure: worker crashed",  # api-facts: `error` may be a plain string
)


def drift_draw(s: SimSettings, identity: str) -> bool:
    """Whether this input identity's outputs drift (fixed at submit, persisted with the job)."""
    return fraction(s.seed, "drift", identity) < s.drift


def finish_job(job: Job, s: SimSettings, files: FileStore, stats: Stats, base_url: str) -> None:
    """Decide a finished job's result: output URLs (files registered), cost, or an error."""
    # From its end time, which lies in the past for a job reloaded after a restart.
    ended = min(job.ends_at, time.monotonic()) if job.ends_at else time.monotonic()
    expires = ended + s.expire_after if s.expire_after is not None else None
    if s.malicious:
        _finish_malicious(job, s, files, stats, base_url, expires)
        return
    info = catalog.CATALOG[job.model_id]
    unfetched = "" if job.fails else media.fetch_problem(job.inputs, s.fetch_inputs)
    if unfetched:  # the service could not read an input URL: the job fails, unbilled
        stats.fault("input_fetch")
        job.fails = True
        job.error = {"code": "INPUT_FETCH_FAILED", "message": unfetched}
        return
    if job.fails:
        stats.fault("fail")
        shape = _ERROR_SHAPES[int(fraction(s.seed, "error", job.identity) * 3)]
        job.error = shape
        return
    drifted = job.extra.get("drifted")
    if drifted is None:
        drifted = drift_draw(s, job.identity)
    if drifted:
        stats.fault("drift")
    width, height = image_size(job.inputs)
    video = video_size(job.model_id, job.inputs)
    slots: list[tuple[str | None, list[str]]] = []
    n = 0
    for key, kind, count in info.slots:
        urls = []
        for _ in range(count):
            label = "image" if kind == "png" else "video"
            path = f"/files/{job.request_id}/{label}_{n}.{kind}"
            content = content_key(job.identity, n, drifted)
            if kind == "mp4":
                w, h, seconds = video
                spec = FileSpec(kind, content, w, h, expires_at=expires, seconds=seconds)
            else:
                spec = FileSpec(kind, content, width, height, expires_at=expires)
            files.add(path, spec)
            urls.append(base_url + path)
            n += 1
        slots.append((key, urls))
    if info.shape == catalog.STRING:
        job.output = slots[0][1][0]
    elif info.shape == catalog.ARRAY:
        job.output = [u for _, urls in slots for u in urls]
    else:
        # plural keys ("videos") hold arrays, singular ones ("image") one URL
        job.output = {str(k): (u if str(k).endswith("s") else u[0]) for k, u in slots}
    job.extra["cost"] = catalog.cost(info, job.inputs)
    stats.billed(job.request_id, job.identity, job.extra["cost"])


def _finish_malicious(
    job: Job, s: SimSettings, files: FileStore, stats: Stats, base_url: str, expires: float | None
) -> None:
    name = malicious.variant(job.seq)
    stats.fault(f"malicious_{name}")
    job.fails = False
    job.extra["malicious"] = name
    job.extra["cost"] = 0.0
    url = malicious.url_for(name, base_url, job.request_id)
    if url is None:  # body variants: the result endpoint misbehaves instead
        return
    kind = {"huge": "huge", "truncated": "truncated"}.get(name, "png")
    spec = FileSpec(
        kind,
        content_key(job.identity, 0, False),
        64,
        64,
        size=s.huge_file_bytes,
        expires_at=expires,
    )
    for path in malicious.served_paths(url, base_url):
        files.add(path, spec)
    job.output = [url]
